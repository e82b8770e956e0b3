"""Benchmark suites: which images, how they are degraded, and how results are scored.

A suite fixes everything but the method: the ground-truth images (checked against the sha256
in the data folder's ``MANIFEST.tsv``), the degradation (seeded per image, so every method and
every rerun sees the same input) and the metrics, following the conventions behind the Deep
Image Prior paper's numbers (see the data folder's README):

* ``sr-xN``: the HR image cropped to a multiple of N and downscaled with Pillow's Lanczos
  filter (8-bit, as the paper's inputs); PSNR/SSIM on the BT.601 Y channel (16-235) with an
  N-pixel border cropped, RGB PSNR/SSIM as well.
* ``denoise-S``: additive white Gaussian noise of sigma S on 0-255, clipped; RGB PSNR/SSIM.
* ``inpaint-50``: a Bernoulli mask drops 50 % of the pixels; PSNR/SSIM over the whole image, with
  the known pixels kept.
* ``inpaint-text`` and ``inpaint-hole``: lines of text (``degrade.text_mask``) or one large
  elliptical hole over 12 % (``degrade.hole_mask``) on 256x256 centre crops of Set14 and of
  three grey Heide11 images; PSNR/SSIM inside the mask (the headline) and over the image, with
  the known pixels kept, as a user gets them.
"""

from __future__ import annotations

import csv
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import degrade
from ..errors import DeepPriorError
from ..images import Image, load_image
from ..metrics import quality
from ..tasks import Inpaint, Reconstruct, SuperResolution, Denoise, Task

#: Words of the text mask of ``inpaint-text``.
TEXT_MASK_WORDS = "Deep Image Prior"

# The Deep Image Prior paper's numbers (CVPR 2018), as listed in the data folder's README.
# Keyed by (suite, set); "mean" holds averages, "per_image" per-image values.
PAPER = {
    ("sr-x4", "Set5"): {"metric": "psnr_y", "mean": {"dip": 29.90, "bicubic": 28.43, "srresnet": 32.10}},
    ("sr-x4", "Set14"): {"metric": "psnr_y", "mean": {"dip": 27.00, "bicubic": 26.05, "srresnet": 28.53}},
    ("denoise-25", "CBM3D_color9"): {
        "metric": "psnr",
        "mean": {"dip": 29.22, "dip (averaged)": 30.43, "cbm3d": 31.42, "nlm": 30.26},
        "note": "The paper's nine images had Hill where this set has House, so means compare loosely.",
    },
    ("inpaint-50", "Heide11_gray"): {
        "metric": "psnr",
        "mean": {"dip": 33.48, "csc": 31.19},
        "per_image": {"dip": {
            "barbara": 32.22, "boat": 33.06, "house": 39.16, "Lena512": 36.16, "peppers256": 33.05,
            "Cameraman256": 29.8, "couple": 32.52, "fingerprint": 32.84, "hill": 32.77, "man": 32.20,
            "montage": 34.54,
        }},
    },
}


@dataclass
class Case:
    """One benchmark image, degraded: everything a method needs, and the truth to score it by."""

    name: str  # image name without extension
    clean: Image  # ground truth (for SR: cropped to a multiple of the scale)
    degraded: Image  # what every method gets
    task: Task  # the DIP task for this degradation
    mask: np.ndarray | None = None  # inpainting: True = missing pixel
    sigma: float | None = None  # denoising: noise level on 0-255
    scale: int | None = None  # super-resolution factor
    seed: int = 0  # the seed the degradation used


