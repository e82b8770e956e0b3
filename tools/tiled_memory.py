"""Peak memory of restoring a 4000x3000 photo (CBM3D kodim01 enlarged with Lanczos, sigma 25) with the default tiling.

    python tools/tiled_memory.py ITERATIONS [MAX_FIT_PIXELS]
"""
import resource, sys, time, json
import numpy as np
from PIL import Image as P
from deepprior import restore, tasks
from deepprior.images import Image
from deepprior.degrade import add_noise
im = P.open(str(__import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/CBM3D_color9/kodim01.png")).convert("RGB").resize((4000, 3000), P.LANCZOS)
clean = Image(np.asarray(im, dtype=np.float32) / 255)
noisy = add_noise(clean, 25, 0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
t = time.time()
r = restore(noisy, tasks.Denoise(sigma=25), iterations=int(sys.argv[1]), threads=2, max_fit_pixels=int(sys.argv[2]) if len(sys.argv) > 2 else 2_000_000)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(json.dumps({"before_fit_GB": round(base, 2), "peak_GB": round(peak, 2), "seconds": round(time.time() - t, 1),
                  "tiling": {k: v for k, v in r.tiling.items() if k != "per_tile"},
                  "s_per_it_per_tile": [p["elapsed_s"] / p["iterations"] for p in r.tiling["per_tile"]][:3]}))
