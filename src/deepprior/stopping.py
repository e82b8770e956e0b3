"""Stopping without the ground truth: two rules that watch a curve and stop at its minimum.

* ``variance`` (:class:`WindowedVariance`, ES-WMV, the default): the spread of the last outputs.
* ``holdout`` (:class:`HeldOutLoss`, self-validation): the data term on a few observed pixels the
  fit never sees.

Both take the iterate at the curve's lowest value and stop once ``patience`` iterations have
brought no new one (:class:`MinimumRule`).

The variance rule:

Wang, Li, Zhuang, Chen, Liang and Sun, "Early Stopping for Deep Image Prior" (TMLR): while the
network fits the image content its successive outputs settle down; once it starts fitting the
noise (or text, or blur) they begin to wander again. The variance of the last W outputs
therefore falls, reaches a minimum near the quality peak, and rises. We stop when that
variance has not reached a new minimum for P iterations and return the iterate at the minimum.

Storing W full outputs would cost W x H x W x C floats (about 300 MB at 512x512 for W = 100),
so the variance is estimated on a fixed random subset of pixels (``max_samples`` values), held
in a ring buffer with running sums (float64, so E[x^2] - E[x]^2 does not cancel badly); the estimate of the mean per-pixel variance is unbiased, and the point it
detects matches the full computation (see ``tests/test_stopping.py``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch


class MinimumRule:
    """Stop once a curve has not reached a new lowest value for ``patience`` iterations.

    :meth:`observe` records one value of the curve; it returns True when that value is the
    lowest so far and may be taken (the caller then keeps that iterate as its candidate), and
    :attr:`should_stop` turns True ``patience`` iterations after the last such minimum.

    Minima before iteration ``start`` are recorded in :attr:`curve` but not taken: a network
    that is still fitting the image's content can pass through an early, spurious minimum. They
    still set the bar: a minimum past ``start`` is taken only if it is lower than every value
    before it, so a curve that only rises after an early minimum never fires and the fit runs
    to its cap instead of stopping on the floor's first, arbitrary value.
    """

    watches = "output"  # what the fitting loop feeds to update(): the raw "output" or its "result"

    def __init__(self, patience: int = 400, start: int = 0):
        self.patience = patience
        self.start = start
        self.best_iteration: int | None = None
        self.lowest_value = math.inf  # the lowest value so far, before ``start`` included
        self.last_iteration = 0
        self.curve: list[tuple[int, float]] = []

    def observe(self, iteration: int, value: float) -> bool:
        """Record the curve's ``value`` at ``iteration``; True when it is a minimum to take."""
        self.last_iteration = iteration
        self.curve.append((iteration, value))
        lowest = value < self.lowest_value
        self.lowest_value = min(self.lowest_value, value)
        if lowest and iteration >= self.start:
            self.best_iteration = iteration
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.best_iteration is not None and self.last_iteration - self.best_iteration >= self.patience


