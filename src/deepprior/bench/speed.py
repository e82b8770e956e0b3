"""``deepprior bench speed``: the fast preset's time and quality against the paper preset's.

Per image of each case, in one process and on the suites' seeded degradations:

1. ``paper_rate``: the ``paper`` preset runs ``paper_iters`` iterations (no stopping) to measure
   its seconds per iteration (the first iteration, which pays for warm-up, is left out); times the
   paper's iteration count (the preset's cap: 3000 denoising, 2000 x4 super-resolution, 11000
   reconstruction) that is the paper's full cost;
2. ``fast``: the ``fast`` preset runs to completion with its default stopping, timed on the wall
   clock and scored as the suites score (the 8-bit result, the suite's headline metric);
3. ``paper_equal``: optionally, the ``paper`` preset runs again for as long as the fast run took
   (capped at the paper's iteration count) and its result at that moment is scored: the quality
   the paper's settings reach at equal time.

The speed-up at equal or better quality is the paper's full cost / the fast time, claimed only
when the fast result reaches the paper's published number or the paper preset's quality at
equal time; the tables say which. The ``memory`` case runs a few iterations of each task on a
1024x1024 RGB image, each in a fresh subprocess, and reads its peak resident memory.

Every finished step is written to ``speed.json`` (and ``speed.md``) at once, so an interrupted
run loses at most the step in progress, and ``resume=True`` redoes only what is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DeepPriorError
from ..fitting import START_STAGES, resolve_device
from ..presets import get_preset
from ..restoration import restore
from . import resumable, runner, suites
from .resumable import Table, fmt

RESULTS = "speed.json"
MARKDOWN = "speed.md"

PAPER_ITERS = 30  # iterations timed to measure the paper preset's seconds per iteration
MEMORY_SIZE = 1024  # side of the square RGB image of the memory case
MEMORY_ITERS = 5
MEMORY_LIMIT_GB = 4.0
MEMORY_TASKS = ("denoise", "sr-x4", "reconstruct")
REFERENCE_PIXELS = 512 * 512  # the cases' time limits are stated at 512x512


@dataclass(frozen=True)
class SpeedCase:
    """One line of the targets table: images, a quality target and a time limit."""

    name: str
    suite: str  # the suite whose images, degradation and metric the case uses
    images: tuple[str, ...] | None  # image names (stems); None = the whole set
    target: float  # the mean headline metric must reach this (dB)
    limit_s: float  # ...within this many seconds per image
    time_basis: str  # "fast_seconds" (as measured) or "seconds_at_512" (scaled to 512x512 by pixel count)
    published: str | None  # the key of the paper's mean in suites.PAPER that the case's mean compares with
    label: str


CASES: dict[str, SpeedCase] = {
    "house": SpeedCase("house", "denoise-25", ("image_House256rgb",), 31.0, 60.0, "fast_seconds", None,
                       "denoise sigma 25, CBM3D House 256x256"),
    "cbm3d": SpeedCase("cbm3d", "denoise-25", None, 30.4, 240.0, "seconds_at_512", "dip (averaged)",
                       "denoise sigma 25, CBM3D_color9"),
    "set5": SpeedCase("set5", "sr-x4", None, 29.9, 120.0, "fast_seconds", "dip", "x4 super-resolution, Set5 (Y-PSNR)"),
    "heide11": SpeedCase("heide11", "inpaint-50", None, 33.0, 240.0, "seconds_at_512", "dip",
                         "50 % pixels dropped (reconstruction, keep_known=False), Heide11"),
}
CASE_NAMES = ("house", "cbm3d", "set5", "heide11", "memory")


def parse_cases(cases, allowed=CASE_NAMES) -> list[str]:
    """Case names from a list or a comma-separated string (None = all), checked, in canonical order."""
    if cases is None:
        return list(allowed)
    if isinstance(cases, str):
        cases = [c.strip() for c in cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in allowed]
    if unknown or not cases:
        raise DeepPriorError(f"unknown case(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}")
    return [c for c in allowed if c in cases]


# --------------------------------------------------------------------------- arithmetic


def speedup_claim(fast_psnr, fast_s, paper_full_s, published=None, paper_equal_psnr=None) -> dict:
    """The speed-up of the fast run over the paper's full run, and on what grounds it holds.

    ``speedup`` is ``paper_full_s / fast_s`` regardless of quality; ``speedup_at_equal_psnr``
    is the same number when the fast result is at least as good as the paper's ``published``
    number or the paper preset's result at equal time (``basis`` says which), else None.
    """
    speedup = paper_full_s / fast_s if paper_full_s is not None and fast_s else None
    grounds = []
    if fast_psnr is not None and published is not None and fast_psnr >= published:
        grounds.append("published")
    if fast_psnr is not None and paper_equal_psnr is not None and fast_psnr >= paper_equal_psnr:
        grounds.append("paper at equal time")
    basis = " and ".join(grounds) or None
    return {"speedup": speedup, "speedup_at_equal_psnr": speedup if basis and speedup is not None else None,
            "basis": basis}


def derive(row: dict) -> dict:
    """Recompute a row's derived fields from its measurements (also after a resume)."""
    out = dict(row)
    if row.get("paper_s_per_iter") is not None:
        out["paper_full_s"] = row["paper_s_per_iter"] * row["paper_full_iters"]
    if row.get("fast_seconds") is not None:
        out["seconds_at_512"] = row["fast_seconds"] * REFERENCE_PIXELS / (row["width"] * row["height"])
    out.update(speedup_claim(row.get("fast_psnr"), row.get("fast_seconds"), out.get("paper_full_s"),
                             row.get("published"), row.get("paper_eq_psnr")))
    return out


