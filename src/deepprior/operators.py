"""Degradation operators A: what turns a clean image x into the observation y.

The fit minimises ||A(f(theta, z)) - y||^2, so each operator must be differentiable in torch
and act on batches shaped (1, C, H, W). They are small ``nn.Module`` objects holding their
fixed kernels or masks as buffers, so ``.to(device)`` moves them with the network.

A fit on crops of a large image (:mod:`deepprior.cropfit`) applies A to one window of x at a
time: ``window(x, top, left)`` is A on the x pixels at that place, and ``reach`` says how many
pixels of y next to a cut side of the window A computes from pixels beyond the cut (and so
differently from the whole image).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeepPriorError


class Identity(nn.Module):
    """A(x) = x: denoising, JPEG-artifact removal, flash/no-flash."""

    reach = 0

    def window(self, x: torch.Tensor, top: int, left: int) -> torch.Tensor:
        return self(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


LANCZOS_SUPPORT = 3
"""Lobes of the downsampler's Lanczos window: 3, as Pillow's and most image libraries' Lanczos
filter, which makes the low-resolution images a user brings (and the suites'). The paper's
Lanczos-2 kernel misses such an input by 1-3.5 on 0-255 where Lanczos-3 matches it to its 8-bit
rounding (BENCHMARKS.md, Set5 x4)."""


def lanczos_kernel(factor: int, support: int = LANCZOS_SUPPORT) -> np.ndarray:
    """A Lanczos-``support`` downsampling kernel for ``factor``, centred on each block.

    Separable, normalised to sum to one, ``support`` low-resolution pixels on each side. For
    even factors the taps sit between pixel centres (width ``2 * support * factor``, phase 0.5,
    as the paper's kernel), as the centre of an even block lies between pixels. For odd factors
    the centre of a block is a pixel, so the taps sit on pixel centres (width
    ``2 * support * factor - 1``); an even-width kernel there would sample half a pixel off the
    block's centre, and off the low-resolution image of any standard downscaler.
    """
    n = 2 * support * factor
    if factor % 2 == 0:
        offsets = np.arange(n) - (n - 1) / 2.0  # +-0.5, +-1.5, ...
    else:
        offsets = np.arange(n - 1) - (support * factor - 1)  # 0, +-1, ..., +-(support factor - 1)
    d = np.abs(offsets) / factor
    taps = np.ones_like(d)
    nz = d != 0
    taps[nz] = support * np.sin(np.pi * d[nz]) * np.sin(np.pi * d[nz] / support) / (np.pi**2 * d[nz] ** 2)
    kernel = np.outer(taps, taps)
    return kernel / kernel.sum()


class LanczosDownsampler(nn.Module):
    """A(x): blur with a Lanczos kernel (:func:`lanczos_kernel`) and keep every ``factor``-th pixel.

    Replicate padding makes an (H, W) input give exactly (H / factor, W / factor) output, as
    the paper's ``Downsampler(..., preserve_size=True)`` did for factors 2, 4 and 8, each output
    pixel weighing its block's neighbourhood symmetrically about the block's centre.
    """

    def __init__(self, factor: int, channels: int, support: int = LANCZOS_SUPPORT):
        super().__init__()
        if factor < 1:
            raise DeepPriorError(f"scale must be a positive integer, got {factor}")
        self.factor = factor
        k = torch.from_numpy(lanczos_kernel(factor, support)).float()
        self.register_buffer("kernel", k.expand(channels, 1, *k.shape).contiguous())
        total = k.shape[0] - factor
        self.pad = (total // 2, total - total // 2)
        self.reach = -(-max(self.pad) // factor) if factor > 1 else 0  # ``support`` low-resolution pixels

    def window(self, x: torch.Tensor, top: int, left: int) -> torch.Tensor:
        """A on a window whose corner (``top``, ``left``) is a multiple of the factor."""
        return self(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return x
        lo, hi = self.pad
        x = F.pad(x, (lo, hi, lo, hi), mode="replicate")
        return F.conv2d(x, self.kernel, stride=self.factor, groups=x.shape[1])


class Mask(nn.Module):
    """A(x) = x * m, with m = 1 on known pixels: inpainting and reconstruction."""

    def __init__(self, known: np.ndarray):
        super().__init__()
        known = np.asarray(known, dtype=np.float32)
        if known.ndim == 2:
            known = known[None]
        else:
            known = np.moveaxis(known, -1, 0)
        self.register_buffer("known", torch.from_numpy(np.ascontiguousarray(known))[None])

    reach = 0

    def window(self, x: torch.Tensor, top: int, left: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x * self.known[..., top : top + h, left : left + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.known


class Blur(nn.Module):
    """A(x) = k * x, a known blur, with replicate padding so the size is kept."""

    def __init__(self, kernel: np.ndarray, channels: int):
        super().__init__()
        kernel = np.asarray(kernel, dtype=np.float32)
        k = torch.from_numpy(kernel[::-1, ::-1].copy())  # conv2d correlates; flip for convolution
        self.register_buffer("kernel", k.expand(channels, 1, *k.shape).contiguous())
        kh, kw = kernel.shape
        self.pad = ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)
        self.reach = max(self.pad)

    def window(self, x: torch.Tensor, top: int, left: int) -> torch.Tensor:
        return self(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, mode="replicate")
        return F.conv2d(x, self.kernel, groups=x.shape[1])


# --- blur kernels ---------------------------------------------------------------------------


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised Gaussian kernel, 3 sigma on each side."""
    if not 0 < sigma <= 16:  # 16 keeps the kernel within the 101x101 allowed for kernel images
        raise DeepPriorError(f"gaussian blur sigma must be above 0 and at most 16, got {sigma}")
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A straight motion blur of ``length`` pixels at ``angle_deg`` degrees (anti-aliased)."""
    if not 1 <= length <= 101:  # the size allowed for kernel images
        raise DeepPriorError(f"motion blur length must be 1 to 101 pixels, got {length}")
    if not math.isfinite(angle_deg):
        raise DeepPriorError(f"motion blur angle must be a number of degrees, got {angle_deg}")
    size = int(math.ceil(length)) | 1
    k = np.zeros((size, size), dtype=np.float64)
    c = size // 2
    theta = math.radians(angle_deg)
    dx, dy = math.cos(theta), -math.sin(theta)
    samples = max(2, int(length * 8))
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, samples):
        x, y = c + t * dx, c + t * dy
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for yy, xx, w in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x0 + 1, fx * (1 - fy)),
                          (y0 + 1, x0, (1 - fx) * fy), (y0 + 1, x0 + 1, fx * fy)):
            if 0 <= yy < size and 0 <= xx < size:
                k[yy, xx] += w
    return (k / k.sum()).astype(np.float32)


def parse_kernel(spec, *, load=None) -> np.ndarray:
    """A blur kernel from ``gaussian:SIGMA``, ``motion:LENGTH,ANGLE``, a kernel image path or an array.

    A kernel image is read as grayscale and normalised to sum to one; it must be small
    (at most 101x101) and have some positive weight.
    """
    if isinstance(spec, np.ndarray):
        return _check_kernel(spec.astype(np.float32), "kernel array")
    spec = str(spec)
    kind, _, args = spec.partition(":")
    try:
        if kind == "gaussian" and args:
            return gaussian_kernel(float(args))
        if kind == "motion" and args:
            length, _, angle = args.partition(",")
            return motion_kernel(float(length), float(angle or 0.0))
    except DeepPriorError as e:
        raise DeepPriorError(f"bad kernel {spec!r}: {e}") from None
    except ValueError:
        raise DeepPriorError(f"bad kernel {spec!r}: use gaussian:SIGMA or motion:LENGTH,ANGLE") from None
    if load is None:
        from .images import load_image as load
    try:
        image = load(spec)
    except DeepPriorError as e:
        raise DeepPriorError(
            f"bad kernel {spec!r}: not gaussian:SIGMA, motion:LENGTH,ANGLE or a readable kernel image ({e})"
        ) from None
    return _check_kernel(image.pixels.mean(axis=2), spec)


def _check_kernel(k: np.ndarray, name: str) -> np.ndarray:
    if k.ndim != 2 or 0 in k.shape:
        raise DeepPriorError(f"{name}: a blur kernel must be a 2-D array")
    if max(k.shape) > 101:
        raise DeepPriorError(f"{name}: kernel is {k.shape[1]}x{k.shape[0]}; a blur kernel is at most 101x101")
    if not np.isfinite(k).all() or (k < 0).any() or k.sum() <= 0:
        raise DeepPriorError(f"{name}: a blur kernel needs non-negative weights with a positive sum")
    return (k / k.sum()).astype(np.float32)