class WindowedVariance(MinimumRule):
    """Track the windowed moving variance of a sequence of outputs and decide when to stop.

    Call :meth:`update` once per iteration with the raw output; it returns True when the
    variance reached a new minimum (the caller then keeps that iterate as its candidate).
    :attr:`should_stop` turns True once no new minimum has come for ``patience`` iterations.
    The criterion never fires before the window has filled.

    ``start`` (see :class:`MinimumRule`) matters here: on textured images such as Baboon the
    variance passes through an early minimum and then rises as fine texture starts to be
    fitted, long before the quality peak; with the floor the fit runs to its cap instead.

    :meth:`observe` is the decision alone, fed with variances: with a recorded :attr:`curve` it
    replays the rule for another ``start`` or ``patience`` without refitting.
    """

    def __init__(self, window: int = 100, patience: int = 400, max_samples: int = 16384, generator=None,
                 start: int = 0):
        if window < 2:
            raise ValueError("window must be at least 2")
        super().__init__(patience, start)
        self.window = window
        self.max_samples = max_samples
        self.generator = generator
        self._index = None
        self._ring = None
        self._count = 0

    def _sample(self, out: torch.Tensor) -> torch.Tensor:
        flat = out.detach().reshape(-1)
        if self._index is None:
            n = flat.numel()
            if n > self.max_samples:
                perm = torch.randperm(n, generator=self.generator)[: self.max_samples]
                self._index = perm.sort().values.to(flat.device)
            else:
                self._index = torch.arange(n, device=flat.device)
            n = self._index.numel()
            self._ring = torch.zeros(self.window, n, device=flat.device, dtype=torch.float64)
            self._sum = torch.zeros(n, device=flat.device, dtype=torch.float64)
            self._sumsq = torch.zeros(n, device=flat.device, dtype=torch.float64)
        return flat[self._index].double()

    def update(self, iteration: int, out: torch.Tensor) -> bool:
        """Add the output of ``iteration``; True when the variance reached a new minimum."""
        sample = self._sample(out)
        # Running sums over the window: add the new sample, drop the one it replaces (O(n), not O(W n)).
        slot = self._count % self.window
        old = self._ring[slot]
        self._sum.add_(sample).sub_(old)
        self._sumsq.add_(sample * sample).sub_(old * old)
        old.copy_(sample)
        self._count += 1
        if self._count < self.window:
            return False
        mean = self._sum / self.window
        var = float((self._sumsq / self.window - mean * mean).clamp_min_(0).mean())
        return self.observe(iteration, var)

    @property
    def filled(self) -> bool:
        return self._count >= self.window


class HeldOutLoss(MinimumRule):
    """Self-validation: the data term on observed pixels that the fit never sees.

    Li, Zhuang, Wang and Sun, "Self-Validation: Early Stopping for Single-Instance Deep
    Generative Priors" (BMVC 2021). A fixed random few per cent of the observed pixels are left
    out of the data term (:func:`holdout_mask`, :meth:`deepprior.tasks.Problem.hold_out`). Their
    noise is independent of everything the network is fitted to, so the held-out error of the
    result is its true error on those pixels plus the noise variance, a constant: its minimum
    is the quality peak, wherever the fit started from. The windowed variance cannot see that
    peak when the fit starts from a classical estimate (its variance only rises after the first
    few hundred iterations; BENCHMARKS.md).

    ``loss(result)`` computes the held-out error of the fit's current result (its average when
    it averages); :meth:`update` feeds it to the rule.
    """

    watches = "result"

    def __init__(self, loss: Callable[[torch.Tensor], torch.Tensor], patience: int = 400, start: int = 0):
        super().__init__(patience, start)
        self.loss = loss

    def update(self, iteration: int, result: torch.Tensor) -> bool:
        """Add the result of ``iteration``; True when its held-out error is a new minimum."""
        return self.observe(iteration, float(self.loss(result)))


def holdout_mask(observed: np.ndarray, fraction: float, generator: torch.Generator) -> np.ndarray:
    """A fixed random ``fraction`` of the ``observed`` pixels (an (h, w) boolean array), True = held out.

    At least one pixel is held out and at least one observed pixel stays in the fit.
    """
    where = np.flatnonzero(observed)
    if where.size < 2:
        raise ValueError("holding pixels out needs at least two observed pixels")
    n = min(max(1, int(round(fraction * where.size))), where.size - 1)
    pick = torch.randperm(where.size, generator=generator)[:n].numpy()
    held = np.zeros(observed.shape, dtype=bool)
    held.flat[where[pick]] = True
    return held


def replay(curve, patience: int, start: int = 0) -> tuple[int | None, int | None]:
    """Replay the rule on a recorded ``curve`` of (iteration, value) pairs (either rule's).

    Returns (the iteration at which it fires, the iteration of the minimum it then returns);
    when it never fires, (None, the last minimum it held or None), and the fit returns its last
    output at the cap. A curve thinned to every k-th iteration gives the same answer to within
    k iterations.
    """
    rule = MinimumRule(patience=patience, start=start)
    for iteration, value in curve:
        rule.observe(int(iteration), float(value))
        if rule.should_stop:
            return int(iteration), rule.best_iteration
    return None, rule.best_iteration