def wall_limit(spec: SpeedCase, width: int, height: int) -> float:
    """The case's time limit for one image in wall seconds (a 512x512 limit scaled by pixel count)."""
    if spec.time_basis == "seconds_at_512":
        return spec.limit_s * width * height / REFERENCE_PIXELS
    return spec.limit_s


def cut_at_limit(row: dict) -> float | None:
    """The headline metric the fast run gives within its time limit: its result, or, when it ran
    past the limit, what it held at the limit (None for rows measured before this was recorded)."""
    if "fast_limit_s" not in row or row.get("fast_psnr") is None:
        return None
    return row["fast_psnr"] if row.get("fast_at_limit") is None else row["fast_at_limit"]


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarise_case(spec: SpeedCase, rows: list[dict], n_total: int | None = None) -> dict:
    """A case's means, its targets met or not, and the speed-up at equal quality over its images."""
    done = [r for r in rows if r.get("fast_psnr") is not None]
    paper = suites.get_suite(spec.suite).paper or {}
    published = paper.get("mean", {}).get(spec.published) if spec.published else None
    times = [r[spec.time_basis] for r in done]
    mean_psnr = _mean([r["fast_psnr"] for r in done])
    mean_time = _mean(times)
    within = [cut_at_limit(r) for r in done]
    # The speed-up over the images where both the fast time and the paper's cost are known.
    both = [r for r in done if r.get("paper_full_s") is not None]
    eq = [r.get("paper_eq_psnr") for r in both]
    claim = speedup_claim(
        _mean([r["fast_psnr"] for r in both]),
        sum(r["fast_seconds"] for r in both) if both else None,
        sum(r["paper_full_s"] for r in both) if both else None,
        published,
        _mean(eq) if both and all(v is not None for v in eq) else None,
    )
    return {
        "case": spec.name, "label": spec.label, "suite": spec.suite, "metric": suites.get_suite(spec.suite).metric,
        "images": len(done), "images_total": n_total,
        "mean_psnr": mean_psnr, "target_psnr": spec.target,
        "psnr_met": None if mean_psnr is None else bool(mean_psnr >= spec.target),
        "time_basis": spec.time_basis, "mean_time_s": mean_time, "max_time_s": max(times) if times else None,
        "limit_s": spec.limit_s, "time_met": None if mean_time is None else bool(mean_time <= spec.limit_s),
        "mean_paper_eq_psnr": _mean([r.get("paper_eq_psnr") for r in done]),
        "mean_within_limit": _mean(within) if None not in within else None,
        "published": published, "published_name": spec.published,
        **claim,
    }


