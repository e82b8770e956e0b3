"""The restoration tasks: for each, the forward operator A and what the fit is matched to.

A task turns the user's degraded image into a :class:`Problem`: the target y, the operator A
with its data term ||A(x) - y||^2, the size of the image to produce, and (for flash/no-flash)
the fixed network input. Tasks are small immutable objects so that a batch or a web request can
describe its job with plain parameters (:func:`from_name`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import estimates, operators
from .errors import DeepPriorError
from .images import Image, load_image
from .tiling import DEFAULT_MAX_FIT_PIXELS


@dataclass
class Problem:
    """What the fitting loop needs: ``loss(x)`` for the full-size estimate x, and sizes."""

    target: torch.Tensor  # y, shaped (1, C, h, w), premultiplied by the mask where there is one
    operator: nn.Module  # A
    out_size: tuple[int, int]  # (H, W) of the image to produce
    channels: int
    fixed_input: np.ndarray | None = None  # (H, W, C) network input (flash/no-flash)
    known: np.ndarray | None = None  # (H, W) 1 = known pixel, for inpainting
    # The task's quick classical answer (H, W, C), computed only when asked for (input="estimate").
    # Called with ``exclude``, an (h, w) mask over y's pixels, it leaves those pixels' values out.
    estimate: Callable[..., np.ndarray] | None = field(default=None, repr=False)
    # (h, w) True where the pixels held out for stopping may be drawn from (None: any observed one).
    holdout_region: np.ndarray | None = field(default=None, repr=False)
    held: torch.Tensor | None = None  # (1, 1, h, w) 1 = pixel of y held out of the data term
    # The estimate from every pixel, held-out ones included: what a start chosen by them returns.
    full_estimate: Callable[..., np.ndarray] | None = field(default=None, repr=False)
    estimate_name: str | None = None  # what ``estimate`` computes, for the report (e.g. "bm3d")
    # A second classical estimate blended into the result after the choice against the start:
    # called, it returns that image (H, W, C) and its share of the result (None and 0: none).
    partner: Callable[[], tuple[np.ndarray | None, float]] | None = field(default=None, repr=False)
    partner_name: str | None = None  # what ``partner`` computes, for the report
    # The per-pixel range (low, high), each (H, W, C), of the task's classical estimates, which a
    # preset with FitConfig.bound_fit clips the fit to (inpainting: the range of the fills).
    bounds: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)
    # The fit's shares a choice against the start weighs (fitting.choose_result); None: all five.
    blend_weights: tuple[float, ...] | None = None
    # The fit's share of the result a preset with FitConfig.fit_share None returns (None: the fit).
    fit_share: float | None = None
    _keep: torch.Tensor | None = field(default=None, repr=False)  # 1 - held, the data term's weight
    _held_values: float = field(default=0.0, repr=False)  # held pixels x channels, counted once

    def to(self, device) -> "Problem":
        self.target = self.target.to(device)
        self.operator = self.operator.to(device)
        if self.held is not None:
            self.held, self._keep = self.held.to(device), self._keep.to(device)
        return self

    @property
    def observed(self) -> np.ndarray:
        """(h, w) True where y holds a measurement (every pixel but the missing ones)."""
        if self.known is not None:
            return self.known > 0
        return np.ones(self.target.shape[2:], dtype=bool)

    def hold_out(self, held: np.ndarray) -> None:
        """Leave the pixels of y where ``held`` ((h, w) boolean) is True out of the data term and
        of the classical estimate; :meth:`held_out_loss` then measures the fit on them alone."""
        self.held = torch.from_numpy(np.asarray(held, dtype=np.float32))[None, None].to(self.target.device)
        self._keep = 1 - self.held
        self._held_values = float(np.count_nonzero(held)) * self.channels
        if self.estimate is not None:
            self.full_estimate = self.estimate
            self.estimate = partial(self.estimate, exclude=np.asarray(held, dtype=bool))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The data term: mean squared error between A(x) and y (held-out pixels count as zero)."""
        d2 = (self.operator(x) - self.target) ** 2
        if self._keep is not None:
            d2 = d2 * self._keep
        return torch.mean(d2)

    def window_loss(self, x: torch.Tensor, top: int, left: int, trim: tuple[int, int, int, int]
                    ) -> tuple[torch.Tensor, int]:
        """The data term's sum of squared errors on one window of the result, and how many values it counts.

        ``x`` (1, C, h, w) is the result on output rows ``top:top+h`` and columns ``left:left+w``,
        computed from that window alone (a crop of a large image): within ``trim`` (top, bottom,
        left, right) output pixels of a side it is not to be trusted. Only the pixels of y that A
        computes from trusted pixels of the window are counted, so the term is the whole image's
        data term restricted to them (held-out pixels still count as zero).
        """
        s = self.out_size[0] // self.target.shape[2]
        th, tw = self.target.shape[2:]
        # A sees the window on its own: its first y pixel must start a block of s output pixels.
        skip_t, skip_l = -top % s, -left % s
        x = x[..., skip_t:, skip_l:]
        top, left = top + skip_t, left + skip_l
        y0, x0 = top // s, left // s
        ny, nx = x.shape[2] // s, x.shape[3] // s
        x = x[..., : ny * s, : nx * s]
        reach = self.operator.reach
        t, b, l, r = trim
        # Trusted y pixels: clear of the untrusted rim, and of A's reach past a cut side.
        a0 = -(-(max(t - skip_t, 0)) // s) + (reach if y0 > 0 else 0)
        a1 = ny - (-(-b // s)) - (reach if y0 + ny < th else 0)
        c0 = -(-(max(l - skip_l, 0)) // s) + (reach if x0 > 0 else 0)
        c1 = nx - (-(-r // s)) - (reach if x0 + nx < tw else 0)
        if a1 <= a0 or c1 <= c0:
            return x.sum() * 0.0, 0
        ax = self.operator.window(x, top, left)[..., a0:a1, c0:c1]
        y = self.target[..., y0 + a0 : y0 + a1, x0 + c0 : x0 + c1]
        d2 = (ax - y) ** 2
        if self._keep is not None:
            d2 = d2 * self._keep[..., y0 + a0 : y0 + a1, x0 + c0 : x0 + c1]
        return d2.sum(), d2.numel()

    def held_out_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error between A(x) and y over the held-out pixels."""
        d2 = (self.operator(x) - self.target) ** 2
        return (d2 * self.held).sum() / self._held_values

    def held_out_errors(self, x: torch.Tensor) -> torch.Tensor:
        """Each held-out pixel's squared error (mean over channels), in a fixed order: their mean
        is :meth:`held_out_loss`, and two images' errors pair up pixel by pixel."""
        d2 = ((self.operator(x) - self.target) ** 2).mean(dim=1)
        return d2[self.held[:, 0] > 0]


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(pixels, -1, 0)))[None].float()


#: Results above this many pixels (the default fit-whole size: larger ones are fitted on crops)
#: start from quicker estimates: super-resolution from estimates.quick_upscale (the regularised
#: upscale takes about 95 s per megapixel on 2 cores), inpainting without the SLOW_FILLS,
#: denoising from non-local means rather than BM3D (about 100 s per megapixel).
LARGE_START_PIXELS = DEFAULT_MAX_FIT_PIXELS


#: The classical denoisers a denoising fit can start from (Denoise.start).
DENOISERS = {"bm3d": estimates.bm3d_denoise, "nlm": estimates.nlm_denoise}
#: The smallest side BM3D is run on (the bm3d package segfaults on an 8x8 image; 16x16 ran).
BM3D_MIN_SIDE = 16
#: What a denoising fit is chosen among, by its start and the noise level: rows of (the highest
#: sigma, on 0-255, the row is for; the fit's shares, 0: the start, 1: the fit). From BM3D the fit
#: alone ended under BM3D on the nine CBM3D images at every sigma; at 25 and 50 their even mean
#: was above BM3D on most, at 15 under it on six (the fit is weaker beside BM3D as the noise
#: falls), where a quarter share was above it on the mean. The held-out noisy pixels, which the
#: fit never fitted, rate it better than it is where it fitted them, so a candidate with more of
#: the fit would be taken where it is worse. From non-local means the fit is 0.6 dB above its
#: start (sigma 25) and may be returned alone. BENCHMARKS.md, denoising.
DENOISE_BLENDS = {"bm3d": ((20.0, (0.0, 0.25)), (math.inf, (0.0, 0.5))), "nlm": ((math.inf, (0.0, 0.5, 1.0)),)}


def denoise_blends(denoiser: str, sigma: float | None, pixels: np.ndarray) -> tuple[float, ...]:
    """The fit's shares a denoising fit from ``denoiser`` is chosen among at noise ``sigma``
    (0-255), read from the noisy ``pixels`` when None and the shares depend on it."""
    bands = DENOISE_BLENDS[denoiser]
    if sigma is None and len(bands) > 1:
        sigma = estimates.noise_sigma(pixels) * 255.0
    return next(shares for top, shares in bands if sigma is None or sigma <= top)


# The tasks' classical estimates; ``exclude`` marks pixels held out of the fit (Problem.hold_out).
def _denoised_estimate(pixels, sigma, denoiser, exclude=None):
    return DENOISERS[denoiser](estimates.fill_from_neighbours(pixels, exclude), sigma)


#: The super-resolution starts (SuperResolution.upscaler): plug-and-play BM3D on the regularised
#: upscale with the bm3d extra, the regularised upscale without it, the quick upscale above
#: LARGE_START_PIXELS.
UPSCALERS = {"bm3d": estimates.bm3d_upscale, "regularised": estimates.regularised_upscale,
             "quick": estimates.quick_upscale}
#: The scales the BM3D start was measured at and is used for.
BM3D_UPSCALE_SCALES = (2, 3, 4)
#: The fit's share of an upscale (the fast preset's FitConfig.fit_share is None), by start and
#: scale: the even mean of the fit and its start, but less of the fit over the BM3D start, which
#: already holds most of the detail: a quarter at x3 and x4 (Set5 x4: 30.75 dB Y against 30.73
#: for the even mean and the start alike, the fit alone 30.58), a tenth at x2, where the fit alone
#: is 1.2 dB under its start (Set5 x2: 36.822 dB Y against the start's 36.816, a quarter 36.775).
#: BENCHMARKS.md has the curve at each scale. Others: SR_FIT_SHARE.
SR_FIT_SHARES = {("bm3d", 2): 0.1, ("bm3d", 3): 0.25, ("bm3d", 4): 0.25}
SR_FIT_SHARE = 0.5


def _upscale_estimate(pixels, scale, upscaler, exclude=None):
    return UPSCALERS[upscaler](estimates.fill_from_neighbours(pixels, exclude), scale)


class PairedStart:
    """A classical start ``make(exclude=None)`` that, asked for with held-out pixels left out, makes
    the start from every pixel beside it (:func:`estimates.beside`: BM3D runs on one thread, so on
    two cores the pair takes about the time of one); the next call without ``exclude``
    returns that one."""

    def __init__(self, make: Callable[..., np.ndarray]):
        self.make = make
        self._full: np.ndarray | None = None

    def __call__(self, exclude: np.ndarray | None = None) -> np.ndarray:
        if exclude is None:
            full, self._full = self._full, None
            return self.make() if full is None else full
        start, self._full = estimates.beside(partial(self.make, exclude=exclude), self.make)
        return start


#: The share of the result a text fill gives to the BM3D fill of luminance (estimates.bm3d_fill,
#: made from every pixel beside the probe and the starts) where the ``bm3d`` extra is installed:
#: it and the refined mean of fills err in different places (the BM3D fill 0.32 dB under that
#: start inside the text of the 17 inpaint-text suite images, above it on 8; 0.3 / 0.4 / 0.5 of it
#: blended into the start: +0.05 / +0.05 / +0.04 dB on the mean, and +0.05 / +0.06 / +0.06 on the
#: Set5+Kodak photos, above the start on 9 of 10 at each). Weighing it by the held-out pixels
#: instead scored lower on every text set (BENCHMARKS.md). Left out where the probe found the two
#: sparse-DCT fills, which the BM3D fill refines, :data:`PARTNER_PROBE_RATIO` times the chosen
#: fills' error (Set14's barbara, whose stripes the BM3D fill loses: 3.8 dB under the start).
PARTNER_SHARE = 0.4
PARTNER_PROBE_RATIO = 1.5


class FillStart:
    """The classical start of an inpainting: the mean of the fills that :func:`estimates.choose_fill`
    picks among ``candidates``, chosen once (on the first call) and kept, so that the start made
    again from every pixel (Problem.full_estimate) uses the same fills; with ``refine``, that mean
    refined by :func:`estimates.bm3d_refine`. Once the fills are chosen the start is a
    :class:`PairedStart`: called with ``exclude``, it makes the one from every pixel beside it.
    With ``partner``, the fit's start makes the BM3D fill of luminance beside the probe and them, for
    :meth:`partner`; with ``keep_range``, the start from every pixel keeps the fills' range for
    :meth:`fills_range`; with ``lead``, the mean leans on that fill (:data:`START_LEAD`)."""

    def __init__(self, pixels: np.ndarray, fill: np.ndarray, candidates: tuple[tuple[str, ...], ...],
                 refine: bool = False, partner: bool = False, keep_range: bool = False, lead: str | None = None):
        self.pixels, self.fill, self.candidates, self.refine = pixels, fill, candidates, refine
        self.lead = lead
        self.with_partner = partner
        self.chosen: tuple[str, ...] | None = None
        self.errors: dict = {}
        self._paired = PairedStart(self._make)
        self._partner: np.ndarray | None = None
        self.keep_range = keep_range
        self._range: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, exclude: np.ndarray | None = None) -> np.ndarray:
        if exclude is not None and self.with_partner and self._partner is None:  # the fit's start
            # The BM3D fill needs no choice of fills, so it is made beside the probe as well as the
            # starts (kate, 512x512: the probe 25 s, the pair 57 s, the BM3D fill 103 s on one core),
            # even where the probe then rules it out (partner_share).
            start, self._partner = estimates.beside(partial(self._start, exclude), self._make_partner)
            return start
        return self._start(exclude)

    def _start(self, exclude: np.ndarray | None = None) -> np.ndarray:
        """The fills chosen if they are not yet, then the start (:class:`PairedStart`)."""
        fill = self.fill if exclude is None else self.fill | exclude
        # Progress: the probe makes every candidate fill once, the start about one candidate's worth
        # and the refinement its own.
        probe = (estimates.fill_cost({m for c in self.candidates for m in c})
                 if self.chosen is None and len(self.candidates) > 1 else 0.0)
        total = probe + self._made_cost() + self._refine_cost()
        if self.chosen is None:
            with estimates.share(0.0, probe / total):
                self.chosen, self.errors = estimates.choose_fill(self.pixels, fill, self.candidates)
        with estimates.share(probe / total, 1.0):
            return self._paired(exclude)

    @property
    def partner_share(self) -> float:
        """The BM3D fill's share of the result (:data:`PARTNER_SHARE`; 0 without ``partner``,
        before the fills are chosen, or where the probe rules it out)."""
        if not self.with_partner or self.chosen is None:
            return 0.0
        sparse, chosen = self.errors.get(("sparse", "sparse16")), self.errors.get(self.chosen)
        if sparse is not None and chosen and sparse >= PARTNER_PROBE_RATIO * chosen:
            return 0.0
        return PARTNER_SHARE

    def partner(self) -> tuple[np.ndarray | None, float]:
        """The BM3D fill of luminance from every pixel and its share of the result (None and 0
        where it takes none, though the fit's start made it), made now if the start did not."""
        share = self.partner_share
        if not share:
            return None, 0.0
        if self._partner is None:
            self._partner = self._make_partner()
        return self._partner, share

    def fills_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-pixel least and greatest of the chosen fills made from every pixel
        (:func:`estimates.fills_mean_and_range`): kept by the start with ``keep_range``, else
        made now."""
        if self._range is None:
            if self.chosen is None:
                self._start()
            if self._range is None:
                self._range = estimates.fills_mean_and_range(self.pixels, self.fill, self.chosen)[1:]
        return self._range

    def _make_partner(self) -> np.ndarray:
        return estimates.bm3d_fill(self.pixels, self.fill, luminance=True)

    def _made_cost(self) -> float:
        return (estimates.fill_cost(self.chosen) if self.chosen is not None
                else np.mean([estimates.fill_cost(c) for c in self.candidates]))

    def _refine_cost(self) -> float:
        return estimates.fill_cost(("bm3d-refine",)) if self.refine else 0.0

    def _make(self, exclude: np.ndarray | None = None) -> np.ndarray:
        """The chosen mean of fills with ``exclude`` left out too, refined where asked."""
        fill = self.fill if exclude is None else self.fill | exclude
        made = self._made_cost()
        fills_share = made / (made + self._refine_cost())
        with estimates.share(0.0, fills_share):
            start, low, high = estimates.fills_mean_and_range(self.pixels, fill, self.chosen, self.lead)
        if exclude is None and self.keep_range:  # two full-size images: kept only where they are used
            self._range = (low, high)
        if not self.refine:
            return start
        with estimates.share(fills_share, 1.0):
            return estimates.bm3d_refine(start, self.pixels, fill)


class Task:
    """Base class: identity operator, output the size of the input."""

    name = "task"
    preset_key = "denoise"

    def problem(self, image: Image) -> Problem:
        return Problem(_tensor(image.pixels), operators.Identity(), (image.height, image.width), image.channels)

    def params(self) -> dict:
        return {}

    def finish(self, image: Image, restored: np.ndarray) -> np.ndarray:
        """Post-process the network's output (e.g. put known pixels back)."""
        return restored

    def crop(self, top: int, left: int, height: int, width: int) -> "Task":
        """The same task on a crop of the input (for tiling): per-pixel data is cropped with it."""
        return self

    def window(self, image: Image, pixels: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the part of ``image`` a preset that restores large images
        at a reduced size (FitConfig.work_pixels, about ``pixels``) fits."""
        raise DeepPriorError(f"{self.name} cannot be restored at a reduced size")

    def windows(self, image: Image, pixels: int) -> list[tuple[int, int, int, int]]:
        """The windows (see :meth:`window`) fitted one after the other, none overlapping another."""
        return [self.window(image, pixels)]

    def reduce(self, image: Image, size: tuple[int, int]) -> tuple["Task", Image]:
        """The same task on ``image`` reduced to ``size`` (width, height), and that image (see
        :meth:`window`)."""
        raise DeepPriorError(f"{self.name} cannot be restored at a reduced size")


@dataclass(frozen=True)
class Denoise(Task):
    """Gaussian or blind denoising: A is the identity.

    ``sigma`` (0-255), when known, sets the strength of the classical estimate a fit may start
    from (estimated from the image when None); the fit itself is blind. ``start`` names that
    estimate: "bm3d" (the optional ``bm3d`` package), "nlm" (non-local means) or "auto", BM3D
    where it is installed and non-local means otherwise. Above :data:`LARGE_START_PIXELS` "auto"
    takes non-local means: BM3D would take about 20 minutes at 12 megapixels on 2 cores.
    """

    sigma: float | None = None
    start: str = "auto"
    name = "denoise"
    preset_key = "denoise"

    def __post_init__(self):
        if self.sigma is not None and not self.sigma >= 0:
            raise DeepPriorError(f"noise sigma must be >= 0, got {self.sigma}")
        if self.start not in ("auto", *DENOISERS):
            raise DeepPriorError(f"denoising start must be auto, {', '.join(DENOISERS)}; got {self.start!r}")
        if self.start == "bm3d" and not estimates.bm3d_available():
            raise DeepPriorError("the BM3D start needs the bm3d package: pip install 'deepprior[bm3d]' "
                                 "(non-commercial licence)")

    def denoiser(self, height: int, width: int) -> str:
        """The classical denoiser the fit starts from on an image of ``height`` x ``width``.
        Images under :data:`BM3D_MIN_SIDE` on a side take non-local means whatever ``start`` asks:
        the bm3d package crashes the process on them."""
        if min(height, width) < BM3D_MIN_SIDE:
            return "nlm"
        if self.start != "auto":
            return self.start
        return "bm3d" if estimates.bm3d_available() and height * width <= LARGE_START_PIXELS else "nlm"

    def problem(self, image: Image) -> Problem:
        p = super().problem(image)
        p.estimate_name = self.denoiser(image.height, image.width)
        p.estimate = PairedStart(partial(_denoised_estimate, image.pixels, self.sigma, p.estimate_name))
        p.blend_weights = denoise_blends(p.estimate_name, self.sigma, image.pixels)
        return p

    def params(self):
        return {"sigma": self.sigma, "start": self.start}


@dataclass(frozen=True)
class DeJPEG(Task):
    """JPEG-artifact removal: blind, A is the identity."""

    name = "dejpeg"
    preset_key = "dejpeg"


SCALES = (2, 3, 4, 8)


@dataclass(frozen=True)
class SuperResolution(Task):
    """Super-resolution by ``scale``: A is a Lanczos-3 downsampler, as Pillow's Lanczos filter."""

    scale: int = 4
    name = "upscale"

    def __post_init__(self):
        if self.scale not in SCALES:
            raise DeepPriorError(f"scale must be one of {', '.join(map(str, SCALES))}, got {self.scale}")

    @property
    def preset_key(self):
        return "sr8" if self.scale == 8 else "sr"

    def problem(self, image: Image) -> Problem:
        s = self.scale
        op = operators.LanczosDownsampler(s, image.channels)
        p = Problem(_tensor(image.pixels), op, (image.height * s, image.width * s), image.channels)
        p.estimate_name = self.upscaler(image.height, image.width)
        p.estimate = partial(_upscale_estimate, image.pixels, s, p.estimate_name)
        p.fit_share = SR_FIT_SHARES.get((p.estimate_name, s), SR_FIT_SHARE)
        return p

    def upscaler(self, height: int, width: int) -> str:
        """The start of an upscale of a ``height`` x ``width`` image (a key of UPSCALERS)."""
        s = self.scale
        if height * width * s**2 > LARGE_START_PIXELS:
            return "quick"
        if estimates.bm3d_available() and s in BM3D_UPSCALE_SCALES and min(height, width) * s >= BM3D_MIN_SIDE:
            return "bm3d"
        return "regularised"

    def params(self):
        return {"scale": self.scale}


def load_mask(mask, *, size: tuple[int, int], fill_is_white: bool = True) -> np.ndarray:
    """A mask as a boolean array, True = pixel to fill.

    ``mask`` is a path, an :class:`Image`, or an array. By default non-zero (white) marks the
    pixels to fill, as in OpenCV; ``fill_is_white=False`` reads the paper's masks (white =
    known). ``size`` is the image's (height, width); any other size is an error, as is a mask
    that leaves nothing known or nothing to fill.
    """
    if isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.ndim == 2:
        white = mask
    else:
        img = load_image(mask) if not isinstance(mask, Image) else mask
        white = img.pixels.mean(axis=2) > 0.5
    if white.shape != tuple(size):
        raise DeepPriorError(
            f"mask is {white.shape[1]}x{white.shape[0]} but the image is {size[1]}x{size[0]}"
        )
    fill = white if fill_is_white else ~white
    if fill.all():
        raise DeepPriorError("mask leaves no known pixel: nothing to restore from")
    if not fill.any():
        raise DeepPriorError("mask marks no pixel to fill")
    return fill


#: Each kind of inpainting's candidate starts, each a mean of classical fills (estimates.mean_fill);
#: estimates.choose_fill picks one per image. Text: the frequency-selective fill alone (far ahead
#: on regular texture: barbara) or a mean of two or three of it and the sparse-DCT fills in 8x8 and
#: 16x16 windows, which err differently, so that a mean of them is above each on most images
#: (inside the text, 17 suite images: 28.57 dB against 28.41 for the choice among FSR, the 8x8 fill
#: and their mean). Holes: the mean of all five and of FSR at half size, always (a shifted hole
#: probes other content than the hole's, and chose worse than the mean on the hole suite; inside
#: the holes of its 17 images the mean of the five 15.68 dB, with the half-size FSR 16.05).
#: BENCHMARKS.md, inpainting.
START_FILLS = {"text": (("fsr",), ("fsr", "sparse"), ("sparse", "sparse16"), ("fsr", "sparse16"),
                        ("fsr", "sparse", "sparse16")),
               "hole": ((*estimates.FILLS, "fsrhalf"),)}

#: The fill a start leans on: the even mean of the chosen fills' mean and this one. Holes: FSR's
#: best mode at half size, the best single fill on the mean of every hole set (inside the holes of
#: the hole suite 16.35 dB against 16.05 for the plain mean of the six; BENCHMARKS.md).
START_LEAD = {"hole": "fsrhalf"}

#: Fills left out of the start of an image above LARGE_START_PIXELS: they cost minutes per megapixel
#: on 2 cores (the sparse-DCT fill about 10 minutes at 12 megapixels, where FSR takes about 1.5;
#: FSR's best mode at half size about ten times FSR's fast mode on the hole suite).
SLOW_FILLS = ("sparse", "sparse16", "biharmonic", "fsrhalf")

#: How far from the missing pixels (in pixels) the held-out check of an inpainting is drawn.
HOLDOUT_REACH = 8


def bm3d_start_fits(mask: np.ndarray) -> bool:
    """Whether a fill of ``mask``'s image may start from BM3D: the ``bm3d`` extra installed, the
    image no larger than :data:`LARGE_START_PIXELS` and no side under :data:`BM3D_MIN_SIDE`."""
    mask = np.asarray(mask)
    return estimates.bm3d_available() and mask.size <= LARGE_START_PIXELS and min(mask.shape) >= BM3D_MIN_SIDE


def near_mask(fill: np.ndarray, reach: int = HOLDOUT_REACH) -> np.ndarray:
    """The known pixels within ``reach`` of a missing one: the held-out check of an inpainting
    is drawn there, where the fit's and the fill's answers differ most, and not from the rest of
    the image, which both reproduce exactly."""
    from scipy.ndimage import binary_dilation

    square = np.ones((2 * reach + 1, 2 * reach + 1), dtype=bool)
    return binary_dilation(fill, structure=square) & ~fill


#: More separate holes than this are filled from one window around them all (Inpaint.windows).
MAX_WINDOWED_HOLES = 64


def _window_around(box: tuple[int, int, int, int], height: int, width: int, pixels: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) around ``box`` (top, left, bottom, right, exclusive): on each axis
    three times its extent or the side of a square of ``pixels``, whichever is more, within the image."""
    side = math.isqrt(pixels)

    def span(first: int, stop: int, length: int) -> tuple[int, int]:
        extent = stop - first
        size = min(length, max(3 * extent, side))
        start = min(max(0, first + extent // 2 - size // 2), length - size)
        return int(start), int(size)

    top, h = span(box[0], box[2], height)
    left, w = span(box[1], box[3], width)
    return top, left, h, w


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two windows (top, left, height, width) share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def hole_window(fill: np.ndarray, pixels: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) around the True pixels of ``fill`` (see :func:`_window_around`)."""
    rows, cols = np.flatnonzero(fill.any(axis=1)), np.flatnonzero(fill.any(axis=0))
    if not rows.size:
        raise DeepPriorError("mask marks no pixel to fill")
    return _window_around((rows[0], cols[0], rows[-1] + 1, cols[-1] + 1), *fill.shape, pixels)


def hole_windows(fill: np.ndarray, pixels: int) -> list[tuple[int, int, int, int]]:
    """One :func:`hole_window` per group of holes in ``fill``: each hole's own, merged where they
    overlap, so that holes far apart are each filled from their own surroundings and none lies in
    another's window; more than :data:`MAX_WINDOWED_HOLES` holes get one window around them all."""
    from scipy import ndimage

    boxes = [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(ndimage.label(fill)[0])]
    if not boxes:
        raise DeepPriorError("mask marks no pixel to fill")
    if len(boxes) > MAX_WINDOWED_HOLES:  # scattered specks: one window around them all
        return [hole_window(fill, pixels)]
    around = lambda box: _window_around(box, *fill.shape, pixels)  # noqa: E731
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if _overlap(around(boxes[i]), around(boxes[j])):
                    a, b = boxes[i], boxes.pop(j)
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    merged = True
                    break
            if merged:
                break
    return sorted(around(b) for b in boxes)


@dataclass(frozen=True)
class Inpaint(Task):
    """Fill masked pixels. ``mask`` is True where pixels are missing.

    ``mode="text"`` (text, scribbles, watermarks) and ``mode="hole"`` (large holes) start from
    different classical fills and have presets of their own (presets.PRESETS "inpaint" and "hole").
    ``keep_known`` puts the known pixels back into the result unchanged.
    """

    mask: np.ndarray = field(default=None, repr=False)
    mode: str = "text"
    keep_known: bool = True
    name = "inpaint"

    def __post_init__(self):
        if self.mode not in ("text", "hole"):
            raise DeepPriorError(f"inpaint mode must be 'text' or 'hole', got {self.mode!r}")
        if self.mask is None:
            raise DeepPriorError("inpainting needs a mask")

    @property
    def preset_key(self):
        return "hole" if self.mode == "hole" else "inpaint"

    def _fill(self, image: Image) -> np.ndarray:
        """The mask as booleans, checked against ``image``'s size."""
        fill = np.asarray(self.mask, dtype=bool)
        if fill.shape != (image.height, image.width):
            raise DeepPriorError(
                f"mask is {fill.shape[1]}x{fill.shape[0]} but the image is {image.width}x{image.height}"
            )
        return fill

    def problem(self, image: Image) -> Problem:
        fill = self._fill(image)
        known = (~fill).astype(np.float32)
        op = operators.Mask(known)
        target = _tensor(image.pixels * known[:, :, None])
        start = FillStart(image.pixels, fill, self.start_fills, self.refine_start, self.partner_fill,
                          keep_range=self.mode == "hole", lead=START_LEAD.get(self.mode))
        return Problem(target, op, (image.height, image.width), image.channels, known=known, estimate=start,
                       holdout_region=self.check_region(fill), bounds=start.fills_range,
                       partner=start.partner if self.partner_fill else None, partner_name="BM3D fill")

    def check_region(self, fill: np.ndarray) -> np.ndarray:
        """Where the pixels held out to stop the fit and to choose between it and its start are
        drawn: for text, the known pixels near the strokes (:func:`near_mask`); for a hole, a copy
        of the hole elsewhere in the image (:func:`estimates.probe_mask`), since pixels at the rim
        of a hole say nothing of how its middle is filled (a fit chosen by them was 2.5 dB under
        its start inside the hole on Set14's barbara)."""
        return estimates.probe_mask(fill) if self.mode == "hole" else near_mask(fill)

    @property
    def start_fills(self) -> tuple[tuple[str, ...], ...]:
        """The candidate starts, each a mean of classical fills (estimates.choose_fill picks one);
        above :data:`LARGE_START_PIXELS`, without the :data:`SLOW_FILLS`."""
        candidates = START_FILLS[self.mode]
        if np.asarray(self.mask).size <= LARGE_START_PIXELS:
            return candidates
        quick = (tuple(m for m in c if m not in SLOW_FILLS) for c in candidates)
        return tuple(dict.fromkeys(c for c in quick if c)) or (("fsr",),)

    @property
    def refine_start(self) -> bool:
        """Whether the text start is refined by plug-and-play BM3D (:func:`estimates.bm3d_refine`):
        where the ``bm3d`` extra is installed, for text, up to :data:`LARGE_START_PIXELS`."""
        return self.mode == "text" and bm3d_start_fits(self.mask)

    @property
    def partner_fill(self) -> bool:
        """Whether the BM3D fill of luminance is blended into a text fill's result
        (:data:`PARTNER_SHARE`): where the start is refined by BM3D (text, the ``bm3d`` extra)."""
        return self.refine_start

    def finish(self, image: Image, restored: np.ndarray) -> np.ndarray:
        if not self.keep_known:
            return restored
        known = (~np.asarray(self.mask, dtype=bool))[:, :, None]
        return np.where(known, image.pixels, restored)

    def crop(self, top, left, height, width):
        return replace(self, mask=np.asarray(self.mask, dtype=bool)[top : top + height, left : left + width])

    def window(self, image, pixels):
        """Around the missing pixels: on each axis three times their extent, or the side of a
        square of ``pixels`` if that is more, within the image. A small hole in a large photo is
        filled at full resolution from its surroundings, a large one from the image reduced."""
        return hole_window(self._fill(image), pixels)

    def windows(self, image, pixels):
        """One :meth:`window` per group of holes (:func:`hole_windows`)."""
        return hole_windows(self._fill(image), pixels)

    def reduce(self, image, size):
        """Area-averaged: a reduced pixel is missing where any pixel averaged into it is
        (:func:`estimates.shrink_mask`); the result, upscaled, is put into the missing pixels by
        :meth:`finish` as any other."""
        fill = self._fill(image)
        small = Image(estimates.shrink(image.pixels, size), bit_depth=image.bit_depth, source=image.source)
        return replace(self, mask=estimates.shrink_mask(fill, size)), small

    def params(self):
        fill = np.asarray(self.mask, dtype=bool)
        return {"mode": self.mode, "missing_fraction": round(float(fill.mean()), 4), "keep_known": self.keep_known}


#: What a reconstruction is chosen among, by its start (None: every share, fitting.BLEND_WEIGHTS).
#: From the BM3D fill the fit ended 0.34-0.82 dB under it on the 11 Heide11 images, and the choice
#: among every share returned the fit's share 0.5 on three images, each under the start (montage
#: -0.18 dB): the start the choice ranks is made without the held-out pixels and is weaker than the
#: one returned, which favours the fit (the preset's choice_margin asks a clear lead for the same reason).
RECONSTRUCT_BLENDS = {"bm3d": (0.0, 0.25)}


@dataclass(frozen=True)
class Reconstruct(Inpaint):
    """Reconstruction from randomly dropped pixels (e.g. 50 %): the paper's restoration task."""

    name = "reconstruct"

    @property
    def preset_key(self):
        return "reconstruct"

    def problem(self, image: Image) -> Problem:
        p = super().problem(image)
        p.estimate_name = self.start_fills[0][0]
        p.blend_weights = RECONSTRUCT_BLENDS.get(p.estimate_name)
        return p

    @property
    def refine_start(self) -> bool:
        return False  # the BM3D fill is plug-and-play BM3D already

    @property
    def start_fills(self) -> tuple[tuple[str, ...], ...]:
        # Scattered missing pixels: the sparse-DCT fill keeps texture the smooth fills lose; with
        # the bm3d extra, plug-and-play BM3D refines it (estimates.bm3d_fill: +0.5 dB on Heide11).
        if bm3d_start_fits(self.mask):
            return (("bm3d",),)
        return (("sparse",),)


@dataclass(frozen=True)
class Deblur(Task):
    """Non-blind deblurring: A convolves with the known ``kernel`` (a 2-D array summing to 1)."""

    kernel: np.ndarray = field(default=None, repr=False)
    spec: str | None = None
    name = "deblur"
    preset_key = "deblur"

    def __post_init__(self):
        if self.kernel is None:
            raise DeepPriorError("deblurring needs a kernel")

    @classmethod
    def from_spec(cls, spec) -> "Deblur":
        """From ``gaussian:SIGMA``, ``motion:LENGTH,ANGLE`` or a kernel image path."""
        return cls(kernel=operators.parse_kernel(spec), spec=str(spec))

    def problem(self, image: Image) -> Problem:
        op = operators.Blur(self.kernel, image.channels)
        return Problem(_tensor(image.pixels), op, (image.height, image.width), image.channels)

    def params(self):
        return {"kernel": self.spec or f"array {self.kernel.shape[1]}x{self.kernel.shape[0]}"}


@dataclass(frozen=True)
class FlashNoFlash(Task):
    """Flash/no-flash fusion: the flash image is the network input, the no-flash image the target."""

    flash: Image = field(default=None, repr=False)
    name = "flash"
    preset_key = "flash"

    def __post_init__(self):
        if self.flash is None:
            raise DeepPriorError("flash/no-flash needs the flash image")

    def problem(self, image: Image) -> Problem:
        if self.flash.size != image.size:
            raise DeepPriorError(
                f"flash image is {self.flash.width}x{self.flash.height} but the no-flash image is "
                f"{image.width}x{image.height}"
            )
        p = super().problem(image)
        flash = self.flash.pixels
        if flash.shape[2] != image.channels:
            flash = flash.mean(axis=2, keepdims=True) if image.channels == 1 else np.repeat(flash, 3, axis=2)
        p.fixed_input = flash
        return p

    def crop(self, top, left, height, width):
        f = self.flash
        return replace(self, flash=Image(f.pixels[top : top + height, left : left + width], bit_depth=f.bit_depth))


TASK_NAMES = ("denoise", "upscale", "inpaint", "reconstruct", "dejpeg", "deblur", "flash")


def from_name(name: str, *, image_size: tuple[int, int] | None = None, **options) -> Task:
    """Build a task from plain options, as the web app and the batch runner receive them.

    ``options``: ``scale`` (upscale), ``mask`` (path/array, with ``mask_known`` to read white as
    known) and ``mode`` (inpaint), ``kernel`` (deblur), ``flash`` (path or Image), ``sigma``.
    ``image_size`` is (height, width), needed to check a mask.
    """
    if name == "denoise":
        return Denoise(sigma=options.get("sigma"), start=options.get("start") or "auto")
    if name == "dejpeg":
        return DeJPEG()
    if name == "upscale":
        try:
            scale = int(options.get("scale", 4))
        except (TypeError, ValueError):
            raise DeepPriorError(f"scale must be one of {', '.join(map(str, SCALES))}, got {options.get('scale')!r}") from None
        return SuperResolution(scale=scale)
    if name in ("inpaint", "reconstruct"):
        if options.get("mask") is None:
            raise DeepPriorError(f"{name} needs a mask")
        if image_size is None:
            raise ValueError("image_size is needed to read a mask")
        fill = load_mask(options["mask"], size=image_size, fill_is_white=not options.get("mask_known", False))
        if name == "reconstruct":
            return Reconstruct(mask=fill)
        return Inpaint(mask=fill, mode=options.get("mode", "text"))
    if name == "deblur":
        if options.get("kernel") is None:
            raise DeepPriorError("deblur needs a kernel (gaussian:SIGMA, motion:LENGTH,ANGLE or a kernel image)")
        return Deblur.from_spec(options["kernel"])
    if name == "flash":
        if options.get("flash") is None:
            raise DeepPriorError("flash/no-flash needs the flash image")
        return FlashNoFlash(flash=load_image(options["flash"]))
    raise DeepPriorError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
