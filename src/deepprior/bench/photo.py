"""``deepprior bench photo``: a phone-sized photo restored on 2 cores, the default (a fit on
crops, :mod:`deepprior.cropfit`) beside today's alternative, the fit tile by tile.

The photo: the four Kodak images of CBM3D_color9 (kodim01, 02, 03, 12; 768x512 each; or four
other colour images, ``names``, centre-cropped to one size) as a 2x2 mosaic, resized with Lanczos to the case's size (about
2.6x across and 2.9x down at 12 megapixels: smoother than a real phone photo, which the tables
say), quantised to 8 bits. Each case degrades it as a user's file would hold it:

* ``denoise``: 4000x3000 (12 MP), Gaussian noise of sigma 25 (seed 0);
* ``upscale``: x4 super-resolution of the 4608x3456 photo (16 MP) from its 1152x864 Lanczos
  downscale (1 MP);
* ``inpaint``: 4000x3000 with lines of text written over it (``degrade.text_mask``, letters
  :data:`TEXT_SIZE` pixels high), filled with ``--mode text``;
* ``hole``: 4000x3000 with one elliptical hole over 12 % of it (``degrade.hole_mask``), filled
  with ``--mode hole``: from a window around the hole reduced to the preset's work size, so the
  default command is neither a fit on crops nor tiled, and the hole is scored whole (no windows,
  no tile row).

Measured, each once per case:

* ``start``: the classical estimate the fit starts from, at the photo's size, in this process (for a
  hole, as the default command makes it: ``iterations=0``);
* ``crops``: the ``deepprior`` command with the default preset, as a user runs it, in a child
  process (its wall time and peak resident memory); the result is above the fit-whole size, so
  it is fitted on crops and applied in one tiled pass;
* ``tiles``: the fit tile by tile, where every tile is fitted whole. It would take hours on the
  whole photo, so it runs on ``windows`` windows of 512x512 (tiles of their own) and its time for
  the photo is extrapolated from theirs by pixel count (said so in the table).

Every method is scored on the same windows, the start and the crop fit on the whole photo too:
PSNR over RGB, inside the text for inpainting. ``rows`` runs some of the three again and keeps the
others from the output folder's earlier run of the same photo (the tile rows take most of the time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from .. import degrade
from ..errors import DeepPriorError
from ..images import Image, atomic_write_bytes, load_image
from ..metrics import psnr
from ..restoration import restore
from ..tasks import Denoise, Inpaint, SuperResolution
from . import resumable, suites
from .resumable import Table, fmt

RESULTS = "photo.json"
MARKDOWN = "photo.md"

SOURCES = ("CBM3D_color9/kodim01.png", "CBM3D_color9/kodim02.png",
           "CBM3D_color9/kodim03.png", "CBM3D_color9/kodim12.png")
SIZE = (4000, 3000)  # width, height: 12 megapixels
SIGMA = 25
SCALE = 4
TEXT_WORDS = "deep image prior"
TEXT_SIZE = 64  # letter height of the inpainting case's text, pixels: a caption on a 12 MP photo
WINDOW = 512
# Windows scored for every method (top, left, in result pixels; multiples of SCALE): spread over
# the four quarters of the mosaic.
WINDOWS = ((200, 300), (1200, 1800), (2300, 900), (700, 3300))
MEMORY_LIMIT_GB = 4.0
ROWS = ("start", "crops", "tiles")
QUALITY_GAP_DB = 0.2  # the crop fit within this of the tile fit, on the windows


@dataclass(frozen=True)
class Case:
    """One restoration of the photo: its result's size, the command a user runs, its time target."""

    name: str
    title: str
    size: tuple[int, int]  # (width, height) of the clean photo, which is the result's size
    command: tuple[str, ...]
    minutes: float


CASES = {
    "denoise": Case("denoise", f"denoised, sigma {SIGMA}", SIZE, ("denoise", "--sigma", str(SIGMA)), 10),
    "upscale": Case("upscale", f"upscaled x{SCALE}", (4608, 3456), ("upscale", "--scale", str(SCALE)), 15),
    "inpaint": Case("inpaint", "text filled", SIZE, ("inpaint", "--mode", "text"), 10),
    "hole": Case("hole", "with a hole filled", SIZE, ("inpaint", "--mode", "hole"), 10),
}
#: The cases scored over their whole mask alone: a hole lies in few of the windows.
WHOLE_ONLY = ("hole",)


