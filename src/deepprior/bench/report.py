"""``report.md`` and its figures, rebuilt from ``results.json`` and the saved PNGs.

The report has, per suite, a table of the headline metric (images as rows, methods as
columns, a mean row) with the paper's published numbers beside it where they exist and our gap
to them, the same for SSIM, the time per image, the DIP fits' details, and two figures per
image: DIP's PSNR against iterations with the baselines as horizontal lines, and a montage of
ground truth, degraded input and every method's result with a zoomed crop.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import estimates
from ..images import atomic_write_bytes
from . import baselines, suites
from .runner import RESULTS_CSV, RESULTS_JSON, image_dir, load_result_image

REPORT = "report.md"
FIGURES = "figures"

# Our method name -> the paper's column name, for the comparison with published numbers.
_PAPER_NAMES = {"dip": "dip", "bicubic": "bicubic", "bm3d": "cbm3d", "nlm": "nlm"}

_METRIC_TITLES = {"psnr_y": "PSNR on Y (dB)", "ssim_y": "SSIM on Y", "psnr": "PSNR (dB)", "ssim": "SSIM",
                  "psnr_mask": "PSNR inside the mask (dB)", "ssim_mask": "SSIM inside the mask",
                  "colour_error_mask": "Mean colour error inside the mask (0-255, lower is better)"}


def _fmt(v, digits=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}"


def _mean(values):
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def in_set_order(data: dict) -> list[dict]:
    """The rows of a suite run, images in their set's order (a resumed run appends the images it
    adds after those already done); each image's methods as they ran."""
    rank = {name: i for i, name in enumerate(data.get("set_images") or [])}
    return sorted(data["rows"], key=lambda r: rank.get(r["image"], len(rank)))


def _ordered(rows) -> tuple[list[str], list[str]]:
    images = list(dict.fromkeys(r["image"] for r in rows))
    present = {r["method"] for r in rows}
    methods = [m for m in baselines.METHODS if m in present] + sorted(present - set(baselines.METHODS))
    return images, methods


def metric_table(rows, metric: str, paper: dict | None = None, digits: int = 2) -> str:
    """Images as rows, methods as columns, a mean row; per-image paper numbers and gaps when known."""
    images, methods = _ordered(rows)
    cell = {(r["image"], r["method"]): r.get(metric) for r in rows}
    per_image = (paper or {}).get("per_image", {}) if paper and paper.get("metric") == metric else {}
    header = ["image"] + [baselines.METHODS[m].label if m in baselines.METHODS else m for m in methods]
    for pm in per_image:
        header += [f"paper {pm.upper()}", f"gap {pm.upper()}"]
    out = []
    for im in images:
        line = [im] + [_fmt(cell.get((im, m)), digits) for m in methods]
        for pm, values in per_image.items():
            ref, ours = values.get(im), cell.get((im, pm))
            line += [_fmt(ref, digits), _fmt(ours - ref if ours is not None and ref is not None else None, digits)]
        out.append(line)
    mean = ["**mean**"]
    for m in methods:
        vals = [cell[(im, m)] for im in images if (im, m) in cell]
        note = f" ({len(vals)})" if len(vals) != len(images) else ""
        mean.append(f"**{_fmt(_mean(vals), digits)}**{note}")
    for pm, values in per_image.items():
        both = [(cell[(im, pm)], values[im]) for im in images if (im, pm) in cell and im in values]
        mean += [_fmt(_mean([b for _, b in both]), digits), _fmt(_mean([a - b for a, b in both]), digits)]
    out.append(mean)
    return _table(header, out)


def paper_table(rows, suite: suites.Suite, n_images_total: int | None) -> str | None:
    """Our means beside the paper's published means, and the gap."""
    paper = suite.paper
    if not paper:
        return None
    metric = paper["metric"]
    images, methods = _ordered(rows)
    lines = []
    for name, ref in paper["mean"].items():
        ours_m = next((m for m, p in _PAPER_NAMES.items() if p == name and m in methods), None)
        vals = [r[metric] for r in rows if r["method"] == ours_m] if ours_m else []
        ours = _mean(vals)
        lines.append([name, _fmt(ref), _fmt(ours), _fmt(ours - ref if ours is not None else None),
                      str(len(vals)) if vals else "-"])
    table = _table(["paper's method", f"paper mean {_METRIC_TITLES[metric]}", "ours (mean)", "gap", "images"], lines)
    if n_images_total and any(line[4] not in ("-", str(n_images_total)) for line in lines):
        table += f"\n\nOur means cover fewer than the suite's {n_images_total} images, so they compare only loosely."
    return table


