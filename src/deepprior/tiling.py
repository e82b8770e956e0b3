"""Restoring images too large to fit at once: overlapping tiles, fitted one by one, blended.

The memory of a fit grows with the number of output pixels (about 1.1 GB per megapixel with the
``fast`` network, measured at 1024x1024 in BENCHMARKS.md), so a 4000x3000 photograph fitted
whole would need, by that rate, some 13 GB (an extrapolation, not a measurement). Above a pixel
budget, for presets that cannot fit on crops (:mod:`deepprior.cropfit`, hours faster where it
applies) or when asked, the image is cut into overlapping tiles, each tile is restored
as an image of its own (the task cropped to it: its mask, its flash image), and the results are
blended with weights that ramp linearly across every overlap, so no seam shows where two
tiles meet. Tile boundaries are chosen in the input's coordinates; for super-resolution the
output tiles are ``scale`` times larger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import DeepPriorError

#: Largest result, in pixels, fitted in one piece by default: with the fast preset a 4000x3000
#: photo (9 tiles) peaked at 3.16 GB, under the 4 GB a laptop can spare (BENCHMARKS.md, large images).
DEFAULT_MAX_FIT_PIXELS = 2_000_000
DEFAULT_OVERLAP = 32  # input pixels shared by neighbouring tiles


@dataclass(frozen=True)
class Tile:
    """One tile, in input pixels: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


def _starts(length: int, count: int, size: int) -> list[int]:
    if count == 1:
        return [0]
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def _split(length: int, max_size: int, overlap: int) -> tuple[int, int]:
    """How many tiles of what size cover ``length`` with at least ``overlap`` shared."""
    if length <= max_size:
        return 1, length
    count = math.ceil((length - overlap) / (max_size - overlap))
    return count, math.ceil((length + (count - 1) * overlap) / count)


def plan_tiles(height: int, width: int, *, scale: int = 1, max_fit_pixels: int = DEFAULT_MAX_FIT_PIXELS,
               overlap: int = DEFAULT_OVERLAP) -> list[Tile]:
    """Tiles covering an input of ``height`` x ``width`` whose results stay under ``max_fit_pixels``.

    One tile (the whole image) when the result, ``scale`` times each side, fits the budget.
    Otherwise square-ish tiles of equal size, neighbours sharing at least ``overlap`` input
    pixels, listed row by row.
    """
    if max_fit_pixels < 1:
        raise DeepPriorError(f"max_fit_pixels must be positive, got {max_fit_pixels}")
    if height * width * scale * scale <= max_fit_pixels:
        return [Tile(0, 0, height, width)]
    side = int(math.isqrt(max_fit_pixels) // scale)
    overlap = max(0, min(overlap, side // 4))
    if side <= overlap or side < 16:
        raise DeepPriorError(f"max_fit_pixels {max_fit_pixels} is too small to tile a x{scale} result")
    rows, th = _split(height, side, overlap)
    cols, tw = _split(width, side, overlap)
    return [Tile(t, l, th, tw) for t in _starts(height, rows, th) for l in _starts(width, cols, tw)]


def _ramp(start: int, size: int, spans: set[tuple[int, int]], scale: int) -> np.ndarray:
    n = size * scale
    pos = np.arange(n, dtype=np.float32) + 0.5
    w = np.ones(n, dtype=np.float32)
    end = start + size
    for s, e in spans:
        if s < start < e <= end:  # a neighbour covers our start: ramp up across the shared part
            w = np.minimum(w, np.clip(pos / ((e - start) * scale), 0, 1))
        if start <= s < end < e:  # a neighbour covers our end: ramp down
            w = np.minimum(w, np.clip((n - pos) / ((end - s) * scale), 0, 1))
    return w


def blend_weights(tile: Tile, tiles: list[Tile], scale: int = 1) -> np.ndarray:
    """Weights of one tile's result (its output pixels): 1 inside, ramping towards 0 across the
    part of each side that a neighbouring tile shares; sides on the image's border keep 1."""
    rows = {(t.top, t.top + t.height) for t in tiles}
    cols = {(t.left, t.left + t.width) for t in tiles}
    return _ramp(tile.top, tile.height, rows, scale)[:, None] * _ramp(tile.left, tile.width, cols, scale)[None, :]


class Blender:
    """Accumulates the tiles' results into the whole image (output pixels, H x W x C)."""

    def __init__(self, tiles: list[Tile], height: int, width: int, channels: int, scale: int = 1):
        self.tiles, self.scale = tiles, scale
        self.sum = np.zeros((height * scale, width * scale, channels), dtype=np.float32)
        self.weight = np.zeros((height * scale, width * scale, 1), dtype=np.float32)

    def add(self, tile: Tile, pixels: np.ndarray) -> None:
        s = self.scale
        w = blend_weights(tile, self.tiles, s)[:, :, None]
        rows = slice(tile.top * s, (tile.top + tile.height) * s)
        cols = slice(tile.left * s, (tile.left + tile.width) * s)
        self.sum[rows, cols] += w * pixels
        self.weight[rows, cols] += w

    def result(self, fallback: np.ndarray) -> np.ndarray:
        """The blended image; pixels no finished tile covers (an interrupted run) come from ``fallback``."""
        covered = self.weight > 0
        out = np.where(covered, self.sum / np.where(covered, self.weight, 1), fallback)
        return out.astype(np.float32)
