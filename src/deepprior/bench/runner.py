"""Running methods over a suite's images, with results written after every (image, method) pair.

:func:`run_bench` degrades each image once, runs each pending method on it, saves the restored
image as PNG under ``out/images/<image>/<method>.png``, scores it, and rewrites
``results.json`` and ``results.csv`` atomically after every pair. A run that is stopped
(Ctrl-C, SIGTERM, a crash) therefore loses at most the pair in progress, and ``resume=True``
picks up where it stopped, skipping the pairs already in ``results.json``.

Every method is scored on the 8-bit image it saved (what a user gets), with the suite's metrics.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..errors import DeepPriorError
from ..images import Image, atomic_write_bytes, load_image, save_image
from ..restoration import restore
from . import baselines, suites

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
CSV_COLUMNS = (
    "suite", "set", "image", "method", "psnr_y", "ssim_y", "psnr_mask", "ssim_mask", "colour_error_mask", "psnr",
    "ssim", "seconds", "iterations", "stopped_at",
    "stop_reason", "preset", "iters", "seed", "image_seed", "width", "height", "cpu", "threads", "torch", "output",
)


def machine_info() -> dict:
    """CPU model, PyTorch threads and versions: enough to compare timings between runs."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "deepprior": __version__}


@dataclass
class BenchConfig:
    """What decides the inputs of a run; a resumed run must use the same.

    The DIP settings (preset, iteration cap) are kept per row instead, so that baselines can
    be added to a folder whatever DIP settings it holds; only DIP rows must agree on them.
    """

    suite: str
    set: str
    seed: int

    def to_dict(self) -> dict:
        return {"suite": self.suite, "set": self.set, "seed": self.seed}


def read_results(out_dir: Path) -> dict | None:
    """``results.json`` of a previous run, or None when there is none."""
    path = Path(out_dir) / RESULTS_JSON
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DeepPriorError(f"{path}: cannot read previous results ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise DeepPriorError(f"{path}: not a results file of deepprior bench")
    return data


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _clean_float(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None if np.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def write_results(out_dir: Path, data: dict) -> None:
    """Write ``results.json`` and ``results.csv`` atomically (temporary file, then rename)."""
    out_dir = Path(out_dir)
    rows = [{k: _clean_float(v) for k, v in r.items()} for r in data["rows"]]
    payload = dict(data, rows=rows)
    atomic_write_bytes(out_dir / RESULTS_JSON, json.dumps(payload, indent=1, default=_json_default).encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (round(r[k], 4) if isinstance(r.get(k), float) else r[k]))
                    for k in CSV_COLUMNS})
    atomic_write_bytes(out_dir / RESULTS_CSV, buf.getvalue().encode())


def _quantise(pixels: np.ndarray) -> np.ndarray:
    """The 8-bit image a user would save, back as float: what every method is scored on."""
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0


