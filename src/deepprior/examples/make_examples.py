"""Re-create the bundled example photos from scikit-image's own sample images.

The web app offers these as "try it" examples. They are small (at most 256 px) so that a fit
on a CPU takes a minute or two, and each carries one kind of damage, made once with a fixed
seed. Run from the repository root::

    python src/deepprior/examples/make_examples.py

Sources (all shipped inside scikit-image, no download): ``chelsea`` (Stefan van der Walt, CC0),
``astronaut`` (Eileen Collins, NASA, public domain), ``coffee`` (Rachel Michetti, CC0),
``rocket`` (SpaceX, public domain), ``camera`` (Lav Varshney, CC0).
"""

from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from skimage import data

from deepprior import degrade
from deepprior.images import load_image, save_image

HERE = Path(__file__).parent


def _small(array: np.ndarray, width: int) -> np.ndarray:
    im = PILImage.fromarray(array)
    height = round(im.height * width / im.width)
    return np.asarray(im.resize((width, height), PILImage.Resampling.LANCZOS))


def main() -> None:
    chelsea = load_image(_small(data.chelsea(), 240))
    save_image(degrade.add_noise(chelsea, 25, seed=0), HERE / "chelsea-noisy.png")

    face = data.astronaut()[20:276, 130:386]  # the astronaut's head, 256x256
    save_image(load_image(_small(face, 96)), HERE / "astronaut-small.png")

    coffee = load_image(_small(data.coffee(), 240))
    fill = degrade.text_mask((coffee.height, coffee.width), "deep image prior", seed=0)
    save_image(degrade.apply_mask(coffee, fill, value=1.0), HERE / "coffee-text.png")
    save_image(degrade.mask_image(fill), HERE / "coffee-text-mask.png")

    rocket = load_image(_small(data.rocket(), 240))
    hole = degrade.hole_mask((rocket.height, rocket.width), seed=0)
    save_image(degrade.apply_mask(rocket, hole), HERE / "rocket-hole.png")
    save_image(degrade.mask_image(hole), HERE / "rocket-hole-mask.png")

    save_image(degrade.jpeg(rocket, 12), HERE / "rocket-jpeg.png")

    camera = load_image(_small(data.camera(), 160))
    save_image(degrade.blur(camera, "gaussian:1.5"), HERE / "camera-blur.png")


if __name__ == "__main__":
    main()