def time_table(rows) -> str:
    images, methods = _ordered(rows)
    cell = {(r["image"], r["method"]): r.get("seconds") for r in rows}
    out = [[im] + [_fmt(cell.get((im, m)), 1) for m in methods] for im in images]
    out.append(["**mean**"] + [f"**{_fmt(_mean([cell[(im, m)] for im in images if (im, m) in cell]), 1)}**"
                               for m in methods])
    return _table(["image"] + [baselines.METHODS[m].label if m in baselines.METHODS else m for m in methods], out)


def dip_table(rows) -> str | None:
    dip = [r for r in rows if r["method"] == "dip"]
    if not dip:
        return None
    out = []
    for r in dip:
        hist = [h for h in r.get("history") or [] if h.get("psnr") is not None]
        peak = max(hist, key=lambda h: h["psnr"]) if hist else None
        out.append([r["image"], str(r.get("preset", "-")), str(r.get("iterations", "-")), str(r.get("stopped_at", "-")),
                    str(r.get("stop_reason", "-")), _returned(r), _fmt(r.get("psnr")),
                    f"{_fmt(peak['psnr'])} @ {peak['iter']}" if peak else "-", _fmt(r.get("seconds"), 1)])
    return _table(["image", "preset", "iterations", "result from", "stop", "returned", "PSNR",
                   "peak PSNR @ iter (history)", "seconds"], out)


