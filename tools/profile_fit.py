"""Where a fit's time goes: seconds per iteration and torch.profiler's table of operators.

    python tools/profile_fit.py SUITE IMAGE [--preset fast] [--iters 5] [--threads 2]

Degrades IMAGE (under ../shared/data) as SUITE does (seed 0), runs the preset's fit for a few
warm-up iterations, then profiles ``--iters`` more and prints the operators by their own CPU
time. Used for the profiles of BENCHMARKS.md (section 1 at 256x256, section 15 for x4
super-resolution at Set5's sizes).
"""

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from deepprior.bench.suites import get_suite
from deepprior.fitting import fit
from deepprior.images import load_image
from deepprior.networks import padded_size
from deepprior.presets import get_preset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite")
    ap.add_argument("image")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    suite = get_suite(args.suite)
    case = suite.degrade(load_image(DATA / args.image), Path(args.image).stem, 0)
    cfg = get_preset(case.task.preset_key, args.preset)

    def run(iterations: int) -> float:
        problem = case.task.problem(case.degraded)  # fit changes the problem in place: a fresh one each time
        t = time.perf_counter()
        fit(problem, dataclasses.replace(cfg, iterations=iterations, stop="off"))
        return time.perf_counter() - t

    run(3)  # warm-up: allocator, oneDNN primitives
    per_it = run(args.iters) / args.iters
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(args.iters)
    h, w = case.task.problem(case.degraded).out_size
    hp, wp = padded_size(h, w, cfg.net.scales)
    print(f"{args.image}: {args.suite}, {args.preset} preset, result {w}x{h} (fitted at {wp}x{hp}), "
          f"{args.threads} threads: {per_it:.3f} s per iteration (including the fit's setup)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