@dataclass(frozen=True)
class Suite:
    """A named benchmark: a kind of degradation with its parameter, over one image set."""

    name: str
    kind: str  # "sr", "denoise", "inpaint", "text", "hole"
    value: int  # scale, sigma, or missing percentage
    set_name: str
    files: tuple[str, ...] = field(default=())  # paths relative to the data folder; empty = whole set

    @property
    def metric(self) -> str:
        """The headline metric of the suite."""
        return {"sr": "psnr_y", "text": "psnr_mask", "hole": "psnr_mask"}.get(self.kind, "psnr")

    @property
    def metrics(self) -> tuple[str, ...]:
        if self.kind == "sr":
            return ("psnr_y", "ssim_y", "psnr", "ssim")
        if self.kind in FILL_KINDS:
            return ("psnr_mask", "ssim_mask", "colour_error_mask", "psnr", "ssim")
        return ("psnr", "ssim")

    @property
    def paper(self) -> dict | None:
        return PAPER.get((self.name, self.set_name))

    def description(self) -> str:
        if self.kind == "sr":
            where = self.set_name if not self.files else (
                f"{SR_CROP}x{SR_CROP} centre crops of CBM3D_color9's kodim01, kodim02, kodim03, kodim12 and F16 and "
                f"of Heide11's grey boat, couple, fingerprint, hill and montage")
            return (f"x{self.value} super-resolution on {where}: HR cropped to a multiple of {self.value}, "
                    f"downscaled with Pillow's Lanczos (8-bit). PSNR/SSIM on the BT.601 Y channel (16-235) "
                    f"with a {self.value}-pixel border cropped; RGB PSNR/SSIM over the whole image too.")
        if self.kind == "denoise":
            return (f"Gaussian denoising on {self.set_name}: additive white noise, sigma {self.value} on 0-255, "
                    f"clipped to [0, 255] (not quantised). PSNR/SSIM on RGB in [0, 1], whole image.")
        if self.kind == "inpaint":
            grey = " in luminance (ITU-R BT.601)" if self.set_name != "Heide11_gray" else ""
            return (f"Inpainting on {self.set_name}{grey}: a Bernoulli mask drops {self.value} % of the pixels. "
                    f"PSNR/SSIM over the whole image, known pixels kept as a user gets them (the paper scored "
                    f"its network output, known pixels included).")
        what = (f"lines of '{TEXT_MASK_WORDS}' written over the image (degrade.text_mask)" if self.kind == "text"
                else "one elliptical hole over about 12 % of the image (degrade.hole_mask)")
        scoring = ("PSNR/SSIM inside the mask (headline) and over the whole image, known pixels kept as a user "
                   "gets them.")
        if self.set_name == "dip_paper":
            return (f"Inpainting the Deep Image Prior paper's own {'text' if self.kind == 'text' else 'hole'} "
                    f"example{'s' if len(self.files) > 1 else ''} ({', '.join(image_name(f) for f in self.files)}), "
                    f"whole, with the paper's masks. " + scoring)
        if self.set_name == "corners":
            return (f"Inpainting {what}, on {FILL_CROP}x{FILL_CROP} corner crops (at least three quarters of each "
                    f"outside the other sets' centre crops) of Heide11's grey Lena512, barbara, man, hill and "
                    f"couple, of CBM3D_color9's kodim01 and kodim12 in luminance and of its colour kodim02, "
                    f"kodim03, Lena, Baboon, Peppers and F16; each image's mask from its own seed. " + scoring)
        where = {"Set14+Heide11": "Set14 and of Heide11's grey house, peppers256 and Cameraman256",
                 "Set5+Kodak": "Set5 and of CBM3D_color9's kodim01, kodim02, kodim03, kodim12 and F16",
                 "Heide11+paper": ("Heide11's grey boat, couple, fingerprint, hill and montage and of the paper's "
                                   "cave (no flash), snail, library, vase and kate")}[self.set_name]
        return (f"Inpainting {what}, on {FILL_CROP}x{FILL_CROP} centre crops of {where}; each image's mask from "
                f"its own seed. " + scoring)

    def task(self, mask: np.ndarray | None = None) -> Task:
        if self.kind == "sr":
            return SuperResolution(scale=self.value)
        if self.kind == "denoise":
            return Denoise(sigma=float(self.value))
        if self.kind == "inpaint":
            return Reconstruct(mask=mask)
        return Inpaint(mask=mask, mode=self.kind)

    def degrade(self, clean: Image, name: str, seed: int) -> Case:
        """Make the degraded input of one ground-truth image (deterministic in ``seed``)."""
        s = image_seed(seed, name)
        shape = (clean.height, clean.width)
        if self.kind == "sr":
            hr = degrade.crop_to_multiple(centre_crop(clean, SR_CROP) if self.files else clean, self.value)
            lr = degrade.downscale(hr, self.value)
            return Case(name, hr, lr, self.task(), scale=self.value, seed=s)
        if self.kind == "denoise":
            return Case(name, clean, degrade.add_noise(clean, self.value, s), self.task(), sigma=float(self.value), seed=s)
        if self.kind == "inpaint":
            clean = luminance_of(clean)
            mask = degrade.random_mask(shape, self.value / 100.0, s)
            return Case(name, clean, degrade.apply_mask(clean, mask), self.task(mask), mask=mask, seed=s)
        if self.set_name == "corners":
            corner, luminance = FILL_CORNERS[name]
            clean = corner_crop(luminance_of(clean) if luminance else clean, FILL_CROP, corner)
        else:
            clean = centre_crop(clean, FILL_CROP)
        shape = (clean.height, clean.width)
        if self.kind == "text":
            mask = degrade.text_mask(shape, TEXT_MASK_WORDS, s)
            return Case(name, clean, degrade.apply_mask(clean, mask, value=1.0), self.task(mask), mask=mask, seed=s)
        mask = degrade.hole_mask(shape, s)
        return Case(name, clean, degrade.apply_mask(clean, mask), self.task(mask), mask=mask, seed=s)

    def score(self, estimate: np.ndarray, clean: np.ndarray, mask: np.ndarray | None = None) -> dict:
        """The suite's metrics for one result (arrays HxWxC in [0, 1]; ``mask``, the filled
        pixels, for the fill suites)."""
        if estimate.shape != clean.shape:
            raise DeepPriorError(f"result is {estimate.shape} but the ground truth is {clean.shape}")
        return quality(estimate, clean, sr_scale=self.value if self.kind == "sr" else None,
                       mask=mask if self.kind in FILL_KINDS else None)