# --------------------------------------------------------------------------- the three steps


def _chain(mine: Callable, theirs: Callable | None) -> Callable:
    """A fit callback that runs ours (whose answer counts) and shows progress through theirs."""
    def callback(p):
        if theirs is not None:
            theirs(p)
        return mine(p)
    return callback


def _check(result) -> None:
    if result.outcome.stop_reason == "interrupted":
        raise KeyboardInterrupt


def _score(suite: suites.Suite, case: suites.Case, result) -> dict:
    """The suite's metrics of the 8-bit result, as the runner scores every method."""
    return suite.score(runner._quantise(result.image.pixels), case.clean.pixels)


def step_paper_rate(case: suites.Case, *, paper_iters: int, seed: int, device: str, fit_callback=None) -> dict:
    """Seconds per iteration of the paper preset (iterations 2..N, so warm-up is left out)."""
    stamps: list[tuple[int, float]] = []

    def stamp(p):
        if p.stage not in START_STAGES:
            stamps.append((p.iteration, time.perf_counter()))

    result = restore(case.degraded, case.task, "paper", seed=seed, device=device, callback=_chain(stamp, fit_callback),
                     callback_every=1, iterations=paper_iters, stop="off")
    _check(result)
    if len(stamps) >= 2 and stamps[-1][0] > stamps[0][0]:
        rate = (stamps[-1][1] - stamps[0][1]) / (stamps[-1][0] - stamps[0][0])
    else:
        rate = result.elapsed_s / max(result.iterations, 1)
    return {"paper_s_per_iter": rate, "paper_iters_timed": result.iterations,
            "paper_full_iters": get_preset(case.task.preset_key, "paper").iterations}


# Fractions of a case's time limit at which the fast run's result is also scored: a curve of the
# headline metric against wall time, to show what the limit costs and how far past it the quality lies.
LIMIT_MARKS = (0.25, 0.5, 1.0, 2.0, 4.0)


def step_fast(suite: suites.Suite, case: suites.Case, *, iters: int | None, seed: int, device: str,
              fit_callback=None, limit_s: float | None = None) -> dict:
    """The fast preset to completion (default stopping): wall time and the suite's metrics.

    With ``limit_s`` (the case's time limit for this image, in wall seconds) the result the fit
    holds is also scored at the first progress report (every 5 iterations) past each of
    ``LIMIT_MARKS`` x the limit (``fast_curve``: [seconds, iteration, metric]); the one at the limit
    itself is ``fast_at_limit``, None when the fit finished within the limit. Those score the fit as
    it is held, before a preset's choice against its start (``select_start``) is made.
    """
    start = time.perf_counter()
    marks = [m * limit_s for m in LIMIT_MARKS] if limit_s is not None else []
    curve: list[list] = []

    def watch(p):
        now = time.perf_counter() - start
        if p.stage not in START_STAGES and len(curve) < len(marks) and now >= marks[len(curve)]:
            cut = case.task.finish(case.degraded, np.clip(p.preview(), 0.0, 1.0))
            metric = suite.score(runner._quantise(cut), case.clean.pixels)[suite.metric]
            while len(curve) < len(marks) and now >= marks[len(curve)]:  # a slow report may pass two marks
                curve.append([round(now, 2), p.iteration, metric])

    result = restore(case.degraded, case.task, "fast", seed=seed, device=device, reference=case.clean,
                     callback=_chain(watch, fit_callback), callback_every=5, iterations=iters)
    seconds = time.perf_counter() - start
    _check(result)
    scores = _score(suite, case, result)
    at_limit = curve[LIMIT_MARKS.index(1.0)] if len(curve) > LIMIT_MARKS.index(1.0) else [None] * 3
    return {"fast_seconds": seconds, "fast_fit_seconds": result.elapsed_s, "fast_iterations": result.iterations,
            "fast_stopped_at": result.stopped_at, "fast_stop_reason": result.outcome.stop_reason,
            "fast_psnr": scores[suite.metric], "fast_metrics": scores, "fast_limit_s": limit_s,
            "fast_at_limit_s": at_limit[0], "fast_at_limit_iteration": at_limit[1], "fast_at_limit": at_limit[2],
            "fast_curve": curve,
            "fast_history": [[h["iter"], round(h["psnr"], 4)] for h in result.history if "psnr" in h]}


