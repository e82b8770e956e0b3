"""Measure one speed lever: PSNR of the fast preset's current result against wall time.

    python tools/levers.py SUITE IMAGE SECONDS TAG ['{"lr": 0.02, "net": {"need_1x1_up": false}}']

Runs the ``fast`` preset of SUITE's task on one image of ../shared/data (degraded as the suite
does, seed 0), with the overrides given as JSON (FitConfig fields; ``net`` for NetConfig
fields), for SECONDS of wall time with ``stop="observe"`` and no cap, and prints (and appends to
bench-out/levers.jsonl) the PSNR reached after 30/60/90/120/... s, the best PSNR and when.
Used for the lever tables of BENCHMARKS.md section 2.
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepprior.bench.suites import get_suite
from deepprior.fitting import fit
from deepprior.images import load_image
from deepprior.presets import get_preset


def main(argv):
    suite_name, img, budget, tag = argv[0], argv[1], float(argv[2]), argv[3]
    over = json.loads(argv[4]) if len(argv) > 4 else {}
    torch.set_num_threads(2)
    suite = get_suite(suite_name)
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    case = suite.degrade(load_image(data / img), Path(img).stem, 0)
    cfg = get_preset(case.task.preset_key, "fast")
    net = dataclasses.replace(cfg.net, **{k: tuple(v) if isinstance(v, list) else v for k, v in over.pop("net", {}).items()})
    cfg = dataclasses.replace(cfg, net=net, iterations=10**6, stop="observe", **over)
    points = []
    start = time.perf_counter()

    def callback(p):
        t = time.perf_counter() - start
        estimate = case.task.finish(case.degraded, np.clip(p.preview(), 0, 1))
        points.append((t, p.iteration, suite.score(estimate, case.clean.pixels)[suite.metric]))
        return t > budget

    out = fit(case.task.problem(case.degraded), cfg, seed=0, callback=callback, callback_every=25)
    ts = np.array(points)
    best = int(ts[:, 2].argmax())
    row = {"tag": tag, "image": img, "overrides": json.loads(argv[4]) if len(argv) > 4 else {},
           "s_per_it": round(ts[-1, 0] / ts[-1, 1], 4),
           **{f"@{T}s": round(float(ts[ts[:, 0] <= T][-1, 2]), 2) for T in range(30, int(budget) + 1, 30)},
           "best": round(float(ts[best, 2]), 2), "best_s": round(float(ts[best, 0])), "best_it": int(ts[best, 1]),
           "auto_stop_at": out.auto_stop_at}
    print(json.dumps(row))
    Path("bench-out").mkdir(exist_ok=True)
    with open("bench-out/levers.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
