"""Making degraded test inputs the way the papers did: noise, downscaling, masks, JPEG, blur.

Every function is seeded and pure: the same image, options and seed give the same output, so
that every method of a benchmark sees the same input. Masks are boolean arrays, True where a
pixel is missing (to fill); written to disk they are white there, as ``inpaint --mask`` reads.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from .errors import DeepPriorError
from .images import Image
from .operators import Blur, parse_kernel


def add_noise(image: Image, sigma: float, seed: int = 0) -> Image:
    """Additive white Gaussian noise, ``sigma`` on the 0-255 scale, clipped to [0, 1]."""
    if not sigma >= 0:
        raise DeepPriorError(f"noise sigma must be >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    noisy = image.pixels + rng.normal(0.0, sigma / 255.0, image.pixels.shape).astype(np.float32)
    return image.with_pixels(noisy)


def crop_to_multiple(image: Image, factor: int) -> Image:
    """Crop the bottom/right so both sides are multiples of ``factor`` (the SR convention)."""
    h, w = (image.height // factor) * factor, (image.width // factor) * factor
    if h == 0 or w == 0:
        raise DeepPriorError(f"image {image.width}x{image.height} is smaller than the factor {factor}")
    alpha = image.alpha[:h, :w] if image.alpha is not None else None
    return Image(np.ascontiguousarray(image.pixels[:h, :w]), alpha, image.bit_depth, image.source)


def downscale(image: Image, factor: int) -> Image:
    """Crop to a multiple of ``factor`` and downscale with Pillow's Lanczos filter.

    8-bit images go through Pillow's 8-bit path and are quantised, as the paper's low-resolution
    inputs were; 16-bit ones are resized per channel in floating point.
    """
    if factor < 2:
        raise DeepPriorError(f"downscale factor must be at least 2, got {factor}")
    hr = crop_to_multiple(image, factor)
    size = (hr.width // factor, hr.height // factor)
    if hr.bit_depth == 8:
        arr = hr.to_array(np.uint8)
        pil = PILImage.fromarray(arr if arr.ndim == 2 or arr.shape[2] != 2 else arr[:, :, 0])
        lo = np.asarray(pil.resize(size, PILImage.Resampling.LANCZOS), dtype=np.float32) / 255.0
        if lo.ndim == 2:
            lo = lo[:, :, None]
        pixels = lo[:, :, : hr.channels]
    else:
        planes = [
            np.asarray(PILImage.fromarray(hr.pixels[:, :, c]).resize(size, PILImage.Resampling.LANCZOS))
            for c in range(hr.channels)
        ]
        pixels = np.stack(planes, axis=2)
    return hr.with_pixels(pixels)


def random_mask(shape: tuple[int, int], fraction: float, seed: int = 0) -> np.ndarray:
    """Bernoulli mask: each pixel is dropped (True) with probability ``fraction``."""
    if not 0 < fraction < 1:
        raise DeepPriorError(f"drop fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    return rng.random(shape) < fraction


def text_mask(shape: tuple[int, int], words: str, seed: int = 0, size: int | None = None) -> np.ndarray:
    """Lines of ``words`` written over the whole image, like the paper's text-inpainting mask,
    in letters ``size`` pixels high (default: a twelfth of the image's height)."""
    if not words.strip():
        raise DeepPriorError("text for the mask is empty")
    h, w = shape
    canvas = PILImage.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    size = max(8, h // 12) if size is None else size
    if size < 1:
        raise DeepPriorError(f"text size must be positive, got {size}")
    font = ImageFont.load_default(size=size)
    rng = np.random.default_rng(seed)
    y = int(rng.integers(0, max(1, size // 2)))
    while y < h:
        x = -int(rng.integers(0, max(1, size * 2)))
        line = (words.strip() + "  ") * (2 + w // max(1, size * len(words)))
        draw.text((x, y), line, fill=255, font=font)
        y += int(size * 1.6)
    mask = np.asarray(canvas) > 127
    if not mask.any():
        raise DeepPriorError("image is too small for a text mask")
    return mask


def hole_mask(shape: tuple[int, int], seed: int = 0, fraction: float = 0.12) -> np.ndarray:
    """One large elliptical hole covering about ``fraction`` of the image, placed by ``seed``."""
    h, w = shape
    rng = np.random.default_rng(seed)
    ry = max(1.0, h * np.sqrt(fraction / np.pi) * rng.uniform(0.8, 1.2))
    rx = max(1.0, (fraction * h * w / np.pi) / ry)
    cy = rng.uniform(ry, max(ry, h - ry))
    cx = rng.uniform(rx, max(rx, w - rx))
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if mask.all() or not mask.any():
        raise DeepPriorError("image is too small for a hole mask")
    return mask


def apply_mask(image: Image, fill: np.ndarray, value: float = 0.0) -> Image:
    """The image with the pixels to fill set to ``value`` (black by default)."""
    pixels = image.pixels.copy()
    pixels[fill] = value
    return image.with_pixels(pixels)


def jpeg(image: Image, quality: int) -> Image:
    """Compress with JPEG at ``quality`` (1-95) and decode again."""
    if not 1 <= quality <= 100:
        raise DeepPriorError(f"JPEG quality must be between 1 and 100, got {quality}")
    buf = io.BytesIO()
    arr = (np.rint(image.pixels * 255)).astype(np.uint8)
    PILImage.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="JPEG", quality=quality)
    dec = np.asarray(PILImage.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0
    return image.with_pixels(dec)


def blur(image: Image, kernel) -> Image:
    """Blur with a kernel (``gaussian:SIGMA``, ``motion:LENGTH,ANGLE``, an image, or an array),
    with the same operator the ``deblur`` task inverts."""
    k = parse_kernel(kernel)
    op = Blur(k, image.channels)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image.pixels, -1, 0)))[None]
    with torch.no_grad():
        y = op(x)[0].permute(1, 2, 0).numpy()
    return image.with_pixels(y)


def mask_image(fill: np.ndarray) -> Image:
    """A mask as an image to save: white where pixels are to be filled."""
    return Image(fill.astype(np.float32)[:, :, None])
