"""Probe: the classical super-resolution starts, scored alone, and the fast fit from a chosen one
(BENCHMARKS.md sections 14 and 15).

    python tools/sr_sparse_start.py start SET [SCALE]             # bicubic, back-projection, +DCT, +TV: Y-PSNR
    python tools/sr_sparse_start.py fit SET [ITERS] [sparse|tv]   # the fast fit from that start

The starts are :mod:`deepprior.estimates`' steps: gradient back-projection through the fit's own
Lanczos-2 downsampler from the bicubic upscale (``back_project(..., sparse=False)``), the same with
the DCT of every 8x8 window hard-thresholded between steps (``back_project``), and that refined
with a total-variation term (``regularised_upscale``, the start of the fast ``sr`` preset since
session 13). ``fit ... sparse`` re-runs session 12's probe (the fit from the DCT start without the
TV refinement, 29.72 dB on Set5 x4 at 500 iterations); ``fit ... tv`` is the preset itself.
"""

import sys
import time
from dataclasses import dataclass

import numpy as np

from deepprior import estimates, tasks
from deepprior.bench import suites
from deepprior.bench.runner import _quantise
from deepprior.restoration import restore


@dataclass(frozen=True)
class SparseStartSR(tasks.SuperResolution):
    """Super-resolution whose classical estimate is the DCT-thresholded back-projection alone."""

    def problem(self, image):
        p = super().problem(image)
        p.estimate = lambda exclude=None: estimates.back_project(image.pixels, self.scale)
        return p


def main() -> None:
    mode, set_name = sys.argv[1], sys.argv[2]
    scale = int(sys.argv[3]) if mode == "start" and len(sys.argv) > 3 else 4
    iters = int(sys.argv[3]) if mode == "fit" and len(sys.argv) > 3 else 500
    start = sys.argv[4] if len(sys.argv) > 4 else "tv"
    suite = suites.get_suite(f"sr-x{scale}", set_name)
    data = suites.find_data_dir(None)
    manifest = suites.read_manifest(data)
    scores: dict[str, list[float]] = {}
    for rel in suites.select(suite, manifest):
        case = suites.load_case(suite, data, rel, manifest, 0)
        lr = case.degraded.pixels
        t = time.perf_counter()
        if mode == "start":
            sparse = estimates.back_project(lr, scale)
            outs = {"bicubic": estimates.upscale(lr, scale),
                    "back-projection": estimates.back_project(lr, scale, sparse=False),
                    "+ DCT": sparse,
                    "+ TV": estimates.tv_refine(sparse, lr, scale)}
        else:
            task = SparseStartSR(scale=scale) if start == "sparse" else tasks.SuperResolution(scale=scale)
            r = restore(case.degraded, task, "fast", threads=2, input="estimate", iterations=iters, stop="off")
            outs = {"fit": r.image.pixels}
        line = []
        for k, out in outs.items():
            scores.setdefault(k, []).append(suite.score(_quantise(out), case.clean.pixels)["psnr_y"])
            line.append(f"{k} {scores[k][-1]:.2f}")
        print(suites.image_name(rel), " ".join(line), f"{time.perf_counter() - t:.0f} s", flush=True)
    print("mean", " ".join(f"{k} {np.mean(v):.2f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
