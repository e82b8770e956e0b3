"""Image-quality measures, following the conventions of the papers we compare with.

All functions take float arrays in [0, 1] shaped (H, W) or (H, W, C).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _as3(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, :, None] if a.ndim == 2 else a


def psnr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB over all pixels and channels, peak 1."""
    e, r = _as3(estimate), _as3(reference)
    if e.shape != r.shape:
        raise ValueError(f"shapes differ: {e.shape} vs {r.shape}")
    mse = float(np.mean((e - r) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(estimate: np.ndarray, reference: np.ndarray) -> float:
    """SSIM (scikit-image, Gaussian weights as in Wang et al. 2004), averaged over channels."""
    e, r = _as3(estimate), _as3(reference)
    if min(e.shape[:2]) < 7:
        return float("nan")
    return float(
        structural_similarity(
            e, r, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )


def masked_psnr(estimate: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB over the pixels where ``mask`` ((H, W), True) is set, all channels, peak 1:
    the measure of an inpainting method that does not reward the pixels it was given."""
    e, r = _as3(estimate), _as3(reference)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("the mask selects no pixel")
    mse = float(np.mean((e[m] - r[m]) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def masked_ssim(estimate: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """The SSIM map (as :func:`ssim`) averaged over the pixels where ``mask`` is set."""
    e, r = _as3(estimate), _as3(reference)
    if min(e.shape[:2]) < 7:
        return float("nan")
    _, full = structural_similarity(e, r, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    return float(full.mean(axis=2)[np.asarray(mask, dtype=bool)].mean())


def mask_colour_error(estimate: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """How far the mean colour inside ``mask`` is from the truth's: the largest difference, over
    the channels, of the two means, on 0-255. A fill that comes back as a flat blob of the wrong
    colour scores high here even where its PSNR looks ordinary."""
    e, r = _as3(estimate), _as3(reference)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("the mask selects no pixel")
    return float(np.abs(e[m].mean(axis=0) - r[m].mean(axis=0)).max() * 255.0)


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma on the 16-235 scale (as MATLAB's rgb2ycbcr), from RGB in [0, 1]."""
    a = _as3(rgb)
    if a.shape[2] == 1:
        return 16.0 + 219.0 * a[:, :, 0]
    return 16.0 + 65.481 * a[:, :, 0] + 128.553 * a[:, :, 1] + 24.966 * a[:, :, 2]


def y_psnr(estimate: np.ndarray, reference: np.ndarray, border: int = 0) -> float:
    """Super-resolution PSNR: on the Y channel (BT.601, 16-235), ``border`` pixels cropped."""
    ye, yr = rgb_to_y(estimate), rgb_to_y(reference)
    if border:
        ye, yr = ye[border:-border, border:-border], yr[border:-border, border:-border]
    mse = float(np.mean((ye - yr) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def y_ssim(estimate: np.ndarray, reference: np.ndarray, border: int = 0) -> float:
    """SSIM on the Y channel with a border crop, peak 255."""
    ye, yr = rgb_to_y(estimate), rgb_to_y(reference)
    if border:
        ye, yr = ye[border:-border, border:-border], yr[border:-border, border:-border]
    return float(
        structural_similarity(ye, yr, data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    )


def quality(estimate: np.ndarray, reference: np.ndarray, *, sr_scale: int | None = None,
            mask: np.ndarray | None = None) -> dict:
    """The report's metrics: PSNR and SSIM, for super-resolution the Y-channel ones too, and
    with a ``mask`` of filled pixels the PSNR, SSIM and mean-colour error inside it."""
    out = {"psnr": psnr(estimate, reference), "ssim": ssim(estimate, reference)}
    if mask is not None:
        out["psnr_mask"] = masked_psnr(estimate, reference, mask)
        out["ssim_mask"] = masked_ssim(estimate, reference, mask)
        out["colour_error_mask"] = mask_colour_error(estimate, reference, mask)
    if sr_scale:
        out["psnr_y"] = y_psnr(estimate, reference, border=sr_scale)
        out["ssim_y"] = y_ssim(estimate, reference, border=sr_scale)
    return out


__all__ = ["psnr", "ssim", "masked_psnr", "masked_ssim", "mask_colour_error", "y_psnr", "y_ssim", "rgb_to_y", "quality",
           "peak_signal_noise_ratio"]
