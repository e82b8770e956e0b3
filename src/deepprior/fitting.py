"""The fitting loop: optimise f(theta, z) until A(f(theta, z)) matches y, and stop in time.

One iteration: perturb the input (``reg_noise_std``), run the network, crop its padded canvas to
the image, take the data term, step Adam. Around that sit the regularisers of the paper and of
the literature after it: an exponential moving average of the outputs, backtracking to the last
good weights when the data-term PSNR collapses, and a stopping rule (windowed moving variance, or the
error on held-out pixels; :mod:`deepprior.stopping`).
Progress goes out through a callback every few iterations; a callback returning True, Ctrl-C, or
the stopping rule end the fit, and in every case the best result so far is returned.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import DeepPriorError
from .estimates import reporting
from .metrics import psnr as _psnr
from .networks import Upsampled, build_network, draw_size, padded_size
from .presets import FitConfig
from .stopping import HeldOutLoss, WindowedVariance, holdout_mask
from .tasks import Problem


# Fewer observed pixels than this and stop_rule="holdout" falls back to the variance rule: a tiny
# image has no pixels to spare, and a handful of held-out pixels would be no measure of the fit.
MIN_HOLDOUT_OBSERVED = 1024


@dataclass
class Progress:
    """What a callback sees every ``callback_every`` iterations."""

    iteration: int
    max_iterations: int
    loss: float
    psnr: float | None
    elapsed_s: float
    eta_s: float
    _candidate: torch.Tensor | None = field(repr=False)
    auto_stop_at: int | None = None  # the iteration at which the stopping rule fired, once it has
    tile: int = 1  # when a large image is restored in tiles: which one is being fitted (1-based)
    tiles: int = 1
    # "fit"; "settle": a fit on crops is measuring its BatchNorm statistics (batch ``tile`` of
    # ``tiles``); "apply": the fitted network is being run over a large image's tiles; "start": the
    # classical start is being made, before the first iteration; "restart": it is being made again
    # from every pixel, after the last (see select_against_start). The last two have no loss
    # (NaN) and no preview, and an ETA only for "restart" (the first start's time; else NaN): they
    # are reported so that a display is not silent through them.
    stage: str = "fit"
    # Where the fit covers part of the image at another size (a hole's window), what puts its
    # result in place: applied when a preview is asked for, not at every report.
    place: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    def preview(self) -> np.ndarray | None:
        """The current result (H, W, C) in [0, 1]: what would be returned if the fit ended now
        (for a fit on crops, the start with the latest crops' results pasted in; for a fit on a
        window, the input with the window's result put in place); None while the start is being made.

        A copy: the fit goes on updating its own buffer (the running average) in place."""
        if self._candidate is None:
            return None
        current = to_numpy(self._candidate).copy()
        return current if self.place is None else self.place(current)


#: The stages of a restoration that run no iterations of the fit (Progress.stage), in words for a display.
STAGE_LINES = {"start": "making the classical start", "restart": "making the start again from every pixel"}
START_STAGES = tuple(STAGE_LINES)


def announce(callback: Callable[[Progress], bool | None] | None, stage: str, max_iterations: int,
             iteration: int = 0, elapsed_s: float = 0.0, eta_s: float = math.nan) -> None:
    """Tell ``callback`` that a stage without iterations begins (one of :data:`START_STAGES`);
    ``eta_s``, its length where known (the start made again takes as long as it took the first time).
    Its answer is not asked: making a classical estimate cannot be cut short, and a callback
    that wants the fit to end says so again at the next iteration."""
    if callback is not None:
        callback(Progress(iteration, max_iterations, math.nan, None, elapsed_s, eta_s, None, stage=stage))


#: The least time between two reports of a start's progress (a slow start reports many steps).
START_REPORT_EVERY_S = 1.0


def make_start(make: Callable[[], np.ndarray], callback: Callable[[Progress], bool | None] | None, stage: str,
               max_iterations: int, iteration: int = 0, elapsed_s: float = 0.0, eta_s: float = math.nan
               ) -> tuple[np.ndarray, float]:
    """Make a classical start (``make()``, e.g. ``problem.estimate``) and return it with the seconds
    it took, telling ``callback`` as it goes: :func:`announce` first (with ``eta_s``), then, at most
    every :data:`START_REPORT_EVERY_S`, the time left as the estimate reports how far it is
    (:func:`deepprior.estimates.reporting`; its rate so far, carried forward)."""
    announce(callback, stage, max_iterations, iteration, elapsed_s, eta_s)
    began = time.perf_counter()
    last = began

    def report(fraction: float) -> None:
        nonlocal last
        now = time.perf_counter()
        if fraction <= 0.0 or now - last < START_REPORT_EVERY_S:
            return
        last = now
        spent = now - began
        announce(callback, stage, max_iterations, iteration, elapsed_s + spent, spent * (1.0 - fraction) / fraction)

    with reporting(report if callback is not None else None):
        image = make()
    return image, time.perf_counter() - began


@dataclass
class FitOutcome:
    output: np.ndarray  # (H, W, C) in [0, 1]
    iterations: int  # iterations run
    stopped_at: int  # the iteration whose result is returned
    stop_reason: str  # "completed", "auto", "callback" or "interrupted"
    elapsed_s: float
    history: list[dict]
    backtracks: int
    stop_curve: list[tuple[int, float]]
    parameters: int
    auto_stop_at: int | None = None  # iteration at which the stopping rule fired, if it did
    uncertainty: np.ndarray | None = None  # (H, W, C) posterior standard deviation (Bayesian mode)
    samples: int = 0  # posterior samples averaged (Bayesian mode)
    returned: str = "fit"  # "fit", "start" or "blend" (see choose_result)
    fit_weight: float = 1.0  # the fit's share of the returned image (the start has the rest)
    fixed_share: bool = False  # that share is the preset's (FitConfig.fit_share), not a choice
    held_out_errors: dict | None = None  # candidate -> its error on the held-out pixels, when compared
    held_out_leads: dict | None = None  # candidate -> standard errors its error lies under the start's (with a margin)
    choice_margin: float = 0.0  # the lead a candidate needed over the start to be taken
    region_shares: list[list[float]] | None = None  # each region's fit share, when chosen region by region
    region_size: int = 0  # the side of those regions, output pixels
    start_asked: bool = False  # 0 iterations were asked for: the start alone, no network fitted
    partner: str | None = None  # a second classical estimate blended in after the choice (Problem.partner)
    partner_share: float = 0.0  # its share of the returned image


def ema_decay(ema: float, warmup: int, iteration: int) -> float:
    """The averaging's decay at ``iteration``: ``ema``, or with a warm-up the smaller
    (1 + t) / (warmup + t), so the first outputs (a random network's) leave the average within
    tens of iterations instead of hundreds (0.99 keeps 10 % of iteration 1's weight at 230)."""
    return min(ema, (1 + iteration) / (warmup + iteration)) if warmup else ema


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach()[0].permute(1, 2, 0).float().cpu().numpy()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference between neighbouring pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` picks CUDA when there is a GPU, else the CPU."""
    from .errors import DeepPriorError

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeepPriorError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise DeepPriorError(f"unsupported device {device!r}; use auto, cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeepPriorError("device 'cuda' asked for, but no CUDA GPU is available")
    return dev


def init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation, drawn from ``generator`` so runs are reproducible."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in)
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    if hasattr(net, "reset_head"):
        net.reset_head()


def make_input(cfg: FitConfig, problem: Problem, size: tuple[int, int], generator: torch.Generator,
               estimate: np.ndarray | None = None) -> torch.Tensor:
    """The network input z at the padded ``size``.

    ``noise``: ``input_depth`` channels of uniform noise times ``input_scale``. ``meshgrid``: the
    two coordinate planes. ``image``: the task's fixed input (the flash photograph). ``estimate``:
    the task's quick classical answer (:mod:`deepprior.estimates`) in the first channels and noise
    in the remaining ``input_depth - C``, so the fit starts from the image's content (``estimate``,
    when the caller has computed it already).
    """
    from .errors import DeepPriorError

    hp, wp = size
    if cfg.input == "noise":
        return torch.rand(1, cfg.input_depth, hp, wp, generator=generator).mul_(cfg.input_scale)
    if cfg.input == "meshgrid":
        ys = torch.linspace(0, 1, hp)
        xs = torch.linspace(0, 1, wp)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx, gy])[None]
    if cfg.input == "image":
        if problem.fixed_input is None:
            raise DeepPriorError("this preset wants an image input but the task supplies none")
        return pad_to(problem.fixed_input, size)
    if cfg.input == "estimate":
        if problem.estimate is None:
            raise DeepPriorError("input 'estimate' needs a task with a classical estimate "
                                 "(denoise, inpaint, reconstruct or upscale)")
        est = pad_to(problem.estimate() if estimate is None else estimate, size)
        c = est.shape[1]
        # Filled in place: at 16 megapixels each 32-channel copy is 2 GB.
        z = torch.empty(1, max(cfg.input_depth, c), hp, wp)
        z[:, :c] = est
        fill_noise(z[:, c:], generator, cfg.input_scale)
        return z
    raise ValueError(f"unknown input kind {cfg.input!r}")


def fill_noise(out: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
    """Fill ``out`` (1, D, H, W) with uniform noise times ``scale``, a channel at a time in bands
    of rows: the same values from the same generator whatever dtype ``out`` holds them in (the
    fit on crops keeps them in float16), and never a float32 copy of them all."""
    for c in range(out.shape[1]):
        for r in range(0, out.shape[2], 256):
            band = out[0, c, r : r + 256]
            band.copy_(torch.empty(band.shape).uniform_(0, 1, generator=generator).mul_(scale))
    return out


def pad_to(pixels: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """An (H, W, C) image as a (1, C, hp, wp) tensor, centred and reflect-padded to ``size``."""
    hp, wp = size
    img = torch.from_numpy(np.ascontiguousarray(np.moveaxis(pixels, -1, 0)))[None].float()
    h, w = img.shape[2:]
    top, left = (hp - h) // 2, (wp - w) // 2
    pad = (left, wp - w - left, top, hp - h - top)
    mode = "reflect" if max(pad) < min(h, w) else "replicate"
    return nn.functional.pad(img, pad, mode=mode)


class InputPerturbation:
    """The network's input for one iteration: z plus fresh Gaussian noise of std ``reg_noise_std``.

    The noise is drawn into one reused buffer, in place, so an iteration allocates nothing; when z
    itself is optimised it needs its gradient, and the sum is built out of place instead.
    """

    def __init__(self, z: torch.Tensor, cfg: FitConfig, generator: torch.Generator):
        self.z = z
        self.std = cfg.reg_noise_std
        self.out_of_place = cfg.optimize_input
        self.generator = generator
        self.noise = torch.empty_like(z) if self.std > 0 else None

    def __call__(self) -> torch.Tensor:
        if self.noise is None:
            return self.z
        if self.out_of_place:
            return self.z + self.noise.normal_(generator=self.generator) * self.std
        return self.noise.normal_(generator=self.generator).mul_(self.std).add_(self.z)


class Backtracking:
    """Go back to the last good weights, at half the learning rate, when the fit collapses.

    Every ``backtrack_every`` iterations (and at any non-finite loss) the data term's PSNR is
    compared with the last good one; a drop of more than ``backtrack_drop_db`` restores the
    snapshot, otherwise the current weights become the snapshot.
    """

    def __init__(self, cfg: FitConfig, net: nn.Module, z: torch.Tensor, opt: torch.optim.Optimizer):
        self.every = cfg.backtrack_every
        self.drop_db = cfg.backtrack_drop_db
        self.net, self.opt = net, opt
        self.z = z if cfg.optimize_input else None
        self.snapshot = None
        self.last_good_psnr = None
        self.count = 0

    def check(self, iteration: int, loss_value: float) -> bool:
        """True when the weights were just rolled back (the iteration's output is to be dropped)."""
        finite = math.isfinite(loss_value)
        if finite and iteration % self.every:
            return False
        data_psnr = -10 * math.log10(loss_value) if loss_value > 0 else math.inf
        collapsed = not finite or (self.last_good_psnr is not None and data_psnr < self.last_good_psnr - self.drop_db)
        if collapsed and self.snapshot is not None:
            weights, z = self.snapshot
            self.net.load_state_dict(weights)
            if self.z is not None:
                self.z.data.copy_(z)
            for group in self.opt.param_groups:
                group["lr"] *= 0.5
            self.count += 1
            return True
        if not collapsed:
            self.snapshot = ({k: v.detach().clone() for k, v in self.net.state_dict().items()},
                             self.z.detach().clone() if self.z is not None else None)
            self.last_good_psnr = data_psnr
        return False


class RunningResult:
    """What the fit would return now: the exponential average of its outputs (``cfg.ema``), or
    without averaging the output of lowest loss so far. Both live in buffers updated in place."""

    def __init__(self, cfg: FitConfig):
        self.decay, self.warmup = cfg.ema, cfg.ema_warmup
        self.average: torch.Tensor | None = None
        self.best_loss = math.inf
        self.best_output: torch.Tensor | None = None

    def update(self, iteration: int, out: torch.Tensor, loss_value: float) -> None:
        if self.decay:
            if self.average is None:
                self.average = out.clone()
            else:
                decay = ema_decay(self.decay, self.warmup, iteration)
                self.average.mul_(decay).add_(out, alpha=1 - decay)
        if loss_value < self.best_loss:
            self.best_loss = loss_value
            if self.average is None:
                self.best_output = out.clone() if self.best_output is None else self.best_output.copy_(out)

    @property
    def current(self) -> torch.Tensor | None:
        return self.average if self.average is not None else self.best_output


class PosteriorSampler:
    """Bayesian mode (Cheng et al., CVPR 2019): Langevin noise on the convolution weights after each
    Adam step, and the running mean and spread of the outputs sampled after the burn-in."""

    def __init__(self, cfg: FitConfig, net: nn.Module, generator: torch.Generator):
        self.params = [p for p in net.parameters() if p.dim() == 4]
        self.noise = [torch.empty_like(p) for p in self.params]  # reused buffers: no allocation per step
        self.scale = cfg.sgld_noise
        self.generator = generator
        self.burn_in = int(cfg.burn_in * cfg.iterations)
        # At least ~10 samples after the burn-in, even for short runs.
        self.every = max(1, min(cfg.sample_every, (cfg.iterations - self.burn_in) // 10))
        self.samples = 0
        self._sum = self._sq = self.mean = None

    def perturb_weights(self, lr: float) -> None:
        with torch.no_grad():
            for p, buf in zip(self.params, self.noise):
                p.add_(buf.normal_(generator=self.generator), alpha=self.scale * lr)

    def add(self, iteration: int, out: torch.Tensor) -> None:
        """Take ``out`` as a posterior sample when ``iteration`` is a sampling one."""
        if iteration <= self.burn_in or (iteration - self.burn_in) % self.every:
            return
        if self._sum is None:
            self._sum, self._sq, self.mean = (torch.zeros_like(out) for _ in range(3))
        self._sum.add_(out)
        self._sq.addcmul_(out, out)
        self.samples += 1
        torch.div(self._sum, self.samples, out=self.mean)  # only when a sample arrives

    def std(self) -> torch.Tensor:
        mean = self._sum / self.samples
        return (self._sq / self.samples - mean * mean).clamp_min_(0).sqrt_()


class EarlyStopping:
    """Runs a stopping rule (:mod:`deepprior.stopping`) beside the fit and holds its answer.

    At each new minimum of the rule's curve the candidate result is copied aside. Only once the
    rule has fired is the held one the result (and final: ``stop="observe"`` runs on but keeps
    it); until then a minimum is unconfirmed and the fit's running result is the better guess
    (as good or better at the cap on every recorded image; BENCHMARKS.md, stopping).
    """

    def __init__(self, rule):
        self.rule = rule
        self.held: torch.Tensor | None = None
        self.held_at: int | None = None
        self.fired_at: int | None = None

    def update(self, iteration: int, candidate: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Feed the rule this iteration's result (or raw output); returns the candidate result."""
        watched = candidate if self.rule.watches == "result" else out
        if self.fired_at is not None:
            self.rule.update(iteration, watched)  # stop="observe": the curve goes on being recorded
            return self.held
        if self.rule.update(iteration, watched):
            self.held = candidate.clone() if self.held is None else self.held.copy_(candidate)
            self.held_at = iteration
        if self.rule.should_stop:
            self.fired_at = iteration
            return self.held
        return candidate


def hold_out_pixels(problem: Problem, cfg: FitConfig, seed: int) -> bool:
    """Leave ``cfg.holdout`` of the observed pixels out of the data term when the held-out
    stopping rule or the choice of result (``cfg.select_start``) will measure the fit on them.

    Done before the input is made: the estimate it may hold must not see them either. False when
    nothing is held out (not asked for, or an image too small to spare pixels).
    """
    rule = cfg.stop_rule == "holdout" and cfg.stop in ("auto", "observe") and not cfg.bayes
    if not (rule or cfg.select_start):
        return False
    observed = problem.observed
    if problem.holdout_region is not None:
        observed = observed & problem.holdout_region
    if observed.sum() < MIN_HOLDOUT_OBSERVED:
        return False
    problem.hold_out(holdout_mask(observed, cfg.holdout, torch.Generator().manual_seed(seed + 2)))
    return True


def stopping_rule(problem: Problem, cfg: FitConfig, seed: int, held_out: bool):
    """The stopping rule ``cfg`` asks for, or None; the held-out rule needs ``held_out`` pixels
    and falls back to the variance rule without them."""
    if cfg.stop not in ("auto", "observe") or cfg.bayes:
        return None
    if cfg.stop_rule == "holdout" and held_out:
        return HeldOutLoss(problem.held_out_loss, cfg.stop_patience, start=cfg.stop_start)
    return WindowedVariance(cfg.stop_window, cfg.stop_patience, generator=torch.Generator().manual_seed(seed + 2),
                            start=cfg.stop_start)


#: The fit's shares :func:`choose_result` weighs unless told otherwise: the start, three blends, the fit.
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def choose_result(problem: Problem, fitted: torch.Tensor, start: torch.Tensor,
                  weights: tuple[float, ...] | None = None,
                  margin: float = 0.0) -> tuple[torch.Tensor, float, dict, dict]:
    """The candidate with the least error on the held-out pixels: the fit, its classical start,
    or a blend w * fit + (1 - w) * start, for the fit's shares ``weights`` (0: the start, 1: the
    fit; default: the task's ``problem.blend_weights``, else :data:`BLEND_WEIGHTS`). The held-out
    pixels' noise is independent of every candidate (neither the fit nor the start saw them), so
    this error ranks the candidates without the ground truth; it rates the fit somewhat better than
    its error over the whole image, where it has fitted some of the noise (see tasks.DENOISE_BLENDS).

    With ``margin`` > 0 a candidate other than the start is taken only if its mean error lies more
    than ``margin`` standard errors under the start's, pixel by pixel (a paired comparison): a
    lead a few held-out pixels could give by chance does not replace the start.
    Returns the chosen image, its fit weight, every candidate's error and, with a margin, every
    candidate's lead over the start in standard errors (:func:`margin_ratio`)."""
    errors, leads = {}, {}
    best = None
    with torch.no_grad():
        start_errors = problem.held_out_errors(start).double() if margin > 0 else None
        for w in weights or problem.blend_weights or BLEND_WEIGHTS:
            candidate = blend(fitted, start, w)
            errors[w] = float(problem.held_out_loss(candidate))
            if start_errors is not None and w != 0.0:
                leads[w] = margin_ratio(problem.held_out_errors(candidate).double() - start_errors)
                if leads[w] < margin:
                    continue
            if best is None or errors[w] < errors[best[1]]:
                best = (candidate, w)
    if best is None:  # the start was not among the weights and no candidate beat it clearly
        best = (start, 0.0)
        errors.setdefault(0.0, float(problem.held_out_loss(start)))
    return best[0], best[1], errors, leads


def why_returned(o: FitOutcome) -> str:
    """Why the choice against the start returned what it did, in words for a report."""
    if o.start_asked:
        return "0 iterations were asked for"
    if o.fixed_share:
        return f"the preset's fixed share of the fit for this start, {o.fit_weight:g}: nothing is held out to choose on"
    if o.region_shares is not None:
        shares = sorted({s for row in o.region_shares for s in row})
        return (f"chosen region by region ({o.region_size}x{o.region_size}) on the held-out pixels: a region takes "
                f"another share than the whole image's only where its error there lies "
                f"{max(o.choice_margin, REGION_MARGIN):g} standard errors under; fit shares " + ", ".join(f"{s:g}" for s in shares))
    if o.held_out_leads is None:
        return "least error on the held-out pixels"
    if o.returned != "start":
        return (f"least error on the held-out pixels, {o.held_out_leads[o.fit_weight]:.1f} standard errors "
                f"under the start's (at least {o.choice_margin:g} needed)")
    if o.held_out_errors[0.0] == min(o.held_out_errors.values()):
        return "least error on the held-out pixels"
    return (f"no other candidate's error on the held-out pixels lay {o.choice_margin:g} standard errors "
            "under the start's")


def returned_phrase(o: FitOutcome) -> str:
    """'fit', 'classical start' or 'blend of 75% fit and 25% classical start', for a report;
    with a second estimate blended in after (:attr:`FitOutcome.partner`), its share named too."""
    if o.returned == "blend":
        phrase = (f"blend of {o.fit_weight:.0%} fit and {1 - o.fit_weight:.0%} classical start"
                  + (" on average" if o.region_shares is not None else ""))
    else:
        phrase = {"start": "classical start"}.get(o.returned, o.returned)
    if o.partner_share:
        phrase += f" with {o.partner_share:.0%} of the {o.partner} blended in"
    return phrase


def margin_ratio(differences: torch.Tensor) -> float:
    """How many standard errors the mean of paired ``differences`` (a candidate's error minus the
    start's, per held-out pixel) lies under zero: positive when the candidate does better."""
    n = differences.numel()
    if n < 2:
        return 0.0
    spread = float(differences.std()) / math.sqrt(n)
    mean = float(differences.mean())
    if spread == 0.0:
        return math.inf if mean < 0 else 0.0
    return -mean / spread


def select_against_start(problem: Problem, fitted: torch.Tensor, start: torch.Tensor,
                         weights: tuple[float, ...] | None = None, margin: float = 0.0,
                         remake: Callable[[Callable[[], np.ndarray]], np.ndarray] | None = None
                         ) -> tuple[torch.Tensor, float, dict, dict, str]:
    """:func:`choose_result` among ``weights`` (with ``margin``), then the start (or the start's
    share of a blend) made again from every pixel, held-out ones included: those only ranked the
    candidates (``remake``, given ``problem.full_estimate``, makes it: e.g. with :func:`make_start`).
    Returns the result, its fit weight, every candidate's error, their leads over the start (with
    a margin) and what was returned ("fit", "start" or "blend")."""
    result, weight, errors, leads = choose_result(problem, fitted, start, weights, margin)
    returned = returned_kind(weight)
    if weight < 1.0 and problem.full_estimate is not None:
        result = blend(fitted, full_start(problem, start, remake), weight)
    return result, weight, errors, leads, returned


def fixed_share(fitted: torch.Tensor, start: torch.Tensor, share: float) -> tuple[torch.Tensor, float, str]:
    """The preset's blend (:func:`preset_share`) where nothing chooses one: the result, its fit
    weight and what was returned ("fit", "start" or "blend")."""
    return blend(fitted, start, share), share, returned_kind(share)


def with_partner(problem: Problem, result: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``result`` with the problem's second classical estimate (:attr:`Problem.partner`) blended in
    at its share, after the choice against the start; the share (0 where there is none)."""
    if problem.partner is None:
        return result, 0.0
    image, share = problem.partner()
    if image is None or not share:
        return result, 0.0
    return blend(_as_tensor(image, result.device), result, share), share


def preset_share(cfg: FitConfig, problem: Problem) -> float:
    """The fit's share of the result where nothing chooses one: the preset's ``fit_share``, or
    where that is None the task's for its start (``problem.fit_share``; the fit where it has none)."""
    if cfg.fit_share is not None:
        return cfg.fit_share
    return problem.fit_share if problem.fit_share is not None else 1.0


def returned_kind(share: float) -> str:
    """What a result with the fit's ``share`` is: "fit" (1), "start" (0) or "blend"."""
    return "fit" if share == 1.0 else ("start" if share == 0.0 else "blend")


def blend(fitted: torch.Tensor, start: torch.Tensor, share: float) -> torch.Tensor:
    """``share`` * fit + (1 - ``share``) * start; the fit or the start itself at 1 and 0."""
    return fitted if share == 1.0 else (start if share == 0.0 else share * fitted + (1 - share) * start)


def full_start(problem: Problem, start: torch.Tensor,
               remake: Callable[[Callable[[], np.ndarray]], np.ndarray] | None = None) -> torch.Tensor:
    """The start made again from every pixel, held-out ones included (``remake``, given
    ``problem.full_estimate``, makes it), where a chosen start or blend is returned; ``start``
    when the problem has no such estimate."""
    if problem.full_estimate is None:
        return start
    made = problem.full_estimate() if remake is None else remake(problem.full_estimate)
    return _as_tensor(made, start.device)


#: Side, in output pixels, of the regions of a large result that each choose the fit's share
#: (:func:`select_by_region`): the final pass's tile.
REGION = 512
#: Standard errors by which a region's candidate must beat the whole image's choice on the region's
#: held-out pixels. On the 12 MP Kodak photo of BENCHMARKS.md the least error alone, region by region,
#: gained 0.3 dB on the windows but lost 0.06 on the F16 photo, where the fit was best everywhere;
#: with this margin it gained 0.28 and lost nothing.
REGION_MARGIN = 2.0
#: Held-out pixels a region needs to choose on its own; with fewer it keeps the whole image's choice.
MIN_REGION_HELD = 256


def region_shares(weights: tuple[float, ...]) -> tuple[float, ...]:
    """The fit's shares a region chooses among: ``weights`` and the midpoints between them, as a
    region's choice is made on more pixels than a blend's step needs (0, 0.5, 1 -> 0, 0.25, ..., 1)."""
    w = sorted(set(weights))
    return tuple(sorted(set(w) | {(a + b) / 2 for a, b in zip(w, w[1:])}))


def region_choices(problem: Problem, fitted: torch.Tensor, start: torch.Tensor, shares: tuple[float, ...],
                   chosen: float, region: int = REGION, margin: float = REGION_MARGIN) -> np.ndarray:
    """Each ``region`` x ``region`` region's fit share: the one of ``shares`` with the least error on
    the region's held-out pixels where that error lies ``margin`` standard errors (paired, pixel by
    pixel) under the error of ``chosen``, the whole image's choice; else ``chosen``. A (rows, cols) array."""
    h, w = problem.out_size
    rows, cols = -(-h // region), -(-w // region)
    step = max(1, region * problem.held.shape[-2] // h)  # a region in the held map's pixels (smaller for upscaling)
    where = torch.nonzero(problem.held[0, 0] > 0).cpu()  # row-major: the order of held_out_errors
    index = (where[:, 0] // step) * cols + where[:, 1] // step
    count = torch.bincount(index, minlength=rows * cols).double()

    n = rows * cols
    with torch.no_grad():
        reference = problem.held_out_errors(blend(fitted, start, chosen)).double().cpu()
        best = torch.full((n,), float(chosen), dtype=torch.float64)
        reference_total = torch.bincount(index, reference, minlength=n)
        best_total = reference_total
        for s in shares:
            if s == chosen:
                continue
            d = problem.held_out_errors(blend(fitted, start, s)).double().cpu() - reference
            total, squares = torch.bincount(index, d, minlength=n), torch.bincount(index, d * d, minlength=n)
            mean = total / count.clamp(min=1)
            spread = ((squares / count.clamp(min=1) - mean**2).clamp(min=0) / (count - 1).clamp(min=1)).sqrt()
            lead = -mean / spread.clamp(min=1e-30)
            candidate_total = reference_total + total
            better = (count >= MIN_REGION_HELD) & (lead >= margin) & (candidate_total < best_total)
            best_total = torch.where(better, candidate_total, best_total)
            best = torch.where(better, torch.full_like(best, s), best)
    return best.reshape(rows, cols).numpy()


def share_map(grid: np.ndarray, size: tuple[int, int], region: int = REGION) -> torch.Tensor:
    """The (1, 1, H, W) fit share of every pixel from each region's (``grid``): bilinear between the
    regions' centres, so neighbouring regions' choices meet without a seam."""
    rows, cols = grid.shape

    def axis(length: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        at = ((torch.arange(length, dtype=torch.float64) + 0.5) / region - 0.5).clamp(0, count - 1)
        lo = at.floor().long()
        return lo, (lo + 1).clamp(max=count - 1), at - lo
    y0, y1, fy = axis(size[0], rows)
    x0, x1, fx = axis(size[1], cols)
    g = torch.from_numpy(np.asarray(grid, dtype=np.float64))
    fy, fx = fy[:, None], fx[None, :]
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x1] * fx
    bottom = g[y1][:, x0] * (1 - fx) + g[y1][:, x1] * fx
    return (top * (1 - fy) + bottom * fy).float()[None, None]


def select_by_region(problem: Problem, fitted: torch.Tensor, start: torch.Tensor,
                     weights: tuple[float, ...] | None = None, margin: float = 0.0,
                     remake: Callable[[Callable[[], np.ndarray]], np.ndarray] | None = None, region: int = REGION
                     ) -> tuple[torch.Tensor, float, dict, dict, str, np.ndarray]:
    """:func:`select_against_start` for a large image, region by region: the whole image's choice
    (:func:`choose_result`), then each region's own (:func:`region_choices`, among the shares and
    their midpoints, with at least :data:`REGION_MARGIN`), blended without seams (:func:`share_map`).
    On a large photo the fit can be better than its start in textured parts and worse in smooth
    ones. Returns :func:`select_against_start`'s five values (the fit weight: the mean share) and
    the regions' shares."""
    weights = weights or problem.blend_weights or BLEND_WEIGHTS
    _, weight, errors, leads = choose_result(problem, fitted, start, weights, margin)
    grid = region_choices(problem, fitted, start, region_shares(weights), weight, region, max(margin, REGION_MARGIN))
    kinds = set(np.unique(grid).tolist())
    returned = "fit" if kinds == {1.0} else ("start" if kinds == {0.0} else "blend")
    if returned == "fit":
        return fitted, 1.0, errors, leads, returned, grid
    full = full_start(problem, start, remake)
    if returned == "start":
        return full, 0.0, errors, leads, returned, grid
    share = share_map(grid, fitted.shape[-2:], region).to(fitted.device)
    result = (full - fitted).mul_(1 - share).add_(fitted)  # share * fit + (1 - share) * start, one copy (144 MB at 12 MP)
    return result, float(share.mean()), errors, leads, returned, grid


def _as_tensor(pixels: np.ndarray, device) -> torch.Tensor:
    """(H, W, C) pixels as a (1, C, H, W) float tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(pixels, -1, 0)))[None].float().to(device)


def build_optimizer(cfg: FitConfig, net: nn.Module, z: torch.Tensor) -> torch.optim.Adam:
    """Adam over the trainable weights (all but the convolutions in the Deep Random Projector),
    and over z when the input is optimised."""
    if cfg.freeze_convolutions:
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.requires_grad_(False)
    groups = [{"params": [p for p in net.parameters() if p.requires_grad]}]
    if cfg.optimize_input:
        z.requires_grad_(True)
        groups.append({"params": [z], "lr": cfg.input_lr or cfg.lr})
    return torch.optim.Adam(groups, lr=cfg.lr)


#: The error of 0 iterations asked of a preset whose fit starts from noise, not from a classical start.
NO_START = "0 iterations return the classical start alone, and this preset has none (its fit starts from noise)"


def start_only(problem: Problem, cfg: FitConfig,
               callback: Callable[[Progress], bool | None] | None = None) -> FitOutcome:
    """The classical start itself, made from every pixel, with no network fitted: what 0
    iterations return (the start alone, in its own time)."""
    make = problem.full_estimate or problem.estimate
    if not cfg.uses_start or make is None:
        raise DeepPriorError(NO_START)
    image, seconds = make_start(make, callback, "start", 0)
    return FitOutcome(output=np.clip(image, 0.0, 1.0).astype(np.float32), iterations=0, stopped_at=0,
                      stop_reason="completed", elapsed_s=seconds, history=[], backtracks=0, stop_curve=[],
                      parameters=0, returned="start", fit_weight=0.0, fixed_share=True, start_asked=True)


def fit(
    problem: Problem,
    cfg: FitConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    callback: Callable[[Progress], bool | None] | None = None,
    callback_every: int = 10,
    reference: np.ndarray | None = None,
) -> FitOutcome:
    """Fit the network of ``cfg`` to ``problem`` and return the restored image.

    ``reference`` (the ground truth, (H, W, C) in [0, 1]) is only measured against, every
    ``cfg.history_every`` iterations; it never steers the fit.
    ``problem`` is changed in place: moved to ``device`` and, with ``stop_rule="holdout"``, given its
    held-out pixels (:meth:`~deepprior.tasks.Problem.hold_out`); build a fresh one per fit.
    """
    device = resolve_device(device)
    if cfg.iterations == 0:
        return start_only(problem, cfg, callback)
    h, w = problem.out_size
    hp, wp = padded_size(h, w, cfg.net.scales)
    top, left = (hp - h) // 2, (wp - w) // 2

    gen = torch.Generator().manual_seed(seed)
    held_out = hold_out_pixels(problem, cfg, seed)
    rule = stopping_rule(problem, cfg, seed, held_out)
    start_image, start_s = None, math.nan
    if cfg.uses_start and problem.estimate is not None:
        start_image, start_s = make_start(problem.estimate, callback, "start", cfg.iterations)
    z_size = draw_size(hp, wp, cfg.net.scales, cfg.draw_pixels)
    z = make_input(cfg, problem, z_size, gen, estimate=start_image).to(device)
    net = build_network(cfg.net, z.shape[1], problem.channels)
    init_weights(net, gen)
    if z_size != (hp, wp):
        net = Upsampled(net, (hp, wp))
    net.to(device).train()
    problem.to(device)
    opt = build_optimizer(cfg, net, z)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)  # input perturbation and Langevin noise

    perturbed = InputPerturbation(z, cfg, noise_gen)
    backtracking = Backtracking(cfg, net, z, opt) if cfg.backtrack else None
    running = RunningResult(cfg)
    sampler = PosteriorSampler(cfg, net, noise_gen) if cfg.bayes else None
    stopping = EarlyStopping(rule) if rule is not None else None
    history: list[dict] = []
    reason = "completed"
    it = 0
    candidate = None
    start = time.perf_counter()

    try:
        for it in range(1, cfg.iterations + 1):
            # One step of Adam on the data term (and total variation, if asked for).
            out = net(perturbed())[:, :, top : top + h, left : left + w]
            loss = problem.loss(out)
            if cfg.tv_weight:
                loss = loss + cfg.tv_weight * total_variation(out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sampler is not None:
                sampler.perturb_weights(opt.param_groups[0]["lr"])
            loss_value = loss.item()
            out = out.detach()

            if backtracking is not None and backtracking.check(it, loss_value):
                continue
            if not math.isfinite(loss_value):
                continue

            # Average, sample, check the stopping rule: each refines what the fit would return now.
            running.update(it, out, loss_value)
            candidate = running.current
            if sampler is not None:
                sampler.add(it, out)
                if sampler.samples:
                    candidate = sampler.mean
            if stopping is not None:
                candidate = stopping.update(it, candidate, out)

            if it % cfg.history_every == 0 or it == 1:
                history.append(_history_entry(it, loss_value, reference, running, sampler, out))
            if stopping is not None and stopping.fired_at is not None and cfg.stop == "auto":
                reason = "auto"
                break
            if callback is not None and (it % callback_every == 0 or it == cfg.iterations):
                elapsed = time.perf_counter() - start
                eta = elapsed / it * (cfg.iterations - it)
                last_psnr = history[-1].get("psnr") if history else None
                if callback(Progress(it, cfg.iterations, loss_value, last_psnr, elapsed, eta, candidate,
                                     auto_stop_at=stopping.fired_at if stopping else None)):
                    reason = "callback"
                    break
    except KeyboardInterrupt:
        reason = "interrupted"

    if candidate is None:  # interrupted before the first iteration finished: there is no result
        raise KeyboardInterrupt
    fired_at = stopping.fired_at if stopping is not None else None
    uncertainty = None
    if sampler is not None and sampler.samples:
        result, stopped_at = sampler.mean, it
        uncertainty = to_numpy(sampler.std())
    elif fired_at is not None:
        result, stopped_at = stopping.held, stopping.held_at
    else:
        result, stopped_at = running.current, it
    elapsed = time.perf_counter() - start
    returned, weight, errors, leads, fixed = "fit", 1.0, None, None, False
    share = preset_share(cfg, problem)
    if cfg.bound_fit and problem.bounds is not None and uncertainty is None:
        low, high = (_as_tensor(b, device) for b in problem.bounds())
        result = torch.minimum(torch.maximum(result, low), high)
    if cfg.select_start and held_out and start_image is not None and uncertainty is None:
        result, weight, errors, leads, returned = select_against_start(
            problem, result, _as_tensor(start_image, device), cfg.blend_weights, cfg.choice_margin,
            remake=lambda make: make_start(make, callback, "restart", cfg.iterations, it, elapsed, start_s)[0])
    elif share != 1.0 and start_image is not None and uncertainty is None:
        result, weight, returned = fixed_share(result, _as_tensor(start_image, device), share)
        fixed = True
    partner_share = 0.0
    if uncertainty is None:
        result, partner_share = with_partner(problem, result)
    return FitOutcome(
        output=np.clip(to_numpy(result), 0.0, 1.0),
        iterations=it,
        stopped_at=stopped_at,
        stop_reason=reason,
        elapsed_s=elapsed,
        history=history,
        backtracks=backtracking.count if backtracking is not None else 0,
        stop_curve=rule.curve if rule is not None else [],
        parameters=sum(p.numel() for p in net.parameters()),
        auto_stop_at=fired_at,
        uncertainty=uncertainty,
        samples=sampler.samples if sampler is not None else 0,
        returned=returned,
        fit_weight=weight,
        fixed_share=fixed,
        held_out_errors=errors,
        held_out_leads=leads or None,
        choice_margin=cfg.choice_margin,
        partner=problem.partner_name if partner_share else None,
        partner_share=partner_share,
    )


def _history_entry(it: int, loss_value: float, reference, running: RunningResult, sampler, out) -> dict:
    """The loss, and with a reference the PSNR of the averaged output (the posterior mean once
    there are samples; the raw output when nothing is averaged)."""
    entry = {"iter": it, "loss": loss_value}
    if reference is not None:
        if sampler is not None and sampler.samples:
            current = sampler.mean
        else:
            current = running.average if running.average is not None else out
        entry["psnr"] = _psnr(to_numpy(current), reference)
    return entry