def luminance_of(image: Image) -> Image:
    """A colour photo as an 8-bit grey one (ITU-R BT.601 luminance); a grey one as it is."""
    if image.channels == 1:
        return image
    luma = np.round(image.pixels @ np.array([0.299, 0.587, 0.114], np.float32) * 255) / 255
    return Image(np.ascontiguousarray(luma[:, :, None], dtype=np.float32), None, 8)


def corner_crop(image: Image, size: int, corner: str) -> Image:
    """The ``size`` x ``size`` pixels at the top left ("tl") or bottom right ("br") corner."""
    top, left = (0, 0) if corner == "tl" else (max(0, image.height - size), max(0, image.width - size))
    return Image(np.ascontiguousarray(image.pixels[top : top + size, left : left + size]), None, image.bit_depth)


def centre_crop(image: Image, size: int) -> Image:
    """The central ``size`` x ``size`` pixels (less along a side that is shorter)."""
    h, w = image.height, image.width
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return Image(np.ascontiguousarray(image.pixels[top : top + size, left : left + size]), None, image.bit_depth)


#: The image sets of super-resolution: name -> files (empty: the whole set). "Kodak+Heide11" checks the
#: preset on photographs in no other super-resolution set, as SR_CROP x SR_CROP centre crops.
SR_SETS = {
    "Set5": (),
    "Set14": (),
    "Kodak+Heide11": tuple(f"CBM3D_color9/{n}.png" for n in ("kodim01", "kodim02", "kodim03", "kodim12", "image_F16_512rgb"))
    + tuple(f"Heide11_gray/{n}.png" for n in ("boat", "couple", "fingerprint", "hill", "montage")),
}
SR_CROP = 256
#: Reconstruction runs on the paper's grey set; Set5, in luminance (ITU-R BT.601, 0-1), checks the
#: preset on photographs it was not chosen on.
RECONSTRUCT_SETS = ("Heide11_gray", "Set5")
#: Denoising runs on the paper's colour set; Set5 and Set14 (in no denoising suite) check the preset
#: on photographs it was not chosen on.
DENOISE_SETS = ("CBM3D_color9", "Set5", "Set14")
#: The suites that fill a mask, and the side of their centre crops.
FILL_KINDS = ("text", "hole")
FILL_CROP = 256
_FILL_FILES = tuple(f"Set14/{n}.png" for n in (
    "baboon", "barbara", "bridge", "coastguard", "comic", "face", "flowers", "foreman", "lenna", "man", "monarch",
    "pepper", "ppt3", "zebra")) + ("Heide11_gray/house.png", "Heide11_gray/peppers256.png", "Heide11_gray/Cameraman256.png")
# Photographs in no other fill set, to check presets chosen on the suite's own images.
_FILL_CHECK_FILES = tuple(f"Set5/{n}.png" for n in ("baby", "bird", "butterfly", "head", "woman")) + tuple(
    f"CBM3D_color9/{n}.png" for n in ("kodim01", "kodim02", "kodim03", "kodim12", "image_F16_512rgb"))
