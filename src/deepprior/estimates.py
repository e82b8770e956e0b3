"""Quick classical answers to a task, for the fit to start from.

From a noise input the fast network spends most of its iterations learning what the image
looks like at all: on 50 % reconstruction at 512x512 it was still rising after 3000 iterations
(about 20 minutes here) and 2-6 dB under scikit-image's biharmonic inpainting, which takes under a
second on a grey 512x512 image. With ``input="estimate"`` (:func:`deepprior.fitting.make_input`) the first channels of
the network input hold the task's classical answer from this module and the rest are noise, so
the network starts from the content and spends its iterations on what the classical method got
wrong (BENCHMARKS.md has the measurements).

Each function takes and returns (H, W, C) arrays in [0, 1]. The slow ones tell how far they are
to whoever asked, through :func:`reporting`.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Callable, Iterator

import numpy as np
import torch

# Where the estimates below report how much of their work is done (a fraction, 0-1): set by
# reporting() around a call, so that no signature carries it and any estimate can be timed.
_report: ContextVar[Callable[[float], None] | None] = ContextVar("deepprior_estimate_report", default=None)


@contextmanager
def reporting(report: Callable[[float], None] | None) -> Iterator[None]:
    """Within the block, the estimates of this module call ``report(fraction)`` as their work
    goes on (the fraction of it done, rising from 0 to 1), from the thread that called them; a
    caller turns that into a remaining time. Estimates that run as one library call (BM3D
    denoising, OpenCV's Telea and Navier-Stokes fills) report only when they end."""
    token = _report.set(report)
    try:
        yield
    finally:
        _report.reset(token)


@contextmanager
def share(start: float, end: float) -> Iterator[None]:
    """Report the fractions of the enclosed estimate as the span ``start``-``end`` of the
    enclosing one's (an estimate made of several)."""
    outer = _report.get()
    token = _report.set(None if outer is None else (lambda f: outer(start + (end - start) * f)))
    try:
        yield
    finally:
        _report.reset(token)


def beside(first: Callable[[], np.ndarray], second: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``first()`` in this thread and ``second()`` in one beside it, for two estimates that each
    run on one thread (BM3D): on two cores the pair takes about the time of one. Progress is the
    slower one's (the pair ends when both have), reported from this thread."""
    out: dict = {}
    outer = _report.get()
    done = [0.0, 0.0]

    def report(i: int, fraction: float) -> None:
        done[i] = fraction
        if outer is not None and i == 0:
            outer(min(done))

    def run():
        try:
            with reporting(partial(report, 1)):
                out["second"] = second()
        except BaseException as e:  # raised here, in the caller's thread
            out["error"] = e
        finally:
            done[1] = 1.0

    # A daemon thread: interrupted (Ctrl-C), the process exits without waiting for it.
    thread = threading.Thread(target=run, name="deepprior-beside", daemon=True)
    thread.start()
    with reporting(partial(report, 0)):
        made = first()
    report(0, 1.0)
    while thread.is_alive():  # first is done: report the second's progress while it goes on
        thread.join(BESIDE_REPORT_S)
        report(0, 1.0)
    if "error" in out:
        raise out["error"]
    return made, out["second"]


#: How often, in seconds, :func:`beside` reports the second estimate's progress once the first is done.
BESIDE_REPORT_S = 1.0


def _done(fraction: float) -> None:
    """Report that ``fraction`` of the current estimate's work is done."""
    report = _report.get()
    if report is not None:
        report(min(max(float(fraction), 0.0), 1.0))


def biharmonic_fill(pixels: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Fill the pixels where ``fill`` is True by solving a biharmonic equation over each hole.

    scikit-image's ``inpaint_biharmonic``: smooth, exact on the known pixels, and the best of the
    classical inpainting baselines on 50 % reconstruction (BENCHMARKS.md).
    """
    from skimage.restoration import inpaint_biharmonic

    return _per_image(inpaint_biharmonic, pixels, np.asarray(fill, dtype=bool))


def opencv_fill(pixels: np.ndarray, fill: np.ndarray, method: str = "telea", radius: int = 3) -> np.ndarray:
    """OpenCV's inpainting of the pixels where ``fill`` is True: "telea" (fast marching, Telea 2004),
    "ns" (Navier-Stokes, Bertalmio et al. 2001), "fsr" (xphoto's frequency-selective
    reconstruction, Genser et al. 2018, fast mode: each block of the image modelled by a few
    Fourier functions fitted to its known pixels) or "fsrbest" (the same in its best mode: more
    functions and iterations, 10-40 s for a 12 % hole in a 256x256 colour image) or "shiftmap"
    (xphoto's exemplar-based fill, He and Sun 2012: each missing pixel copied from the known
    image at one of its dominant patch offsets). OpenCV works on 8 bits, so the filled pixels
    are quantised; the known pixels are put back unquantised."""
    import cv2

    from .images import Image

    fill = np.asarray(fill, dtype=bool)
    img = Image(pixels).to_array(np.uint8)  # (H, W) for grey, as OpenCV wants it
    if method == "fsr":
        out = _fsr_in_strips(img, fill)
    elif method == "fsrbest":
        out = _xphoto_fsr(img, fill, best=True)
    elif method == "shiftmap":
        out = np.zeros_like(img)
        cv2.xphoto.inpaint(np.ascontiguousarray(img), (~fill).astype(np.uint8), out, cv2.xphoto.INPAINT_SHIFTMAP)
    else:
        flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
        out = cv2.inpaint(img, fill.astype(np.uint8) * 255, radius, flag)
    out = out.reshape(pixels.shape).astype(np.float32) / 255.0
    return np.where(fill[:, :, None], out, pixels).astype(np.float32)


#: FSR is run on strips of this many rows (a multiple of its 16-pixel blocks, so that a strip's
#: blocks are the whole image's), each with at least FSR_MARGIN rows of the image above and below
#: it, more where a hole is taller: on text over a 1600x1200 photo the result was the whole
#: call's to the bit. The strips report progress and run on as many threads as torch uses.
FSR_STRIP = 256
FSR_MARGIN = 64


def _xphoto_fsr(img: np.ndarray, fill: np.ndarray, best: bool = False) -> np.ndarray:
    """OpenCV xphoto's FSR fill of the 8-bit ``img`` where ``fill`` is True, fast or best mode."""
    import cv2

    out = np.zeros_like(img)
    mode = cv2.xphoto.INPAINT_FSR_BEST if best else cv2.xphoto.INPAINT_FSR_FAST
    cv2.xphoto.inpaint(np.ascontiguousarray(img), np.ascontiguousarray(~fill).astype(np.uint8), out, mode)
    return out


def _fsr_in_strips(img: np.ndarray, fill: np.ndarray, strip: int = FSR_STRIP) -> np.ndarray:
    """OpenCV's FSR fill (fast mode) of the 8-bit ``img`` where ``fill`` is True, strip by strip."""
    from scipy import ndimage

    def fsr(rows: slice) -> np.ndarray:
        return _xphoto_fsr(img[rows], fill[rows])

    height = img.shape[0]
    tallest = max((s[0].stop - s[0].start for s in ndimage.find_objects(ndimage.label(fill)[0])), default=0)
    margin = -(-max(FSR_MARGIN, tallest) // 16) * 16
    if height <= strip + margin:
        return fsr(slice(None))

    def part(top: int) -> np.ndarray:
        a = max(0, top - margin)
        return fsr(slice(a, min(height, top + strip + margin)))[top - a : top - a + strip]

    tops = range(0, height, strip)
    out = np.empty_like(img)
    pool = ThreadPoolExecutor(max(1, min(torch.get_num_threads(), len(tops))))  # OpenCV frees the GIL
    try:
        for i, (top, rows) in enumerate(zip(tops, pool.map(part, tops))):
            out[top : top + strip] = rows
            _done((i + 1) / len(tops))
    finally:  # interrupted (Ctrl-C): the strips not begun are dropped, not waited for
        pool.shutdown(cancel_futures=True)
    return out


def shrink(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``pixels`` (H, W, C) area-averaged to ``size`` (width, height), the channel axis kept."""
    import cv2

    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], pixels.shape[2])


def shrink_mask(fill: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The missing pixels ``fill`` at ``size`` (width, height): a pixel is missing where any of the
    pixels :func:`shrink` averages into it is, so that every known one is made of known pixels."""
    import cv2

    return cv2.resize(np.asarray(fill, dtype=np.float32), size, interpolation=cv2.INTER_AREA) > 0


def enlarge(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``pixels`` (h, w[, C]) upscaled bicubically to ``height`` x ``width``, the channel axis kept."""
    import cv2

    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)


def fsr_half_fill(pixels: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """FSR in its best mode on the image at half size (area-averaged; a half-size pixel is missing
    where any of its four is), upscaled bicubically into the missing pixels. A large hole is
    mostly its low frequencies, which the half-size blocks see with twice the context: inside the
    holes of the 17 inpaint-hole images 15.63 dB against 15.18 for the best mode at full size
    and 14.44 for the fast mode, in about a third of the best mode's time."""
    import cv2

    from .images import Image

    fill = np.asarray(fill, dtype=bool)
    height, width = fill.shape
    if min(height, width) < 32:  # too small to halve into FSR's blocks
        return opencv_fill(pixels, fill, "fsr")
    size = (width // 2, height // 2)
    img = cv2.resize(Image(pixels).to_array(np.uint8), size, interpolation=cv2.INTER_AREA)
    out = _xphoto_fsr(img, shrink_mask(fill, size), best=True)
    up = enlarge(out, height, width)
    return np.where(fill[:, :, None], up.astype(np.float32) / 255.0, pixels).astype(np.float32)


#: The fills a mean fill may average (:func:`mean_fill`).
FILLS = ("telea", "ns", "biharmonic", "fsr", "sparse")


def mean_fill(pixels: np.ndarray, fill: np.ndarray, methods: tuple[str, ...] = FILLS) -> np.ndarray:
    """The mean of several classical fills (:data:`FILLS`): the start of text and hole filling.

    Each classical fill is wrong in its own way (Telea and Navier-Stokes smear the rim inwards
    along different paths, the biharmonic fill overshoots on strong gradients, the sparse-DCT and
    frequency-selective fills invent texture where there was none), and none is best on most
    images, so their mean is closer to the truth than any one of them. Inside the masks of the
    inpaint suites (17 images): text, the sparse-DCT fill 28.02 dB, FSR 27.29, their mean 28.22;
    holes, the best single fill of these (Navier-Stokes) 14.79, the mean of all five 15.68.
    """
    return fills_mean_and_range(pixels, fill, methods)[0]


def fills_mean_and_range(pixels: np.ndarray, fill: np.ndarray, methods: tuple[str, ...] = FILLS,
                         lead: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`mean_fill`, and the per-pixel least and greatest value of the fills: the range the
    classical fills agree a missing pixel lies in (the known pixels' own value outside the mask).
    With ``lead``, one of ``methods``, the mean is the even mean of the fills' mean and that fill."""
    fill = np.asarray(fill, dtype=bool)
    parts = _fills(pixels, fill, methods)
    mean = sum(parts) / len(parts)
    if lead in methods:
        mean = (mean + parts[methods.index(lead)]) / 2
    keep = fill[:, :, None]
    return tuple(np.where(keep, v, pixels).astype(np.float32)
                 for v in (mean, np.minimum.reduce(parts), np.maximum.reduce(parts)))


#: Rough relative times of the fills (the fill suites' seconds per 256x256 image, 2 cores), to share
#: the progress of several fills among them.
FILL_COST = {"telea": 0.02, "ns": 0.02, "biharmonic": 0.05, "fsr": 1.0, "sparse": 1.0, "sparse16": 1.0,
             "fsrhalf": 4.0, "fsrbest": 12.0, "bm3d": 15.0, "bm3d-refine": 1.5}


def fill_cost(methods) -> float:
    """The rough time of making every fill in ``methods`` (:data:`FILL_COST`'s units)."""
    return sum(FILL_COST.get(m, 1.0) for m in methods)


def _fills(pixels: np.ndarray, fill: np.ndarray, methods: tuple[str, ...]) -> list[np.ndarray]:
    """Each fill named in ``methods``, their progress reported in shares of :data:`FILL_COST`."""
    cost = np.cumsum([0.0] + [fill_cost((m,)) for m in methods])
    parts = []
    for i, m in enumerate(methods):
        with share(cost[i] / cost[-1], cost[i + 1] / cost[-1]):
            parts.append(_one_fill(pixels, fill, m))
        _done(cost[i + 1] / cost[-1])
    return parts


def _one_fill(pixels: np.ndarray, fill: np.ndarray, m: str) -> np.ndarray:
    """The fill named ``m``: one of :data:`FILLS`, "sparse16" (:func:`sparse_fill` with
    :data:`SPARSE_WIDE`), "fsrbest" (:func:`opencv_fill`), "fsrhalf" (:func:`fsr_half_fill`)
    or "bm3d" (:func:`bm3d_fill`)."""
    if m == "biharmonic":
        return biharmonic_fill(pixels, fill)
    if m == "sparse":
        return sparse_fill(pixels, fill)
    if m == "sparse16":
        return sparse_fill(pixels, fill, **SPARSE_WIDE)
    if m == "bm3d":
        return bm3d_fill(pixels, fill)
    if m == "fsrhalf":
        return fsr_half_fill(pixels, fill)
    if m in ("telea", "ns", "fsr", "fsrbest"):
        return opencv_fill(pixels, fill, m)
    raise ValueError(f"unknown fill {m!r}; choose from {', '.join(FILLS + ('sparse16', 'fsrbest', 'fsrhalf', 'bm3d'))}")


# Below this many known pixels under the shifted mask, choose_fill cannot measure the candidates and
# takes the first.
MIN_PROBE_PIXELS = 256


def probe_mask(fill: np.ndarray) -> np.ndarray:
    """Known pixels under a copy of the mask shifted by about half the image down and a third
    across (wrapping round): pixels in the image's own content, in the mask's own shapes, that a
    fill can be asked to predict."""
    h, w = fill.shape
    return np.roll(fill, (h // 2 + 5, w // 3), axis=(0, 1)) & ~fill


def choose_fill(pixels: np.ndarray, fill: np.ndarray, candidates: tuple[tuple[str, ...], ...]
                ) -> tuple[tuple[str, ...], dict]:
    """The candidate mean of fills (:func:`mean_fill`) that best predicts the known pixels under
    :func:`probe_mask` when they are hidden too, and every candidate's mean squared error there.

    Which fill suits an image depends on its content (frequency-selective reconstruction is 3.9
    dB above the sparse-DCT fill inside the text of Set14's barbara, 1.8 dB under it on
    coastguard); hiding more of the image in the mask's own shapes measures that without the
    ground truth. A single candidate is returned as it is, untried.
    """
    fill = np.asarray(fill, dtype=bool)
    probe = probe_mask(fill)
    if len(candidates) == 1 or probe.sum() < MIN_PROBE_PIXELS:
        return candidates[0], {}
    hidden = fill | probe
    methods = tuple(dict.fromkeys(m for c in candidates for m in c))
    parts = dict(zip(methods, _fills(pixels, hidden, methods)))
    errors = {}
    for c in candidates:
        guess = sum(parts[m] for m in c) / len(c)
        errors[c] = float(np.mean((guess[probe] - pixels[probe]) ** 2))
    return min(errors, key=errors.get), errors


# Sparse-DCT refinement of a fill (Guleryuz, "Nonlinear approximation based image recovery using
# adaptive sparse reconstructions", IEEE TIP 2006): natural images are sparse in the 8x8 DCT, so
# the missing pixels are re-estimated by hard-thresholding the DCT of every 8x8 window, averaging
# the windows back and putting the known pixels back, with the threshold falling geometrically.
# Chosen on 15 grey images outside Heide11 (Set14 less barbara, lenna, man and pepper, and Set5;
# 50 % dropped): mean 33.36 dB against the biharmonic fill's 31.87; every 2nd window offset
# instead of all 64 gave 33.04, 20 passes 32.88.
SPARSE_BLOCK = 8
SPARSE_PASSES = 40
SPARSE_THRESHOLDS = (0.2, 0.005)  # first and last threshold, on DCT coefficients of [0, 1] pixels
_SPARSE_CHUNK = 64  # window rows transformed at once (a multiple of every step): bounds memory
# The same fill in 16x16 windows at every 2nd offset, thresholds from 0.4 (the fill "sparse16"): it
# keeps longer structures (barbara's stripes: 29.84 dB inside the text against 26.49 for 8x8) and
# loses fine detail (baby: 0.27 dB under 8x8); the two err differently, so their mean is a
# candidate start of text filling (tasks.START_FILLS).
SPARSE_WIDE = {"block": 16, "step": 2, "thresholds": (0.4, 0.005)}


def _dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (rows are the basis vectors)."""
    k = np.arange(n)[:, None]
    d = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return torch.from_numpy(d).float()


def _overlap_add(g: torch.Tensor, dim: int, n: int, step: int = 1) -> torch.Tensor:
    """Sum windows back onto a line of ``n`` samples: ``g``'s last axis is the position inside the
    window, axis ``dim`` the window's start (windows ``step`` samples apart)."""
    shape = list(g.shape[:-1])
    shape[dim] = n
    out = g.new_zeros(shape)
    count = g.shape[dim]
    for j in range(g.shape[-1]):
        out.narrow(dim, j, (count - 1) * step + 1)[(slice(None),) * dim + (slice(None, None, step),)] += g[..., j]
    return out


def _threshold_windows(x: torch.Tensor, t: float, d: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Hard-threshold the DCT of the b x b windows of the 2-D ``x`` that start every ``step``
    pixels (DC kept) and average the windows back: the mean of the (b/step)^2 reconstructions,
    valid where that many windows cover a pixel."""
    b = d.shape[0]
    hp, wp = x.shape
    out = torch.zeros_like(x)
    last = hp - b  # the last row a window may start on
    for r0 in range(0, last + 1, _SPARSE_CHUNK):
        r1 = min(r0 + _SPARSE_CHUNK, last + 1)  # windows starting in rows r0 .. r1-1
        band = x[r0 : r1 + b - 1]
        c = band.unfold(0, b, step) @ d.T  # (rows, wp, i): the columns' DCT
        c = c.transpose(1, 2).unfold(2, b, step) @ d.T  # (rows, i, cols, k): 2-D coefficients
        keep = c.abs() >= t
        keep[:, 0, :, 0] = True
        c.mul_(keep)
        g = _overlap_add(c @ d, 2, wp, step)  # (rows, i, wp)
        out[r0 : r1 + b - 1] += _overlap_add(g.transpose(1, 2) @ d, 0, r1 - r0 + b - 1, step)
    return out * (step * step) / (b * b)


def dct_hard_threshold(x: torch.Tensor, t: float, d: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Hard-threshold the DCT of the windows of the 2-D ``x`` starting every ``step`` pixels (``d``:
    :func:`_dct_matrix`, DC kept) and average the windows back, at ``x``'s size: the edges are padded
    by reflection (by replication where the image is smaller than a window), so every pixel is
    covered by (b/step)^2 windows."""
    p = d.shape[0] - 1
    h, w = x.shape
    mode = "reflect" if p < min(h, w) else "replicate"
    xp = torch.nn.functional.pad(x[None, None], (p, p, p, p), mode=mode)[0, 0]
    return _threshold_windows(xp, t, d, step)[p : p + h, p : p + w]


def sparse_fill(pixels: np.ndarray, fill: np.ndarray, *, block: int = SPARSE_BLOCK, step: int = 1,
                thresholds: tuple[float, float] = SPARSE_THRESHOLDS) -> np.ndarray:
    """Fill the pixels where ``fill`` is True: the biharmonic fill, refined by iterated hard
    thresholding in the DCT of ``block``-wide windows ``step`` pixels apart (see above; 8x8 at every
    offset unless told). Exact on the known pixels; each channel on its own.

    It recovers texture that the biharmonic fill smooths away (Heide11, 50 % dropped: see
    BENCHMARKS.md) in a few seconds per 512x512 channel.
    """
    if block % step:
        raise ValueError(f"the window step {step} does not divide the block {block}")
    fill = np.asarray(fill, dtype=bool)
    start = biharmonic_fill(pixels, fill)
    if not fill.any():
        return start
    _done(0.05)
    d = _dct_matrix(block)
    known = torch.from_numpy(~fill)
    ts = np.geomspace(*thresholds, SPARSE_PASSES)
    out = np.empty_like(start)
    with torch.no_grad():
        for ch in range(pixels.shape[2]):
            y = torch.from_numpy(np.ascontiguousarray(pixels[:, :, ch], dtype=np.float32))
            x = torch.from_numpy(np.ascontiguousarray(start[:, :, ch]))
            for i, t in enumerate(ts):
                x = torch.where(known, y, dct_hard_threshold(x, float(t), d, step))
                _done(0.05 + 0.95 * (ch * len(ts) + i + 1) / (pixels.shape[2] * len(ts)))
            out[:, :, ch] = x.numpy()
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _batch(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) pixels as a new (1, C, H, W) float32 tensor (a copy: callers may change it in place)."""
    return torch.tensor(np.moveaxis(pixels, -1, 0), dtype=torch.float32)[None]


def _pixels(x: torch.Tensor) -> np.ndarray:
    """A (1, C, H, W) tensor back as (H, W, C) float32 pixels clipped to [0, 1]."""
    return np.clip(np.moveaxis(x[0].detach().numpy(), 0, -1), 0.0, 1.0).astype(np.float32)


def upscale(pixels: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic upscaling by ``scale``: the classical answer to super-resolution."""
    up = torch.nn.functional.interpolate(_batch(pixels), scale_factor=scale, mode="bicubic", align_corners=False)
    return np.moveaxis(up[0].clamp(0, 1).numpy(), 0, -1)


# A super-resolution start that agrees with the data: gradient
# back-projection through the fit's own Lanczos downsampler A from the bicubic upscale, the DCT
# of every 8x8 window hard-thresholded between steps (as sparse_fill does for missing pixels), then
# min ||A x - y||^2 + weight * TV(x) from there (Adam, cosine-decayed step). The known operator is
# what makes it strong: x4, Set14 less face and monarch (Set5's head and butterfly), mean Y-PSNR
# 26.71 dB against bicubic's 25.79, back-projection with DCT thresholding alone 26.21, TV alone
# (weight 0.008, from bicubic) 26.67; the TV weight was chosen there among 0.001-0.008.
BACKPROJECT_PASSES = 30
BACKPROJECT_STEPS = 3  # gradient steps of size 1 / ||A||^2 before each thresholding
BACKPROJECT_THRESHOLDS = (0.1, 0.002)
TV_WEIGHT = 0.008
TV_STEPS = 400
TV_LR = 0.003
TV_EPS = 0.01  # smooths |grad x| at 0 so that the total variation has a gradient everywhere


def _observation(pixels: np.ndarray, scale: int):
    """The low-resolution image as a (1, C, h, w) tensor y, and the fit's operator A for it."""
    from .operators import LanczosDownsampler

    y = _batch(pixels)
    return y, LanczosDownsampler(scale, y.shape[1])


def _data_gradient(a, y: torch.Tensor | None):
    """The gradient of ||A v - y||^2 / 2 at v (of ||A v||^2 / 2 when ``y`` is None)."""
    def grad(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().requires_grad_(True)
        r = a(v) if y is None else a(v) - y
        (g,) = torch.autograd.grad((r**2).sum() / 2, v)
        return g
    return grad


def _lipschitz(a, shape) -> float:
    """||A||^2, the data term's Lipschitz constant, by 20 steps of power iteration."""
    grad = _data_gradient(a, None)
    v = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        g = grad(v)
        lipschitz = float(g.norm() / v.norm())
        v = g / g.norm()
    return lipschitz


def _project_between(start: np.ndarray, pixels: np.ndarray, scale: int, levels, prior, done) -> np.ndarray:
    """From ``start``, BACKPROJECT_STEPS gradient steps of size 1 / ||A||^2 on ||A x - y||^2
    before each ``prior(x, level)`` of ``levels`` and once more after the last; ``done(i)``
    after the i-th prior. The scheme of the back-projected and the BM3D upscales."""
    y, a = _observation(pixels, scale)
    x = _batch(start)
    grad = _data_gradient(a, y)
    step = 1.0 / _lipschitz(a, x.shape)
    for i, level in enumerate(levels):
        for _ in range(BACKPROJECT_STEPS):
            x = x - step * grad(x)
        x = prior(x, float(level))
        done(i + 1)
    for _ in range(BACKPROJECT_STEPS):
        x = x - step * grad(x)
    return _pixels(x)


def back_project(pixels: np.ndarray, scale: int, *, sparse: bool = True) -> np.ndarray:
    """An upscale by ``scale`` that the Lanczos downsampler A maps back onto ``pixels``:
    gradient steps on ||A x - y||^2 from the bicubic upscale, with (``sparse``) every 8x8
    window's DCT hard-thresholded between them, the threshold falling geometrically."""
    d = _dct_matrix(SPARSE_BLOCK)

    def threshold(x, t):
        if not sparse:
            return x
        with torch.no_grad():
            return torch.stack([dct_hard_threshold(c, t, d) for c in x[0]])[None]

    return _project_between(upscale(pixels, scale), pixels, scale,
                            np.geomspace(*BACKPROJECT_THRESHOLDS, BACKPROJECT_PASSES), threshold,
                            lambda i: _done(i / (BACKPROJECT_PASSES + 1)))


def tv_refine(start: np.ndarray, pixels: np.ndarray, scale: int, weight: float = TV_WEIGHT,
              steps: int = TV_STEPS) -> np.ndarray:
    """Minimise mean (A x - y)^2 + ``weight`` * mean |grad x| (isotropic, per channel) from ``start``:
    the total variation sharpens edges that the data leaves open and flattens ringing."""
    y, a = _observation(pixels, scale)
    x = _batch(start).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=TV_LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for k in range(steps):
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        tv = torch.sqrt(dx**2 + dy**2 + TV_EPS**2).mean()
        loss = ((a(x) - y) ** 2).mean() + weight * tv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        _done((k + 1) / steps)
    return _pixels(x)


def regularised_upscale(pixels: np.ndarray, scale: int) -> np.ndarray:
    """The super-resolution start: :func:`back_project` with DCT thresholding, then :func:`tv_refine`.

    Seconds per image; its scores beside bicubic's and the fit's are in BENCHMARKS.md
    (the "Regularised upscale" column). About 95 s per megapixel of result on 2 cores:
    :func:`quick_upscale` is the start of larger images.
    """
    with share(0.0, 0.55):  # the two parts' shares of the time at a 512x512 result
        start = back_project(pixels, scale)
    with share(0.55, 1.0):
        return tv_refine(start, pixels, scale)


# The start of large results: back-projection without the DCT thresholding (which costs most of the
# time) and a quarter of the TV steps. On a 1024x1024 crop of BENCHMARKS.md's 12 MP photo, x4: 34.92
# dB in 18 s against regularised_upscale's 34.84 in 95 s and bicubic's 33.57.
QUICK_TV_STEPS = 100


def quick_upscale(pixels: np.ndarray, scale: int) -> np.ndarray:
    """A cheaper :func:`regularised_upscale` for large results: 18 s per megapixel of result at 1
    megapixel, 33 at 16 (2 cores; memory-bound there)."""
    with share(0.0, 0.45):  # the two parts' shares of the time at a 1024x1024 result
        start = back_project(pixels, scale, sparse=False)
    with share(0.45, 1.0):
        return tv_refine(start, pixels, scale, steps=QUICK_TV_STEPS)


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
    Peppers, and Set5; AWGN seed 0): on the 15 colour ones, sigma 25,
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
        _done((c + 1) / 3)
    return np.clip(out @ _OPPONENT, 0.0, 1.0).astype(np.float32)


def bm3d_available() -> bool:
    """Whether the optional ``bm3d`` package (non-commercial licence: the ``bm3d`` extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("bm3d") is not None


def bm3d_denoise(pixels: np.ndarray, sigma: float | None = None, profile: str = "np") -> np.ndarray:
    """BM3D (Dabov et al.; CBM3D in its opponent colour space for colour), from the optional
    ``bm3d`` package, ``sigma`` on 0-255 (estimated when None): the strongest classical denoiser
    installable here, 1.4 dB above :func:`nlm_denoise` on CBM3D_color9 at sigma 25 for some 40
    times its time (about 8 s at 256x256, 30 s at 512x512). ``profile``: the package's settings,
    "np" (normal) or "lc" (low complexity: sparser reference blocks and smaller searches, about a
    third of the time). Run on one thread: with more its sums are added in a
    varying order and a seed would not repeat a restoration bit for bit."""
    import bm3d
    from bm3d.profiles import BM3DProfile, BM3DProfileLC

    s = noise_sigma(pixels) if sigma is None else sigma / 255.0
    if s <= 0:
        return pixels.astype(np.float32)
    profiles = {"np": BM3DProfile, "lc": BM3DProfileLC}
    if profile not in profiles:
        raise ValueError(f"unknown BM3D profile {profile!r}; choose {' or '.join(profiles)}")
    settings = profiles[profile]()
    settings.num_threads = 1
    p = pixels.astype(np.float64)
    if p.shape[2] == 3 and not _flat_opponent(p):
        out = bm3d.bm3d_rgb(p, s, profile=settings)
    elif p.shape[2] == 3:
        # CBM3D scales each opponent channel by its range, and a flat one (a grey picture stored
        # as colour) divides by zero: denoise the luminance and keep the colour differences.
        y = p.mean(axis=2)
        out = p + (bm3d.bm3d(y, s, profile=settings) - y)[:, :, None]
    else:
        out = bm3d.bm3d(p[:, :, 0], s, profile=settings)[:, :, None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _flat_opponent(p: np.ndarray) -> bool:
    """Whether a channel of CBM3D's opponent colour space is the same everywhere."""
    opponent = (p.sum(axis=2), p[:, :, 0] - p[:, :, 2], p[:, :, 0] - 2 * p[:, :, 1] + p[:, :, 2])
    return any(np.ptp(c) == 0 for c in opponent)


#: bm3d_denoise_halves: each half carries this many rows of the other (BM3D's blocks are matched
#: within 19 pixels), and images shorter than four times it on their longer side are run whole.
BM3D_HALVES_MARGIN = 32


def bm3d_denoise_halves(pixels: np.ndarray, sigma: float | None = None, profile: str = "np") -> np.ndarray:
    """:func:`bm3d_denoise` for an estimate made alone: the image cut across its longer side, each
    half (with :data:`BM3D_HALVES_MARGIN` rows of the other) denoised in a thread of its own, so
    that both cores work. Deterministic, and within 0.01 dB of one call at sigma 10 (CBM3D on
    butterfly 256x256 and baby 512x512, grey butterfly and house), in 0.57-0.68 of its time on 2
    cores. Not the same bits: the parts differ from one call by up to 0.013 (on 0-1) anywhere in the
    image, not only near the cut, as BM3D's transforms depend on the size and range of the image."""
    n = max(pixels.shape[:2])
    if n < 4 * BM3D_HALVES_MARGIN:
        return bm3d_denoise(pixels, sigma, profile)
    if sigma is None:  # one noise level for both halves
        sigma = noise_sigma(pixels) * 255.0
    rows = pixels if pixels.shape[0] == n else pixels.transpose(1, 0, 2)
    cut, m = n // 2, BM3D_HALVES_MARGIN
    top, bottom = beside(lambda: bm3d_denoise(np.ascontiguousarray(rows[: cut + m]), sigma, profile),
                         lambda: bm3d_denoise(np.ascontiguousarray(rows[cut - m :]), sigma, profile))
    out = np.concatenate([top[:cut], bottom[m:]])
    return out if pixels.shape[0] == n else np.ascontiguousarray(out.transpose(1, 0, 2))


# Plug-and-play BM3D for scattered missing pixels (after Venkatakrishnan et al., "Plug-and-play
# priors", 2013): from the sparse-DCT fill, denoise with BM3D at a noise level falling
# geometrically and put the known pixels back after each pass. Chosen on 256x256 crops of Heide11
# (50 % dropped): 10 to 1 in 8 passes lifted house, barbara, Cameraman256 and peppers256 by
# 0.45-1.54 dB over the sparse-DCT fill (mean +1.09); 20 to 1 in 12 passes did the same on the mean
# (barbara better, house worse) for half as much again; BM3D's hard-thresholding stage alone ended
# 1 dB under the sparse-DCT fill on house.
BM3D_FILL_SIGMAS = (10.0, 1.0)  # first and last noise level, on 0-255
BM3D_FILL_PASSES = 8


def bm3d_fill(pixels: np.ndarray, fill: np.ndarray, *, luminance: bool = False) -> np.ndarray:
    """Fill the pixels where ``fill`` is True: the sparse-DCT fill refined by plug-and-play BM3D
    (the optional ``bm3d`` package). Exact on the known pixels. Scattered missing pixels: on
    Heide11 with 50 % dropped 0.11-1.25 dB above :func:`sparse_fill` (0.5 on the mean), for 8 BM3D
    runs (about 90 s for a 512x512 grey image on 2 cores). ``luminance``: BM3D on the mean of the
    channels only (:func:`bm3d_luminance`), the colour differences kept from the sparse-DCT fill:
    a colour image in the time of a grey one (about 25 s at 256x256 on one core of an AMD EPYC,
    where CBM3D took 55-66 s)."""
    fill = np.asarray(fill, dtype=bool)
    first = 1.0 / (BM3D_FILL_PASSES + 1)  # the sparse fill, about as long as one BM3D pass
    with share(0.0, first):
        x = sparse_fill(pixels, fill)
    if not fill.any():
        return x
    denoise = partial(bm3d_luminance, profile="np") if luminance else bm3d_denoise
    return _put_back_passes(x, pixels, fill, np.geomspace(*BM3D_FILL_SIGMAS, BM3D_FILL_PASSES), denoise,
                            lambda i: _done(first + (1 - first) * i / BM3D_FILL_PASSES))


def bm3d_luminance(x: np.ndarray, sigma: float, profile: str = "np") -> np.ndarray:
    """:func:`bm3d_denoise` of the luminance of ``x`` (the mean of its channels), the change added
    to every channel: on colour well under half of CBM3D's time (normal profile, 256x256: 23-27 s
    for the eight passes of a BM3D fill against 55-66 s), where the refinements of a fill need it."""
    if x.shape[2] == 1:
        return bm3d_denoise(x, sigma, profile)
    y = x.mean(axis=2, keepdims=True)
    return np.clip(x + bm3d_denoise(y, sigma, profile) - y, 0.0, 1.0)


def _put_back_passes(x: np.ndarray, pixels: np.ndarray, fill: np.ndarray, levels, denoise, done) -> np.ndarray:
    """Plug-and-play for missing pixels: ``denoise(x, level)`` for each of ``levels``, the known
    pixels put back after each, ``done(i)`` after the i-th. The scheme of the BM3D fill and of
    the BM3D refinement of a text fill."""
    known = ~fill[:, :, None]
    for i, level in enumerate(levels):
        x = np.where(known, pixels, denoise(x, float(level)))
        done(i + 1)
    return x.astype(np.float32)


# Plug-and-play BM3D from a text fill, on its luminance: a few passes at a low noise level, the
# known pixels put back after each. Chosen inside the text of 13 inpaint-text suite images, from the
# chosen fills, luminance only (colour kept from the fill): 5 to 1 in 3 passes +0.13 dB on the mean
# (coastguard's water -0.09 to foreman +0.50); on the first seven 10 to 1 in 4 +0.06 (coastguard
# -0.57) and 20 to 1 in 5 -0.18; on six others 3 to 1 in 2 +0.10 where 5 to 1 gained 0.19. On
# luminance a pass costs a third of CBM3D's on colour for most of its gain (baboon, 10 to 1 in 4:
# +0.08 against +0.14). BM3D's low-complexity profile in 4 passes: 28.72 dB inside the text of the
# 17 suite images, as the normal profile in 3 (28.72; low complexity in 3: 28.70), in half its time
# (6.0 s against 12.6 at 256x256 on an Intel Xeon).
BM3D_REFINE_SIGMAS = (5.0, 1.0)  # first and last noise level, on 0-255
BM3D_REFINE_PASSES = 4
BM3D_REFINE_PROFILE = "lc"


def bm3d_refine(start: np.ndarray, pixels: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """A fill of the pixels where ``fill`` is True, refined by :data:`BM3D_REFINE_PASSES` passes
    of BM3D (the optional ``bm3d`` package, :data:`BM3D_REFINE_PROFILE`) on its luminance (the mean of the channels; the
    difference added to every channel), the known pixels put back after each: BM3D's grouping of
    similar blocks completes strokes that the local fills leave blurred. Exact on the known pixels."""
    fill = np.asarray(fill, dtype=bool)
    x = np.asarray(start, dtype=np.float32)
    if not fill.any():
        return x

    luminance = partial(bm3d_luminance, profile=BM3D_REFINE_PROFILE)
    return _put_back_passes(x, pixels, fill, np.geomspace(*BM3D_REFINE_SIGMAS, BM3D_REFINE_PASSES), luminance,
                            lambda i: _done(i / BM3D_REFINE_PASSES))


# Plug-and-play BM3D for super-resolution, as bm3d_fill for missing pixels: from the regularised
# upscale, back-projection steps through the fit's Lanczos operator, then BM3D at a noise level
# falling geometrically. Chosen on Set5 x4 (bird, head, butterfly; Y-PSNR over the regularised
# upscale, normal profile): 30 to 2 in 6 passes +0.37 dB on the mean, 30 to 1 in 10 +0.40 for 1.7
# times the time, 15 to 1 in 8 +0.28, 5 to 0.5 in 6 +0.06; at x2 (butterfly, woman) 30 to 2 +0.95,
# 50 to 2 +0.88, 15 to 1 +0.51, 8 to 1 +0.18. At x4 BM3D's low-complexity profile in 8 passes makes
# the start 0.014 dB under the normal profile's 6 on Set5's mean (butterfly 0.06 under) in 0.42-0.60
# of its time. At x2 and x3 it was 0.02 and 0.015 under on four Set5 images (butterfly's sharp
# edges 0.15 and 0.14) for 0.51-0.60: they keep the normal profile. All measured with the Lanczos-2
# kernel in the operator; with Lanczos-3, 30 to 2 stays within 0.005 dB of the best of six levels at x4
# (bird, butterfly, head, woman).
BM3D_UPSCALE_SIGMAS = (30.0, 2.0)  # first and last noise level, on 0-255
#: BM3D's profile and number of passes in the start, by scale; other scales take BM3D_UPSCALE_DEFAULT.
BM3D_UPSCALE_PASSES = {4: ("lc", 8)}
BM3D_UPSCALE_DEFAULT = ("np", 6)


def bm3d_upscale(pixels: np.ndarray, scale: int) -> np.ndarray:
    """The super-resolution start with the ``bm3d`` extra: :func:`regularised_upscale` refined
    by plug-and-play BM3D (:data:`BM3D_UPSCALE_PASSES`, each pass on the image's two halves side
    by side: at x4 35-43 s for a 256-344 px colour result on an Intel Xeon with 2 cores, 105 s at
    512x512)."""
    profile, passes = BM3D_UPSCALE_PASSES.get(scale, BM3D_UPSCALE_DEFAULT)
    # The regularised upscale's share of the time, for progress (bird x4 on an Intel Xeon: 8 s of 44).
    first = 0.18
    with share(0.0, first):
        start = regularised_upscale(pixels, scale)
    return _project_between(start, pixels, scale, np.geomspace(*BM3D_UPSCALE_SIGMAS, passes),
                            lambda x, sigma: _batch(bm3d_denoise_halves(_pixels(x), sigma, profile)),
                            lambda i: _done(first + (1 - first) * i / passes))


def _per_image(fn, pixels: np.ndarray, *args, **kwargs) -> np.ndarray:
    """Call a scikit-image function on (H, W, C) pixels: grey as a 2-D image, colour with its
    channel axis; the result back as (H, W, C) float32 in [0, 1]."""
    gray = pixels.shape[2] == 1
    out = fn(pixels[:, :, 0] if gray else pixels, *args, channel_axis=None if gray else -1, **kwargs)
    out = out[:, :, None] if gray else out
    return np.clip(out, 0.0, 1.0).astype(np.float32)
