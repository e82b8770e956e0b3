"""Make the README's before/after pictures with deepprior itself, from the bundled examples.

Each picture is the damaged example beside what the default (``fast``) preset returns for it,
with seed 0; each run's time and iterations are printed. Run from the repository root (several
minutes on two cores)::

    python docs/make_pictures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import deepprior
from deepprior import load_image, restore, tasks
from deepprior.images import Image, save_image

OUT = Path(__file__).parent / "pictures"
GAP = 6  # white pixels between the two halves


def jobs():
    """(name, damaged example, task) for each task family the README shows."""
    ex = Path(deepprior.__file__).parent / "examples"
    coffee = load_image(ex / "coffee-text.png")
    mask = tasks.load_mask(ex / "coffee-text-mask.png", size=(coffee.height, coffee.width))
    yield "denoise", load_image(ex / "chelsea-noisy.png"), tasks.Denoise(sigma=25)
    yield "upscale", load_image(ex / "astronaut-small.png"), tasks.SuperResolution(scale=4)
    yield "inpaint", coffee, tasks.Inpaint(mask=mask)
    rocket = load_image(ex / "rocket-hole.png")
    hole = tasks.load_mask(ex / "rocket-hole-mask.png", size=(rocket.height, rocket.width))
    yield "hole", rocket, tasks.Inpaint(mask=hole, mode="hole")
    yield "dejpeg", load_image(ex / "rocket-jpeg.png"), tasks.DeJPEG()
    yield "deblur", load_image(ex / "camera-blur.png"), tasks.Deblur.from_spec("gaussian:1.5")


def side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``before`` (nearest-upscaled to ``after``'s size when smaller) and ``after``, left to right."""
    h, w = after.shape[:2]
    if before.shape[:2] != (h, w):
        ry, rx = h // before.shape[0], w // before.shape[1]
        before = np.repeat(np.repeat(before, ry, axis=0), rx, axis=1)
    gap = np.ones((h, GAP, after.shape[2]), dtype=after.dtype)
    return np.concatenate([before, gap, after], axis=1)


def main(names: list[str]) -> None:
    OUT.mkdir(exist_ok=True)
    for name, image, task in jobs():
        if names and name not in names:
            continue
        result = restore(image, task, "fast", seed=0)
        save_image(Image(side_by_side(image.pixels, result.image.pixels)), OUT / f"{name}.png")
        print(f"{name}: {image.width}x{image.height}, {result.iterations} iterations, {result.elapsed_s:.0f} s",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