# A second check, in no other fill set: the Heide11 images outside the suite and colour photos of the
# paper's other examples (flash/no-flash cave, JPEG snail, the hole examples, kate), centre crops.
_FILL_CHECK2_FILES = tuple(f"Heide11_gray/{n}.png" for n in ("boat", "couple", "fingerprint", "hill", "montage")) + (
    "dip_paper/flash_no_flash/cave01_01_noflash.jpg", "dip_paper/denoising/snail.jpg", "dip_paper/inpainting/library.png",
    "dip_paper/inpainting/vase.png", "dip_paper/restoration/kate.png")
#: A third check of the hole preset: corner crops (at least three quarters of each outside the centre
#: crops of the sets above, which hold some of the same photos) of the
#: Heide11 images and of the colour photos of CBM3D_color9, two Kodak photos in luminance, so that
#: grey and colour are both well represented. name -> (corner: "tl" top left or "br" bottom right,
#: whether taken in luminance).
FILL_CORNERS = {
    "Lena512": ("tl", False), "barbara": ("br", False), "man": ("tl", False), "hill": ("tl", False),
    "couple": ("br", False), "kodim01": ("tl", True), "kodim12": ("br", True), "kodim02": ("br", False),
    "kodim03": ("tl", False), "image_Lena512rgb": ("br", False), "image_Baboon512rgb": ("tl", False),
    "image_Peppers512rgb": ("br", False), "image_F16_512rgb": ("tl", False),
}
_FILL_CORNER_FILES = tuple(f"Heide11_gray/{n}.png" for n in ("Lena512", "barbara", "man", "hill", "couple")) + tuple(
    f"CBM3D_color9/{n}.png" for n in ("kodim01", "kodim12", "kodim02", "kodim03", "image_Lena512rgb",
                                      "image_Baboon512rgb", "image_Peppers512rgb", "image_F16_512rgb"))
#: The image sets of the fill suites: name -> {suite kind: files}. "dip_paper" holds the paper's own
#: examples, whole, with the paper's masks (white = known pixel).
FILL_SETS = {
    "Set14+Heide11": {"text": _FILL_FILES, "hole": _FILL_FILES},
    "Set5+Kodak": {"text": _FILL_CHECK_FILES, "hole": _FILL_CHECK_FILES},
    "Heide11+paper": {"text": _FILL_CHECK2_FILES, "hole": _FILL_CHECK2_FILES},
    "corners": {"hole": _FILL_CORNER_FILES},
    "dip_paper": {"text": ("dip_paper/inpainting/kate.png",),
                  "hole": ("dip_paper/inpainting/library.png", "dip_paper/inpainting/vase.png")},
}


def suite_names() -> list[str]:
    return ["sr-x2", "sr-x3", "sr-x4", "sr-x8", "denoise-15", "denoise-25", "denoise-50", "inpaint-50", "inpaint-text",
            "inpaint-hole"]


def get_suite(name: str, set_name: str | None = None) -> Suite:
    """The suite called ``name``; ``set_name`` picks one of :data:`SR_SETS` for super-resolution, one of
    :data:`DENOISE_SETS` for denoising, of :data:`RECONSTRUCT_SETS` for reconstruction and of
    :data:`FILL_SETS` for the text and hole suites."""
    if name not in suite_names():
        raise DeepPriorError(f"unknown suite {name!r}; choose one of {', '.join(suite_names())}")
    kind, _, value = name.partition("-")
    if kind == "sr":
        set_name = set_name or "Set5"
        if set_name not in SR_SETS:
            raise DeepPriorError(f"unknown set {set_name!r} for {name}; choose {', '.join(SR_SETS)}")
        return Suite(name, "sr", int(value[1:]), set_name, files=SR_SETS[set_name])
    if kind == "denoise":
        set_name = set_name or "CBM3D_color9"
        if set_name not in DENOISE_SETS:
            raise DeepPriorError(f"unknown set {set_name!r} for {name}; choose {', '.join(DENOISE_SETS)}")
        return Suite(name, "denoise", int(value), set_name)
    if value == "50":
        set_name = set_name or "Heide11_gray"
        if set_name not in RECONSTRUCT_SETS:
            raise DeepPriorError(f"unknown set {set_name!r} for {name}; choose {', '.join(RECONSTRUCT_SETS)}")
        return Suite(name, "inpaint", 50, set_name)
    set_name = set_name or "Set14+Heide11"
    sets = [n for n, kinds in FILL_SETS.items() if value in kinds]
    if set_name not in sets:
        raise DeepPriorError(f"unknown set {set_name!r} for {name}; choose {', '.join(sets)}")
    return Suite(name, value, 0, set_name, files=FILL_SETS[set_name][value])


