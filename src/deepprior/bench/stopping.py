"""``deepprior bench stopping``: automatic stopping against the true quality peak.

For each image of CBM3D_color9 (sigma 25), Set5 (x4) and Heide11 (50 % dropped) the fast
preset runs with ``stop="observe"`` and the ground truth as reference: the stopping rule is
evaluated all along but the fit runs on to the cap, so its PSNR history shows the true peak
(and its iteration) that a stopping rule could at best have returned. Beside it:

* the auto-stopped result: the iterate ``stop="auto"`` would return, i.e. the candidate held at
  the rule's minimum when it fires (``auto_stop_at``), or the last output when it never
  fires. The observing fit returns exactly that (its choice is frozen once the rule has fired);
  a progress callback notes the time the rule fired;
* the gap in dB between the peak and the auto-stopped result, and the ratio of the iteration
  at which the rule fired to the peak's iteration;
* optionally (``bayes=True``) the Bayesian (SGLD) posterior mean's PSNR and time.

All PSNRs compared here are RGB PSNR over the whole image on the float result, the measure the
fit's history logs (for super-resolution the suites' Y-PSNR of the 8-bit result is recorded too).
Targets: mean gap <= 0.5 dB, no image more than 1.5 dB below its peak, and the rule firing
within 1.5x the peak's iteration on every image.

Each finished step goes to ``stopping.json`` (and ``stopping.md``) at once; ``resume=True``
redoes only what is missing (adding ``--bayes`` later runs only the Bayesian fits).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DeepPriorError
from ..fitting import resolve_device
from ..metrics import psnr
from ..restoration import configure, restore
from . import resumable, runner, suites
from .resumable import Table, fmt
from .speed import _chain, _check, _mean, parse_cases

RESULTS = "stopping.json"
MARKDOWN = "stopping.md"

CASES = {"cbm3d": "denoise-25", "set5": "sr-x4", "heide11": "inpaint-50"}
CASE_NAMES = tuple(CASES)
MEAN_GAP_DB = 0.5
MAX_GAP_DB = 1.5
MAX_RATIO = 1.5


class FireTimer:
    """A fit callback (every iteration) that notes the wall time at which the stopping rule fired.

    With ``stop="observe"`` the fit runs on to its cap, but what it returns is what
    ``stop="auto"`` would have: the iterate held when the rule fired (frozen from then on), or
    its last output when the rule never fired. Only the time ``stop="auto"`` would have taken
    needs watching.
    """

    def __init__(self):
        self.fired_at: int | None = None
        self.fired_after_s: float | None = None
        self.start = time.perf_counter()

    def __call__(self, p) -> None:
        if self.fired_at is None and p.auto_stop_at is not None:
            self.fired_at = p.auto_stop_at
            self.fired_after_s = time.perf_counter() - self.start
        return None


def stop_stats(peak_psnr: float, peak_iter: int, auto_psnr: float, auto_stop_at: int | None, iterations: int) -> dict:
    """The gap to the peak and how late the rule fired, relative to the peak's iteration.

    When the rule never fired, ``stop="auto"`` would have run to the cap: the ratio uses
    ``iterations`` then.
    """
    stop_iter = auto_stop_at if auto_stop_at is not None else iterations
    return {"gap_db": peak_psnr - auto_psnr, "stop_iter": stop_iter, "stop_ratio": stop_iter / max(peak_iter, 1)}


def step_observe(suite: suites.Suite, case: suites.Case, *, iters: int | None, seed: int, device: str,
                 overrides: dict, fit_callback=None) -> dict:
    """The fast preset with ``stop="observe"`` and the reference: peak, auto-stopped result, gap."""
    cfg = configure(case.task, "fast", iterations=iters, stop="observe", **overrides)
    timer = FireTimer()
    start = time.perf_counter()
    result = restore(case.degraded, case.task, "fast", seed=seed, device=device, reference=case.clean,
                     callback=_chain(timer, fit_callback), callback_every=1, iterations=iters, stop="observe",
                     **overrides)
    seconds = time.perf_counter() - start
    _check(result)
    o = result.outcome
    ref = case.clean.pixels
    hist = [h for h in o.history if "psnr" in h]
    if not hist:
        raise DeepPriorError(f"{case.name}: the fit logged no PSNR history")
    peak = max(hist, key=lambda h: h["psnr"])
    auto = o.output  # what stop="auto" returns (see FireTimer)
    auto_psnr = psnr(auto, ref)
    auto_8bit = suite.score(runner._quantise(case.task.finish(case.degraded, np.clip(auto, 0, 1))), ref)
    row = {
        "cap": cfg.iterations, "iterations": o.iterations, "observe_seconds": seconds,
        "peak_psnr": float(peak["psnr"]), "peak_iter": peak["iter"],
        "peak_at_cap": bool(peak["iter"] > o.iterations - cfg.history_every),
        "auto_stop_at": o.auto_stop_at, "auto_fired": o.auto_stop_at is not None,
        "auto_result_iter": o.stopped_at, "auto_psnr": float(auto_psnr), "auto_metrics": auto_8bit,
        "auto_seconds": timer.fired_after_s if timer.fired_at is not None else seconds,
        "final_psnr": hist[-1]["psnr"],
        "stop_patience": cfg.stop_patience, "stop_window": cfg.stop_window,
        "history": [[h["iter"], round(h["psnr"], 4)] for h in hist],
        "stop_curve": runner.thinned_stop_curve(o),
    }
    row.update(stop_stats(row["peak_psnr"], row["peak_iter"], auto_psnr, o.auto_stop_at, o.iterations))
    return row


def step_bayes(suite: suites.Suite, case: suites.Case, *, iters: int | None, seed: int, device: str, overrides: dict,
               fit_callback=None) -> dict:
    """The fast preset in Bayesian mode (SGLD posterior mean): its PSNR and time."""
    start = time.perf_counter()
    result = restore(case.degraded, case.task, "fast", seed=seed, device=device, reference=case.clean,
                     callback=fit_callback, callback_every=5, iterations=iters, bayes=True, **overrides)
    seconds = time.perf_counter() - start
    _check(result)
    scores = suite.score(runner._quantise(result.image.pixels), case.clean.pixels)
    return {"bayes_psnr": psnr(result.outcome.output, case.clean.pixels), "bayes_metrics": scores,
            "bayes_seconds": seconds, "bayes_iterations": result.iterations, "bayes_samples": result.outcome.samples}


def observe_from_suite(suite_row: dict, cfg) -> dict:
    """The observe step's row, taken from a suite run's DIP row (``deepprior bench SUITE``).

    A suite fit with ``stop="auto"`` whose rule never fired ran exactly the loop ``stop="observe"``
    runs (same preset, seed and image; the rule only watches), so its PSNR history, the rule's curve
    and result are this benchmark's. Only such rows are taken: the rule must not have fired, the
    fit must have reached the cap ``cfg.iterations`` with its last history entry there, and its
    recorded fit options must equal ``cfg`` (the Bayesian-only fields aside). Anything else raises
    :class:`DeepPriorError` naming the reason; the fit then has to be run.
    """
    name = f"{suite_row.get('suite')}/{suite_row.get('image')}"
    if suite_row.get("method") != "dip" or suite_row.get("preset") != "fast" or suite_row.get("iters") is not None:
        raise DeepPriorError(f"{name}: not a DIP fit with the fast preset at its default cap")
    recorded = dict((suite_row.get("fit_params") or {}).get("fit") or {})
    wanted = json.loads(json.dumps(cfg.to_dict()))  # as the suite stored it: tuples become lists
    for key in ("bayes", "sgld_noise", "burn_in", "sample_every", "stop"):  # Bayesian-only, or what we change
        recorded.pop(key, None)
        wanted.pop(key, None)
    if recorded != wanted:
        differ = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
        raise DeepPriorError(f"{name}: fitted with other options than the current preset ({', '.join(differ)})")
    hist = [h for h in suite_row.get("history") or [] if "psnr" in h]
    if suite_row.get("stop_reason") != "completed" or suite_row.get("iterations") != cfg.iterations \
            or not hist or hist[-1]["iter"] != cfg.iterations:
        raise DeepPriorError(f"{name}: the fit did not run to its cap of {cfg.iterations} iterations "
                             f"(stop reason {suite_row.get('stop_reason')!r})")
    peak = max(hist, key=lambda h: h["psnr"])
    seconds = float(suite_row["seconds"])
    row = {
        "cap": cfg.iterations, "iterations": cfg.iterations, "observe_seconds": seconds,
        "peak_psnr": float(peak["psnr"]), "peak_iter": peak["iter"],
        "peak_at_cap": bool(peak["iter"] > cfg.iterations - cfg.history_every),
        "auto_stop_at": None, "auto_fired": False, "auto_result_iter": suite_row.get("stopped_at"),
        "auto_psnr": float(hist[-1]["psnr"]),  # the result is the last averaged output, logged at the cap
        "auto_metrics": {k: suite_row[k] for k in ("psnr", "ssim", "psnr_y", "ssim_y") if k in suite_row},
        "auto_seconds": seconds, "final_psnr": float(hist[-1]["psnr"]),
        "stop_patience": cfg.stop_patience, "stop_window": cfg.stop_window,
        "history": [[h["iter"], round(h["psnr"], 4)] for h in hist],
        "stop_curve": suite_row.get("stop_curve") or [],
    }
    row.update(stop_stats(row["peak_psnr"], row["peak_iter"], row["auto_psnr"], None, cfg.iterations))
    return row


def read_suite_rows(folders) -> dict[tuple[str, str, int], dict]:
    """DIP rows of suite runs (``deepprior bench SUITE --out FOLDER``), by (suite, image, seed)."""
    rows = {}
    for folder in folders or ():
        data = runner.read_results(Path(folder))
        if data is None:
            raise DeepPriorError(f"{folder}: no suite results ({runner.RESULTS_JSON}) there")
        source = str(Path(folder) / runner.RESULTS_JSON)
        for r in data["rows"]:
            if isinstance(r, dict) and r.get("method") == "dip":
                rows[(r.get("suite"), r.get("image"), r.get("seed"))] = dict(r, source=source)
    return rows


# --------------------------------------------------------------------------- summaries and tables


def summarise_rows(rows: list[dict]) -> dict | None:
    """Means, worst cases and the three targets over ``rows`` that have their observe step."""
    done = [r for r in rows if r.get("gap_db") is not None]
    if not done:
        return None
    gaps = [r["gap_db"] for r in done]
    ratios = [r["stop_ratio"] for r in done]
    worst = max(done, key=lambda r: r["gap_db"])
    latest = max(done, key=lambda r: r["stop_ratio"])
    bayes = [r for r in done if r.get("bayes_psnr") is not None]
    out = {
        "images": len(done),
        "mean_peak_psnr": _mean([r["peak_psnr"] for r in done]),
        "mean_auto_psnr": _mean([r["auto_psnr"] for r in done]),
        "mean_gap_db": _mean(gaps), "max_gap_db": max(gaps), "max_gap_image": worst["image"],
        "mean_stop_ratio": _mean(ratios), "max_stop_ratio": max(ratios), "max_stop_ratio_image": latest["image"],
        "fired": sum(1 for r in done if r.get("auto_fired")),
        "peaks_at_cap": sum(1 for r in done if r.get("peak_at_cap")),
        "mean_auto_seconds": _mean([r.get("auto_seconds") for r in done]),
        "mean_observe_seconds": _mean([r.get("observe_seconds") for r in done]),
        "mean_gap_met": bool(_mean(gaps) <= MEAN_GAP_DB),
        "max_gap_met": bool(max(gaps) <= MAX_GAP_DB),
        "stop_ratio_met": bool(max(ratios) <= MAX_RATIO),
    }
    if bayes:
        out.update(bayes_images=len(bayes), mean_bayes_psnr=_mean([r["bayes_psnr"] for r in bayes]),
                   mean_bayes_gap_db=_mean([r["peak_psnr"] - r["bayes_psnr"] for r in bayes]),
                   mean_bayes_seconds=_mean([r["bayes_seconds"] for r in bayes]))
    return out


def summarise(data: dict) -> dict:
    out = {}
    for name, suite_name in CASES.items():
        s = summarise_rows([r for r in data["rows"] if r["suite"] == suite_name])
        if s:
            out[name] = s
    s = summarise_rows(data["rows"])
    if s:
        out["all"] = s
    return out


def tables(data: dict) -> list[Table]:
    with_bayes = any(r.get("bayes_psnr") is not None for r in data["rows"])
    header = ["suite", "image", "peak PSNR @ iter", "auto PSNR", "gap dB", "rule fired at", "ratio", "result from iter",
              "PSNR at cap", "auto s"]
    if with_bayes:
        header += ["Bayes PSNR", "Bayes s"]
    per_image = Table("Per image", header)
    for r in data["rows"]:
        if r.get("gap_db") is None:
            continue
        fired = str(r["auto_stop_at"]) if r.get("auto_fired") else f"never (cap {r['iterations']})"
        line = [r["suite"], r["image"], f"{fmt(r['peak_psnr'])} @ {r['peak_iter']}" + (" (at cap)" if r.get("peak_at_cap") else ""),
                fmt(r["auto_psnr"]), fmt(r["gap_db"]), fired, f"{fmt(r['stop_ratio'])}x", str(r["auto_result_iter"]),
                fmt(r["final_psnr"]), fmt(r.get("auto_seconds"), 1)]
        if with_bayes:
            line += [fmt(r.get("bayes_psnr")), fmt(r.get("bayes_seconds"), 1)]
        per_image.rows.append(line)
    per_image.notes = [
        "PSNR: RGB over the whole image, on the float result (the fit history's measure), for every suite.",
        "peak: the best PSNR of the running result in the history (every 10 iterations) up to the cap; auto: the "
        "result stop='auto' returns: the iterate at the rule's minimum ('result from iter') held when the rule fired, "
        "or the last output when it never fired.",
        "ratio: the iteration the rule fired at (the cap when it never fired) / the peak's iteration; auto s: wall "
        "time until the rule fired.",
    ]
    borrowed = sorted({r["steps"]["observe"]["from_suite"] for r in data["rows"]
                       if (r.get("steps") or {}).get("observe", {}).get("from_suite")})
    if borrowed:
        per_image.notes.append("Observe steps taken from the suite runs " + ", ".join(borrowed) + " (fits that ran to "
                               "their cap without the rule firing, i.e. exactly the observed fit; time is theirs).")
    if any(r.get("peak_at_cap") for r in data["rows"]):
        per_image.notes.append("(at cap): the PSNR was still rising at the cap, so the true peak lies later; rerun "
                               "with a higher --iters.")
    summary = data.get("summary") or {}
    header = ["scope", "images", "mean peak", "mean auto", "mean gap dB", f"<= {MEAN_GAP_DB}", "worst gap dB",
              f"<= {MAX_GAP_DB}", "mean ratio", "worst ratio", f"<= {MAX_RATIO}x", "rule fired", "peak at cap"]
    if with_bayes:
        header += ["mean Bayes PSNR", "Bayes gap", "mean Bayes s"]
    targets = Table("Targets: stopping against the peak", header)
    for name in CASE_NAMES + ("all",):
        s = summary.get(name)
        if s is None:
            continue
        scope = f"{name} ({CASES[name]})" if name in CASES else "**all**"
        line = [scope, str(s["images"]), fmt(s["mean_peak_psnr"]), fmt(s["mean_auto_psnr"]), fmt(s["mean_gap_db"]),
                fmt(s["mean_gap_met"]), f"{fmt(s['max_gap_db'])} ({s['max_gap_image']})", fmt(s["max_gap_met"]),
                f"{fmt(s['mean_stop_ratio'])}x", f"{fmt(s['max_stop_ratio'])}x ({s['max_stop_ratio_image']})",
                fmt(s["stop_ratio_met"]), f"{s['fired']}/{s['images']}", f"{s['peaks_at_cap']}/{s['images']}"]
        if with_bayes:
            line += [fmt(s.get("mean_bayes_psnr")), fmt(s.get("mean_bayes_gap_db")), fmt(s.get("mean_bayes_seconds"), 1)]
        targets.rows.append(line)
    targets.notes = [f"Targets: mean gap <= {MEAN_GAP_DB} dB; no image more than {MAX_GAP_DB} dB below its peak; the "
                     f"rule fires within {MAX_RATIO}x the peak's iteration on every image.",
                     "peak at cap: images whose PSNR was still rising at the cap; there the true gap can only be "
                     "larger and the true ratio only smaller than shown, so rerun them with a higher --iters."]
    if with_bayes:
        targets.notes.append("Bayes gap: mean of (peak - Bayesian posterior mean's PSNR) over the images with both.")
    return [per_image, targets]


def markdown(data: dict) -> str:
    m, c = data.get("machine", {}), data["config"]
    pre = [f"- fast preset with stop='observe', iteration cap: {c.get('iters') or 'the preset default'}"
           + (f", overrides {c['overrides']}" if c.get("overrides") else "") + f"; seed {c.get('seed')}",
           f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('threads')} PyTorch threads, torch "
           f"{m.get('torch')}, device {m.get('device')}, deepprior {m.get('deepprior')}",
           f"- started {data.get('started')}, updated {data.get('updated')}; data `{data.get('data_dir')}`; "
           f"raw results: [{RESULTS}]({RESULTS})"]
    return resumable.to_markdown("deepprior bench stopping", pre, tables(data))


# --------------------------------------------------------------------------- the run


def run_stopping(
    data_dir: Path | None,
    out_dir: Path,
    *,
    cases=None,
    names: list[str] | None = None,
    limit: int | None = None,
    bayes: bool = False,
    iters: int | None = None,
    seed: int = 0,
    resume: bool = False,
    threads: int | None = None,
    device: str = "auto",
    overrides: dict | None = None,
    observe_from=None,
    progress: Callable[[int, int, str], None] | None = None,
    fit_callback: Callable | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Run the chosen cases, writing ``stopping.json``/``stopping.md`` after every fit.

    ``iters`` overrides the preset's cap (it must be high enough for the PSNR to pass its peak);
    ``overrides`` are further :class:`~deepprior.presets.FitConfig` fields for both fits (tests
    use a short stopping window). ``observe_from`` names the folders of suite runs (``deepprior
    bench SUITE --out``) whose DIP fits stand in for the observe step where they ran exactly that fit (see :func:`observe_from_suite`); the row records where it came from.
    Returns the results dict (as written).
    """
    chosen = parse_cases(cases, CASE_NAMES)
    overrides = dict(overrides or {})
    if iters is not None and iters < 1:
        raise DeepPriorError(f"--iters must be at least 1, got {iters}")
    if {"stop", "bayes", "iterations"} & set(overrides):
        raise DeepPriorError("overrides may not set stop, bayes or iterations (the benchmark sets them)")
    if threads is not None:
        if threads < 1:
            raise DeepPriorError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    dev = str(resolve_device(device))
    data_dir = suites.find_data_dir(data_dir)
    manifest = suites.read_manifest(data_dir)
    work = []
    for name in chosen:
        suite = suites.get_suite(CASES[name])
        # --images picks, in each case, the named images that case has (all, when none is named)
        own = [n for n in names or () if n in {suites.image_name(f) for f in suites.suite_files(suite, manifest)}]
        if names and not own:
            continue
        work += [(suite, rel) for rel in suites.select(suite, manifest, own or None, limit)]
    if names and not work:
        raise DeepPriorError(f"no image {', '.join(names)} in the cases {', '.join(chosen)}")
    config = {"seed": seed, "iters": iters, "overrides": overrides}
    out_dir = Path(out_dir)
    data = resumable.open_results(out_dir, RESULTS, "stopping", config, resume)
    data["machine"] = resumable.machine(dev)
    data["data_dir"] = str(data_dir)
    data["targets"] = {"mean_gap_db": MEAN_GAP_DB, "max_gap_db": MAX_GAP_DB, "max_stop_ratio": MAX_RATIO}

    def save():
        data["summary"] = summarise(data)
        resumable.save(out_dir, RESULTS, data, MARKDOWN, markdown(data))

    suite_rows = read_suite_rows(observe_from)
    if suite_rows and (iters is not None or overrides):
        raise DeepPriorError("--observe-from takes suite fits at the preset's defaults: drop --iters")
    imported = 0
    for suite, rel in work if suite_rows else ():
        key = f"{suite.name}/{suites.image_name(rel)}"
        source = suite_rows.get((suite.name, suites.image_name(rel), seed))
        if source is None or "observe" in ((resumable.get_row(data, key) or {}).get("steps") or {}):
            continue
        task = suites.load_case(suite, data_dir, rel, manifest, seed).task
        obs = observe_from_suite(source, configure(task, "fast", stop="observe"))
        row = resumable.row_for(data, key, suite=suite.name, set=suite.set_name, image=suites.image_name(rel),
                                width=source.get("width"), height=source.get("height"), seed=seed,
                                image_seed=source.get("image_seed"), steps={})
        row.update(obs)
        row["steps"]["observe"] = {"date": resumable.now_iso(), "cpu": source.get("cpu"), "threads": source.get("threads"),
                                   "device": "cpu", "from_suite": source["source"]}
        imported += 1
    if imported:
        log(f"observe step taken from the suite results for {imported} image(s)")

    steps = ("observe", "bayes") if bayes else ("observe",)
    todo = []
    for suite, rel in work:
        row = resumable.get_row(data, f"{suite.name}/{suites.image_name(rel)}") or {}
        todo += [(suite, rel, s) for s in steps if s not in row.get("steps", {})]
    if len(work) * len(steps) - len(todo):
        log(f"resuming: {len(work) * len(steps) - len(todo)} of {len(work) * len(steps)} fits already done")
    save()

    case = None
    for i, (suite, rel, step) in enumerate(todo):
        key = f"{suite.name}/{suites.image_name(rel)}"
        if progress:
            progress(i, len(todo), f"{key} / {step}")
        if case is None or case[0] != key:
            case = (key, suites.load_case(suite, data_dir, rel, manifest, seed))
        c = case[1]
        row = resumable.row_for(data, key, suite=suite.name, set=suite.set_name, image=c.name, width=c.clean.width,
                                height=c.clean.height, seed=seed, image_seed=c.seed, steps={})
        fn = step_observe if step == "observe" else step_bayes
        row.update(fn(suite, c, iters=iters, seed=seed, device=dev, overrides=overrides, fit_callback=fit_callback))
        row["steps"][step] = {"date": resumable.now_iso(), "cpu": data["machine"]["cpu"],
                              "threads": data["machine"]["threads"], "device": dev}
        save()
    if progress:
        progress(len(todo), len(todo), "done")
    return data