def step_paper_equal(suite: suites.Suite, case: suites.Case, *, budget_s: float, seed: int, device: str,
                     fit_callback=None) -> dict:
    """The paper preset for as long as the fast run took (at most its iteration count), scored."""
    start = time.perf_counter()

    def out_of_time(p):
        return time.perf_counter() - start >= budget_s

    result = restore(case.degraded, case.task, "paper", seed=seed, device=device, reference=case.clean,
                     callback=_chain(out_of_time, fit_callback), callback_every=1)
    seconds = time.perf_counter() - start
    _check(result)
    scores = _score(suite, case, result)
    return {"paper_eq_psnr": scores[suite.metric], "paper_eq_metrics": scores, "paper_eq_iterations": result.iterations,
            "paper_eq_seconds": seconds, "paper_eq_stop_reason": result.outcome.stop_reason,
            "paper_eq_history": [[h["iter"], round(h["psnr"], 4)] for h in result.history if "psnr" in h]}


# --------------------------------------------------------------------------- memory


def synthetic_photo(size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth picture with edges, (size, size, channels) in [0, 1]; memory does not depend on content."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    planes = []
    for _ in range(channels):
        a, b, f = rng.uniform(0.5, 3, 3)
        planes.append(0.5 + 0.3 * np.sin(a * 6 * xx + f) * np.cos(b * 6 * yy) + 0.2 * (xx + yy > rng.uniform(0.5, 1.5)))
    return np.clip(np.stack(planes, 2), 0, 1).astype(np.float32)


def _memory_inputs(task_name: str, size: int, seed: int):
    """(degraded image, task) of the memory case; for x4 SR the *result* is size x size."""
    from .. import degrade
    from ..images import Image
    from ..tasks import Denoise, Reconstruct, SuperResolution

    clean = Image(synthetic_photo(size, 3, seed))
    if task_name == "denoise":
        return degrade.add_noise(clean, 25, seed), Denoise(sigma=25.0)
    if task_name == "sr-x4":
        return degrade.downscale(clean, 4), SuperResolution(scale=4)
    if task_name == "reconstruct":
        mask = degrade.random_mask((size, size), 0.5, seed)
        return degrade.apply_mask(clean, mask), Reconstruct(mask=mask, keep_known=False)
    raise DeepPriorError(f"unknown memory task {task_name!r}; choose from {', '.join(MEMORY_TASKS)}")


def _max_rss_mb() -> float:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def memory_probe_here(task_name: str, size: int, iters: int, *, seed: int = 0, threads: int | None = None,
                      device: str = "auto") -> dict:
    """Run the fast preset for ``iters`` iterations in *this* process and report its peak RSS.

    Meant to run in a fresh process (:func:`memory_probe`), where the peak is this fit's alone.
    """
    import torch

    degraded, task = _memory_inputs(task_name, size, seed)
    before = _max_rss_mb()
    start = time.perf_counter()
    result = restore(degraded, task, "fast", seed=seed, device=device, threads=threads, iterations=iters)
    seconds = time.perf_counter() - start
    if result.outcome.stop_reason == "interrupted":
        raise KeyboardInterrupt
    out = {"task": task_name, "preset": "fast", "input_width": degraded.width, "input_height": degraded.height,
           "width": result.image.width, "height": result.image.height, "iterations": result.iterations,
           "seconds": seconds, "rss_before_fit_mb": before, "peak_rss_mb": _max_rss_mb(),
           "device": result.device, "threads": result.threads}
    if result.device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def memory_probe(task_name: str, size: int = MEMORY_SIZE, iters: int = MEMORY_ITERS, *, seed: int = 0,
                 threads: int | None = None, device: str = "auto", timeout_s: float = 1800) -> dict:
    """:func:`memory_probe_here` in a fresh Python process (so imports and earlier fits don't count)."""
    import deepprior

    cmd = [sys.executable, "-m", "deepprior.bench.speed", "--memory-probe", task_name, "--size", str(size),
           "--iters", str(iters), "--seed", str(seed), "--device", device]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    src = str(Path(deepprior.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise DeepPriorError(f"memory probe for {task_name} took longer than {timeout_s:.0f} s") from None
    if proc.returncode == 130:
        raise KeyboardInterrupt
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeepPriorError(f"memory probe for {task_name} failed (exit {proc.returncode}): {why}")
    return json.loads(lines[-1])


def memory_row(probe: dict, limit_gb: float = MEMORY_LIMIT_GB) -> dict:
    """A probe's result with its peak in GB (2^30 bytes) and the target judged."""
    gb = probe["peak_rss_mb"] / 1024
    return {**probe, "peak_rss_gb": gb, "limit_gb": limit_gb, "met": bool(gb <= limit_gb)}


# --------------------------------------------------------------------------- the run


def _work(chosen: list[str], manifest: dict, limit: int | None) -> list[tuple[str, str, str, SpeedCase]]:
    """(row key, suite name, image path, case) for each distinct image of the chosen cases, in order.

    An image in two cases (House: ``house`` and ``cbm3d``) is run once, under the first.
    """
    items, seen = [], set()
    for name in chosen:
        if name == "memory":
            continue
        spec = CASES[name]
        suite = suites.get_suite(spec.suite)
        files = suites.select(suite, manifest, list(spec.images) if spec.images else None, limit)
        for rel in files:
            key = f"{spec.suite}/{suites.image_name(rel)}"
            if key not in seen:
                seen.add(key)
                items.append((key, spec.suite, rel, spec))
    return items


def _steps_missing(row: dict, paper_equal_time: bool) -> list[str]:
    missing = [s for s in ("paper_rate", "fast") if s not in row.get("steps", {})]
    if paper_equal_time and "paper_equal" not in row.get("steps", {}):
        missing.append("paper_equal")
    return missing


def summarise(data: dict, manifest: dict | None = None) -> dict:
    """Per-case summaries over every row in ``data`` (a resumed file may hold more than this run chose)."""
    rows = [derive(r) for r in data["rows"] if r.get("kind") == "image"]
    out = {}
    for name, spec in CASES.items():
        if name not in data.get("cases_run", CASES):  # House alone is also a row of cbm3d: don't summarise that
            continue
        mine = [r for r in rows if r["suite"] == spec.suite and (spec.images is None or r["image"] in spec.images)]
        if not mine:
            continue
        total = None
        if manifest is not None:
            suite = suites.get_suite(spec.suite)
            total = len(spec.images) if spec.images else len(suites.suite_files(suite, manifest))
        out[name] = summarise_case(spec, mine, total)
    mem = [r for r in data["rows"] if r.get("kind") == "memory"]
    if mem:
        out["memory"] = {"case": "memory", "tasks": len(mem), "max_peak_rss_gb": max(r["peak_rss_gb"] for r in mem),
                         "limit_gb": MEMORY_LIMIT_GB, "met": all(r["met"] for r in mem)}
    return out


def tables(data: dict) -> list[Table]:
    """The per-image, per-case (targets) and memory tables of a speed results dict."""
    rows = [derive(r) for r in data["rows"] if r.get("kind") == "image"]
    per_image = Table("Per image", ["suite", "image", "size", "metric", "fast s", "fast iters", "fast PSNR",
                                    "fast @ limit s (iter)",
                                    "paper PSNR @ equal time (iters)", "paper s/iter", "paper full cost s",
                                    "published", "speed-up", "at equal PSNR vs"])
    for r in rows:
        eq = (f"{fmt(r.get('paper_eq_psnr'))} ({r.get('paper_eq_iterations')})"
              if r.get("paper_eq_psnr") is not None else "-")
        if r.get("fast_at_limit") is not None:
            cut = f"{fmt(r['fast_at_limit'])} @ {r['fast_limit_s']:.0f} s ({r['fast_at_limit_iteration']})"
        else:
            cut = "finished within" if "fast_limit_s" in r else "-"
        per_image.rows.append([
            r["suite"], r["image"], f"{r['width']}x{r['height']}", r["metric"], fmt(r.get("fast_seconds"), 1),
            str(r.get("fast_iterations", "-")), fmt(r.get("fast_psnr")), cut, eq, fmt(r.get("paper_s_per_iter"), 3),
            fmt(r.get("paper_full_s"), 0), fmt(r.get("published")),
            f"{fmt(r.get('speedup'), 1)}x" if r.get("speedup") is not None else "-", r.get("basis") or "not reached",
        ])
    per_image.notes = [
        "fast s: wall time of the fast preset to completion (default stopping); PSNR: the suite's headline metric "
        "of the 8-bit result (Y-PSNR for super-resolution).",
        "fast @ limit: when the fast run took longer than its case's time limit for the image, the metric of the "
        "result it held at the limit (the iteration in brackets): what keeping to the limit would cost.",
        "paper full cost: the paper preset's seconds per iteration (measured over the first "
        f"{data.get('config', {}).get('paper_iters')} iterations, the first left out) x its published iteration "
        "count.",
        "paper PSNR @ equal time: the paper preset run for as long as the fast run took, scored at that point "
        "(iterations reached in brackets).",
        "speed-up: paper full cost / fast time; 'at equal PSNR vs' says whether the fast result is at least the "
        "paper's published number for that image, the paper preset's at equal time, or neither.",
    ]
    summary = data.get("summary") or {}
    targets = Table("Targets: quality and time per case", ["case", "images", "mean metric", "target", "quality", "within limit",
                                           "time per image s",
                                           "limit s", "time", "paper @ equal time", "published", "speed-up",
                                           "at equal PSNR vs"])
    for name in CASE_NAMES:
        s = summary.get(name)
        if s is None or name == "memory":
            continue
        n = f"{s['images']}" + (f"/{s['images_total']}" if s.get("images_total") else "")
        basis = "at 512x512" if s["time_basis"] == "seconds_at_512" else "mean"
        targets.rows.append([
            f"{name}: {s['label']}", n, fmt(s["mean_psnr"]), f">= {s['target_psnr']:.1f}", fmt(s["psnr_met"]),
            fmt(s.get("mean_within_limit")),
            f"{fmt(s['mean_time_s'], 1)} ({basis}; max {fmt(s['max_time_s'], 1)})", f"<= {s['limit_s']:.0f}",
            fmt(s["time_met"]), fmt(s["mean_paper_eq_psnr"]),
            f"{fmt(s['published'])} ({s['published_name']})" if s.get("published") is not None else "-",
            f"{fmt(s['speedup'], 1)}x" if s.get("speedup") is not None else "-", s.get("basis") or "not reached",
        ])
    targets.notes = [
        "Quality: the mean headline metric over the case's images (n/total when a run covered fewer).",
        "Within limit: the mean metric with every image cut at its time limit (its result when it finished "
        "within).",
        "Time: mean wall seconds per image; 'at 512x512' scales each image's time by 512x512 / its pixel count.",
        "Speed-up: the paper's summed full cost / the summed fast time over the images where both were measured, "
        "claimed against the paper's published mean (cbm3d: 'dip (averaged)', the single-run number with "
        "exponential averaging, as the fast preset uses) or the mean of the paper preset at equal time.",
    ]
    mem = [r for r in data["rows"] if r.get("kind") == "memory"]
    memory = Table("Peak memory", ["task", "input", "result", "iterations", "peak RSS GB", "before fit GB", "limit GB",
                                   "target", "device"])
    for r in mem:
        memory.rows.append([r["task"], f"{r['input_width']}x{r['input_height']}", f"{r['width']}x{r['height']}",
                            str(r["iterations"]), fmt(r["peak_rss_gb"], 2), fmt(r["rss_before_fit_mb"] / 1024, 2),
                            f"<= {r['limit_gb']:.0f}", fmt(r["met"]), r.get("device", "-")])
    memory.notes = ["Peak resident memory (ru_maxrss) of a fresh Python process that imports deepprior and runs the "
                    "fast preset for a few iterations (the network's activations are all allocated by then); "
                    "x4 super-resolution produces the 1024x1024 result from a 256x256 input."]
    return [per_image, targets] + ([memory] if mem else [])


def markdown(data: dict) -> str:
    m = data.get("machine", {})
    pre = [f"- machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('cores_usable')} usable), "
           f"{m.get('threads')} PyTorch threads, torch {m.get('torch')}, device {m.get('device')}, "
           f"deepprior {m.get('deepprior')}",
           f"- started {data.get('started')}, updated {data.get('updated')}; seed {data['config'].get('seed')}; "
           f"fast iteration cap: {data['config'].get('fast_iters') or 'the preset default'}",
           f"- data: `{data.get('data_dir')}` (every image checked against MANIFEST.tsv's sha256); "
           f"raw results: [{RESULTS}]({RESULTS})"]
    return resumable.to_markdown("deepprior bench speed", pre, tables(data))


ProgressFn = Callable[[int, int, str], None]


def run_speed(
    data_dir: Path | None,
    out_dir: Path,
    *,
    cases=None,
    limit: int | None = None,
    paper_iters: int = PAPER_ITERS,
    paper_equal_time: bool = True,
    iters: int | None = None,
    seed: int = 0,
    resume: bool = False,
    threads: int | None = None,
    device: str = "auto",
    memory_size: int = MEMORY_SIZE,
    memory_iters: int = MEMORY_ITERS,
    progress: ProgressFn | None = None,
    fit_callback: Callable | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Run the chosen cases, writing ``speed.json``/``speed.md`` to ``out_dir`` after every step.

    ``iters`` caps the fast run (default: the preset's), for quick checks; ``paper_iters`` is
    only how many iterations time the paper preset. Returns the results dict (as written).
    """
    chosen = parse_cases(cases)
    if paper_iters < 2:
        raise DeepPriorError(f"--paper-iters must be at least 2 (the first iteration is not timed), got {paper_iters}")
    if iters is not None and iters < 1:
        raise DeepPriorError(f"--iters must be at least 1, got {iters}")
    if threads is not None:
        if threads < 1:
            raise DeepPriorError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    dev = str(resolve_device(device))
    images = [c for c in chosen if c != "memory"]
    manifest = None
    if images:
        data_dir = suites.find_data_dir(data_dir)
        manifest = suites.read_manifest(data_dir)
    work = _work(chosen, manifest, limit) if images else []
    config = {"seed": seed, "paper_iters": paper_iters, "fast_iters": iters, "memory_size": memory_size,
              "memory_iters": memory_iters}
    out_dir = Path(out_dir)
    data = resumable.open_results(out_dir, RESULTS, "speed", config, resume)
    data["machine"] = resumable.machine(dev)
    data["cases_run"] = [c for c in CASE_NAMES if c in set(data.get("cases_run", [])) | set(chosen)]
    if data_dir is not None:
        data["data_dir"] = str(data_dir)
    data["targets"] = {n: {"target": c.target, "limit_s": c.limit_s, "time_basis": c.time_basis, "label": c.label}
                       for n, c in CASES.items()}
    data["targets"]["memory"] = {"limit_gb": MEMORY_LIMIT_GB, "size": memory_size}

    def save():
        data["summary"] = summarise(data, manifest)
        resumable.save(out_dir, RESULTS, data, MARKDOWN, markdown(data))

    # The list of (row key, step) still to do.
    todo = []
    for key, suite_name, rel, _ in work:
        row = resumable.get_row(data, key)
        todo += [(key, step) for step in _steps_missing(row or {}, paper_equal_time)]
    if "memory" in chosen:
        todo += [(f"memory/{t}", "memory") for t in MEMORY_TASKS if resumable.get_row(data, f"memory/{t}") is None]
    n_all = sum(len(_steps_missing({}, paper_equal_time)) for _ in work) + (len(MEMORY_TASKS) if "memory" in chosen else 0)
    if n_all - len(todo):
        log(f"resuming: {n_all - len(todo)} of {n_all} steps already done")
    save()

    rels = {key: (suite_name, rel, spec) for key, suite_name, rel, spec in work}
    case = None
    for i, (key, step) in enumerate(todo):
        if progress:
            progress(i, len(todo), f"{key} / {step}")
        if step == "memory":
            probe = memory_probe(key.split("/", 1)[1], memory_size, memory_iters, seed=seed, threads=threads, device=dev)
            resumable.row_for(data, key, kind="memory").update(memory_row(probe), date=resumable.now_iso(),
                                                              cpu=data["machine"]["cpu"])
            save()
            continue
        suite_name, rel, spec = rels[key]
        suite = suites.get_suite(suite_name)
        if case is None or case[0] != key:
            case = (key, suites.load_case(suite, data_dir, rel, manifest, seed))
        c = case[1]
        per_image = (suite.paper or {}).get("per_image", {}).get("dip", {})
        row = resumable.row_for(data, key, kind="image", suite=suite_name, set=suite.set_name, image=c.name,
                                width=c.clean.width, height=c.clean.height, metric=suite.metric, seed=seed,
                                image_seed=c.seed, published=per_image.get(c.name), steps={})
        if step == "paper_rate":
            row.update(step_paper_rate(c, paper_iters=paper_iters, seed=seed, device=dev, fit_callback=fit_callback))
        elif step == "fast":
            row.update(step_fast(suite, c, iters=iters, seed=seed, device=dev, fit_callback=fit_callback,
                                 limit_s=wall_limit(spec, c.clean.width, c.clean.height)))
        else:
            if "fast" not in row["steps"]:  # pragma: no cover - the order of the steps guarantees it
                raise DeepPriorError("the equal-time run needs the fast run's time")
            row.update(step_paper_equal(suite, c, budget_s=row["fast_seconds"], seed=seed, device=dev,
                                        fit_callback=fit_callback))
        row["steps"][step] = {"date": resumable.now_iso(), "cpu": data["machine"]["cpu"],
                              "threads": data["machine"]["threads"], "device": dev}
        derived = derive(row)
        row.update({k: derived[k] for k in _DERIVED if k in derived})
        save()
    if progress:
        progress(len(todo), len(todo), "done")
    return data


_DERIVED = ("paper_full_s", "seconds_at_512", "speedup", "speedup_at_equal_psnr", "basis")


def _probe_main(argv=None) -> int:
    """``python -m deepprior.bench.speed --memory-probe TASK ...``: print one JSON line."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m deepprior.bench.speed")
    ap.add_argument("--memory-probe", required=True, choices=MEMORY_TASKS)
    ap.add_argument("--size", type=int, default=MEMORY_SIZE)
    ap.add_argument("--iters", type=int, default=MEMORY_ITERS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    try:
        out = memory_probe_here(a.memory_probe, a.size, a.iters, seed=a.seed, threads=a.threads, device=a.device)
    except KeyboardInterrupt:
        return 130
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main())