def source_paths(names) -> tuple[str, ...]:
    """The shared files of ``names``: "set/stem" (e.g. "Set14/monarch") or a CBM3D_color9 stem."""
    return tuple(f"{n}.png" if "/" in n else f"CBM3D_color9/{n}.png" for n in names)


def make_photo(data_dir: Path, sources=SOURCES, size: tuple[int, int] = SIZE) -> np.ndarray:
    """The clean photo, (height, width, 3) float32 on the 8-bit grid: the four colour ``sources``,
    centre-cropped to the smallest height and width among them, as a 2x2 mosaic, resized to
    ``size`` (width, height)."""
    manifest = suites.read_manifest(data_dir)
    parts = [np.rint(suites.load_verified(data_dir, rel, manifest).pixels * 255).astype(np.uint8) for rel in sources]
    if len(parts) != 4 or any(p.shape[2] != 3 for p in parts):
        raise DeepPriorError("the photo is made of four colour images")
    h, w = min(p.shape[0] for p in parts), min(p.shape[1] for p in parts)
    corners = [((p.shape[0] - h) // 2, (p.shape[1] - w) // 2) for p in parts]
    parts = [p[t : t + h, l : l + w] for p, (t, l) in zip(parts, corners)]
    mosaic = np.concatenate([np.concatenate(parts[:2], axis=1), np.concatenate(parts[2:], axis=1)], axis=0)
    big = np.asarray(PILImage.fromarray(mosaic).resize(size, PILImage.LANCZOS))
    return big.astype(np.float32) / 255.0


def _score(result: np.ndarray, clean: np.ndarray, mask: np.ndarray | None) -> float:
    if mask is None:
        return psnr(result, clean)
    return psnr(result[mask], clean[mask])


def _windows_psnr(result: np.ndarray, clean: np.ndarray, mask: np.ndarray | None = None) -> list[float]:
    cut = lambda a, t, l: None if a is None else a[t : t + WINDOW, l : l + WINDOW]  # noqa: E731
    return [_score(cut(result, t, l), cut(clean, t, l), cut(mask, t, l)) for t, l in WINDOWS]


def _run_child(cmd: list[str]) -> tuple[float, float, int, str]:
    """Run ``cmd``; its wall time, its own peak resident memory (GB; RUSAGE_CHILDREN would be
    the largest of every child so far), its exit status and what it wrote to stderr."""
    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # reaped here, not by Popen
        seconds = time.perf_counter() - t
        err.seek(0)
        return seconds, usage.ru_maxrss / 1024**2, os.waitstatus_to_exitcode(status), err.read()  # ru_maxrss: kB


def _degraded(case: Case, clean: np.ndarray, seed: int):
    """The input a user would hand over (8-bit array), its mask (inpainting) and the task."""
    if case.name == "denoise":
        return degrade.add_noise(Image(clean), SIGMA, seed).to_array(), None, Denoise(sigma=SIGMA)
    if case.name == "upscale":
        return degrade.downscale(Image(clean), SCALE).to_array(), None, SuperResolution(scale=SCALE)
    if case.name == "hole":
        fill = degrade.hole_mask(clean.shape[:2], seed)
        return degrade.apply_mask(Image(clean), fill, value=0.0).to_array(), fill, Inpaint(mask=fill, mode="hole")
    fill = degrade.text_mask(clean.shape[:2], TEXT_WORDS, seed, size=TEXT_SIZE)
    return degrade.apply_mask(Image(clean), fill).to_array(), fill, Inpaint(mask=fill, mode="text")


def run_photo(data_dir, out_dir: Path, *, cases=("denoise",), names=None, windows: int = len(WINDOWS), seed: int = 0,
              threads: int | None = None, device: str = "cpu", rows=ROWS, log=lambda s: None, progress=None) -> dict:
    """Run the three methods for each of ``cases`` and write ``photo.json`` and ``photo.md`` to ``out_dir``.

    ``names``: four colour images to make the photo of, instead of the Kodak four (CBM3D_color9
    stems, or "set/stem" for another shared set): a check on pictures the settings were not chosen on. ``device``: where the
    restorations run (the starts always run on the CPU). ``rows``: the methods to run (of
    :data:`ROWS`); the others are kept from ``out_dir``'s earlier run of the same photo, cases,
    windows and seed.
    """
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        raise DeepPriorError(f"unknown photo case {', '.join(unknown) or '(none)'}; choose from {', '.join(CASES)}")
    wrong = [r for r in rows if r not in ROWS]
    if wrong or not rows:
        raise DeepPriorError(f"unknown photo method {', '.join(wrong) or '(none)'}; choose from {', '.join(ROWS)}")
    if not 1 <= windows <= len(WINDOWS):
        raise DeepPriorError(f"windows must be 1 to {len(WINDOWS)}, got {windows}")
    data_dir = suites.find_data_dir(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    sources = SOURCES if not names else source_paths(names)
    chosen = WINDOWS[:windows]
    data = {"sources": list(sources), "seed": seed, "windows": [list(w) for w in chosen], "window": WINDOW,
            "machine": resumable.machine(device), "started": resumable.now_iso(), "cases": {}}
    kept = _kept_rows(out_dir, data, cases, [r for r in ROWS if r not in rows])
    steps = sum(("start" in rows) + ("crops" in rows) + windows * ("tiles" in rows and c not in WHOLE_ONLY)
                for c in dict.fromkeys(cases))
    step = 0

    def save():
        atomic_write_bytes(out_dir / RESULTS, json.dumps(data, indent=1).encode())
        atomic_write_bytes(out_dir / MARKDOWN, markdown(data).encode())

    def tell(what):
        nonlocal step
        if progress:
            progress(step, steps, what)
        step += 1

    for name in dict.fromkeys(cases):
        case = CASES[name]
        clean = make_photo(data_dir, sources, case.size)
        given, fill, task = _degraded(case, clean, seed)
        record = {"width": case.size[0], "height": case.size[1], "input": [given.shape[1], given.shape[0]],
                  "minutes": case.minutes, "rows": dict(kept.get(name, {}))}
        data["cases"][name] = record
        if fill is not None:
            record["missing_fraction"] = float(fill.mean())
        given_path, out_path = out_dir / f"{name}-input.png", out_dir / f"{name}-crops.png"
        PILImage.fromarray(given).save(given_path)
        extra = []
        if fill is not None:
            mask_path = out_dir / f"{name}-mask.png"
            PILImage.fromarray((fill * 255).astype(np.uint8)).save(mask_path)
            extra = ["--mask", str(mask_path)]
        given_f = given.astype(np.float32) / 255.0
        score = lambda r: _score(r, clean, fill)  # noqa: E731
        whole_only = name in WHOLE_ONLY
        windows_of = lambda r: [] if whole_only else _windows_psnr(r, clean, fill)[:windows]  # noqa: E731

        if "start" in rows:
            tell(f"{name}: the start")
            t = time.perf_counter()
            if whole_only:
                start = restore(Image(given_f), task, seed=seed, iterations=0).image.pixels
            else:
                start = task.problem(Image(given_f)).estimate()
            seconds = time.perf_counter() - t
            start = Image(start).to_array() / 255.0  # scored on 8 bits, as every method
            record["rows"]["start"] = {"seconds": seconds, "psnr": score(start), "windows": windows_of(start)}
            del start
            save()
        if "crops" in rows:
            tell(f"{name}: crops (deepprior {case.command[0]}, default preset)")
            report_path = out_dir / f"{name}-crops.json"
            cmd = [sys.executable, "-m", "deepprior", *case.command, str(given_path), *extra, "-o", str(out_path),
                   "--seed", str(seed), "--report", str(report_path), "-q", "--max-pixels", str(case.size[0] * case.size[1]),
                   "--device", device]
            if threads is not None:
                cmd += ["--threads", str(threads)]
            seconds, peak_gb, status, stderr = _run_child(cmd)
            if status != 0:
                raise DeepPriorError(f"deepprior {case.command[0]} failed on the photo: {stderr.strip().splitlines()[-1:]}")
            result = load_image(out_path, max_pixels=None).pixels
            report = json.loads(report_path.read_text())
            record["rows"]["crops"] = {"seconds": seconds, "peak_gb": peak_gb, "psnr": score(result),
                                       "windows": windows_of(result), "fit_seconds": report["elapsed_s"],
                                       "iterations": report["iterations"], "tiling": report["tiling"],
                                       "returned": report.get("returned", {}).get("result"),
                                       "fit_weight": report.get("returned", {}).get("fit_weight"),
                                       "regions": "region_shares" in report.get("returned", {})}
            del result
            save()

        if "tiles" in rows and not whole_only:
            per_window, scores = [], []
            s = SCALE if name == "upscale" else 1
            for i, (top, left) in enumerate(chosen):
                tell(f"{name}: tiles, window {i + 1} of {windows} (a whole fit of {WINDOW}x{WINDOW})")
                cut = (slice(top // s, (top + WINDOW) // s), slice(left // s, (left + WINDOW) // s))
                window_task = task if fill is None else task.crop(top, left, WINDOW, WINDOW)
                t = time.perf_counter()
                r = restore(Image(given_f[cut]), window_task, seed=seed, device=device)
                per_window.append(time.perf_counter() - t)
                truth = clean[top : top + WINDOW, left : left + WINDOW]
                scores.append(_score(r.image.to_array() / 255.0, truth,
                                     None if fill is None else fill[top : top + WINDOW, left : left + WINDOW]))
                record["rows"]["tiles"] = {"windows": scores, "window_seconds": per_window,
                                           "seconds_estimated": float(np.mean(per_window)) * case.size[0] * case.size[1] / WINDOW**2}
                save()
    tell("done")
    log(f"wrote {out_dir / MARKDOWN}")
    return data


def _kept_rows(out_dir: Path, data: dict, cases, rows) -> dict:
    """The ``rows`` of each of ``cases`` from ``out_dir``'s earlier results, which must be of the
    same photo (sources, seed, windows): {case: {row: result}}. Empty when no row is kept; a case
    scored whole (:data:`WHOLE_ONLY`) has no tile row to keep."""
    needs = {c: [r for r in rows if not (r == "tiles" and c in WHOLE_ONLY)] for c in cases}
    if not any(needs.values()):
        return {}
    path = out_dir / RESULTS
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DeepPriorError(f"no earlier photo results in {out_dir} to keep the {', '.join(rows)} rows from; "
                             "run every method first") from None
    same = all(earlier.get(k) == data[k] for k in ("sources", "seed", "windows"))
    missing = [f"{c} {r}" for c in cases for r in needs[c] if r not in earlier.get("cases", {}).get(c, {}).get("rows", {})]
    if not same or missing:
        raise DeepPriorError(f"{path} is not a run of the same photo, cases and windows"
                             + (f" (it lacks {', '.join(missing)})" if same else "") + "; run every method first")
    return {c: {r: earlier["cases"][c]["rows"][r] for r in needs[c]} for c in cases}


def tables(data: dict) -> list[Table]:
    out = []
    n = len(data["windows"])
    stems = [Path(r).stem for r in data.get("sources", SOURCES)]
    for name, record in data["cases"].items():
        case, rows = CASES[name], record["rows"]
        inside = {"inpaint": " inside the text", "hole": " inside the hole"}.get(name, "")
        whole_only = name in WHOLE_ONLY
        t = Table(f"A {record['width']}x{record['height']} photo {case.title}, default preset",
                  ["method", "time (s)", "peak memory (GB)", f"PSNR whole{inside} (dB)"]
                  + ([] if whole_only else [f"PSNR on {n} windows (dB)", "per window (dB)"]))
        names = {"start": "start: the classical estimate",
                 "crops": ("default: a window around the hole" if whole_only
                           else "fit on crops, one tiled pass (default)"),
                 "tiles": "fit tile by tile (every tile fitted whole)"}
        for key in ("start", "crops", "tiles"):
            r = rows.get(key)
            if r is None:
                continue
            seconds = fmt(r.get("seconds"), 0) if "seconds" in r else f"~{r['seconds_estimated']:.0f} (estimated)"
            row = [names[key], seconds, fmt(r.get("peak_gb"), 2) if "peak_gb" in r else "-",
                   fmt(r.get("psnr")) if "psnr" in r else "-"]
            if not whole_only:
                row += [fmt(float(np.mean(r["windows"]))), " / ".join(f"{v:.2f}" for v in r["windows"])]
            t.rows.append(row)
        what = {"denoise": f"Gaussian noise of sigma {SIGMA} (seed {data['seed']})",
                "upscale": f"downscaled x{SCALE} with Lanczos to {record['input'][0]}x{record['input'][1]}",
                "inpaint": (f"'{TEXT_WORDS}' written over it in lines of {TEXT_SIZE}-pixel letters "
                            f"({100 * record.get('missing_fraction', 0):.1f} % of the pixels)"),
                "hole": (f"one elliptical hole over {100 * record.get('missing_fraction', 0):.1f} % of it "
                         f"(seed {data['seed']})")}[name]
        t.notes.append(f"The photo: {', '.join(stems)} as a 2x2 mosaic, resized with Lanczos to "
                       f"{record['width']}x{record['height']} (enlarged: smoother than a phone photo), 8-bit, {what}."
                       + ("" if whole_only else f" Windows: {data['window']}x{data['window']} at "
                          + ", ".join(f"({a}, {b})" for a, b in data["windows"]) + " (top, left)."))
        if "tiles" in rows:
            w = rows["tiles"]["window_seconds"]
            t.notes.append(f"Tile by tile: each window fitted whole as a tile of its own ({np.mean(w):.0f} s each); "
                           "its photo time is that time per pixel times the photo's pixels.")
        if "crops" in rows:
            c = rows["crops"]
            size = c["tiling"].get("crop_size", [0, 0])
            window = c["tiling"].get("window")
            how = (f"{c['iterations']} steps of {c['tiling'].get('crops', 0) // max(c['iterations'], 1)} crops of "
                   f"{size[1]}x{size[0]}, then one tiled pass" if c["tiling"].get("method") == "crops"
                   else f"a window of {window[3]}x{window[2]} around the hole fitted at "
                        f"{c['tiling']['size'][1]}x{c['tiling']['size'][0]} ({c['iterations']} iterations)"
                   if window else f"fitted {c['tiling'].get('method')} ({c['iterations']} iterations)")
            t.notes.append(f"Default: `deepprior {' '.join(case.command)}` in a child process; {how}"
                           + (f", returned the {c['returned']}" if c.get("returned") else "")
                           + (f" (the fit's share {c['fit_weight']:.2f} on the mean, chosen region by region)"
                              if c.get("regions") and c.get("returned") == "blend" else "")
                           + f"; the restoration itself took {c['fit_seconds']:.0f} s of the wall time.")
        out.append(t)
        targets = Table(f"Targets, photo {case.title}", ["target", "measured", "met"])
        if "crops" in rows:
            c = rows["crops"]
            megapixels = record["width"] * record["height"] / 1e6
            targets.rows.append([f"{megapixels:.0f} MP {case.title} in at most {case.minutes:.0f} minutes",
                                 f"{c['seconds']:.0f} s", fmt(c["seconds"] <= case.minutes * 60)])
            targets.rows.append([f"peak memory at most {MEMORY_LIMIT_GB:.0f} GB", f"{c['peak_gb']:.2f} GB",
                                 fmt(c["peak_gb"] <= MEMORY_LIMIT_GB)])
            if "tiles" in rows:
                k = len(rows["tiles"]["windows"])
                gap = float(np.mean(c["windows"][:k]) - np.mean(rows["tiles"]["windows"]))
                targets.rows.append([f"within {QUALITY_GAP_DB} dB of the tile fit on the windows", f"{gap:+.2f} dB",
                                     fmt(gap >= -QUALITY_GAP_DB)])
        out.append(targets)
    return out


def markdown(data: dict) -> str:
    m = data.get("machine", {})
    pre = [f"- machine: {m.get('cpu')}, {m.get('cores')} cores, device {m.get('device')}, torch {m.get('torch')}, "
           f"deepprior {m.get('deepprior')}",
           f"- run {data.get('started')}; raw results: [{RESULTS}]({RESULTS})"]
    return resumable.to_markdown("deepprior bench photo", pre, tables(data))