def _returned(row: dict) -> str:
    """What a DIP fit returned: the fit, its start, or a blend (with the fit's share), and the
    share of a second estimate blended in after."""
    kind = row.get("returned", "fit")
    text = f"blend, fit {row.get('fit_weight', 1.0):.2f}" if kind == "blend" else kind
    return text + (f" (+{row['partner_share']:.2f} {row.get('partner')})" if row.get("partner_share") else "")


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_figure(out_dir: Path, image: str, rows) -> Path | None:
    """DIP's PSNR per iteration for one image, baselines as horizontal lines."""
    dip = next((r for r in rows if r["image"] == image and r["method"] == "dip"), None)
    hist = [h for h in (dip or {}).get("history") or [] if h.get("psnr") is not None]
    if not hist:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot([h["iter"] for h in hist], [h["psnr"] for h in hist], color="black", lw=1.5, label="DIP (history)")
    if dip.get("stopped_at"):
        ax.axvline(dip["stopped_at"], color="black", ls=":", lw=1, label=f"DIP result (iter {dip['stopped_at']})")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    others = [r for r in rows if r["image"] == image and r["method"] != "dip" and r.get("psnr") is not None]
    for i, r in enumerate(others):
        label = baselines.METHODS[r["method"]].label if r["method"] in baselines.METHODS else r["method"]
        ax.axhline(r["psnr"], color=colours[i % len(colours)], ls="--", lw=1.2, label=f"{label} {r['psnr']:.2f}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("PSNR (dB, RGB, whole image)")
    ax.set_title(f"{image}: DIP PSNR against iterations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(out_dir) / FIGURES / f"{image}_curve.png"
    _savefig(fig, path)
    plt.close(fig)
    return path


def _savefig(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def detail_crop(gt: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size``-pixel window with the most detail (gradient energy) in ``gt``."""
    g = gt.mean(axis=2)
    e = np.zeros_like(g)
    e[:, 1:] += np.abs(np.diff(g, axis=1))
    e[1:, :] += np.abs(np.diff(g, axis=0))
    c = np.pad(e.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = g.shape
    size = min(size, h, w)
    sums = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x)


def _nearest_resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    ys = (np.arange(shape[0]) * a.shape[0] // shape[0]).clip(0, a.shape[0] - 1)
    xs = (np.arange(shape[1]) * a.shape[1] // shape[1]).clip(0, a.shape[1] - 1)
    return a[ys][:, xs]


def montage_figure(out_dir: Path, image: str, rows) -> Path | None:
    """Ground truth, degraded input and each method's result, with a zoomed crop below each."""
    d = image_dir(out_dir, image)
    if not (d / "ground_truth.png").exists():
        return None
    gt = load_result_image(out_dir, image, "ground_truth")
    panels = [("ground truth", gt)]
    if (d / "degraded.png").exists():
        deg = load_result_image(out_dir, image, "degraded")
        panels.append(("degraded", _nearest_resize(deg, gt.shape[:2]) if deg.shape[:2] != gt.shape[:2] else deg))
    _, methods = _ordered([r for r in rows if r["image"] == image])
    by_method = {r["method"]: r for r in rows if r["image"] == image}
    for m in methods:
        r = by_method[m]
        if not (Path(out_dir) / r["output"]).exists():
            continue
        label = baselines.METHODS[m].label if m in baselines.METHODS else m
        score = r.get("psnr_y", r.get("psnr"))
        panels.append((f"{label}\n{score:.2f} dB" if isinstance(score, (int, float)) else label,
                       load_result_image(out_dir, r)))
    size = max(16, min(gt.shape[:2]) // 4)
    y, x = detail_crop(gt, size)
    plt = _plt()
    n = len(panels)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.8), dpi=100, squeeze=False)
    for i, (title, px) in enumerate(panels):
        cmap = "gray" if px.shape[2] == 1 else None
        show = px[:, :, 0] if px.shape[2] == 1 else px
        axes[0, i].imshow(show, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[0, i].add_patch(plt.Rectangle((x, y), size, size, fill=False, ec="red", lw=1))
        axes[0, i].set_title(title, fontsize=8)
        axes[1, i].imshow(show[y: y + size, x: x + size], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(image, fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / FIGURES / f"{image}_montage.png"
    _savefig(fig, path)
    plt.close(fig)
    return path


def grid_figure(out_dir: Path, rows) -> Path | None:
    """The whole suite in one picture: a row per image, its degraded input, each method's result
    (with its headline score) and the ground truth."""
    images, methods = _ordered(rows)
    images = [im for im in images if (image_dir(out_dir, im) / "ground_truth.png").exists()]
    if not images:
        return None
    cells = {(r["image"], r["method"]): r for r in rows}
    columns = ["degraded"] + methods + ["ground_truth"]
    plt = _plt()
    fig, axes = plt.subplots(len(images), len(columns), figsize=(1.5 * len(columns), 1.6 * len(images)), dpi=80,
                             squeeze=False)
    for i, im in enumerate(images):
        for j, col in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            row = cells.get((im, col))
            if col in ("degraded", "ground_truth"):
                path, title = image_dir(out_dir, im) / f"{col}.png", col.replace("_", " ")
            elif row is not None:
                path = Path(out_dir) / row["output"]
                score = row.get("psnr_mask", row.get("psnr_y", row.get("psnr")))
                label = baselines.METHODS[col].label if col in baselines.METHODS else col
                title = f"{label} {score:.2f}" if isinstance(score, (int, float)) else label
            else:
                continue
            if not path.exists():
                continue
            px = load_result_image(out_dir, im, col) if row is None else load_result_image(out_dir, row)
            ax.imshow(px[:, :, 0] if px.shape[2] == 1 else px, cmap="gray" if px.shape[2] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=6)
            if j == 0:
                ax.set_ylabel(im, fontsize=7)
    fig.tight_layout()
    path = Path(out_dir) / FIGURES / "grid.png"
    _savefig(fig, path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the report


def write_report(out_dir: Path, data: dict, suite: suites.Suite, n_images_total: int | None = None,
                 figures: bool = True) -> Path:
    """Write ``report.md`` (and, with ``figures``, the PNG figures) for the results in ``data``."""
    out_dir = Path(out_dir)
    rows = in_set_order(data)
    cfg = data.get("config", {})
    mach = data.get("machine", {})
    parts = [f"# deepprior bench: {suite.name} ({suite.set_name})", ""]
    parts += [suite.description(), ""]
    dip = [r for r in rows if r["method"] == "dip"]
    if dip:
        parts += [f"- DIP: preset `{dip[0].get('preset')}`, iteration cap: {dip[0].get('iters') or 'the preset default'}"]
    parts += [f"- seed: {cfg.get('seed')} (each image's degradation uses its own seed derived from it)",
              f"- machine: {mach.get('cpu')}, {mach.get('threads')} PyTorch threads, torch {mach.get('torch')}, "
              f"deepprior {mach.get('deepprior')}",
              f"- data: `{data.get('data_dir')}` (every image checked against MANIFEST.tsv's sha256)",
              f"- raw results: [{RESULTS_CSV}]({RESULTS_CSV}), [{RESULTS_JSON}]({RESULTS_JSON}); "
              f"restored images under `images/<image>/<method>.png`",
              "- every method is scored on the 8-bit PNG it saved", ""]
    if not rows:
        parts += ["No results yet.", ""]
    else:
        paper = suite.paper
        for metric in [m for m in suite.metrics if any(r.get(m) is not None for r in rows)]:
            parts += [f"## {_METRIC_TITLES[metric]}", "", metric_table(rows, metric, paper,
                                                                         digits=2 if "psnr" in metric else 4), ""]
        pt = paper_table(rows, suite, n_images_total)
        if pt:
            parts += ["## Against the paper's published numbers", "",
                      f"Deep Image Prior paper (CVPR 2018), {_METRIC_TITLES[paper['metric']]}, as listed in the data "
                      f"folder's README.", "", pt, ""]
            if paper.get("note"):
                parts += [paper["note"], ""]
            if suite.kind == "sr":
                parts += ["SRResNet is a network trained on external data; its number is the paper's, for reference.", ""]
        parts += ["## Time per image (seconds, wall clock)", "", time_table(rows), ""]
        dt = dip_table(rows)
        if dt:
            parts += ["## DIP fits", "", "The history's PSNR is RGB PSNR of the running result against the ground "
                      "truth, logged for the report only: it never steers the fit or the stopping.", "", dt, ""]
    notes = _notes(suite, data)
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if rows and figures:
        parts += ["## Figures", ""]
        grid = grid_figure(out_dir, rows)
        if grid:
            parts += ["Every image: degraded, each method (headline score), ground truth.", "",
                      f"![the suite's results]({FIGURES}/{grid.name})", ""]
        images, _ = _ordered(rows)
        for im in images:
            links = []
            c = curve_figure(out_dir, im, rows)
            if c:
                links.append(f"![{im}: PSNR against iterations]({FIGURES}/{c.name})")
            m = montage_figure(out_dir, im, rows)
            if m:
                links.append(f"![{im}: results]({FIGURES}/{m.name})")
            if links:
                parts += [f"### {im}", ""] + links + [""]
    path = out_dir / REPORT
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path


def _notes(suite: suites.Suite, data: dict) -> list[str]:
    notes = []
    for m, why in (data.get("skipped") or {}).items():
        notes.append(f"{m} was skipped: {why}.")
    methods = {r["method"] for r in data["rows"]}
    if suite.kind == "inpaint":
        notes.append("Every method keeps the known pixels, DIP as a user gets its result; the paper's numbers "
                     "score its network output, known pixels included.")
    if suite.kind in suites.FILL_KINDS:
        notes.append("Every method keeps the known pixels, so the whole-image scores differ only inside the mask.")
    if "realesrgan" in methods:
        notes.append("Real-ESRGAN x4plus is trained for real-world degradations (blur, noise, JPEG), not for "
                     "this clean Lanczos downscaling, and favours perceptual sharpness over PSNR; it runs on the CPU "
                     "in 128-px tiles with 10 px of context.")
    if "tv" in methods:
        w = ", ".join(f"sigma {k}: {v}" for k, v in baselines.TV_WEIGHTS.items())
        notes.append(f"TV (Chambolle) weights per sigma were tuned once on scikit-image's chelsea and coffee images, "
                     f"never on benchmark images ({w}).")
    if "nlm" in methods:
        notes.append(f"NLM: scikit-image denoise_nl_means with the true sigma on each channel of an opponent colour "
                     f"space, h = {estimates.NLM_H} sigma on luminance and grey, {estimates.NLM_H_CHROMA} on the colour "
                     "differences (chosen on Set14 and Set5), 5x5 patches, patch distance 6, fast mode.")
    if "bm3d" in methods:
        notes.append("BM3D: the bm3d package (CBM3D for colour) with the true sigma; its licence allows "
                     "non-commercial use only, so it is an optional extra.")
    if suite.kind == "sr":
        notes.append("Bicubic and Lanczos are Pillow's upscaling of the 8-bit low-resolution input.")
    return notes


# --------------------------------------------------------------------------- BENCHMARKS.md sections

SECTION_BEGIN = "<!-- bench: {key} -->"
SECTION_END = "<!-- /bench -->"


def section_key(data: dict) -> str:
    """What names a suite run's block in a document: ``SUITE/SET`` (e.g. ``sr-x4/Set14``)."""
    cfg = data.get("config", {})
    return f"{cfg.get('suite')}/{cfg.get('set')}"


def _set_asked(cfg: dict) -> str | None:
    """The ``--set`` a suite run was asked for; None where it ran its suite's default set."""
    return cfg.get("set") if cfg.get("set") != suites.get_suite(cfg["suite"]).set_name else None


def _images_asked(data: dict) -> list[str] | None:
    """The images of a run that covered only part of its set, in the set's order; None where it
    covered all of it (or predates the record of the set's images)."""
    whole = data.get("set_images")
    ran = {r["image"] for r in data["rows"]}
    if not whole or ran >= set(whole):
        return None
    return [n for n in whole if n in ran]


def reproduce_command(data: dict) -> str:
    """The ``deepprior bench`` command line that makes the rows of ``data`` again."""
    cfg = data.get("config", {})
    rows = data["rows"]
    _, methods = _ordered(rows)
    parts = ["deepprior bench", str(cfg.get("suite"))]
    if str(cfg.get("suite", "")).startswith("sr-") or _set_asked(cfg) is not None:
        parts.append(f"--set {cfg.get('set')}")
    images = _images_asked(data)
    if images:
        parts.append("--images " + ",".join(images))
    parts.append("--methods " + ",".join(methods))
    dip = next((r for r in rows if r["method"] == "dip"), None)
    if dip is not None and dip.get("preset") not in (None, "fast"):
        parts.append(f"--preset {dip['preset']}")
    if dip is not None and dip.get("iters"):
        parts.append(f"--iters {dip['iters']}")
    if cfg.get("seed"):
        parts.append(f"--seed {cfg['seed']}")
    threads = data.get("machine", {}).get("threads")
    if threads:
        parts.append(f"--threads {threads}")
    return " ".join(parts)


def dip_against_best(rows, metric: str) -> str | None:
    """How DIP stands: on how many images it beats every other method of the run and by how much
    its mean differs from the best other mean; where the run also scored DIP's own classical
    start, the same against that start alone (the start is not counted among the others)."""
    images, methods = _ordered(rows)
    others = [m for m in methods if m not in ("dip", "start")]
    cell = {(r["image"], r["method"]): r.get(metric) for r in rows}
    if "dip" not in methods or not others:
        return None
    complete = [im for im in images if all(cell.get((im, m)) is not None for m in methods)]
    if not complete:
        return None
    wins = sum(cell[(im, "dip")] > max(cell[(im, m)] for m in others) for im in complete)
    means = {m: _mean([cell[(im, m)] for im in complete]) for m in methods}
    best = max(others, key=lambda m: means[m])
    label = baselines.METHODS[best].label if best in baselines.METHODS else best
    text = (f"DIP beats every other method on {wins} of {len(complete)} images; its mean is "
            f"{means['dip'] - means[best]:+.2f} against the best other mean ({label}, {_fmt(means[best])}).")
    if "start" in methods:
        above = sum(cell[(im, "dip")] > cell[(im, "start")] for im in complete)
        below = sum(cell[(im, "dip")] < cell[(im, "start")] for im in complete)
        text += (f" Against its own start: {means['dip'] - means['start']:+.2f} on the mean, above it on {above} "
                 f"images, under it on {below}.")
    return text


def colour_against_best(rows) -> str | None:
    """Two sentences for a fill suite: DIP's mean-colour error inside the mask against that of
    each image's best other method (by PSNR inside the mask; DIP's own start is not one of
    them) and against the best other method on the mean, and on how many images it is no
    larger (no flat blob of the wrong colour)."""
    cell = {(r["image"], r["method"]): r for r in rows}
    images, methods = _ordered(rows)
    others = [m for m in methods if m not in ("dip", "start")]
    pairs = []
    for im in images:
        dip = cell.get((im, "dip"), {}).get("colour_error_mask")
        scored = [cell[(im, m)] for m in others if cell.get((im, m), {}).get("colour_error_mask") is not None]
        if dip is None or not scored:
            continue
        best = max(scored, key=lambda r: r.get("psnr_mask", float("-inf")))
        pairs.append((dip, best["colour_error_mask"]))
    if not pairs:
        return None
    within = sum(d <= b + 1e-9 for d, b in pairs)
    text = (f"Mean colour inside the mask, error on 0-255: DIP {_fmt(_mean([d for d, _ in pairs]), 1)}, each "
            f"image's best other method {_fmt(_mean([b for _, b in pairs]), 1)}; DIP's is no larger on {within} "
            f"of {len(pairs)} images.")
    # The same against one method, the best other on the mean (the suite's best classical fill).
    means = {m: _mean([cell.get((im, m), {}).get("psnr_mask") for im in images]) for m in others}
    means = {m: v for m, v in means.items() if v is not None}
    if means:
        top = max(means, key=means.get)
        both = [(cell[(im, "dip")]["colour_error_mask"], cell[(im, top)]["colour_error_mask"]) for im in images
                if cell.get((im, "dip"), {}).get("colour_error_mask") is not None
                and cell.get((im, top), {}).get("colour_error_mask") is not None]
        label = baselines.METHODS[top].label if top in baselines.METHODS else top
        text += (f" Against the best other method on the mean ({label}, {_fmt(_mean([b for _, b in both]), 1)}): "
                 f"no larger on {sum(d <= b + 1e-9 for d, b in both)} of {len(both)} images.")
    return text


def suite_section(data: dict) -> str:
    """The markdown block for one suite run in BENCHMARKS.md: its headline table with a mean
    time row, how DIP stands against the best other method, the machine and the command."""
    rows = in_set_order(data)
    cfg = data.get("config", {})
    suite = suites.get_suite(cfg["suite"], _set_asked(cfg))
    metric = suite.metric
    images, methods = _ordered(rows)
    table = metric_table(rows, metric, suite.paper)
    seconds = {m: _mean([r.get("seconds") for r in rows if r["method"] == m]) for m in methods}
    table += "\n| seconds per image (mean) | " + " | ".join(_fmt(seconds[m], 1) for m in methods) + " |"
    table += " |" * (table.splitlines()[0].count("|") - 2 - len(methods))  # paper / gap columns, if any
    mach = data.get("machine", {})
    dip = next((r for r in rows if r["method"] == "dip"), None)
    lines = [SECTION_BEGIN.format(key=section_key(data)),
             f"{_METRIC_TITLES[metric]}, {len(images)} images. " + suite.description(), "", table, ""]
    verdict = dip_against_best(rows, metric)
    if verdict:
        lines += [verdict, ""]
    colour = colour_against_best(rows) if suite.kind == "hole" else None
    if colour:
        lines += [colour, ""]
    if dip is not None:
        returned = [_returned(r) for r in rows if r["method"] == "dip"]
        kinds = ", ".join(f"{k} on {returned.count(k)}" for k in dict.fromkeys(returned))
        lines += [f"DIP: preset `{dip.get('preset')}`, iteration cap {dip.get('iters') or 'the preset default'}; "
                  f"returned {kinds} image{'s' if len(returned) > 1 else ''}.", ""]
    lines += [f"Machine: {mach.get('cpu')}, {mach.get('threads')} PyTorch threads, torch {mach.get('torch')}. "
              f"Reproduce: `{reproduce_command(data)}`", SECTION_END]
    return "\n".join(lines)


def update_document(text: str, sections: list[str]) -> tuple[str, list[str]]:
    """Replace each section's block (between its begin marker and the next end marker) in
    ``text``; returns the new text and the keys of sections that had no block there."""
    missing = []
    for section in sections:
        begin = section.splitlines()[0]
        start = text.find(begin)
        end = text.find(SECTION_END, start)
        if start < 0 or end < 0:
            missing.append(begin)
            continue
        text = text[:start] + section + text[end + len(SECTION_END):]
    return text, missing
