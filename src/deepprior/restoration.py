"""The one Python entry point: ``restore(image, task, preset=...)`` and its :class:`Result`.

The command line, the web app, the batch runner and the benchmarks all call :func:`restore`.
It reads the preset for the task, applies the caller's overrides, builds the problem, runs the
fitting loop and packages the restored image (same size rules, mode, alpha and bit depth as the
input) with a report of how it was obtained.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import numpy as np
import torch

from . import __version__
from .errors import DeepPriorError
from .fitting import FitOutcome, Progress, fit, resolve_device
from .images import Image, atomic_write_bytes, colormap, load_image, save_image
from .metrics import quality
from .presets import FitConfig, get_preset
from .tasks import SuperResolution, Task


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
    if "iterations" in overrides and not int(overrides["iterations"]) >= 1:
        raise DeepPriorError(f"iterations must be at least 1, got {overrides['iterations']}")
    if "stop" in overrides and overrides["stop"] not in ("auto", "off", "observe"):
        raise DeepPriorError(f"stop must be 'auto', 'off' or 'observe', got {overrides['stop']!r}")
    if "lr" in overrides and not float(overrides["lr"]) > 0:
        raise DeepPriorError(f"learning rate must be positive, got {overrides['lr']}")
    return replace(cfg, **overrides)


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
    overrides : any :class:`~deepprior.presets.FitConfig` field, e.g. ``iterations=500``,
        ``stop="off"``, ``lr=0.005``.
    """
    image = load_image(image)
    cfg = configure(task, preset, **overrides)
    if threads is not None:
        if threads < 1:
            raise DeepPriorError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    problem = task.problem(image)
    ref = None
    if reference is not None:
        ref = load_image(reference).pixels
        h, w = problem.out_size
        if ref.shape[:2] != (h, w):
            raise DeepPriorError(
                f"reference is {ref.shape[1]}x{ref.shape[0]} but the result will be {w}x{h}"
            )
        if ref.shape[2] != problem.channels:
            ref = ref.mean(axis=2, keepdims=True) if problem.channels == 1 else np.repeat(ref, 3, axis=2)
    outcome = fit(problem, cfg, seed=seed, device=dev, callback=callback, callback_every=callback_every, reference=ref)
    pixels = task.finish(image, outcome.output)
    restored = image.with_pixels(pixels)
    metrics = {}
    if ref is not None:
        scale = task.scale if isinstance(task, SuperResolution) else None
        metrics = quality(restored.pixels, ref, sr_scale=scale)
    params = {"task": task.params(), "fit": cfg.to_dict()}
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
    )
