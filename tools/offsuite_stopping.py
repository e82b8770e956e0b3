"""Record the stopping rule's curve on denoising images outside every suite, and replay it.

    python tools/offsuite_stopping.py record OUT.json ITERS IMAGE...   # fit, observe, record
    python tools/offsuite_stopping.py replay OUT.json... [--patience P] [--start S]

``record`` runs the fast denoising preset at sigma 25 (each image degraded with the seed the
suites would give it) for ITERS iterations with ``stop="observe"`` (the rule is evaluated but
never obeyed), 1 thread, and writes per image the PSNR history of the running result (every 10
iterations), the rule's curve (every iteration) and the time. ``replay`` decides the rule again
on those curves (:func:`deepprior.stopping.replay`) with the preset's patience and floor, or the
ones given, and prints per image the peak, the iterate the rule returns, the gap and the
iterations it spends over the peak's. Used for BENCHMARKS.md section 12: the suites' images
are what the rule is judged on, so its settings are chosen on images outside them.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deepprior import degrade
from deepprior.bench.stopping import stop_stats
from deepprior.bench.suites import image_seed
from deepprior.images import load_image
from deepprior.presets import get_preset
from deepprior.restoration import restore
from deepprior.stopping import replay
from deepprior.tasks import Denoise

SIGMA = 25


def record(out: Path, iterations: int, images: list[str]) -> None:
    rows = json.loads(out.read_text()) if out.exists() else {}
    for path in images:
        name = Path(path).stem
        clean = load_image(path)
        noisy = degrade.add_noise(clean, SIGMA, image_seed(0, name))
        t = time.perf_counter()
        r = restore(noisy, Denoise(sigma=SIGMA), "fast", threads=1, reference=clean,
                    iterations=iterations, stop="observe", stop_patience=10**9)
        rows[name] = {"history": [{"iter": e["iter"], "psnr": float(e["psnr"])} for e in r.history],
                      "curve": r.outcome.stop_curve, "seconds": time.perf_counter() - t}
        out.write_text(json.dumps(rows))  # after every image: an interrupted run keeps what finished
        print(f"{name}: {rows[name]['history'][-1]['psnr']:.2f} dB at {iterations}, {rows[name]['seconds']:.0f} s",
              flush=True)


def replay_files(files: list[Path], patience: int, start: int) -> None:
    rows = {}
    for f in files:
        rows.update(json.loads(f.read_text()))
    gaps, ratios = [], []
    print("| image | peak PSNR @ iteration | rule fires at | returns | its PSNR | gap | iterations / peak's |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        hist = row["history"]
        peak = max(hist, key=lambda e: e["psnr"])
        cap = hist[-1]["iter"]
        fired, held = replay(row["curve"], patience, start)
        returned = held if fired else cap
        got = min(hist, key=lambda e: abs(e["iter"] - returned))["psnr"]  # history every 10 iterations
        st = stop_stats(peak["psnr"], peak["iter"], got, fired, cap)
        gaps.append(st["gap_db"])
        ratios.append(st["stop_ratio"])
        print(f"| {name} | {peak['psnr']:.2f} @ {peak['iter']} | {fired or 'never'} | {returned} | {got:.2f} | "
              f"{gaps[-1]:.2f} dB | {ratios[-1]:.2f}x |")
    print(f"mean gap {np.mean(gaps):.3f} dB, worst {max(gaps):.2f} dB, worst ratio {max(ratios):.2f}x "
          f"(patience {patience}, floor {start})")


def main() -> None:
    preset = get_preset("denoise", "fast")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("iterations", type=int)
    rec.add_argument("images", nargs="+")
    rep = sub.add_parser("replay")
    rep.add_argument("files", type=Path, nargs="+")
    rep.add_argument("--patience", type=int, default=preset.stop_patience)
    rep.add_argument("--start", type=int, default=preset.stop_start)
    a = p.parse_args()
    if a.cmd == "record":
        record(a.out, a.iterations, a.images)
    else:
        replay_files(a.files, a.patience, a.start)


if __name__ == "__main__":
    main()
