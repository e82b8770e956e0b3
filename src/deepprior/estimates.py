"""Quick classical answers to a task, for the fit to start from.

From a noise input the fast network spends most of its iterations learning what the image
looks like at all: on 50 % reconstruction at 512x512 it was still rising after 3000 iterations
(about 20 minutes here) and 2-6 dB under scikit-image's biharmonic inpainting, which takes under a
second. With ``input="estimate"`` (:func:`deepprior.fitting.make_input`) the first channels of
the network input hold the task's classical answer from this module and the rest are noise, so
the network starts from the content and spends its iterations on what the classical method got
wrong (BENCHMARKS.md section 8 has the measurements).

Each function takes and returns (H, W, C) arrays in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch


def biharmonic_fill(pixels: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Fill the pixels where ``fill`` is True by solving a biharmonic equation over each hole.

    scikit-image's ``inpaint_biharmonic``: smooth, exact on the known pixels, and the best of the
    classical inpainting baselines on 50 % reconstruction (BENCHMARKS.md section 7).
    """
    from skimage.restoration import inpaint_biharmonic

    gray = pixels.shape[2] == 1
    src = pixels[:, :, 0] if gray else pixels
    out = inpaint_biharmonic(src, np.asarray(fill, dtype=bool), channel_axis=None if gray else -1)
    out = out[:, :, None] if gray else out
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def upscale(pixels: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic upscaling by ``scale``: the classical answer to super-resolution."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(pixels, -1, 0)))[None].float()
    up = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    return np.moveaxis(up[0].clamp(0, 1).numpy(), 0, -1)
