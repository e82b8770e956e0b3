"""``deepprior bench photo``: a 12-megapixel photo denoised on 2 cores, the fit on crops beside
the fit tile by tile.

The photo: the four Kodak images of CBM3D_color9 (kodim01, 02, 03, 12; 768x512 each; or four
others of one size, ``names``) as a 2x2 mosaic, resized with Lanczos to 4000x3000 (2.6x across,
2.9x down: smoother than a real phone photo, which the tables say), quantised to 8 bits; the noisy input adds Gaussian noise of
sigma 25 (seed 0), as a user's 8-bit file would hold it.

Measured, each once:

* ``start``: the classical estimate the fit starts from (non-local means), in this process;
* ``crops``: ``deepprior denoise`` with the default preset, as a user runs it, in a child process
  (wall time and peak resident memory of that process); the image is above the fit-whole size,
  so it is fitted on crops and applied in one tiled pass (:mod:`deepprior.cropfit`);
* ``tiles``: the fit tile by tile, where every tile is fitted whole. It would take hours on the
  whole photo, so it runs on ``windows`` windows of 512x512 (tiles of their own) and its time for
  the photo is extrapolated from theirs by pixel count (said so in the table).

Every method is scored on the same windows; the start and the crop fit on the whole photo too.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from .. import degrade, estimates
from ..errors import DeepPriorError
from ..images import Image, atomic_write_bytes, load_image
from ..metrics import psnr
from ..restoration import restore
from ..tasks import Denoise
from . import resumable, suites
from .resumable import Table, fmt

RESULTS = "photo.json"
MARKDOWN = "photo.md"

SOURCES = ("CBM3D_color9/kodim01.png", "CBM3D_color9/kodim02.png",
           "CBM3D_color9/kodim03.png", "CBM3D_color9/kodim12.png")
SIZE = (4000, 3000)  # width, height: 12 megapixels
SIGMA = 25
WINDOW = 512
# Windows scored for every method (top, left): spread over the four quarters of the mosaic.
WINDOWS = ((200, 300), (1200, 1800), (2300, 900), (700, 3300))
TIME_LIMIT_S = 600.0
MEMORY_LIMIT_GB = 4.0
QUALITY_GAP_DB = 0.2  # the crop fit within this of the tile fit, on the windows


def make_photo(data_dir: Path, sources=SOURCES) -> np.ndarray:
    """The clean 12-megapixel photo, (3000, 4000, 3) float32 on the 8-bit grid: the four
    ``sources`` (of one size) as a 2x2 mosaic, resized to :data:`SIZE`."""
    manifest = suites.read_manifest(data_dir)
    parts = [np.rint(suites.load_verified(data_dir, rel, manifest).pixels * 255).astype(np.uint8) for rel in sources]
    if len(parts) != 4 or len({p.shape for p in parts}) != 1 or parts[0].shape[2] != 3:
        raise DeepPriorError("the photo is made of four colour images of one size")
    mosaic = np.concatenate([np.concatenate(parts[:2], axis=1), np.concatenate(parts[2:], axis=1)], axis=0)
    big = np.asarray(PILImage.fromarray(mosaic).resize(SIZE, PILImage.LANCZOS))
    return big.astype(np.float32) / 255.0


def _windows_psnr(result: np.ndarray, clean: np.ndarray) -> list[float]:
    return [psnr(result[t : t + WINDOW, l : l + WINDOW], clean[t : t + WINDOW, l : l + WINDOW]) for t, l in WINDOWS]


def _child_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # kB on Linux


def run_photo(data_dir, out_dir: Path, *, names=None, windows: int = len(WINDOWS), seed: int = 0,
              threads: int | None = None, log=lambda s: None, progress=None) -> dict:
    """Run the three methods and write ``photo.json`` and ``photo.md`` to ``out_dir``.

    ``names``: four images of CBM3D_color9 (file stems) to make the photo of, instead of the
    Kodak four: a check on pictures the settings were not chosen on.
    """
    if not 1 <= windows <= len(WINDOWS):
        raise DeepPriorError(f"windows must be 1 to {len(WINDOWS)}, got {windows}")
    data_dir = suites.find_data_dir(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    sources = SOURCES if not names else tuple(f"CBM3D_color9/{n}.png" for n in names)
    clean = make_photo(data_dir, sources)
    noisy = degrade.add_noise(Image(clean), SIGMA, seed).to_array()
    clean_path, noisy_path = out_dir / "photo-clean.png", out_dir / "photo-noisy.png"
    PILImage.fromarray(Image(clean).to_array()).save(clean_path)
    PILImage.fromarray(noisy).save(noisy_path)
    noisy_f = noisy.astype(np.float32) / 255.0
    chosen = WINDOWS[:windows]
    data = {"photo": {"width": SIZE[0], "height": SIZE[1], "sources": list(sources), "sigma": SIGMA, "seed": seed,
                      "windows": [list(w) for w in chosen], "window": WINDOW},
            "machine": resumable.machine("cpu"), "started": resumable.now_iso(), "rows": {}}
    steps = 2 + windows

    def save():
        atomic_write_bytes(out_dir / RESULTS, json.dumps(data, indent=1).encode())
        atomic_write_bytes(out_dir / MARKDOWN, markdown(data).encode())

    def windows_of(result):
        return _windows_psnr(result, clean)[:windows]

    if progress:
        progress(0, steps, "start (non-local means)")
    t = time.perf_counter()
    start = estimates.nlm_denoise(noisy_f, SIGMA)
    seconds = time.perf_counter() - t
    start = Image(start).to_array() / 255.0  # scored on 8 bits, as every method
    data["rows"]["start"] = {"seconds": seconds, "psnr": psnr(start, clean), "windows": windows_of(start)}
    del start
    save()

    if progress:
        progress(1, steps, "crops (deepprior denoise, default preset)")
    out_path, report_path = out_dir / "photo-crops.png", out_dir / "photo-crops.json"
    cmd = [sys.executable, "-m", "deepprior", "denoise", str(noisy_path), "-o", str(out_path), "--sigma", str(SIGMA),
           "--seed", str(seed), "--report", str(report_path), "-q", "--max-pixels", str(SIZE[0] * SIZE[1])]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise DeepPriorError(f"deepprior denoise failed on the photo: {done.stderr.strip().splitlines()[-1:]}")
    result = load_image(out_path, max_pixels=None).pixels
    report = json.loads(report_path.read_text())
    data["rows"]["crops"] = {"seconds": seconds, "peak_gb": _child_peak_gb(), "psnr": psnr(result, clean),
                             "windows": windows_of(result), "fit_seconds": report["elapsed_s"],
                             "iterations": report["iterations"], "tiling": report["tiling"]}
    del result
    save()

    per_window, scores = [], []
    for i, (top, left) in enumerate(chosen):
        if progress:
            progress(2 + i, steps, f"tiles: window {i + 1} of {windows} (a whole fit of 512x512)")
        crop = Image(noisy_f[top : top + WINDOW, left : left + WINDOW])
        t = time.perf_counter()
        r = restore(crop, Denoise(sigma=SIGMA), seed=seed)
        per_window.append(time.perf_counter() - t)
        scores.append(psnr(r.image.to_array() / 255.0, clean[top : top + WINDOW, left : left + WINDOW]))
        data["rows"]["tiles"] = {"windows": scores, "window_seconds": per_window,
                                 "seconds_estimated": float(np.mean(per_window)) * SIZE[0] * SIZE[1] / WINDOW**2}
        save()
    if progress:
        progress(steps, steps, "done")
    log(f"wrote {out_dir / MARKDOWN}")
    return data


def tables(data: dict) -> list[Table]:
    rows = data["rows"]
    p = data["photo"]
    n = len(p["windows"])
    t = Table(f"A {p['width']}x{p['height']} photo, sigma {p['sigma']}, default preset",
              ["method", "time (s)", "peak memory (GB)", "PSNR whole (dB)", f"PSNR on {n} windows (dB)",
               "per window (dB)"])
    names = {"start": "start: non-local means", "crops": "fit on crops, one tiled pass (default)",
             "tiles": "fit tile by tile (every tile fitted whole)"}
    for key in ("start", "crops", "tiles"):
        r = rows.get(key)
        if r is None:
            continue
        seconds = fmt(r.get("seconds"), 0) if "seconds" in r else f"~{r['seconds_estimated']:.0f} (estimated)"
        t.rows.append([names[key], seconds, fmt(r.get("peak_gb"), 2) if "peak_gb" in r else "-",
                       fmt(r.get("psnr")) if "psnr" in r else "-", fmt(float(np.mean(r["windows"]))),
                       " / ".join(f"{v:.2f}" for v in r["windows"])])
    stems = [Path(r).stem for r in p.get("sources", SOURCES)]
    t.notes.append(f"The photo: {', '.join(stems)} as a 2x2 mosaic, resized with Lanczos to {p['width']}x{p['height']} "
                   "(enlarged: smoother than a phone photo), 8-bit, Gaussian noise of sigma "
                   f"{p['sigma']} (seed {p['seed']}). Windows: {p['window']}x{p['window']} at "
                   + ", ".join(f"({a}, {b})" for a, b in p["windows"]) + " (top, left).")
    if "tiles" in rows:
        w = rows["tiles"]["window_seconds"]
        t.notes.append(f"Tile by tile: each window fitted whole as a tile of its own ({np.mean(w):.0f} s each); "
                       "its photo time is that time per pixel times the photo's pixels.")
    if "crops" in rows:
        c = rows["crops"]
        size = c["tiling"].get("crop_size", [0, 0])
        t.notes.append(f"Fit on crops: `deepprior denoise` in a child process; {c['iterations']} steps of "
                       f"{c['tiling'].get('crops', 0) // max(c['iterations'], 1)} crops of {size[1]}x{size[0]}, "
                       "then one tiled pass; "
                       f"the restoration itself took {c['fit_seconds']:.0f} s of the wall time.")
    targets = Table("Targets", ["target", "measured", "met"])
    if "crops" in rows:
        c = rows["crops"]
        targets.rows.append([f"12 MP denoised in at most {TIME_LIMIT_S / 60:.0f} minutes", f"{c['seconds']:.0f} s",
                             fmt(c["seconds"] <= TIME_LIMIT_S)])
        targets.rows.append([f"peak memory at most {MEMORY_LIMIT_GB:.0f} GB", f"{c['peak_gb']:.2f} GB",
                             fmt(c["peak_gb"] <= MEMORY_LIMIT_GB)])
        if "tiles" in rows:
            k = len(rows["tiles"]["windows"])
            gap = float(np.mean(c["windows"][:k]) - np.mean(rows["tiles"]["windows"]))
            targets.rows.append([f"within {QUALITY_GAP_DB} dB of the tile fit on the windows", f"{gap:+.2f} dB",
                                 fmt(gap >= -QUALITY_GAP_DB)])
    return [t, targets]


def markdown(data: dict) -> str:
    m = data.get("machine", {})
    pre = [f"- machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}, deepprior {m.get('deepprior')}",
           f"- run {data.get('started')}; raw results: [{RESULTS}]({RESULTS})"]
    return resumable.to_markdown("deepprior bench photo", pre, tables(data))