def image_seed(seed: int, name: str) -> int:
    """A per-image seed: the same image gets the same degradation whatever else is selected."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


# --------------------------------------------------------------------------- data folder


def find_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The benchmark data folder: ``explicit``, else ``../shared/data``, else ``$DEEPPRIOR_DATA``."""
    if explicit is not None:
        candidates = [Path(explicit)]
    else:
        candidates = [Path("../shared/data")]
        if os.environ.get("DEEPPRIOR_DATA"):
            candidates.append(Path(os.environ["DEEPPRIOR_DATA"]))
    for c in candidates:
        if (c / "MANIFEST.tsv").is_file():
            return c.resolve()
    tried = " or ".join(str(c) for c in candidates)
    raise DeepPriorError(f"benchmark data folder not found (looked for MANIFEST.tsv in {tried}); pass --data DIR "
                         f"or set DEEPPRIOR_DATA")


def read_manifest(data_dir: Path) -> dict[str, dict]:
    """MANIFEST.tsv as {"set/file": row}."""
    path = Path(data_dir) / "MANIFEST.tsv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as e:
        raise DeepPriorError(f"cannot read {path}: {e.strerror}") from None
    if not rows or "sha256" not in rows[0]:
        raise DeepPriorError(f"{path}: not a manifest (no sha256 column)")
    return {f"{r['set']}/{r['file']}": r for r in rows}


def suite_files(suite: Suite, manifest: dict[str, dict]) -> list[str]:
    """The suite's image paths (relative to the data folder), in the manifest's order."""
    if suite.files:
        return list(suite.files)
    files = [k for k in manifest if k.startswith(suite.set_name + "/")]
    if not files:
        raise DeepPriorError(f"the manifest lists no images for {suite.set_name}")
    return files


def load_verified(data_dir: Path, rel: str, manifest: dict[str, dict]) -> Image:
    """Read one benchmark image after checking its sha256 against the manifest."""
    row = manifest.get(rel)
    if row is None:
        raise DeepPriorError(f"{rel} is not listed in {data_dir / 'MANIFEST.tsv'}")
    path = Path(data_dir) / rel
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DeepPriorError(f"{path}: {e.strerror or e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != row["sha256"]:
        raise DeepPriorError(f"{path}: sha256 {digest[:12]}... differs from the manifest's {row['sha256'][:12]}...; "
                             f"the benchmark image has been changed")
    image = load_image(data, max_pixels=None)
    if image.alpha is not None:
        image = Image(image.pixels, None, image.bit_depth, str(path))
    return image


def image_name(rel: str) -> str:
    return Path(rel).stem


def select(suite: Suite, manifest: dict[str, dict], names: list[str] | None = None, limit: int | None = None) -> list[str]:
    """The files to run: all of the suite's, or those ``names`` (stems), then the first ``limit``."""
    files = suite_files(suite, manifest)
    if names:
        by_name = {image_name(f): f for f in files}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise DeepPriorError(f"no image {', '.join(unknown)} in {suite.name} ({suite.set_name}); "
                                 f"choose from {', '.join(by_name)}")
        files = [by_name[n] for n in names]
    if limit is not None:
        if limit < 1:
            raise DeepPriorError(f"--limit must be at least 1, got {limit}")
        files = files[:limit]
    return files


def load_case(suite: Suite, data_dir: Path, rel: str, manifest: dict[str, dict], seed: int) -> Case:
    """Read, verify and degrade one image of the suite (the paper's examples with their own masks)."""
    clean = load_verified(data_dir, rel, manifest)
    if suite.kind in FILL_KINDS and suite.set_name == "dip_paper":
        known = load_verified(data_dir, rel.replace(".png", "_mask.png"), manifest).pixels.mean(axis=2) > 0.5
        mask = ~known
        value = 1.0 if suite.kind == "text" else 0.0
        return Case(image_name(rel), clean, degrade.apply_mask(clean, mask, value=value), suite.task(mask),
                    mask=mask, seed=image_seed(seed, image_name(rel)))
    return suite.degrade(clean, image_name(rel), seed)
