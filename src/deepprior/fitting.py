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

from .metrics import psnr as _psnr
from .networks import build_network, padded_size
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
    _candidate: torch.Tensor = field(repr=False)
    auto_stop_at: int | None = None  # the iteration at which the stopping rule fired, once it has
    tile: int = 1  # when a large image is restored in tiles: which one is being fitted (1-based)
    tiles: int = 1

    def preview(self) -> np.ndarray:
        """The current result (H, W, C) in [0, 1]: what would be returned if the fit ended now.

        A copy: the fit goes on updating its own buffer (the running average) in place."""
        return to_numpy(self._candidate).copy()


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


def make_input(cfg: FitConfig, problem: Problem, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """The network input z at the padded ``size``.

    ``noise``: ``input_depth`` channels of uniform noise times ``input_scale``. ``meshgrid``: the
    two coordinate planes. ``image``: the task's fixed input (the flash photograph). ``estimate``:
    the task's quick classical answer (:mod:`deepprior.estimates`) in the first channels and noise
    in the remaining ``input_depth - C``, so the fit starts from the image's content.
    """
    from .errors import DeepPriorError

    hp, wp = size
    if cfg.input == "noise":
        return torch.rand(1, cfg.input_depth, hp, wp, generator=generator) * cfg.input_scale
    if cfg.input == "meshgrid":
        ys = torch.linspace(0, 1, hp)
        xs = torch.linspace(0, 1, wp)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx, gy])[None]
    if cfg.input == "image":
        if problem.fixed_input is None:
            raise DeepPriorError("this preset wants an image input but the task supplies none")
        return _pad_to(problem.fixed_input, size)
    if cfg.input == "estimate":
        if problem.estimate is None:
            raise DeepPriorError("input 'estimate' needs a task with a classical estimate "
                                 "(denoise, inpaint, reconstruct or upscale)")
        est = _pad_to(problem.estimate(), size)
        rest = max(cfg.input_depth - est.shape[1], 0)
        return torch.cat([est, torch.rand(1, rest, hp, wp, generator=generator) * cfg.input_scale], dim=1)
    raise ValueError(f"unknown input kind {cfg.input!r}")


