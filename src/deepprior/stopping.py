"""Stopping without the ground truth: the windowed moving variance criterion (ES-WMV).

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

import torch


class WindowedVariance:
    """Track the windowed moving variance of a sequence of outputs and decide when to stop.

    Call :meth:`update` once per iteration with the raw output; it returns True when the
    variance reached a new minimum (the caller then keeps that iterate as its candidate).
    :attr:`should_stop` turns True once no new minimum has come for ``patience`` iterations.
    The criterion never fires before the window has filled.

    Minima before iteration ``start`` are recorded in :attr:`curve` but not taken: a network
    that is still fitting the image's content can pass through an early, spurious minimum of
    the variance (on textured images such as Baboon the variance rises again as fine texture
    starts to be fitted, long before the quality peak). They still set the bar: a minimum past
    ``start`` is taken only if it is lower than every variance since the window filled. A
    variance that only rises after an early minimum (Baboon again) then has no minimum past
    the floor at all, and the fit runs to its cap instead of stopping on the floor's first,
    arbitrary value.

    :meth:`observe` is the decision alone, fed with variances: with a recorded :attr:`curve` it
    replays the rule for another ``start`` or ``patience`` without refitting.
    """

    def __init__(self, window: int = 100, patience: int = 400, max_samples: int = 16384, generator=None,
                 start: int = 0):
        if window < 2:
            raise ValueError("window must be at least 2")
        self.window = window
        self.patience = patience
        self.start = start
        self.max_samples = max_samples
        self.generator = generator
        self._index = None
        self._ring = None
        self._count = 0
        self.best_iteration: int | None = None
        self.lowest_value = math.inf  # the lowest variance so far, before ``start`` included
        self.last_iteration = 0
        self.curve: list[tuple[int, float]] = []

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

    def observe(self, iteration: int, var: float) -> bool:
        """Record the window variance ``var`` at ``iteration``; True when it is a minimum to take."""
        self.last_iteration = iteration
        self.curve.append((iteration, var))
        lowest = var < self.lowest_value
        self.lowest_value = min(self.lowest_value, var)
        if lowest and iteration >= self.start:
            self.best_iteration = iteration
            return True
        return False

    @property
    def filled(self) -> bool:
        return self._count >= self.window

    @property
    def should_stop(self) -> bool:
        return self.best_iteration is not None and self.last_iteration - self.best_iteration >= self.patience


def replay(curve, patience: int, start: int = 0) -> tuple[int | None, int | None]:
    """Replay the rule on a recorded ``curve`` of (iteration, variance) pairs.

    Returns (the iteration at which it fires, the iteration of the minimum it then returns);
    when it never fires, (None, the last minimum it held or None), and the fit returns its last
    output at the cap. A curve thinned to every k-th iteration gives the same answer to within
    k iterations.
    """
    wv = WindowedVariance(window=2, patience=patience, start=start)
    for iteration, var in curve:
        wv.observe(int(iteration), float(var))
        if wv.should_stop:
            return int(iteration), wv.best_iteration
    return None, wv.best_iteration
