"""Quick classical answers to a task, for the fit to start from.

From a noise input the fast network spends most of its iterations learning what the image
looks like at all: on 50 % reconstruction at 512x512 it was still rising after 3000 iterations
(about 20 minutes here) and 2-6 dB under scikit-image's biharmonic inpainting, which takes under a
second on a grey 512x512 image. With ``input="estimate"`` (:func:`deepprior.fitting.make_input`) the first channels of
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

    return _per_image(inpaint_biharmonic, pixels, np.asarray(fill, dtype=bool))


def upscale(pixels: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic upscaling by ``scale``: the classical answer to super-resolution."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(pixels, -1, 0)))[None].float()
    up = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    return np.moveaxis(up[0].clamp(0, 1).numpy(), 0, -1)


def fill_from_neighbours(pixels: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """``pixels`` with those where ``exclude`` ((H, W), True) is set replaced by the mean of their
    other neighbours in a 3x3 window (widening the window where a pixel has none).

    Used to compute an estimate without the pixels held out for stopping (self-validation), so
    that their noise cannot reach the network through its input.
    """
    from scipy.ndimage import uniform_filter

    if exclude is None or not exclude.any():
        return pixels
    keep = (~exclude).astype(np.float64)
    out = pixels.astype(np.float64, copy=True)
    todo = exclude.copy()
    size = 3
    while todo.any() and size <= 2 * max(pixels.shape[:2]) + 1:
        weight = uniform_filter(keep, size, mode="reflect")
        ready = todo & (weight > 1e-9)
        for c in range(pixels.shape[2]):
            mean = uniform_filter(pixels[:, :, c] * keep, size, mode="reflect")
            out[:, :, c][ready] = mean[ready] / weight[ready]
        todo &= ~ready
        size = 2 * size + 1
    return out.astype(pixels.dtype, copy=False)


def noise_sigma(pixels: np.ndarray) -> float:
    """Standard deviation of additive white noise in ``pixels``, estimated from the image alone.

    Immerkaer's estimator (1996): the image filtered with a 3x3 kernel that cancels locally
    linear content, absolute values averaged, per channel; the channels' mean is returned.
    Texture reads as a little noise, so on clean, busy images it overestimates somewhat.
    """
    from scipy.ndimage import convolve

    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    h, w = pixels.shape[:2]
    if h < 3 or w < 3:
        return 0.0
    sigmas = []
    for c in range(pixels.shape[2]):
        r = convolve(pixels[:, :, c].astype(np.float64), kernel, mode="reflect")[1:-1, 1:-1]
        sigmas.append(np.sqrt(np.pi / 2) * np.abs(r).sum() / (6 * (w - 2) * (h - 2)))
    return float(np.mean(sigmas))


NLM_H = 0.6  # non-local means filter strength on luminance (and grey), in units of the noise sigma
NLM_H_CHROMA = 0.7  # the same on the two colour-difference channels (see nlm_denoise)

# Orthonormal opponent colour basis (rows: luminance, red-blue, green-magenta), the
# decorrelating transform of CBM3D (Dabov et al., ICIP 2007) scaled to keep the noise white:
# AWGN of sigma on R, G and B is AWGN of sigma on each of these channels.
_OPPONENT = np.array([
    [1 / np.sqrt(3), 1 / np.sqrt(3), 1 / np.sqrt(3)],
    [1 / np.sqrt(2), 0.0, -1 / np.sqrt(2)],
    [1 / np.sqrt(6), -2 / np.sqrt(6), 1 / np.sqrt(6)],
])


def nlm_denoise(pixels: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Non-local means, the classical answer to denoising (``sigma`` on 0-255; estimated when None).

    A colour image is turned into an opponent colour space (luminance and two colour
    differences, :data:`_OPPONENT`) and each channel is filtered on its own, with ``h = 0.6
    sigma`` on luminance and ``0.7 sigma`` on the colour differences, as CBM3D does; a grey
    image is filtered with ``h = 0.6 sigma``. scikit-image's fast mode, 5x5 patches, search
    distance 6: about 2 s at 512x512 here.

    Chosen on images outside every denoising benchmark (Set14 without its Lena, Baboon and
    Peppers, and Set5; AWGN seed 0; BENCHMARKS.md section 11): on the 15 colour ones, sigma 25,
    filtering R, G and B jointly at the best h (0.55 sigma) gave 28.69 dB and the opponent
    channels 29.36 (sigma 15: 31.18 against 32.14; sigma 50: 24.20 against 24.95); on 12 grey
    images, h = 0.55 / 0.6 / 0.7 sigma gave 28.56 / 28.60 / 28.54 dB at sigma 25.
    """
    from skimage.restoration import denoise_nl_means

    s = noise_sigma(pixels) if sigma is None else sigma / 255.0
    if s <= 0:
        return pixels.astype(np.float32)
    kw = dict(sigma=s, fast_mode=True, patch_size=5, patch_distance=6)
    if pixels.shape[2] != 3:
        return _per_image(denoise_nl_means, pixels, h=NLM_H * s, **kw)
    opp = pixels.astype(np.float64) @ _OPPONENT.T
    out = np.empty_like(opp)
    for c, h in enumerate((NLM_H, NLM_H_CHROMA, NLM_H_CHROMA)):
        out[:, :, c] = denoise_nl_means(opp[:, :, c], h=h * s, **kw)
    return np.clip(out @ _OPPONENT, 0.0, 1.0).astype(np.float32)


def _per_image(fn, pixels: np.ndarray, *args, **kwargs) -> np.ndarray:
    """Call a scikit-image function on (H, W, C) pixels: grey as a 2-D image, colour with its
    channel axis; the result back as (H, W, C) float32 in [0, 1]."""
    gray = pixels.shape[2] == 1
    out = fn(pixels[:, :, 0] if gray else pixels, *args, channel_axis=None if gray else -1, **kwargs)
    out = out[:, :, None] if gray else out
    return np.clip(out, 0.0, 1.0).astype(np.float32)