def _pad_to(pixels: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """An (H, W, C) image as a (1, C, hp, wp) tensor, centred and reflect-padded to ``size``."""
    hp, wp = size
    img = torch.from_numpy(np.ascontiguousarray(np.moveaxis(pixels, -1, 0)))[None].float()
    h, w = img.shape[2:]
    top, left = (hp - h) // 2, (wp - w) // 2
    pad = (left, wp - w - left, top, hp - h - top)
    mode = "reflect" if max(pad) < min(h, w) else "replicate"
    return nn.functional.pad(img, pad, mode=mode)


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
    h, w = problem.out_size
    hp, wp = padded_size(h, w, cfg.net.scales)
    top, left = (hp - h) // 2, (wp - w) // 2

    gen = torch.Generator().manual_seed(seed)
    stopper = None
    if cfg.stop in ("auto", "observe") and not cfg.bayes:
        observed = problem.observed if cfg.stop_rule == "holdout" else None
        if observed is not None and observed.sum() >= MIN_HOLDOUT_OBSERVED:
            # Before the input is made: the estimate it may hold must not see the held-out pixels.
            held = holdout_mask(observed, cfg.holdout, torch.Generator().manual_seed(seed + 2))
            problem.hold_out(held)
            stopper = HeldOutLoss(problem.held_out_loss, cfg.stop_patience, start=cfg.stop_start)
        else:  # the variance rule, also for images too small to spare pixels for a hold-out
            stopper = WindowedVariance(cfg.stop_window, cfg.stop_patience,
                                       generator=torch.Generator().manual_seed(seed + 2), start=cfg.stop_start)
    z = make_input(cfg, problem, (hp, wp), gen).to(device)
    net = build_network(cfg.net, z.shape[1], problem.channels)
    init_weights(net, gen)
    net.to(device).train()
    problem.to(device)
    if cfg.freeze_convolutions:
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.requires_grad_(False)
    groups = [{"params": [p for p in net.parameters() if p.requires_grad]}]
    if cfg.optimize_input:
        z.requires_grad_(True)
        groups.append({"params": [z], "lr": cfg.input_lr or cfg.lr})
    opt = torch.optim.Adam(groups, lr=cfg.lr)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    noise = torch.empty_like(z) if cfg.reg_noise_std > 0 else None
    # Bayesian mode: Langevin noise on the convolution weights, and running moments of the samples.
    sgld_params = [p for p in net.parameters() if p.dim() == 4] if cfg.bayes else []
    sgld_noise = [torch.empty_like(p) for p in sgld_params]  # reused buffers: no allocation per step
    burn_in = int(cfg.burn_in * cfg.iterations)
    # At least ~10 samples after the burn-in, even for short runs.
    sample_every = max(1, min(cfg.sample_every, (cfg.iterations - burn_in) // 10))
    sample_sum = sample_sq = sample_mean = None
    samples = 0
    would_stop_at = None  # when the stopping rule fired (with stop="observe" the fit runs on)

    ema = None
    best_loss = math.inf
    best_out = None  # lowest-loss raw output (the result when there is no averaging)
    stop_out = None  # the candidate at the rule's minimum (returned once the rule has fired)
    stop_iter = None
    snapshot = None
    last_good_psnr = None
    backtracks = 0
    history: list[dict] = []
    reason = "completed"
    it = 0
    loss_value = math.nan
    candidate = None
    start = time.perf_counter()

    try:
        for it in range(1, cfg.iterations + 1):
            if noise is None:
                inp = z
            elif cfg.optimize_input:  # z needs its gradient: build the perturbed input out of place
                inp = z + noise.normal_(generator=noise_gen) * cfg.reg_noise_std
            else:  # in place, into one buffer: no allocation per iteration
                inp = noise.normal_(generator=noise_gen).mul_(cfg.reg_noise_std).add_(z)
            out = net(inp)[:, :, top : top + h, left : left + w]
            loss = problem.loss(out)
            if cfg.tv_weight:
                loss = loss + cfg.tv_weight * total_variation(out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sgld_params:
                with torch.no_grad():
                    std = cfg.sgld_noise * opt.param_groups[0]["lr"]
                    for p, buf in zip(sgld_params, sgld_noise):
                        p.add_(buf.normal_(generator=noise_gen), alpha=std)
            loss_value = loss.item()
            out = out.detach()

            if cfg.backtrack and (not math.isfinite(loss_value) or it % cfg.backtrack_every == 0):
                data_psnr = -10 * math.log10(loss_value) if loss_value > 0 else math.inf
                collapsed = not math.isfinite(loss_value) or (
                    last_good_psnr is not None and data_psnr < last_good_psnr - cfg.backtrack_drop_db
                )
                if collapsed and snapshot is not None:
                    net.load_state_dict(snapshot[0])
                    if cfg.optimize_input:
                        z.data.copy_(snapshot[1])
                    for group in opt.param_groups:
                        group["lr"] *= 0.5
                    backtracks += 1
                    continue
                if not collapsed:
                    snapshot = (
                        {k: v.detach().clone() for k, v in net.state_dict().items()},
                        z.detach().clone() if cfg.optimize_input else None,
                    )
                    last_good_psnr = data_psnr
            if not math.isfinite(loss_value):
                continue

            if cfg.ema:
                if ema is None:
                    ema = out.clone()
                else:
                    decay = ema_decay(cfg.ema, cfg.ema_warmup, it)
                    ema.mul_(decay).add_(out, alpha=1 - decay)
            if loss_value < best_loss:
                best_loss = loss_value
                if ema is None:
                    best_out = out.clone() if best_out is None else best_out.copy_(out)
            candidate = ema if ema is not None else (best_out if best_out is not None else out)
            if cfg.bayes and it > burn_in and (it - burn_in) % sample_every == 0:
                if sample_sum is None:
                    sample_sum, sample_sq, sample_mean = (torch.zeros_like(out) for _ in range(3))
                sample_sum.add_(out)
                sample_sq.addcmul_(out, out)
                samples += 1
                torch.div(sample_sum, samples, out=sample_mean)  # only when a sample arrives
            if samples:
                candidate = sample_mean

            watched = None if stopper is None else (candidate if stopper.watches == "result" else out)
            if stopper is not None and would_stop_at is None:
                # Hold the candidate at each new minimum of the rule's curve. Only once the rule has fired is
                # the held one the result (and final: stop="observe" runs on but keeps it); until
                # then a minimum is unconfirmed and the fit's running result (averaged, else the
                # lowest-loss output) is the better guess (measured: as good or better at the cap on
                # every image recorded; BENCHMARKS.md section 6).
                if stopper.update(it, watched):
                    stop_out = candidate.clone() if stop_out is None else stop_out.copy_(candidate)
                    stop_iter = it
                if stopper.should_stop:
                    would_stop_at = it
            elif stopper is not None:
                stopper.update(it, watched)  # stop="observe": the curve goes on being recorded
            if would_stop_at is not None:
                candidate = stop_out

            if it % cfg.history_every == 0 or it == 1:
                entry = {"iter": it, "loss": loss_value}
                if reference is not None:
                    current = candidate if samples else (ema if ema is not None else out)
                    entry["psnr"] = _psnr(to_numpy(current), reference)
                history.append(entry)

            if would_stop_at is not None and cfg.stop == "auto":
                reason = "auto"
                break

            if callback is not None and (it % callback_every == 0 or it == cfg.iterations):
                elapsed = time.perf_counter() - start
                eta = elapsed / it * (cfg.iterations - it)
                last_psnr = history[-1].get("psnr") if history else None
                if callback(Progress(it, cfg.iterations, loss_value, last_psnr, elapsed, eta, candidate,
                                     auto_stop_at=would_stop_at)):
                    reason = "callback"
                    break
    except KeyboardInterrupt:
        reason = "interrupted"

    elapsed = time.perf_counter() - start
    uncertainty = None
    if samples:
        mean = sample_sum / samples
        var = (sample_sq / samples - mean * mean).clamp_min_(0)
        uncertainty = to_numpy(var.sqrt_())
        result, stopped_at = mean, it
    elif would_stop_at is not None:
        result, stopped_at = stop_out, stop_iter
    elif ema is not None:
        result, stopped_at = ema, it
    elif best_out is not None:
        result, stopped_at = best_out, it
    elif candidate is not None:
        result, stopped_at = candidate, it
    else:
        # Interrupted before the first iteration finished: there is no result.
        raise KeyboardInterrupt
    return FitOutcome(
        output=np.clip(to_numpy(result), 0.0, 1.0),
        iterations=it,
        stopped_at=stopped_at,
        stop_reason=reason,
        elapsed_s=elapsed,
        history=history,
        backtracks=backtracks,
        stop_curve=stopper.curve if stopper is not None else [],
        parameters=sum(p.numel() for p in net.parameters()),
        auto_stop_at=would_stop_at,
        uncertainty=uncertainty,
        samples=samples,
    )