def image_dir(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / "images" / name


def _prepare_out_dir(out_dir: Path, config: BenchConfig, resume: bool) -> dict:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DeepPriorError(f"{out_dir}: exists and is not a folder")
    previous = read_results(out_dir) if out_dir.is_dir() else None
    if previous is not None and not resume:
        raise DeepPriorError(f"{out_dir} already holds results; pass --resume to continue them or choose another --out")
    if previous is not None:
        check_same_config(out_dir, previous.get("config", {}), config.to_dict())
        return previous
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DeepPriorError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    return {"config": config.to_dict(), "rows": [], "skipped": {}}


def check_same_config(out_dir: Path, old: dict, new: dict) -> None:
    """Refuse to resume results that were made with other settings (they would not compare)."""
    diff = [k for k in sorted(set(new) | set(old)) if old.get(k) != new.get(k)]
    if diff:
        what = ", ".join(f"{k} {old.get(k)!r} (now {new.get(k)!r})" for k in diff)
        raise DeepPriorError(f"{out_dir} holds results made with {what}; resume with the same settings "
                             f"or choose another --out")


ProgressFn = Callable[[int, int, str], None]


def run_bench(
    suite: suites.Suite,
    data_dir: Path,
    out_dir: Path,
    *,
    methods: list[str] | None = None,
    preset: str = "fast",
    seed: int = 0,
    iters: int | None = None,
    names: list[str] | None = None,
    limit: int | None = None,
    resume: bool = False,
    weights=None,
    threads: int | None = None,
    progress: ProgressFn | None = None,
    dip_callback: Callable | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Run ``methods`` over the suite's images; returns the results (as written to results.json).

    ``progress(done, total, label)`` is called before each pair and once at the end;
    ``dip_callback`` is passed on to :func:`~deepprior.restore` (it sees the fit's progress).
    Methods that cannot run here (BM3D not installed, no Real-ESRGAN weights) are skipped and
    listed under ``"skipped"`` with the reason. A DIP fit that is interrupted is not recorded,
    and the interruption is re-raised after the finished pairs are safely on disk.
    """
    if iters is not None and iters < 1:
        raise DeepPriorError(f"--iters must be at least 1, got {iters}")
    if preset not in ("fast", "paper"):
        raise DeepPriorError(f"unknown preset {preset!r}; choose fast or paper")
    if weights is not None and not Path(weights).is_file():
        raise DeepPriorError(f"{weights}: weights file not found")
    chosen = baselines.resolve_methods(suite, methods)
    if weights is not None and "realesrgan" not in chosen:
        raise DeepPriorError("--weights is for the realesrgan method, which this run does not include")
    manifest = suites.read_manifest(data_dir)
    files = suites.select(suite, manifest, names, limit)
    config = BenchConfig(suite.name, suite.set_name, seed)
    data = _prepare_out_dir(Path(out_dir), config, resume)
    if "dip" in chosen:
        other = {(r.get("preset"), r.get("iters")) for r in data["rows"] if r["method"] == "dip"} - {(preset, iters)}
        if other:
            p, n = sorted(other, key=str)[0]
            raise DeepPriorError(f"{out_dir} holds DIP results made with preset {p} and iteration cap "
                                 f"{n or 'default'}; resume with the same --preset/--iters or choose another --out")

    skipped = {}
    for m in chosen:
        why = baselines.METHODS[m].missing(weights=weights)
        if why:
            skipped[m] = why
            log(f"skipping {m}: {why}")
    data["skipped"] = {**data.get("skipped", {}), **skipped}
    for m in chosen:  # a method that runs now is no longer "skipped"
        if m not in skipped:
            data["skipped"].pop(m, None)
    runnable = [m for m in chosen if m not in skipped]

    done = {(r["image"], r["method"]) for r in data["rows"]}
    pairs = [(f, m) for f in files for m in runnable if (suites.image_name(f), m) not in done]
    already = len(files) * len(runnable) - len(pairs)
    if already:
        log(f"resuming: {already} of {len(files) * len(runnable)} (image, method) pairs already done")
    if threads is not None:
        if threads < 1:
            raise DeepPriorError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    data["machine"] = machine_info()  # after the threads are set: it records them
    data["data_dir"] = str(data_dir)
    data["suite_description"] = suite.description()
    # The whole set's images, so that the report of a run on some of them (--images, --limit)
    # can say which to ask for again.
    data["set_images"] = [suites.image_name(f) for f in suites.select(suite, manifest)]
    write_results(out_dir, data)

    case = None
    total = len(pairs)
    for i, (rel, method) in enumerate(pairs):
        name = suites.image_name(rel)
        if progress:
            progress(i, total, f"{name} / {method}")
        if case is None or case.name != name:
            case = suites.load_case(suite, data_dir, rel, manifest, seed)
            _save_inputs(out_dir, case)
        row = _run_pair(suite, case, method, preset=preset, seed=seed, iters=iters, weights=weights,
                        dip_callback=dip_callback, out_dir=Path(out_dir))
        if row is None:  # the DIP fit was interrupted: nothing to record
            raise KeyboardInterrupt
        data["rows"].append(row)
        write_results(out_dir, data)
    if progress:
        progress(total, total, "done")
    return data


def thinned_stop_curve(outcome, every: int = 10) -> list[list]:
    """The stopping rule's curve every ``every`` iterations, to 6 digits: enough to replay
    other patience or start values offline against the PSNR history, at a fraction of the size."""
    return [[i, float(f"{v:.6g}")] for i, v in outcome.stop_curve if i % every == 0]


def _save_inputs(out_dir: Path, case: suites.Case) -> None:
    d = image_dir(out_dir, case.name)
    d.mkdir(parents=True, exist_ok=True)
    for fname, img in (("ground_truth.png", case.clean), ("degraded.png", case.degraded)):
        if not (d / fname).exists():
            save_image(img, d / fname)


def _run_pair(suite, case, method, *, preset, seed, iters, weights, dip_callback, out_dir) -> dict | None:
    info = machine_info()
    row = {"suite": suite.name, "set": suite.set_name, "image": case.name, "method": method, "seed": seed,
           "image_seed": case.seed, "width": case.clean.width, "height": case.clean.height,
           "cpu": info["cpu"], "threads": info["threads"], "torch": info["torch"]}
    start = time.perf_counter()
    if method == "dip":
        result = restore(case.degraded, case.task, preset, seed=seed, callback=dip_callback, callback_every=5,
                         reference=case.clean, iterations=iters)
        if result.outcome.stop_reason == "interrupted":
            return None
        estimate = result.image.pixels
        row.update(preset=preset, iters=iters, iterations=result.iterations, stopped_at=result.stopped_at,
                   stop_reason=result.outcome.stop_reason, history=result.history,
                   fit_params=result.params, stop_curve=thinned_stop_curve(result.outcome),
                   returned=result.outcome.returned, fit_weight=result.outcome.fit_weight,
                   partner=result.outcome.partner, partner_share=result.outcome.partner_share,
                   held_out_errors=result.outcome.held_out_errors, held_out_leads=result.outcome.held_out_leads)
    else:
        estimate = baselines.METHODS[method].run(case, weights=weights)
    seconds = time.perf_counter() - start
    estimate = _quantise(np.asarray(estimate, dtype=np.float32))
    if estimate.shape != case.clean.pixels.shape:
        raise DeepPriorError(f"{method} returned {estimate.shape} for {case.name}, expected {case.clean.pixels.shape}")
    rel = Path("images") / case.name / f"{method}.png"
    save_image(Image(estimate), out_dir / rel)
    row.update(suite.score(estimate, case.clean.pixels, case.mask))
    row.update(seconds=round(seconds, 3), output=str(rel))
    return row


def load_result_image(out_dir: Path, row_or_name, method: str | None = None) -> np.ndarray:
    """Read back a saved image: a row's output, or ``(image name, "ground_truth"/"degraded"/method)``."""
    if isinstance(row_or_name, dict):
        path = Path(out_dir) / row_or_name["output"]
    else:
        path = image_dir(out_dir, row_or_name) / f"{method}.png"
    return load_image(path, max_pixels=None).pixels
