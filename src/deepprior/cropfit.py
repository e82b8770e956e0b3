"""Large images: fit the network on random crops, then restore the whole image in one tiled pass.

When the network's input is an estimate of the image (``input="estimate"``: the fast presets of
denoising, super-resolution and text filling fit on crops), the fitted network is a local map from
the estimate, and a few channels of fixed noise, to the image. Such a map can be learned from
random crops, a batch of them per Adam step with the data term restricted to each
(:meth:`~deepprior.tasks.Problem.window_loss`), and then applied to the whole image tile by tile.
The fit then costs the same at 1 and at 12 megapixels; only the start and the final pass grow
with the area (about two seconds per megapixel for the final pass of the fast network on 2 cores).

Two things make the tiled pass agree with a forward pass over the whole image:

- BatchNorm runs in evaluation mode, on statistics gathered over many crops once the fit is
  done, so a pixel's result does not depend on the tile it was computed in;
- every tile is computed with ``context`` pixels of its neighbours on each side, at offsets
  that are multiples of the network's downsampling factor, and only its core is kept. A
  context as wide as the receptive field makes the pass exact (:func:`receptive_radius`); the
  default is narrower, as the far reaches of the field weigh little (BENCHMARKS.md measures it).

The network refines the estimate rather than drawing the image (``NetConfig.residual``: its
output is the estimate plus learned corrections, exactly the estimate before the first step).
A network drawing the image from its input learns too slowly from crops: on the 12-megapixel
photo of BENCHMARKS.md it was still 4.6 dB under its own start after 600 steps, where the
refining one was 0.7 dB above it. The fit's outputs are not averaged (there is no whole output
to average); with ``ema`` its weights are.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from .fitting import (FitOutcome, Progress, build_optimizer, ema_decay, fill_noise, fixed_share, hold_out_pixels,
                      init_weights, make_input, make_start, pad_to, preset_share, resolve_device, select_by_region,
                      to_numpy, total_variation, with_partner)
from .networks import build_network, padded_size
from .presets import FitConfig
from .tasks import Problem

TILE = 512  # core of a tile of the final pass, output pixels (a multiple of the downsampling factor)
CONTEXT = 96  # pixels of neighbouring tiles each tile sees on every side
# Crop batches whose statistics BatchNorm keeps for the final pass. The fitted network is sensitive
# to them: on the 12 MP Kodak photo of BENCHMARKS.md, 16 batches (128 crops) gave 34.60 to 35.00 dB on
# the windows by the draw, 256 batches 34.93-34.94 over three draws, in 16 s on 2 cores.
BN_BATCHES = 256


def receptive_radius(net: nn.Module) -> int:
    """How far, in input pixels, an output pixel of ``net`` can see: the context that makes
    the tiled pass exact. Each convolution adds its half-width times the stride below it; each
    upsampling one pixel of its input (bilinear interpolation reads a neighbour)."""
    radius, stride = 0, 1
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            radius += (m.kernel_size[0] // 2) * stride
            stride *= m.stride[0]
        elif isinstance(m, nn.Upsample):
            stride //= 2
            radius += stride * 2
    return radius


class Canvas:
    """The network's input over the padded canvas, in less memory than one float32 tensor: the
    ``exact`` channels (the estimate: an unfitted network returns it exactly) in float32, the
    ``noise`` channels in float16. At 16 megapixels the fast super-resolution preset's 32-channel
    input is 2.1 GB in float32 and 1.1 GB so; fixed noise loses nothing by being rounded."""

    def __init__(self, exact: torch.Tensor, noise: torch.Tensor | None = None):
        self.exact = exact
        self.noise = noise if noise is not None else exact.new_empty(1, 0, *exact.shape[2:])
        self.shape = (1, exact.shape[1] + self.noise.shape[1], *exact.shape[2:])

    def window(self, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """The (1, D, height, width) float32 input at (``top``, ``left``)."""
        rows, cols = slice(top, top + height), slice(left, left + width)
        if not self.noise.shape[1]:
            return self.exact[..., rows, cols]
        return torch.cat([self.exact[..., rows, cols], self.noise[..., rows, cols].float()], 1)

    def full(self) -> torch.Tensor:
        return self.window(0, 0, *self.shape[2:])


def make_canvas(cfg: FitConfig, problem: Problem, size: tuple[int, int], gen: torch.Generator,
                estimate: np.ndarray | None = None) -> Canvas:
    """The input of :func:`~deepprior.fitting.make_input` as a compact :class:`Canvas`: the
    estimate, and the same noise (:func:`~deepprior.fitting.fill_noise`) rounded to float16;
    kept whole in float32 when the input is optimised, as Adam needs it so."""
    if cfg.input != "estimate" or cfg.optimize_input:
        return Canvas(make_input(cfg, problem, size, gen, estimate=estimate))
    exact = pad_to(problem.estimate() if estimate is None else estimate, size)
    hp, wp = size
    noise = torch.empty(1, max(cfg.input_depth - exact.shape[1], 0), hp, wp, dtype=torch.float16)
    return Canvas(exact, fill_noise(noise, gen, cfg.input_scale))


@dataclass
class CropFit:
    """What the fit on crops leaves: the network (evaluation mode), its input z over the padded
    canvas, and where the image lies on that canvas."""

    net: nn.Module
    z: Canvas  # (1, D, hp, wp), on the CPU
    top: int
    left: int
    iterations: int
    losses: list[tuple[int, float]]
    stop_reason: str


def _crop_trim(start: int, size: int, canvas: int, image_start: int, image_size: int, trim: int) -> tuple[int, int, int, int]:
    """For one axis of a crop: the part of it on the image (first and last image row, in canvas
    coordinates) and the untrusted rows at each end of that part (a cut side's rim)."""
    lo, hi = max(start, image_start), min(start + size, image_start + image_size)
    before = max(0, start + trim - lo) if start > 0 else 0
    after = max(0, hi - (start + size - trim)) if start + size < canvas else 0
    return lo, hi, before, after


def draw_crops(z: Canvas, size: tuple[int, int], count: int, factor: int, gen: torch.Generator
               ) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """``count`` crops of ``size`` from the canvas ``z``, at random offsets on the ``factor`` grid:
    their corners (y, x) and the (count, D, h, w) batch of their inputs."""
    hp, wp = z.shape[2:]
    ys = torch.randint(0, (hp - size[0]) // factor + 1, (count,), generator=gen) * factor
    xs = torch.randint(0, (wp - size[1]) // factor + 1, (count,), generator=gen) * factor
    corners = list(zip(ys.tolist(), xs.tolist()))
    return corners, torch.cat([z.window(y, x, *size) for y, x in corners])


def fit_on_crops(problem: Problem, cfg: FitConfig, *, seed: int = 0, device="cpu", start_image=None,
                 callback: Callable[[Progress], bool | None] | None = None, callback_every: int = 10,
                 tile: int = TILE, context: int = CONTEXT, preview: torch.Tensor | None = None) -> CropFit:
    """Fit the network of ``cfg`` on random crops of ``problem`` for ``cfg.crop_iterations`` steps.

    Each step draws ``cfg.crop_batch`` crops of ``cfg.crop_size`` output pixels at offsets on the
    downsampling grid, perturbs their input, and takes the data term on the image pixels each
    covers, ``cfg.crop_trim`` pixels from a cut side. With a callback, the ETA it sees includes
    the final pass (``tile``, ``context``: :func:`forward_tiled`), timed on one tile; ``preview`` ((1, C, H, W), the start) receives
    each batch's results where they lie, so a callback's preview fills in as the fit goes.
    A callback returning True, or Ctrl-C, ends the fit with its weights so far.
    """
    device = resolve_device(device)
    h, w = problem.out_size
    factor = 2**cfg.net.scales
    hp, wp = padded_size(h, w, cfg.net.scales)
    top, left = (hp - h) // 2, (wp - w) // 2
    size_y, size_x = min(cfg.crop_size, hp), min(cfg.crop_size, wp)

    gen = torch.Generator().manual_seed(seed)
    z = make_canvas(cfg, problem, (hp, wp), gen, estimate=start_image)
    net = build_network(replace(cfg.net, residual=True), z.shape[1], problem.channels)
    init_weights(net, gen)
    net.to(device).train()
    problem.to(device)
    opt = build_optimizer(cfg, net, z.exact)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    averaged = [p.detach().clone() for p in net.parameters()] if cfg.ema else None
    noise = torch.empty(cfg.crop_batch, z.shape[1], size_y, size_x, device=device)
    forward_s = forward_seconds(net, (hp, wp), factor, device, tile, context) if callback is not None else 0.0

    losses: list[tuple[int, float]] = []
    reason, it, started = "completed", 0, time.perf_counter()
    try:
        for it in range(1, cfg.crop_iterations + 1):
            corners, batch = draw_crops(z, (size_y, size_x), cfg.crop_batch, factor, gen)
            batch = batch.to(device)
            if cfg.reg_noise_std > 0:  # in place, unless the input is optimised and needs its gradient
                noise.normal_(generator=noise_gen).mul_(cfg.reg_noise_std)
                batch = batch + noise if cfg.optimize_input else noise.add_(batch)
            out = net(batch)
            total, count = None, 0
            for k, (y, x) in enumerate(corners):
                y0, y1, tt, tb = _crop_trim(y, size_y, hp, top, h, cfg.crop_trim)
                x0, x1, tl, tr = _crop_trim(x, size_x, wp, left, w, cfg.crop_trim)
                if y1 <= y0 or x1 <= x0:
                    continue
                window = out[k : k + 1, :, y0 - y : y1 - y, x0 - x : x1 - x]
                s, n = problem.window_loss(window, y0 - top, x0 - left, (tt, tb, tl, tr))
                total, count = (s if total is None else total + s), count + n
                if preview is not None:
                    with torch.no_grad():
                        preview[..., y0 - top + tt : y1 - top - tb, x0 - left + tl : x1 - left - tr] = (
                            window[..., tt : window.shape[2] - tb, tl : window.shape[3] - tr].detach().cpu())
            if count == 0:
                continue
            loss = total / count
            if cfg.tv_weight:
                loss = loss + cfg.tv_weight * total_variation(out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = loss.item()
            if averaged is not None:
                decay = ema_decay(cfg.ema, cfg.ema_warmup, it)
                with torch.no_grad():
                    for a, p in zip(averaged, net.parameters()):
                        a.mul_(decay).add_(p.detach(), alpha=1 - decay)
            if it % cfg.history_every == 0 or it == 1:
                losses.append((it, loss_value))
            if callback is not None and (it % callback_every == 0 or it == cfg.crop_iterations):
                elapsed = time.perf_counter() - started
                # the steps left, the final pass, and BatchNorm's batches (a forward pass: about a third of a step)
                eta = elapsed / it * (cfg.crop_iterations - it + BN_BATCHES / 3) + forward_s
                candidate = preview if preview is not None else out.detach()[:1]
                if callback(Progress(it, cfg.crop_iterations, loss_value, None, elapsed, eta, candidate)):
                    reason = "callback"
                    break
    except KeyboardInterrupt:
        reason = "interrupted"
    if averaged is not None:
        with torch.no_grad():
            for a, p in zip(averaged, net.parameters()):
                p.copy_(a)

    settle_began = time.perf_counter()
    last_loss = losses[-1][1] if losses else math.nan

    def on_batch(done: int, count: int) -> bool:
        if callback is None or (done % callback_every and done != count):
            return False
        now = time.perf_counter()
        eta = (now - settle_began) / done * (count - done) + forward_s
        return bool(callback(Progress(it, cfg.crop_iterations, last_loss, None, now - started, eta, preview,
                                      stage="settle", tile=done, tiles=count)))

    settle_batchnorm(net, z, cfg, gen, device, (size_y, size_x), factor, on_batch=on_batch)
    return CropFit(net, z, top, left, it, losses, reason)


def settle_batchnorm(net: nn.Module, z: Canvas, cfg: FitConfig, gen: torch.Generator, device,
                     size: tuple[int, int], factor: int,
                     on_batch: Callable[[int, int], bool | None] | None = None) -> int:
    """Give every BatchNorm the mean and variance of its input over :data:`BN_BATCHES` batches of
    crops (unperturbed, as the final pass sees them), then switch the network to evaluation mode.

    ``on_batch(done, count)`` is called after each batch; returning True, or Ctrl-C, ends the
    measurement with the batches done (the statistics the fit left stay if none was). Returns
    how many batches were measured."""
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    done = 0
    if norms:
        kept = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
        try:
            with torch.no_grad():
                for _ in range(BN_BATCHES):
                    net(draw_crops(z, size, cfg.crop_batch, factor, gen)[1].to(device))
                    done += 1
                    if on_batch is not None and on_batch(done, BN_BATCHES):
                        break
        except KeyboardInterrupt:  # Ctrl-C ends the measurement as a stop does
            pass
        for m, (mean, var, batches) in zip(norms, kept):
            if not done:
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(batches)
            m.momentum = 0.1
    net.eval()
    return done


def tiles_of(length: int, tile: int) -> list[tuple[int, int]]:
    """The cores ``(start, end)`` that cut ``length`` canvas pixels into tiles of at most ``tile``."""
    count = max(1, math.ceil(length / tile))
    return [(i * tile, min(length, (i + 1) * tile)) for i in range(count)]


def forward_tiled(net: nn.Module, z: Canvas | torch.Tensor, *, tile: int = TILE, context: int = CONTEXT, factor: int = 32,
                  device="cpu", window: tuple[int, int, int, int] | None = None,
                  on_tile: Callable[[int, int], bool | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``net(z)`` computed tile by tile, on the canvas rows and columns of ``window`` (top, left,
    height, width; the whole canvas by default). ``tile`` and ``context`` are rounded up to
    multiples of ``factor``, so every tile starts on the network's downsampling grid.

    ``on_tile(done, count)`` is called after each tile; returning True (or Ctrl-C) skips the rest. Returns
    the output (1, C, height, width) on the CPU and a (height, width) boolean map of the pixels
    computed (all of them unless stopped).
    """
    z = z if isinstance(z, Canvas) else Canvas(z)
    hp, wp = z.shape[2:]
    top, left, height, width = window or (0, 0, hp, wp)
    tile = -(-tile // factor) * factor
    context = -(-context // factor) * factor
    rows = [(a, b) for a, b in tiles_of(hp, tile) if b > top and a < top + height]
    cols = [(a, b) for a, b in tiles_of(wp, tile) if b > left and a < left + width]
    out = torch.zeros(1, net.out_channels, height, width)
    done = torch.zeros(height, width, dtype=torch.bool)
    count, n = len(rows) * len(cols), 0
    try:
        with torch.no_grad():
            for r0, r1 in rows:
                for c0, c1 in cols:
                    a0, a1 = max(0, r0 - context), min(hp, r1 + context)
                    b0, b1 = max(0, c0 - context), min(wp, c1 + context)
                    y = net(z.window(a0, b0, a1 - a0, b1 - b0).to(device))[:, :, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0].cpu()
                    i0, i1 = max(r0, top), min(r1, top + height)
                    j0, j1 = max(c0, left), min(c1, left + width)
                    out[..., i0 - top : i1 - top, j0 - left : j1 - left] = y[..., i0 - r0 : i1 - r0, j0 - c0 : j1 - c0]
                    done[i0 - top : i1 - top, j0 - left : j1 - left] = True
                    n += 1
                    if on_tile is not None and on_tile(n, count):
                        return out, done
    except KeyboardInterrupt:  # Ctrl-C ends the pass as a stop does: the tiles done are kept
        pass
    return out, done


def forward_seconds(net: nn.Module, size: tuple[int, int], factor: int, device, tile: int = TILE,
                    context: int = CONTEXT) -> float:
    """The final pass's time over a canvas of ``size``, estimated from one timed tile of ``net``'s input."""
    tile, context = -(-tile // factor) * factor, -(-context // factor) * factor
    channels = next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels
    z = torch.zeros(1, channels, min(size[0], tile + 2 * context), min(size[1], tile + 2 * context), device=device)
    was_training = net.training
    net.eval()  # the pass's mode; the running statistics it leaves alone
    started = time.perf_counter()
    with torch.no_grad():
        net(z)
    seconds = time.perf_counter() - started
    net.train(was_training)
    return seconds * len(tiles_of(size[0], tile)) * len(tiles_of(size[1], tile))


def fit_crops(problem: Problem, cfg: FitConfig, *, seed: int = 0, device="cpu",
              callback: Callable[[Progress], bool | None] | None = None, callback_every: int = 10,
              tile: int = TILE, context: int = CONTEXT) -> FitOutcome:
    """Restore a large image: :func:`fit_on_crops`, then :func:`forward_tiled` over the image.

    The counterpart of :func:`deepprior.fitting.fit` for presets with ``crop_iterations``; it
    takes and returns the same things. A fit stopped early still makes its final pass; a pass
    stopped early leaves the start where no tile was computed. With ``cfg.select_start`` the
    result is chosen against the start region by region, each region a ``tile`` wide
    (:func:`~deepprior.fitting.select_by_region`). ``tile`` and ``context``: see
    :func:`forward_tiled`.
    """
    device = resolve_device(device)
    held_out = hold_out_pixels(problem, cfg, seed) if cfg.select_start else False
    start_image, start_s = make_start(problem.estimate, callback, "start", cfg.crop_iterations)
    h, w = problem.out_size
    started = time.perf_counter()
    start_tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(start_image, -1, 0)))[None]
    preview = start_tensor.clone()

    crops = fit_on_crops(problem, cfg, seed=seed, device=device, start_image=start_image, callback=callback,
                         callback_every=callback_every, tile=tile, context=context,
                         preview=preview if callback is not None else None)  # only a callback sees it
    fit_end = time.perf_counter()
    last_loss = crops.losses[-1][1] if crops.losses else math.nan

    def on_tile(done: int, count: int) -> bool:
        if callback is None:
            return False
        now = time.perf_counter()
        eta = (now - fit_end) / done * (count - done)
        return bool(callback(Progress(crops.iterations, cfg.crop_iterations, last_loss, None, now - started, eta,
                                      preview, stage="apply", tile=done, tiles=count)))

    out, computed = forward_tiled(crops.net, crops.z, tile=tile, context=context, factor=2**cfg.net.scales, device=device,
                                  window=(crops.top, crops.left, h, w), on_tile=on_tile)
    reason = crops.stop_reason
    if not bool(computed.all()):  # the pass was stopped: the start where no tile was computed
        out = torch.where(computed, out, start_tensor)
        reason = "callback" if reason == "completed" else reason
    result = out
    returned, weight, errors, leads, regions, fixed = "fit", 1.0, None, None, None, False
    share = preset_share(cfg, problem)
    if cfg.select_start and held_out:
        target = problem.target.device
        result, weight, errors, leads, returned, regions = select_by_region(
            problem, out.to(target), start_tensor.to(target), cfg.blend_weights, cfg.choice_margin,
            remake=lambda make: make_start(make, callback, "restart", cfg.crop_iterations, crops.iterations,
                                           time.perf_counter() - started, start_s)[0], region=tile)
    elif share != 1.0:
        result, weight, returned = fixed_share(out, start_tensor, share)
        fixed = True
    result, partner_share = with_partner(problem, result)
    return FitOutcome(
        output=np.clip(to_numpy(result), 0.0, 1.0),
        iterations=crops.iterations,
        stopped_at=crops.iterations,
        stop_reason=reason,
        elapsed_s=time.perf_counter() - started,
        history=[{"iter": i, "loss": v} for i, v in crops.losses],
        backtracks=0,
        stop_curve=[],
        parameters=sum(p.numel() for p in crops.net.parameters()),
        returned=returned,
        fit_weight=weight,
        fixed_share=fixed,
        held_out_errors=errors,
        held_out_leads=leads or None,
        choice_margin=cfg.choice_margin,
        region_shares=regions.tolist() if regions is not None else None,
        region_size=tile if regions is not None else 0,
        partner=problem.partner_name if partner_share else None,
        partner_share=partner_share,
    )
