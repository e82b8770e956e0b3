"""Peak memory of restoring a 4000x3000 photo with the default tiling.

    python tools/tiled_memory.py ITERATIONS [MAX_FIT_PIXELS]

The photo is CBM3D's kodim01 enlarged to 4000x3000 with Lanczos, noised at sigma 25. A couple of
iterations per tile are enough to reach each tile's peak memory. Prints JSON: peak RSS before and
after the fit, the time, and the tiling (BENCHMARKS.md, section 3).
"""

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from deepprior import Image, restore, tasks
from deepprior.degrade import add_noise
from deepprior.tiling import DEFAULT_MAX_FIT_PIXELS

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "CBM3D_color9" / "kodim01.png"


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def main(argv):
    iterations = int(argv[0])
    budget = int(argv[1]) if len(argv) > 1 else DEFAULT_MAX_FIT_PIXELS
    big = PILImage.open(PHOTO).convert("RGB").resize((4000, 3000), PILImage.LANCZOS)
    noisy = add_noise(Image(np.asarray(big, dtype=np.float32) / 255), 25, 0)
    before = peak_gb()
    start = time.perf_counter()
    result = restore(noisy, tasks.Denoise(sigma=25), iterations=iterations, threads=2, max_fit_pixels=budget)
    print(json.dumps({"before_fit_GB": round(before, 2), "peak_GB": round(peak_gb(), 2),
                      "seconds": round(time.perf_counter() - start, 1),
                      "tiling": {k: v for k, v in result.tiling.items() if k != "per_tile"}}))


if __name__ == "__main__":
    main(sys.argv[1:])
