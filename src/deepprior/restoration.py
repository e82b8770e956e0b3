"""The one Python entry point: ``restore(image, task, preset=...)`` and its :class:`Result`.

The command line, the web app, the batch runner and the benchmarks all call :func:`restore`.
It reads the preset for the task, applies the caller's overrides, builds the problem, runs the
fitting loop and packages the restored image (same size rules, mode, alpha and bit depth as the
input) with a report of how it was obtained.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Callable

import numpy as np
import torch

from . import __version__, estimates
from .batch import EXECUTORS
from .errors import DeepPriorError
from .cropfit import fit_crops
from .fitting import NO_START, FitOutcome, Progress, fit, resolve_device, why_returned
from .images import Image, atomic_write_bytes, colormap, load_image, save_image
from .metrics import quality
from .networks import padded_size
from .presets import FitConfig, get_preset
from .tasks import SuperResolution, Task
from .tiling import DEFAULT_MAX_FIT_PIXELS, DEFAULT_OVERLAP, Blender, Tile, plan_tiles

#: How an image larger than ``max_fit_pixels`` is restored (see :func:`large_image_method`).
LARGE_METHODS = ("auto", "crops", "tiles")


@dataclass
class Result:
    """A restored image and the record of how it was made."""

    image: Image
    task: str
    preset: str
    params: dict
    outcome: FitOutcome
    device: str
    seed: int
    threads: int
    metrics: dict = field(default_factory=dict)
    output: str | None = None
    tiling: dict | None = None  # how a large image was cut up (None: fitted whole)

    @property
    def history(self) -> list[dict]:
        return self.outcome.history

    @property
    def iterations(self) -> int:
        return self.outcome.iterations

    @property
    def stopped_at(self) -> int:
        return self.outcome.stopped_at

    @property
    def elapsed_s(self) -> float:
        return self.outcome.elapsed_s

    @property
    def uncertainty(self) -> np.ndarray | None:
        """Bayesian mode: per-pixel posterior standard deviation (H, W), averaged over channels."""
        u = self.outcome.uncertainty
        return None if u is None else u.mean(axis=2)

    def save_uncertainty(self, path) -> None:
        """Write the uncertainty map as a colour-mapped image (dark = sure, bright = unsure)."""
        if self.uncertainty is None:
            raise DeepPriorError("no uncertainty map: run with bayes=True (--bayes)")
        save_image(colormap(self.uncertainty), path)

    def save_arrays(self, path) -> None:
        """Write the raw result (and the uncertainty, in Bayesian mode) as a .npz file."""
        import io

        arrays = {"image": self.image.pixels}
        if self.outcome.uncertainty is not None:
            arrays["std"] = self.outcome.uncertainty
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    def report(self) -> dict:
        """A JSON-ready account of the run."""
        o = self.outcome
        rep = {
            "task": self.task,
            "preset": self.preset,
            "params": self.params,
            "iterations": o.iterations,
            "stopped_at": o.stopped_at,
            "stop_reason": o.stop_reason,
            "auto_stop_at": o.auto_stop_at,
            "elapsed_s": round(o.elapsed_s, 3),
            "seconds_per_iter": round(o.elapsed_s / max(o.iterations, 1), 4),
            "backtracks": o.backtracks,
            "network_parameters": o.parameters,
            "history": o.history,
            "metrics": self.metrics,
            "output": self.output,
            "version": __version__,
            "device": self.device,
            "threads": self.threads,
            "seed": self.seed,
            "tiling": self.tiling or {"method": "whole", "tiles": 1},
            "returned": _returned(o),
            "size": {"width": self.image.width, "height": self.image.height, "mode": self.image.mode,
                     "bit_depth": self.image.bit_depth},
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpu": platform.processor() or platform.machine()},
        }
        if o.samples:
            u = self.uncertainty
            rep["bayes"] = {"samples": o.samples, "mean_std": float(u.mean()), "max_std": float(u.max())}
        if o.stop_curve:
            rep["stop_curve"] = [[i, v] for i, v in o.stop_curve]
        peak = [h for h in o.history if "psnr" in h]
        if peak:
            best = max(peak, key=lambda h: h["psnr"])
            rep["reference_peak"] = {"iter": best["iter"], "psnr": best["psnr"]}
            if "psnr" in self.metrics:
                rep["reference_peak"]["gap_db"] = best["psnr"] - self.metrics["psnr"]
        return rep

    def save(self, path) -> None:
        """Write the restored image (atomically) and remember where it went."""
        save_image(self.image, path)
        self.output = str(path)

    def save_report(self, path) -> None:
        atomic_write_bytes(path, json.dumps(self.report(), indent=2, default=_json_default).encode())


def _start_choice(problem, cfg: FitConfig) -> dict | None:
    """The classical estimate the fit started from: its name (denoising), or which fills an
    inpainting took and how each candidate did on the probe pixels (tasks.FillStart); None when
    the fit neither started from an estimate nor was blended with one."""
    if not cfg.uses_start:
        return None
    out = {"estimate": problem.estimate_name} if problem.estimate_name else {}
    start = problem.full_estimate or problem.estimate
    chosen = getattr(start, "chosen", None)
    if chosen is not None:
        out.update({"fills": list(chosen),
                    "probe_errors": {"+".join(c): round(e, 8) for c, e in start.errors.items()}})
        if start.refine:
            out["refined"] = "bm3d"
        if getattr(start, "lead", None) in chosen:
            out["lead"] = start.lead  # the mean is the even mean of the fills' mean and this fill
    return out or None


def _returned(o: FitOutcome) -> dict:
    """What the restoration returned: the fit, its classical start or a blend, and why."""
    out = {"result": o.returned, "fit_weight": o.fit_weight}
    if o.held_out_errors:
        out["held_out_errors"] = {f"fit weight {w:g}": e for w, e in o.held_out_errors.items()}
        if o.held_out_leads:
            out["held_out_leads"] = {f"fit weight {w:g}": round(v, 3) for w, v in o.held_out_leads.items()}
    if o.held_out_errors or o.fixed_share:
        out["why"] = why_returned(o)
    if o.region_shares is not None:
        out["region_size"] = o.region_size
        out["region_shares"] = o.region_shares
    if o.partner_share:
        out["blended_with"] = {"estimate": o.partner, "share": o.partner_share}
    return out


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


def configure(task: Task, preset: str = "fast", **overrides) -> FitConfig:
    """The preset's :class:`FitConfig` for ``task``, with fields replaced by ``overrides``.

    Overrides set to None are ignored, so callers can pass their options through unchanged.
    """
    cfg = get_preset(task.preset_key, preset)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in fields(FitConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise DeepPriorError(f"unknown fit option(s): {', '.join(sorted(unknown))}")
    if "iterations" in overrides and not int(overrides["iterations"]) >= 0:
        raise DeepPriorError(f"iterations must be 0 (the classical start alone) or more, got {overrides['iterations']}")
    if "stop" in overrides and overrides["stop"] not in ("auto", "off", "observe"):
        raise DeepPriorError(f"stop must be 'auto', 'off' or 'observe', got {overrides['stop']!r}")
    if "stop_rule" in overrides and overrides["stop_rule"] not in ("variance", "holdout"):
        raise DeepPriorError(f"stop rule must be 'variance' or 'holdout', got {overrides['stop_rule']!r}")
    if overrides.get("fit_share") is not None and not 0 <= float(overrides["fit_share"]) <= 1:
        raise DeepPriorError(f"the fit's share must be between 0 and 1, got {overrides['fit_share']}")
    if "holdout" in overrides and not 0 < float(overrides["holdout"]) < 1:
        raise DeepPriorError(f"holdout fraction must be between 0 and 1, got {overrides['holdout']}")
    if "lr" in overrides and not float(overrides["lr"]) > 0:
        raise DeepPriorError(f"learning rate must be positive, got {overrides['lr']}")
    if "blend_weights" in overrides:
        w = tuple(float(x) for x in overrides["blend_weights"])
        if not w or not all(0 <= x <= 1 for x in w):
            raise DeepPriorError(f"blend weights must be fit shares between 0 and 1, got {overrides['blend_weights']}")
        overrides["blend_weights"] = w
    cfg = replace(cfg, **overrides)
    if cfg.iterations == 0 and not cfg.uses_start:
        raise DeepPriorError(NO_START)
    if cfg.draw_pixels < 0 or (cfg.draw_pixels and cfg.input not in ("noise", "meshgrid")):
        raise DeepPriorError(f"draw_pixels must be 0, or positive with a noise or meshgrid input "
                             f"(got {cfg.draw_pixels} with input {cfg.input!r})")
    return cfg


def reduced_size(height: int, width: int, pixels: int) -> tuple[int, int]:
    """(width, height) of an image of ``height`` x ``width`` reduced to about ``pixels``, its aspect kept."""
    factor = math.sqrt(pixels / (height * width))
    return max(1, round(width * factor)), max(1, round(height * factor))


def large_image_method(cfg: FitConfig, result_pixels: int, max_fit_pixels: int | None, large: str = "auto") -> str:
    """How a result of ``result_pixels`` is restored: "whole" (one fit), "crops" (the network
    fitted on random crops, then run over the image in tiles: :mod:`deepprior.cropfit`) or
    "tiles" (every tile fitted on its own and blended: :mod:`deepprior.tiling`).

    A preset with ``work_pixels`` restores a larger result under "auto" as "window": the part of
    the image around what is restored (:meth:`~deepprior.tasks.Task.window`), reduced to about
    that many pixels where larger (:meth:`~deepprior.tasks.Task.reduce`), the result upscaled.
    Else up to ``max_fit_pixels`` (None: any size) the image is fitted whole. Above it ``large``
    decides; "auto" takes crops when the preset can (``crop_iterations`` > 0, not Bayesian),
    else tiles. A preset of 0 iterations fits nothing: its start is made whole at any size; nor
    does "auto" cut up a fit whose network draws at a fixed size (``draw_pixels``: a hole's fill,
    which a tile inside the hole could not see around).
    """
    if large not in LARGE_METHODS:
        raise DeepPriorError(f"large-image method must be one of {', '.join(LARGE_METHODS)}, got {large!r}")
    if cfg.work_pixels and result_pixels > cfg.work_pixels and large == "auto":
        return "window"
    if max_fit_pixels is None or result_pixels <= max_fit_pixels or cfg.iterations == 0:
        return "whole"
    if cfg.draw_pixels and large == "auto":
        return "whole"
    if large == "crops" and not cfg.crop_iterations:
        raise DeepPriorError("this preset cannot fit on crops (its input is not an estimate of the image); "
                             "use tiles")
    if large == "crops" and cfg.bayes:
        raise DeepPriorError("Bayesian mode samples whole outputs, which a fit on crops never makes; use tiles")
    if large == "tiles" or not cfg.crop_iterations or cfg.bayes:
        return "tiles"
    return "crops"


#: The cost of a result pixel in a fit whose network draws at a smaller size (draw_pixels: the
#: upscaling, data term and averaging at full size), against a pixel the network computes: the
#: hole preset took 0.049 s per iteration at 256x192 drawn at 128x160, its network 0.102 s at full
#: size (2 threads); the upscaling alone takes 0.9 s forward and back at 12 megapixels.
DRAWN_PIXEL_COST = 0.06


def planned_work(cfg: FitConfig, result_pixels: int, method: str, windows: int = 1) -> float:
    """Pixel-iterations a restoration will compute: the result's pixels times the iterations
    for a whole or tiled fit; for a fit on crops, the crops' pixels times its steps, plus one
    pass over the result (about a third of a training step's cost per pixel); for a network
    drawing at ``draw_pixels``, those pixels and :data:`DRAWN_PIXEL_COST` of the result's; for
    a fill from ``windows`` windows (:meth:`Task.windows`), each at most ``work_pixels``."""
    if method == "window":
        return windows * planned_work(cfg, min(result_pixels, cfg.work_pixels), "whole")
    if method == "crops":
        return float(cfg.crop_iterations * cfg.crop_batch * cfg.crop_size**2 + result_pixels / 3)
    if cfg.draw_pixels and result_pixels > cfg.draw_pixels:
        return (cfg.draw_pixels + DRAWN_PIXEL_COST * result_pixels) * cfg.iterations
    return float(result_pixels) * cfg.iterations


def restore(
    image,
    task: Task,
    preset: str = "fast",
    *,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
    callback_every: int = 10,
    reference=None,
    max_fit_pixels: int | None = DEFAULT_MAX_FIT_PIXELS,
    tile_overlap: int = DEFAULT_OVERLAP,
    large: str = "auto",
    executor: str = "local",
    ray_address: str | None = None,
    **overrides,
) -> Result:
    """Restore ``image`` (anything :func:`load_image` reads) for ``task``.

    Parameters
    ----------
    preset : "fast" or "paper"
    seed : makes the run reproducible on the same machine and device.
    device : "auto", "cpu" or "cuda".
    threads : CPU threads for PyTorch (default: PyTorch's choice).
    callback : called with a :class:`~deepprior.fitting.Progress` every ``callback_every``
        iterations; returning True ends the fit early (keeping the best result so far).
    reference : the ground truth, only to report PSNR/SSIM; it never steers the fit.
    max_fit_pixels : the largest result fitted in one piece; None fits any size whole.
    large : how a larger one is restored (:func:`large_image_method`): "crops" fits the network
        on random crops and runs it over the image in tiles (minutes at 12 megapixels), "tiles"
        fits every overlapping tile on its own (``tile_overlap`` input pixels shared) and blends
        them; "auto" takes crops when the preset can. The report's ``tiling`` says how.
    executor : "local", or "ray": the tiles of a tiled restoration run as Ray tasks
        (``ray_address`` joins a running cluster; default: a local Ray instance), with the same
        result as a local run given the same seed and threads per fit. A whole fit, or a fit on
        crops, is one optimisation and runs in this process either way.
    overrides : any :class:`~deepprior.presets.FitConfig` field, e.g. ``iterations=500``,
        ``stop="off"``, ``lr=0.005``; ``iterations=0`` returns the preset's classical start
        alone, made from every pixel, with no network fitted (presets that start from noise have none).
    """
    if executor not in EXECUTORS:
        raise DeepPriorError(f"unknown executor {executor!r}; choose {' or '.join(EXECUTORS)}")
    if ray_address and executor != "ray":
        raise DeepPriorError("a Ray address goes with the ray executor")
    image = load_image(image)
    cfg = configure(task, preset, **overrides)
    if threads is not None:
        if threads < 1:
            raise DeepPriorError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    scale = task.scale if isinstance(task, SuperResolution) else 1
    method = large_image_method(cfg, image.height * image.width * scale * scale, max_fit_pixels, large)
    full_image, full_task, window = image, task, None
    if method == "window":
        windows = task.windows(image, cfg.work_pixels)
        if len(windows) > 1:
            return _restore_windows(image, task, windows, preset, reference=reference, callback=callback, seed=seed,
                                    device=device, threads=threads, callback_every=callback_every, **overrides)
        window = windows[0]
        task, image = _window_of(task, image, window, cfg.work_pixels)
        if callback is not None:
            callback = _placing(callback, full_image.pixels, window)
    problem = task.problem(image)
    ref = None
    if reference is not None:
        ref = full_ref = _reference(reference, problem.channels, full_image.height * scale, full_image.width * scale)
        if window:  # measured against during the fit at the window's size
            top, left, wh, ww = window
            h, w = problem.out_size
            ref = estimates.shrink(np.ascontiguousarray(full_ref[top : top + wh, left : left + ww]), (w, h))
    if tile_overlap < 0:
        raise DeepPriorError(f"tile_overlap must be >= 0, got {tile_overlap}")
    if method == "crops" and overrides.get("iterations") is not None:
        cfg = replace(cfg, crop_iterations=cfg.iterations)  # asked-for steps are the crop fit's steps
    tiles = [None] if method != "tiles" else plan_tiles(
        image.height, image.width, scale=scale, max_fit_pixels=max_fit_pixels, overlap=tile_overlap)
    tiling = None
    if method == "crops":
        outcome = fit_crops(problem, cfg, seed=seed, device=dev, callback=callback, callback_every=callback_every)
        hp, wp = padded_size(*problem.out_size, cfg.net.scales)
        tiling = {"method": "crops", "tiles": 1, "iterations_asked": cfg.crop_iterations,
                  "crops": outcome.iterations * cfg.crop_batch, "crop_size": [min(cfg.crop_size, hp), min(cfg.crop_size, wp)]}
    elif len(tiles) == 1:
        outcome = fit(problem, cfg, seed=seed, device=dev, callback=callback, callback_every=callback_every,
                      reference=ref)
    else:
        del problem  # it checked the inputs; each tile builds its own, and the whole one would only hold memory
        outcome, tiling = _fit_tiles(image, task, cfg, tiles, scale, seed=seed, device=dev, callback=callback,
                                     callback_every=callback_every, reference=ref, executor=executor,
                                     ray_address=ray_address, threads=threads)
    if window:
        top, left, wh, ww = window
        tiling = {"method": "window", "tiles": 1, "window": [top, left, wh, ww], "size": [image.height, image.width]}
        outcome = replace(outcome, output=_placed(outcome.output, full_image.pixels, window),
                          uncertainty=None if outcome.uncertainty is None else
                          _placed(outcome.uncertainty, np.zeros_like(full_image.pixels), window))
        image, task, ref = full_image, full_task, full_ref if ref is not None else None
    pixels = task.finish(image, outcome.output)
    restored = image.with_pixels(pixels)
    metrics = {}
    if ref is not None:
        sr_scale = task.scale if isinstance(task, SuperResolution) else None
        metrics = quality(restored.pixels, ref, sr_scale=sr_scale)
    params = {"task": task.params(), "fit": cfg.to_dict()}
    start = _start_choice(problem, cfg) if method in ("whole", "crops", "window") else None
    if start:
        params["start"] = start
    return Result(
        image=restored,
        task=task.name,
        preset=preset,
        params=params,
        outcome=outcome,
        device=str(dev),
        seed=seed,
        threads=torch.get_num_threads(),
        metrics=metrics,
        tiling=tiling,
    )


def _reference(reference, channels: int, height: int, width: int) -> np.ndarray:
    """The ground truth's pixels, checked against the result's size and given its ``channels``
    (the mean of three for grey, grey repeated for colour)."""
    ref = load_image(reference).pixels
    if ref.shape[:2] != (height, width):
        raise DeepPriorError(f"reference is {ref.shape[1]}x{ref.shape[0]} but the result will be {width}x{height}")
    if ref.shape[2] != channels:
        ref = ref.mean(axis=2, keepdims=True) if channels == 1 else np.repeat(ref, 3, axis=2)
    return ref


def _restore_windows(image: Image, task: Task, windows: list, preset: str, *, reference, callback, **kw) -> Result:
    """Restore each of ``windows`` (none overlapping another) in turn, each one's missing pixels
    alone, into the same image; a stop asked during one leaves the rest to their classical start."""
    fill = np.asarray(task.mask, dtype=bool)
    ref = None if reference is None else _reference(reference, image.channels, image.height, image.width)
    done, elapsed, iterations, stopped = [], 0.0, 0, None
    for i, (top, left, height, width) in enumerate(windows):
        part = np.zeros_like(fill)
        part[top : top + height, left : left + width] = fill[top : top + height, left : left + width]
        tell = None if callback is None else partial(_as_tile, callback, i + 1, len(windows))
        r = restore(image, replace(task, mask=part), preset, callback=tell,
                    **(dict(kw, iterations=0) if stopped else kw))
        image = r.image
        done.append(r)
        elapsed += r.outcome.elapsed_s
        iterations += r.outcome.iterations
        if r.outcome.stop_reason in ("callback", "interrupted"):
            stopped = r.outcome.stop_reason
    first = done[0]
    outcome = replace(first.outcome, output=image.pixels, iterations=iterations, elapsed_s=elapsed,
                      stop_reason=stopped or first.outcome.stop_reason, uncertainty=None)
    metrics = {} if ref is None else quality(image.pixels, ref)
    tiling = {"method": "windows", "tiles": len(windows), "windows": [list(w) for w in windows],
              "sizes": [r.tiling["size"] if r.tiling else [w[2], w[3]] for r, w in zip(done, windows)]}
    params = dict(first.params, task=task.params())
    return Result(image=image, task=first.task, preset=preset, params=params, outcome=outcome, device=first.device,
                  seed=first.seed, threads=first.threads, metrics=metrics, tiling=tiling)


def _as_tile(callback: Callable[[Progress], bool | None], tile: int, tiles: int, p: Progress) -> bool | None:
    """``callback``, told which of ``tiles`` windows ``p`` comes from."""
    return callback(replace(p, tile=tile, tiles=tiles))


def _window_of(task: Task, image: Image, window: tuple[int, int, int, int], pixels: int) -> tuple[Task, Image]:
    """``task`` and ``image`` cut to ``window``, reduced to about ``pixels`` where larger (unless
    that would leave no known pixel)."""
    top, left, height, width = window
    task = task.crop(top, left, height, width)
    image = Image(np.ascontiguousarray(image.pixels[top : top + height, left : left + width]),
                  bit_depth=image.bit_depth, source=image.source)
    if height * width <= pixels:
        return task, image
    small_task, small = task.reduce(image, reduced_size(height, width, pixels))
    return (task, image) if np.asarray(small_task.mask).all() else (small_task, small)


def _placed(output: np.ndarray, canvas: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """``output``, restored over ``window``, upscaled to it where reduced and put into a copy of ``canvas``."""
    top, left, height, width = window
    placed = np.array(canvas, dtype=np.float32)
    placed[top : top + height, left : left + width] = estimates.enlarge(output, height, width)
    return placed


def _placing(callback: Callable[[Progress], bool | None], canvas: np.ndarray, window: tuple[int, int, int, int]
             ) -> Callable[[Progress], bool | None]:
    """``callback``, shown previews of the whole image: the window's result put into ``canvas``."""
    place = partial(_placed, canvas=canvas, window=window)
    return lambda p: callback(replace(p, place=place))


def _fit_tile(pixels: np.ndarray, bit_depth: int, task: Task, cfg: FitConfig, *, seed: int, device, reference=None,
              threads: int | None = None, callback=None, callback_every: int = 10) -> FitOutcome:
    """Fit one tile (``pixels``, already cut, and ``task`` cropped to it) as an image of its own:
    the same call in this process and in a Ray task, so both give the same tile."""
    if threads is not None:
        torch.set_num_threads(threads)
    problem = task.problem(Image(pixels, bit_depth=bit_depth))
    return fit(problem, cfg, seed=seed, device=device, reference=reference, callback=callback,
               callback_every=callback_every)


def _fit_tiles(image: Image, task: Task, cfg: FitConfig, tiles: list[Tile], scale: int, *, seed, device, callback,
               callback_every, reference, executor: str = "local", ray_address: str | None = None,
               threads: int | None = None) -> tuple[FitOutcome, dict]:
    """Fit every tile as an image of its own and blend the results (see :mod:`deepprior.tiling`).

    With ``executor="ray"`` the tiles are Ray tasks of ``threads`` CPUs each (default: the
    cluster's cores shared out over the tiles; ``ray_address``: see
    :class:`deepprior.batch.RayCluster`), the callback hears of each as it finishes, and the
    tiles are blended in the same order as here, so the result is the same as a local run's
    with the same seed and threads. A callback asking to stop, or Ctrl-C, ends the
    current tile with its best result so far (on Ray: cancels the tiles not finished) and skips
    the rest, whose pixels then come from the degraded input (upscaled for super-resolution).
    """
    h, w, c = image.pixels.shape
    blend = Blender(tiles, h, w, c, scale)
    spread = Blender(tiles, h, w, c, scale) if cfg.bayes else None
    start = time.perf_counter()

    def tile_args(t: Tile) -> tuple:
        ref = None
        if reference is not None:
            ref = reference[t.top * scale : (t.top + t.height) * scale, t.left * scale : (t.left + t.width) * scale]
        pixels = np.ascontiguousarray(image.pixels[t.top : t.top + t.height, t.left : t.left + t.width])
        return pixels, image.bit_depth, task.crop(t.top, t.left, t.height, t.width), ref

    stopped = None
    if executor == "ray":
        outcomes, stopped = _fit_tiles_on_ray(tiles, tile_args, cfg, seed=seed, device=device, callback=callback,
                                              ray_address=ray_address, threads=threads, started=start)
    else:
        outcomes = []
        for i, t in enumerate(tiles, 1):
            pixels, bit_depth, sub, ref = tile_args(t)
            tile_start = time.perf_counter()

            def tile_callback(p: Progress, i=i, tile_start=tile_start):
                done = tile_start - start
                if p.stage == "start":  # nothing of this tile timed yet: the tiles done so far tell the rest's
                    eta = done / (i - 1) * (len(tiles) - i + 1) if i > 1 else math.nan
                else:
                    per_tile_s = (done / (i - 1)) if i > 1 else p.elapsed_s + p.eta_s
                    eta = p.eta_s + per_tile_s * (len(tiles) - i)
                return callback(replace(p, elapsed_s=done + p.elapsed_s, eta_s=eta, tile=i, tiles=len(tiles)))

            outcome = _fit_tile(pixels, bit_depth, sub, cfg, seed=seed, device=device, reference=ref,
                                callback=tile_callback if callback is not None else None, callback_every=callback_every)
            outcomes.append(outcome)
            if outcome.stop_reason in ("callback", "interrupted"):
                break
    per_tile: list[dict] = []
    reasons: list[str] = []
    for t, outcome in zip(tiles, outcomes):
        if outcome is None:  # a Ray run stopped before this tile finished
            continue
        blend.add(t, outcome.output)
        if spread is not None and outcome.uncertainty is not None:
            spread.add(t, outcome.uncertainty)
        per_tile.append({"top": t.top, "left": t.left, "height": t.height, "width": t.width,
                         "iterations": outcome.iterations, "stopped_at": outcome.stopped_at,
                         "stop_reason": outcome.stop_reason, "elapsed_s": round(outcome.elapsed_s, 3),
                         "backtracks": outcome.backtracks, "samples": outcome.samples,
                         "returned": outcome.returned, "fit_weight": outcome.fit_weight,
                         "fixed_share": outcome.fixed_share})
        reasons.append(outcome.stop_reason)
    if stopped:
        reasons.append(stopped)
    fallback = estimates.upscale(image.pixels, scale) if scale > 1 else image.pixels
    samples = min((r["samples"] for r in per_tile), default=0)  # every tile's posterior has at least this many
    stop = next((r for r in reasons if r in ("callback", "interrupted")), None)
    if stop is None:
        stop = "auto" if all(r == "auto" for r in reasons) else "completed"
    combined = FitOutcome(
        output=np.clip(blend.result(fallback), 0.0, 1.0),
        iterations=sum(r["iterations"] for r in per_tile),
        stopped_at=max((r["stopped_at"] for r in per_tile), default=0),
        stop_reason=stop,
        elapsed_s=time.perf_counter() - start,
        history=[],
        backtracks=sum(r["backtracks"] for r in per_tile),
        stop_curve=[],
        parameters=next((o.parameters for o in outcomes if o is not None), 0),
        uncertainty=spread.result(np.zeros_like(fallback)) if spread is not None and samples else None,
        samples=samples,
        returned=_tiles_returned(per_tile),
        fit_weight=float(np.mean([r["fit_weight"] for r in per_tile])) if per_tile else 0.0,
        fixed_share=bool(per_tile) and all(r["fixed_share"] for r in per_tile),
    )
    tiling = {"method": "tiles", "tiles": len(tiles), "tiles_done": len(per_tile),
              "iterations_asked": cfg.iterations * len(tiles),
              "tile_size": [tiles[0].height, tiles[0].width], "overlap_min": _min_overlap(tiles),
              "executor": executor, "per_tile": per_tile}
    return combined, tiling


def _fit_tiles_on_ray(tiles: list[Tile], tile_args, cfg: FitConfig, *, seed, device, callback, ray_address,
                      threads: int | None, started: float) -> tuple[list[FitOutcome | None], str | None]:
    """Every tile's :func:`_fit_tile` as a Ray task: the outcomes in tile order (None for a tile
    not finished when a callback or Ctrl-C stopped the run) and what stopped it ("callback",
    "interrupted" or None)."""
    from .batch import RayCluster

    pool = RayCluster(ray_address, threads, len(tiles), str(device), fn=_fit_tile)
    outcomes: list[FitOutcome | None] = [None] * len(tiles)
    stopped = None
    try:
        for i, t in enumerate(tiles):
            pixels, bit_depth, sub, ref = tile_args(t)
            pool.submit(i, pixels, bit_depth, sub, cfg, seed=seed, device="cpu" if not pool.gpus else device,
                        reference=ref, threads=pool.cpus_per_job)
        for done in range(1, len(tiles) + 1):
            i, res = pool.next_result()
            if isinstance(res, dict):  # the task or its worker died
                raise DeepPriorError(f"tile {i + 1} of {len(tiles)} failed: {res['error']}")
            outcomes[i] = res
            if callback is not None:
                elapsed = time.perf_counter() - started
                progress = Progress(res.iterations, cfg.iterations, res.history[-1]["loss"] if res.history else float("nan"),
                                    None, elapsed, elapsed / done * (len(tiles) - done),
                                    torch.from_numpy(np.moveaxis(res.output, -1, 0).copy())[None], tile=done,
                                    tiles=len(tiles))
                if callback(progress):
                    stopped = "callback"
                    break
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        pool.close(cancel=stopped is not None or None in outcomes)
    return outcomes, stopped


def _tiles_returned(per_tile: list[dict]) -> str:
    """One word when every tile returned the same kind of result, else the count of each
    ("input" when no tile finished)."""
    kinds = [r["returned"] for r in per_tile]
    if not kinds:
        return "input"
    if len(set(kinds)) == 1:
        return kinds[0]
    return ", ".join(f"{k} on {kinds.count(k)} tiles" for k in dict.fromkeys(kinds))


def _min_overlap(tiles: list[Tile]) -> int:
    shared = [a.top + a.height - b.top for a, b in zip(tiles, tiles[1:]) if b.top > a.top]
    shared += [a.left + a.width - b.left for a, b in zip(tiles, tiles[1:]) if b.left > a.left]
    return min(shared) if shared else 0
