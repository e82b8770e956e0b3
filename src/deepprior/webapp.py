"""The web app: a Gradio page over :func:`deepprior.restore` for people who never touch a terminal.

:func:`build_app` makes the page (a :class:`gradio.Blocks`); :func:`launch` serves it, on
127.0.0.1 unless told otherwise. The page is a thin shell: it turns uploads and controls into a
task with :mod:`deepprior.tasks`, runs :func:`~deepprior.restore` in a worker thread, and
streams what the fit's callback reports (iteration, loss, a preview of the current result) back
to the browser every few seconds. A per-session :class:`threading.Event` is the Stop button:
the callback returns True once it is set, which ends the fit and keeps the best result so far.

Several people can use one server. Fits go through Gradio's queue, ``concurrency`` at a time
(two by default, each with its share of the cores, so small requests are not stuck behind a
long one); :mod:`deepprior.webqueue` refuses requests over the work limit or over a client's
share as they join, tells each waiting user their place and wait, and stops the fit of a
client that has gone. Uploads are limited in bytes (``max_upload_mb``) and in pixels
(``max_pixels``); a bad upload or option becomes a readable message on the page, never a
traceback. Results are written as lossless PNG to a fresh temporary folder per run, under a name
that owes nothing to the uploaded file's name.

The same fit is offered to programs as the ``/restore`` endpoint (see :func:`build_app`)::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    png_path = client.predict(handle_file("photo.png"), "upscale", 2, None, "fast", 500, 0,
                              api_name="/restore")
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import html
import logging
import math
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home, before gradio loads

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from .errors import DeepPriorError  # noqa: E402
from .fitting import STAGE_LINES, START_STAGES, returned_phrase, why_returned  # noqa: E402
from .images import Image, colormap, encode_image, load_image  # noqa: E402
from .presets import PRESET_NAMES, get_preset  # noqa: E402
from .restoration import configure, large_image_method, planned_work, restore  # noqa: E402
from .tiling import DEFAULT_MAX_FIT_PIXELS  # noqa: E402
from .tasks import SCALES, TASK_NAMES, from_name, hole_windows, load_mask  # noqa: E402
from .webqueue import FIT_QUEUE, ServerQueue  # noqa: E402

log = logging.getLogger(__name__)

#: The bundled example photos (made by ``examples/make_examples.py`` from scikit-image's data).
EXAMPLES_DIR = Path(__file__).parent / "examples"

#: The web app's default pixel limit, for the input and for an upscaled result (16 megapixels:
#: a phone photo, restored by a fit on crops in minutes where the preset can; deepprior.cropfit).
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_MAX_UPLOAD_MB = 64  # a 12-megapixel PNG: 12 MB smooth, 32 MB noisy (the bench photo's)
#: The page shows previews and the before/after comparison at most this large; the download is full size.
DISPLAY_PIXELS = 2_000_000
#: Fits at once: two, so that small requests are not stuck behind one long fit (each gets half
#: the cores; on a 2-core machine one thread per fit is as fast as two for small images).
DEFAULT_CONCURRENCY = 2
#: The most work (result pixels x iterations) one request may ask for: a 1-megapixel result at
#: 2000 iterations, about an hour of the fast preset on two cores.
DEFAULT_MAX_WORK = 2e9
DEFAULT_MAX_QUEUED_PER_CLIENT = 2

TASK_CHOICES = [
    ("Denoise", "denoise"),
    ("Upscale", "upscale"),
    ("Inpaint (fill a painted area)", "inpaint"),
    ("Reconstruct missing pixels", "reconstruct"),
    ("JPEG cleanup", "dejpeg"),
    ("Deblur", "deblur"),
    ("Flash / no-flash", "flash"),
]
KERNEL_CHOICES = [("Gaussian blur", "gaussian"), ("Motion blur", "motion"), ("Kernel image", "image")]
STOP_CHOICES = [("Preset's choice", "preset"), ("Automatic", "auto"), ("Off: run to the cap", "off")]
_WEB_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}  # what a browser shows as it is
_RESULT_KEEP_S = 3600  # result files older than this are removed when a new run starts
QUEUE_REFRESH_S = 2.0  # seconds between refreshes of the page's queue line

_CSS = """
#input-image img, #result-image img, #uncertainty-image img { width: 100%; height: 100%; object-fit: contain; }
#status .dp-track { width: 100%; height: 0.7rem; border-radius: 0.35rem; margin: 0.2rem 0 0.4rem;
                    background: var(--neutral-200, #e5e7eb); overflow: hidden; }
#status .dp-fill { height: 100%; background: var(--color-accent, #f97316); transition: width 0.4s; }
#status .dp-line { font-variant-numeric: tabular-nums; }
#status .dp-error { color: var(--error-text-color, #b91c1c); font-weight: 600; }
"""


def ImageFile(**kwargs) -> gr.Image:
    """A ``gr.Image`` input that hands the uploaded file over untouched, as a path.

    ``gr.Image`` opens every upload with Pillow before our code sees it, so a file that is not an
    image would fail inside Gradio with no useful message. Here :func:`~deepprior.images.load_image`
    does all the reading (16-bit, alpha and EXIF included) and words any problem. The component's
    ``preprocess`` is replaced on the instance: a subclass would make Gradio write a ``.pyi`` stub
    next to this module.
    """
    component = gr.Image(type="filepath", **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        if payload.path:
            return str(payload.path)
        if payload.url and payload.url.startswith("data:"):  # a pasted image sent inline
            fd, path = tempfile.mkstemp(suffix=".bin", dir=component.GRADIO_CACHE)
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64decode(payload.url.partition(",")[2]))
            return path
        raise gr.Error("the upload did not arrive; please try again")

    component.preprocess = preprocess
    return component


@dataclass
class Settings:
    """What the person running the server decides; users of the page cannot change it."""

    concurrency: int | None = None  # fits at once; default: DEFAULT_CONCURRENCY, at most the CPU cores
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_iterations: int | None = None  # a cap on any requested iteration count
    preview_every: float = 2.0  # seconds between preview refreshes
    threads: int | None = None  # PyTorch threads per fit; default: CPU cores / concurrency
    max_work: float | None = DEFAULT_MAX_WORK  # result pixels x iterations one request may ask for
    max_queued_per_client: int = DEFAULT_MAX_QUEUED_PER_CLIENT
    max_fit_pixels: int = DEFAULT_MAX_FIT_PIXELS  # larger results: fitted on crops, or tile by tile
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="deepprior-web-")))

    def __post_init__(self):
        if self.concurrency is None:
            self.concurrency = max(1, min(DEFAULT_CONCURRENCY, os.cpu_count() or 1))
        if self.concurrency < 1:
            raise DeepPriorError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_pixels < 1:
            raise DeepPriorError(f"max pixels must be positive, got {self.max_pixels}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise DeepPriorError(f"max iterations must be at least 1, got {self.max_iterations}")
        if self.threads is None:
            self.threads = max(1, (os.cpu_count() or 1) // self.concurrency)


# ---------------------------------------------------------------------------------------------
# Plain helpers: reading inputs, building the task, writing results.


def _fresh_dir(settings: Settings) -> Path:
    """A new private folder for one run's files; old ones are cleared out on the way."""
    now = time.time()
    for old in settings.workdir.glob("run-*"):
        try:
            if now - old.stat().st_mtime > _RESULT_KEEP_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix="run-", dir=settings.workdir))


def read_upload(path, settings: Settings, what: str = "image") -> Image:
    """Load an uploaded file, with messages that speak to a person on a web page."""
    if path is None:
        raise DeepPriorError(f"upload the {what} first")
    try:
        with PILImage.open(path) as im:
            w, h = im.size
    except Exception:  # not an image: load_image below says so in its own words
        w = h = 0
    if w * h > settings.max_pixels:
        raise DeepPriorError(
            f"the {what} is {w}x{h} = {w * h:,} pixels; this server takes at most {settings.max_pixels:,}: "
            "please make it smaller"
        )
    try:
        return load_image(path, max_pixels=settings.max_pixels)
    except DeepPriorError as e:
        # The message starts with the server-side temporary path; the user knows it as "the image".
        text = str(e)
        if text.startswith(f"{path}: "):
            text = text[len(str(path)) + 2 :]
        raise DeepPriorError(f"the {what}: {text}") from None


def kernel_spec(kind: str, sigma: float, length: float, angle: float, kernel_file) -> str:
    """The ``Deblur.from_spec`` string for the page's kernel controls."""
    if kind == "gaussian":
        return f"gaussian:{float(sigma):g}"
    if kind == "motion":
        return f"motion:{float(length):g},{float(angle):g}"
    if kind == "image":
        if kernel_file is None:
            raise DeepPriorError("upload the blur kernel image, or pick a Gaussian or motion blur")
        return str(kernel_file)
    raise DeepPriorError(f"unknown kernel kind {kind!r}")


def painted_mask(editor_value, size: tuple[int, int]) -> np.ndarray | None:
    """The pixels painted in the image editor, as a boolean (H, W) array, or None if none are."""
    if not editor_value:
        return None
    painted = None
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        arr = np.asarray(layer)
        alpha = arr[:, :, 3] if arr.ndim == 3 and arr.shape[2] == 4 else arr.reshape(arr.shape[:2])
        hit = alpha > 0
        painted = hit if painted is None else painted | hit
    if painted is None or not painted.any():
        return None
    if painted.shape != tuple(size):  # the editor's canvas should match; resize if it does not
        im = PILImage.fromarray(painted.astype(np.uint8) * 255).resize((size[1], size[0]), PILImage.Resampling.NEAREST)
        painted = np.asarray(im) > 127
    return painted


def build_task(task_name: str, image: Image, settings: Settings, *, scale=4, mask_file=None, mask_known=False,
               painted=None, mode="text", kernel=None, flash_file=None):
    """The :class:`~deepprior.tasks.Task` for the page's (or the API's) plain options."""
    if task_name not in TASK_NAMES:
        raise DeepPriorError(f"unknown task {task_name!r}; choose one of {', '.join(TASK_NAMES)}")
    size = (image.height, image.width)
    options: dict = {}
    if task_name == "upscale":
        scale = int(scale) if scale is not None else 4
        if scale not in SCALES:
            raise DeepPriorError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale}")
        out = image.width * image.height * scale * scale
        if out > settings.max_pixels:
            raise DeepPriorError(
                f"the x{scale} result would be {image.width * scale}x{image.height * scale} = {out:,} pixels; "
                f"this server makes at most {settings.max_pixels:,}: choose a smaller scale or a smaller image"
            )
        options["scale"] = scale
    elif task_name in ("inpaint", "reconstruct"):
        if mask_file is not None:
            mask_image = read_upload(mask_file, settings, "mask")
            options["mask"] = load_mask(mask_image, size=size, fill_is_white=not mask_known)
        elif painted is not None and task_name == "inpaint":
            options["mask"] = load_mask(painted, size=size)
        elif task_name == "inpaint":
            raise DeepPriorError("paint over the area to fill, or upload a mask")
        else:
            raise DeepPriorError("upload the mask of missing pixels (white = missing)")
        options["mode"] = mode or "text"
    elif task_name == "deblur":
        options["kernel"] = kernel or "gaussian:1.5"
    elif task_name == "flash":
        options["flash"] = read_upload(flash_file, settings, "flash image")
    return from_name(task_name, image_size=size, **options)


def fit_options(preset, iterations, seed, stop, settings: Settings, bayes: bool = False, task=None) -> dict:
    """Checked keyword arguments for :func:`restore` from the page's advanced controls; with the
    ``task``, a server cap on iterations also cuts a preset whose own count is longer."""
    if preset not in PRESET_NAMES:
        raise DeepPriorError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    opts: dict = {"seed": 0 if seed is None else int(seed), "max_fit_pixels": settings.max_fit_pixels}
    if not -(2**63 - 3) <= opts["seed"] <= 2**63 - 3:  # the fit also seeds with seed + 1, seed + 2
        raise DeepPriorError(f"the seed must be between {-(2**63 - 3)} and {2**63 - 3}, got {opts['seed']}")
    if iterations is not None and not (isinstance(iterations, float) and math.isnan(iterations)) and int(iterations) != 0:
        if int(iterations) < 1:
            raise DeepPriorError(f"the iteration cap must be at least 1, got {int(iterations)}")
        opts["iterations"] = int(iterations)
    if settings.max_iterations is not None and "iterations" in opts:
        opts["iterations"] = min(opts["iterations"], settings.max_iterations)
    elif task is not None and (cap := preset_cap(configure(task, preset).iterations, settings)):
        opts["iterations"] = cap
    if stop in ("auto", "off"):
        opts["stop"] = stop
    if bayes:
        opts["bayes"] = True
    return opts


def preset_cap(preset_iterations: int, settings: Settings) -> int | None:
    """The server's cap on iterations where a preset's own count is longer, else None (the
    preset's count stands): with nothing asked, the cap only ever shortens a fit."""
    cap = settings.max_iterations
    return cap if cap is not None and preset_iterations > cap else None


def request_work(image_path, task_name, scale, mode, preset, iterations, settings: Settings, mask=None) -> float:
    """The work a request asks for, result pixels x iterations (the preset's count unless a
    cap is given; for a fit on crops, :func:`~deepprior.restoration.planned_work`), read from
    the upload's header alone; 0 when that cannot be told yet or the
    image is over the pixel limit (a bad upload is then refused with its own message when the
    request runs). ``mask(size)``, the mask of a hole fill for an image of ``size`` (height,
    width), counts the windows a large photo's holes are filled from."""
    try:
        with PILImage.open(image_path) as im:
            w, h = im.size
        if w * h > settings.max_pixels:
            return 0.0
        task_key = {"upscale": "sr8" if int(scale or 4) == 8 else "sr", "reconstruct": "reconstruct",
                    "inpaint": "hole" if mode == "hole" else "inpaint"}.get(task_name, task_name)
        its = fit_options(preset or "fast", iterations, 0, "preset", settings).get("iterations")
        cfg = get_preset(task_key, preset or "fast")
        its = preset_cap(cfg.iterations, settings) if its is None else its
    except Exception:
        return 0.0
    pixels = w * h * (int(scale or 4) ** 2 if task_name == "upscale" else 1)
    method = large_image_method(cfg, pixels, settings.max_fit_pixels)
    if its:
        cfg = replace(cfg, crop_iterations=its) if method == "crops" else replace(cfg, iterations=its)
    return planned_work(cfg, pixels, method, _window_count(mask, (h, w), cfg) if method == "window" else 1)


def _window_count(mask, size: tuple[int, int], cfg) -> int:
    """How many windows the holes of ``mask(size)`` are filled from; 1 where that cannot be told."""
    try:
        fill = mask(size) if mask is not None else None
        return len(hole_windows(fill, cfg.work_pixels)) if fill is not None else 1
    except Exception:
        return 1


def for_display(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` shrunk (box filter) to at most :data:`DISPLAY_PIXELS` for the page, as 8-bit."""
    arr = _to_uint8(pixels)
    h, w = arr.shape[:2]
    if h * w <= DISPLAY_PIXELS:
        return arr
    f = math.sqrt(DISPLAY_PIXELS / (h * w))
    size = (max(1, int(w * f)), max(1, int(h * f)))
    return np.asarray(PILImage.fromarray(arr).resize(size, PILImage.BOX))


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    arr = np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    return arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


def before_image(image: Image, size: tuple[int, int], fill: np.ndarray | None) -> np.ndarray:
    """The input as it compares with the result: resized to the result's (H, W), holes tinted."""
    rgb = image.pixels if image.channels == 3 else np.repeat(image.pixels, 3, axis=2)
    arr = _to_uint8(rgb)
    if fill is not None:
        arr = arr.copy()
        arr[fill] = (arr[fill] * 0.4 + np.array([255, 40, 40]) * 0.6).astype(np.uint8)
    if arr.shape[:2] != tuple(size):
        arr = np.asarray(PILImage.fromarray(arr).resize((size[1], size[0]), PILImage.Resampling.BICUBIC))
    return arr


def write_result(result, task_name: str, settings: Settings) -> Path:
    """The restored image as a lossless PNG in a fresh private folder."""
    path = _fresh_dir(settings) / f"{task_name}-restored.png"
    data = encode_image(result.image, "PNG")
    with open(path, "wb") as f:
        f.write(data)
    return path


def summary(result) -> str:
    """One paragraph on how the result was made."""
    o = result.outcome
    if o.iterations == 0:
        how, source = "no network fitted", f"the {returned_phrase(o)}: {why_returned(o)}"
    else:
        how = {
            "auto": "stopped automatically when the result stopped improving",
            "callback": "stopped by you",
            "interrupted": "interrupted",
        }.get(o.stop_reason, "ran every iteration")
        source = (f"the mean of {o.samples} posterior samples taken after the burn-in" if o.samples
                  else f"from iteration {o.stopped_at}")
        if o.held_out_errors:
            article = "a" if o.returned == "blend" else "the"
            source += (f"; it is {article} {returned_phrase(o)}, which was chosen on pixels held out of the fit: "
                       f"{why_returned(o)}")
        elif o.fixed_share:
            source += f"; it is the {returned_phrase(o)}: {why_returned(o)}"
    return (
        f"**Done** in {o.elapsed_s:.1f} s: {o.iterations} iterations, {how}; the result is {source}. "
        f"{result.image.width}x{result.image.height} {result.image.mode}, "
        f"{result.image.bit_depth}-bit PNG ({result.task}, preset {result.preset}, seed {result.seed})."
    )


def uncertainty_image(result) -> np.ndarray | None:
    """Bayesian mode: the per-pixel posterior standard deviation as a colour map (dark = sure)."""
    u = result.uncertainty
    return None if u is None else _to_uint8(colormap(u).pixels)


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    s = int(round(max(s, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def status_html(text: str, it: int | None = None, total: int | None = None, error: bool = False) -> str:
    bar = ""
    if total:
        pct = 100.0 * min(max(it or 0, 0), total) / total
        bar = (f'<div class="dp-track" role="progressbar" aria-valuenow="{it}" aria-valuemin="0" '
               f'aria-valuemax="{total}"><div class="dp-fill" style="width: {pct:.1f}%"></div></div>')
    cls = "dp-line dp-error" if error else "dp-line"
    return f'<div>{bar}<div class="{cls}">{text}</div></div>'


def _report_json(result) -> dict:
    rep = result.report()
    rep.pop("history", None)
    rep.pop("stop_curve", None)
    return rep


# ---------------------------------------------------------------------------------------------
# Running a fit off the request thread, with progress coming back through a queue.


class FitRun:
    """One :func:`restore` call in a worker thread, reporting through a queue.

    ``updates`` receives a dict per callback (iteration, loss, ETA) and, every
    ``preview_every`` seconds (never when None), the current result as ``preview``; ``job``
    (a :class:`~deepprior.webqueue.Job`) learns the fit's time left. Setting ``stop`` makes the
    callback return True, which ends the fit with the best result so far.
    """

    def __init__(self, image, task, preset, fit_kw, threads, preview_every, stop: threading.Event, job=None):
        self.updates: queue.Queue = queue.Queue()
        self.stop = stop
        self.job = job
        self.result = None
        self.error: BaseException | None = None
        self._last_preview = -math.inf
        self._preview_every = preview_every
        self._thread = threading.Thread(
            target=self._run, args=(image, task, preset, fit_kw, threads), name="deepprior-fit", daemon=True
        )

    def start(self) -> "FitRun":
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _callback(self, p) -> bool:
        if self.job is not None and math.isfinite(p.eta_s):
            self.job.eta_s = p.eta_s
        if self._preview_every is not None:
            snap = {"it": p.iteration, "max": p.max_iterations, "loss": p.loss, "elapsed": p.elapsed_s,
                    "eta": p.eta_s, "tile": p.tile, "tiles": p.tiles, "stage": p.stage}
            now = time.monotonic()
            if p.stage not in START_STAGES and now - self._last_preview >= self._preview_every:
                snap["preview"] = p.preview()
                self._last_preview = now
            self.updates.put(snap)
        return self.stop.is_set()

    def _run(self, image, task, preset, fit_kw, threads):
        try:
            self.result = restore(image, task, preset, threads=threads, callback=self._callback, callback_every=5,
                                  **fit_kw)
        except BaseException as e:  # handed to the request's coroutine, which reports it
            self.error = e


def _user_error(e: BaseException) -> gr.Error:
    """The message a person sees for ``e``: ours as it is, anything else without internals."""
    if isinstance(e, DeepPriorError):
        return gr.Error(html.escape(str(e), quote=False), print_exception=False)  # the page shows it as HTML
    log.error("restoration failed", exc_info=e)
    return gr.Error(f"the restoration failed ({type(e).__name__}); the server log has the details", print_exception=False)


# ---------------------------------------------------------------------------------------------
# What the page's controls do.


class StopEvents:
    """The Stop button: one :class:`threading.Event` per browser session with a fit running."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def open(self, request: gr.Request | None) -> tuple[str, threading.Event]:
        key = getattr(request, "session_hash", None) or f"anon-{threading.get_ident()}"
        with self._lock:
            event = self._events[key] = threading.Event()
        return key, event

    def close(self, key: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(key) is event:
                del self._events[key]

    def stop(self, request: gr.Request | None) -> bool:
        """Set the event of the requesting session's fit; False when it has none running."""
        with self._lock:
            event = self._events.get(getattr(request, "session_hash", None))
        if event is None:
            return False
        event.set()
        return True


class Handlers:
    """The event handlers of one app: each method answers one control (or ``/restore``)."""

    def __init__(self, settings: Settings, server_queue: ServerQueue):
        self.settings = settings
        self.queue = server_queue
        self.stops = StopEvents()

    def editor_value(self, path):
        """An upright 8-bit PNG copy of the upload as the editor's background, with no paint."""
        image = read_upload(path, self.settings)
        display = _fresh_dir(self.settings) / "paint-on.png"
        display.write_bytes(encode_image(Image(image.pixels), "PNG"))
        value = {"background": str(display), "layers": [], "composite": None}
        return image, gr.update(value=value, brush=_brush(image))

    def on_task(self, task_name, image_path):
        """Show the controls the chosen task needs."""
        editor = gr.update()
        if task_name == "inpaint" and image_path is not None:
            try:  # a hidden editor does not draw what it was given: hand it the photo again
                _, editor = self.editor_value(image_path)
            except DeepPriorError:
                pass  # already reported when the photo was uploaded
        return (
            gr.update(visible=task_name == "upscale"),
            gr.update(visible=task_name == "inpaint"),
            gr.update(visible=task_name in ("inpaint", "reconstruct")),
            gr.update(visible=task_name == "deblur"),
            gr.update(visible=task_name == "flash"),
            editor,
        )

    @staticmethod
    def on_kernel(kind):
        return (
            gr.update(visible=kind == "gaussian"),
            gr.update(visible=kind == "motion"),
            gr.update(visible=kind == "motion"),
            gr.update(visible=kind == "image"),
        )

    def on_image(self, path):
        """Check an upload as soon as it arrives, and give the editor a copy to paint on."""
        if path is None:
            return gr.update(), None, ""
        try:
            image, editor = self.editor_value(path)
        except DeepPriorError as e:
            raise _user_error(e) from None
        shown = gr.update()
        try:
            with PILImage.open(path) as im:
                web = im.format in _WEB_FORMATS
        except Exception:
            web = False
        if not web:  # e.g. TIFF: browsers cannot show it, so the input becomes a lossless PNG
            copy = _fresh_dir(self.settings) / "input.png"
            copy.write_bytes(encode_image(image, "PNG"))
            shown = str(copy)
        info = f"{image.width}x{image.height} {image.mode}, {image.bit_depth}-bit"
        return shown, editor, info

    def admit_run(self, image_path, task_name, scale, editor, mask_file, mask_known, mode, kernel_kind, sigma, length,
                  angle, kernel_file, flash_file, preset, iterations, seed, stop_mode, bayes, request: gr.Request):
        """Validator of the Restore button, run as the request joins the queue (see webqueue)."""
        def mask(size):
            painted = painted_mask(editor, size)
            task = build_task("inpaint", Image(np.broadcast_to(np.float32(0), (*size, 1))), self.settings,
                              mask_file=mask_file, mask_known=mask_known, painted=painted, mode="hole")
            return np.asarray(task.mask, dtype=bool)

        work = request_work(image_path, task_name, scale, mode, preset, iterations, self.settings, mask=mask)
        why = self.queue.admit(getattr(request, "session_hash", None), work)
        return [gr.validate(why is None, why or "")] + [gr.validate(True, "")] * 17

    async def run(self, image_path, task_name, scale, editor, mask_file, mask_known, mode, kernel_kind, sigma, length,
                  angle, kernel_file, flash_file, preset, iterations, seed, stop_mode, bayes, request: gr.Request):
        """Behind the Restore button: validates, fits, streams progress, shows the result. The fit
        stops with the best result so far on Stop, and for good when the page goes away."""
        settings = self.settings

        def prepare():
            image = read_upload(image_path, settings)
            painted = painted_mask(editor, (image.height, image.width)) if task_name == "inpaint" else None
            spec = kernel_spec(kernel_kind, sigma, length, angle, kernel_file) if task_name == "deblur" else None
            task = build_task(task_name, image, settings, scale=scale, mask_file=mask_file, mask_known=mask_known,
                              painted=painted, mode=mode, kernel=spec, flash_file=flash_file)
            return image, task, fit_options(preset, iterations, seed, stop_mode, settings, bayes=bool(bayes), task=task)

        job = self.queue.start(getattr(request, "session_hash", None))
        try:
            image, task, fit_kw = await asyncio.to_thread(prepare)
        except DeepPriorError as e:
            self.queue.finish(job, "failed")
            raise _user_error(e) from None
        key, stop = self.stops.open(request)
        fit = FitRun(image, task, preset, fit_kw, settings.threads, settings.preview_every, stop, job).start()
        watcher = asyncio.ensure_future(self.queue.watch(job, fit, stop))
        curve: list[tuple[int, float]] = []
        last_yield = 0.0
        making = None  # (snapshot, when it came) while a classical start is being made: no updates then
        try:
            hide = gr.update(visible=False)
            yield (status_html("Starting the fit..."), gr.update(value=None, label="Live preview"),
                   None, hide, hide, "", None, hide)
            while not watcher.done() or not fit.updates.empty():
                try:
                    snap = fit.updates.get_nowait()
                except queue.Empty:
                    await asyncio.sleep(0.2)
                    now = time.monotonic()
                    if making is not None and now - last_yield >= 1.0:  # the clock runs on while it is made
                        last_yield = now
                        ticked = dict(making[0], elapsed=making[0]["elapsed"] + now - making[1],
                                      eta=max(making[0]["eta"] - (now - making[1]), 0.0))
                        yield _progress_frame(ticked, curve, stop.is_set())
                    continue
                making = (snap, time.monotonic()) if snap["stage"] in START_STAGES else None
                # A large image fitted tile by tile: the curve runs on across tiles. (A fit on
                # crops ends by applying the network tile by tile: no new loss there.)
                if snap["stage"] == "fit":
                    curve.append(((snap["tile"] - 1) * snap["max"] + snap["it"], snap["loss"]))
                now = time.monotonic()
                if "preview" not in snap and snap["stage"] not in START_STAGES and now - last_yield < 1.0:
                    continue
                last_yield = now
                yield _progress_frame(snap, curve, stop.is_set())
            await watcher
            result = self._outcome(job, fit, stop)
            yield await asyncio.to_thread(_result_frame, result, image, task, curve, settings)
        except (GeneratorExit, asyncio.CancelledError):  # the page went away
            job.outcome = "abandoned"
            raise
        finally:
            stop.set()  # make sure the fit thread ends too
            self.stops.close(key, stop)
            if job.outcome == "abandoned":
                watcher.cancel()  # it waits for the fit's last iterations, then records the job
            else:
                self.queue.finish(job, "failed")  # a no-op when the job was recorded already

    def _outcome(self, job, fit: "FitRun", stop: threading.Event):
        """The finished fit's result, with the job recorded; its error as the page shows it."""
        if fit.error is not None:
            self.queue.finish(job, "abandoned" if job.outcome == "abandoned" else "failed")
            if isinstance(fit.error, KeyboardInterrupt):
                raise _user_error(DeepPriorError("the fit was interrupted before its first iteration"))
            raise _user_error(fit.error)
        o = fit.result.outcome
        outcome = job.outcome if job.outcome == "abandoned" else ("stopped" if stop.is_set() else "served")
        tiling = fit.result.tiling or {}
        asked = tiling.get("iterations_asked", fit.result.params["fit"]["iterations"])
        self.queue.finish(job, outcome, o.iterations, asked)
        return fit.result

    def on_stop(self, request: gr.Request):
        if self.stops.stop(request):
            gr.Info("Stopping: the best result so far will be kept.")

    def queue_line(self, request: gr.Request):
        """The page's line on the queue, refreshed every few seconds."""
        return self.queue.describe(getattr(request, "session_hash", None))

    def queue_status(self, request: gr.Request) -> dict:
        """Where the calling client's request stands: position (1 = next, None when it has none
        waiting), waiting, running, wait_s (seconds before it starts, estimated)."""
        return self.queue.status(getattr(request, "session_hash", None))

    def admit_api(self, image, task="denoise", scale=4, mask=None, preset="fast", max_iterations=0, seed=0,
                  kernel="gaussian:1.5", flash=None, request: gr.Request = None):
        """Validator of ``/restore``, run as the request joins the queue (see webqueue)."""
        work = request_work(image, task, scale, "text", preset, max_iterations, self.settings)
        why = self.queue.admit(getattr(request, "session_hash", None), work)
        return [gr.validate(why is None, why or "")] + [gr.validate(True, "")] * 8

    async def api_restore(self, image, task="denoise", scale=4, mask=None, preset="fast", max_iterations=0, seed=0,
                          kernel="gaussian:1.5", flash=None, request: gr.Request = None):
        """Restore ``image`` for ``task``; returns the result as a PNG file. A client that goes
        away, or cancels, stops its fit."""
        settings = self.settings

        def prepare():
            img = read_upload(image, settings)
            kind, _, args = (kernel or "").partition(":")
            if task == "deblur" and kernel and not (kind in ("gaussian", "motion") and args):
                # Anything else would be read as a path on this server.
                raise DeepPriorError(f"the kernel must be gaussian:SIGMA or motion:LENGTH,ANGLE, got {kernel!r}")
            t = build_task(task, img, settings, scale=scale, mask_file=mask, kernel=kernel or None, flash_file=flash)
            return img, t, fit_options(preset or "fast", max_iterations, seed, "preset", settings, task=t)

        job = self.queue.start(getattr(request, "session_hash", None))
        stop = threading.Event()
        try:
            try:
                img, t, fit_kw = await asyncio.to_thread(prepare)
            except Exception as e:
                raise _user_error(e) from None
            fit = FitRun(img, t, preset or "fast", fit_kw, settings.threads, None, stop, job).start()
            await self.queue.watch(job, fit, stop)
            result = self._outcome(job, fit, stop)
            return str(await asyncio.to_thread(write_result, result, t.name, settings))
        finally:
            stop.set()
            if job.ended is None:
                self.queue.finish(job, "abandoned" if job.outcome == "abandoned" else "failed")


def _progress_frame(snap: dict, curve, stopping: bool) -> tuple:
    """The page's outputs while a fit runs: the status line, and the preview and curve when due."""
    no_change = gr.update()
    tile = f"Tile {snap['tile']} / {snap['tiles']} · " if snap["tiles"] > 1 else ""
    if snap["stage"] == "apply":
        text = (f"Applying the fitted network: tile {snap['tile']} / {snap['tiles']} · "
                f"{_fmt_time(snap['elapsed'])} elapsed · about {_fmt_time(snap['eta'])} left")
    elif snap["stage"] == "settle":
        text = (f"Measuring the network's BatchNorm statistics: batch {snap['tile']} / {snap['tiles']} · "
                f"{_fmt_time(snap['elapsed'])} elapsed · about {_fmt_time(snap['eta'])} left")
    elif snap["stage"] in START_STAGES:
        left = f" · about {_fmt_time(snap['eta'])} left" if math.isfinite(snap["eta"]) else ""
        text = f"{tile}{STAGE_LINES[snap['stage']].capitalize()}... · {_fmt_time(snap['elapsed'])} elapsed{left}"
    else:
        text = (f"{tile}Iteration {snap['it']} / {snap['max']} · loss {snap['loss']:.5f} · "
                f"{_fmt_time(snap['elapsed'])} elapsed · at most {_fmt_time(snap['eta'])} left")
    if stopping:
        text = "Stopping: keeping the best result so far..."
    preview, plot = no_change, no_change
    if "preview" in snap:
        preview = gr.update(value=for_display(snap["preview"]), label=f"Live preview (iteration {snap['it']})")
        plot = loss_figure(curve)
    return (status_html(text, snap["it"], snap["max"]), preview, plot, no_change, no_change, no_change,
            no_change, no_change)


def _result_frame(result, image: Image, task, curve, settings: Settings) -> tuple:
    """The page's outputs once a fit has ended: the result, before/after, download and report."""
    path = write_result(result, task.name, settings)
    fill = getattr(task, "mask", None) if task.name in ("inpaint", "reconstruct") else None
    before = before_image(image, (result.image.height, result.image.width), fill)
    o = result.outcome
    spread = uncertainty_image(result)
    return (
        status_html(f"Finished: {o.iterations} iterations in {_fmt_time(o.elapsed_s)}", o.iterations, o.iterations),
        gr.update(value=str(path), label="Result"),
        loss_figure(curve),
        gr.update(value=(for_display(before), for_display(result.image.pixels)), visible=True),
        gr.update(value=str(path), visible=True),
        summary(result),
        _report_json(result),
        gr.update(value=spread, visible=True) if spread is not None else gr.update(visible=False),
    )


# ---------------------------------------------------------------------------------------------
# The page.


def build_app(
    *,
    concurrency: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_iterations: int | None = None,
    preview_every: float = 2.0,
    threads: int | None = None,
    examples: bool = True,
    max_work: float | None = DEFAULT_MAX_WORK,
    max_queued_per_client: int = DEFAULT_MAX_QUEUED_PER_CLIENT,
    max_fit_pixels: int = DEFAULT_MAX_FIT_PIXELS,
) -> gr.Blocks:
    """The web app as a :class:`gradio.Blocks`; serve it with :func:`launch`.

    Parameters
    ----------
    concurrency : fits run at the same time (default two, at most the CPU cores); further
        requests wait in the queue.
    max_pixels : the largest image accepted, and the largest upscaled result made.
    max_work : the most result pixels x iterations one request may ask for (None: no limit).
    max_queued_per_client : requests one client (browser tab, API client) may have waiting or
        running at once.
    max_iterations : a server-wide cap on iterations, whatever a user asks for.
    preview_every : seconds between refreshes of the live preview and loss curve.
    threads : PyTorch threads per fit (default: CPU cores divided by ``concurrency``).
    examples : show the bundled example photos.
    max_fit_pixels : the largest result fitted whole; a larger one is fitted on crops where the
        preset can, else tile by tile (:func:`~deepprior.restoration.large_image_method`).

    Besides the page, the app answers ``/restore`` (for :mod:`gradio_client`): arguments
    ``image, task, scale, mask, preset, max_iterations, seed`` (then optionally ``kernel`` and
    ``flash``); it returns the restored image as a PNG file. ``max_iterations`` 0 means the
    preset's count. ``/queue_status`` tells the calling client where its request stands
    (:meth:`~deepprior.webqueue.ServerQueue.status`).
    """
    settings = Settings(concurrency, max_pixels, max_iterations, preview_every, threads, max_work,
                        max_queued_per_client, max_fit_pixels)
    atexit.register(shutil.rmtree, settings.workdir, True)
    server_queue = ServerQueue(settings.concurrency, settings.threads, max_work, max_queued_per_client)
    handlers = Handlers(settings, server_queue)
    with gr.Blocks(title="deepprior: restore a photo", analytics_enabled=False, delete_cache=(3600, 6 * 3600)) as demo:
        page = _page(examples)
        _wire(page, _api_endpoint(), handlers, settings.concurrency)
    server_queue.blocks = demo
    demo.deepprior_settings = settings
    demo.deepprior_queue = server_queue
    return demo


def _page(examples: bool) -> SimpleNamespace:
    """Lay out the page's controls (inside an open ``gr.Blocks``) and return them by name."""
    gr.Markdown(
        "# deepprior\n"
        "Restore a damaged photo with the **Deep Image Prior**: a small network is fitted to your one "
        "image, with no training data and no pretrained weights. Fits take a while on a CPU "
        "(a minute or more for a small photo); you can watch the result form and stop when you like it."
    )
    p = SimpleNamespace()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            p.image_in = ImageFile(label="Photo to restore (drop, pick or paste)", sources=["upload", "clipboard"],
                                   format="png", height=300, elem_id="input-image")
            p.image_info = gr.Markdown("", elem_id="image-info")
            p.task = gr.Radio(TASK_CHOICES, value="denoise", label="What to do", elem_id="task")
            with gr.Group(visible=False) as p.scale_box:
                p.scale = gr.Radio([(f"x{s}", s) for s in SCALES], value=2, label="Upscale by", elem_id="scale")
            with gr.Group(visible=False) as p.paint_box:
                p.editor = gr.ImageEditor(label="Paint over what should be filled in", type="numpy", sources=(),
                                          transforms=(), layers=False, brush=_brush(), format="png",
                                          elem_id="mask-editor")
                p.mode = gr.Radio([("Text, scratches, small marks", "text"), ("Large hole", "hole")],
                                  value="text", label="Kind of damage", elem_id="inpaint-mode")
            with gr.Group(visible=False) as p.mask_box:
                p.mask_in = ImageFile(label="...or upload a mask (white = fill in)", sources=["upload", "clipboard"],
                                      format="png", elem_id="mask-upload")
                p.mask_known = gr.Checkbox(False, label="My mask is white where pixels are known (the paper's masks)")
            with gr.Group(visible=False) as p.deblur_box:
                p.kernel_kind = gr.Radio(KERNEL_CHOICES, value="gaussian", label="Blur", elem_id="kernel-kind")
                p.sigma = gr.Slider(0.3, 6.0, value=1.5, step=0.1, label="Gaussian blur radius (sigma, px)")
                p.length = gr.Slider(3, 41, value=9, step=1, label="Motion length (px)", visible=False)
                p.angle = gr.Slider(0, 180, value=0, step=5, label="Motion angle (degrees)", visible=False)
                p.kernel_file = ImageFile(label="Kernel image (grayscale, at most 101x101)", sources=["upload"],
                                          format="png", visible=False)
            with gr.Group(visible=False) as p.flash_box:
                p.flash_in = ImageFile(label="Flash photo of the same scene (the one above is without flash)",
                                       sources=["upload", "clipboard"], format="png")
            p.preset = gr.Radio([("Fast (CPU-friendly)", "fast"), ("Paper (published settings, slower)", "paper")],
                                value="fast", label="Preset", elem_id="preset")
            with gr.Accordion("Advanced", open=False):
                p.iterations = gr.Number(None, label="Iteration cap (empty: the preset's)", precision=0, minimum=0,
                                         elem_id="iterations")
                p.seed = gr.Number(0, label="Seed (the same seed repeats a run)", precision=0, elem_id="seed")
                p.stop_mode = gr.Radio(STOP_CHOICES, value="preset", label="Stopping", elem_id="stop-mode")
                p.bayes = gr.Checkbox(False, label="Bayesian mode: average posterior samples (Langevin dynamics) and "
                                      "map where the result is unsure; runs to the cap", elem_id="bayes")
            with gr.Row():
                p.run_btn = gr.Button("Restore", variant="primary", elem_id="run")
                p.stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
        with gr.Column(scale=1, min_width=320):
            p.queue_line = gr.Markdown("", elem_id="queue")
            p.status = gr.HTML(status_html("Upload a photo, choose what to do, press Restore."), elem_id="status")
            p.result_img = gr.Image(label="Result", format="png", interactive=False, height=360, elem_id="result-image")
            p.download = gr.DownloadButton("Download PNG", visible=False, elem_id="download")
            p.compare = gr.ImageSlider(label="Before / after", format="png", visible=False, interactive=False,
                                       elem_id="compare")
            p.uncertainty = gr.Image(label="Uncertainty: the samples' spread (dark: sure, bright: unsure)",
                                     format="png", interactive=False, visible=False, height=240,
                                     elem_id="uncertainty-image")
            p.loss_plot = gr.Plot(label="Loss curve", show_label=False, format="png", elem_id="loss-plot")
            p.report_md = gr.Markdown("", elem_id="report")
            with gr.Accordion("Full report", open=False):
                p.report_json = gr.JSON(label="Report", elem_id="report-json")
    p.queue_timer = gr.Timer(QUEUE_REFRESH_S)
    if examples:
        _examples(p.image_in, p.task, p.scale, p.mask_in, p.mode)
    return p


def _api_endpoint() -> tuple[list, gr.File, gr.Button]:
    """The never-shown inputs, output and trigger of the ``/restore`` endpoint for programs."""
    with gr.Group(visible=False):
        inputs = [
            ImageFile(label="image"),
            gr.Dropdown(list(TASK_NAMES), value="denoise", label="task"),
            gr.Number(4, precision=0, label="scale"),
            ImageFile(label="mask"),
            gr.Dropdown(list(PRESET_NAMES), value="fast", label="preset"),
            gr.Number(0, precision=0, label="max_iterations"),
            gr.Number(0, precision=0, label="seed"),
            gr.Textbox("gaussian:1.5", label="kernel"),
            ImageFile(label="flash"),
        ]
        output = gr.File(label="restored PNG")
        button = gr.Button(visible=False)
        status = gr.JSON(label="queue status")
        status_button = gr.Button(visible=False)
    return inputs, output, button, status, status_button


def _wire(p: SimpleNamespace, api: tuple, handlers: Handlers, concurrency: int) -> None:
    """Connect the controls to their handlers. Fits (the page's and the endpoint's) share one
    queue of ``concurrency`` workers; showing and hiding controls skips the queue."""
    cheap = dict(concurrency_limit=None, api_visibility="private", show_progress="hidden")
    p.task.change(handlers.on_task, [p.task, p.image_in],
                  [p.scale_box, p.paint_box, p.mask_box, p.deblur_box, p.flash_box, p.editor], **cheap)
    p.kernel_kind.change(handlers.on_kernel, p.kernel_kind, [p.sigma, p.length, p.angle, p.kernel_file], **cheap)
    p.image_in.change(handlers.on_image, p.image_in, [p.image_in, p.editor, p.image_info], **cheap)
    p.run_btn.click(
        handlers.run,
        [p.image_in, p.task, p.scale, p.editor, p.mask_in, p.mask_known, p.mode, p.kernel_kind, p.sigma, p.length,
         p.angle, p.kernel_file, p.flash_in, p.preset, p.iterations, p.seed, p.stop_mode, p.bayes],
        [p.status, p.result_img, p.loss_plot, p.compare, p.download, p.report_md, p.report_json, p.uncertainty],
        concurrency_limit=concurrency,
        concurrency_id=FIT_QUEUE,
        show_progress="full",
        show_progress_on=[p.status],
        api_visibility="private",
        trigger_mode="once",
        validator=handlers.admit_run,
    )
    p.stop_btn.click(handlers.on_stop, None, None, **cheap)
    p.queue_timer.tick(handlers.queue_line, None, p.queue_line, **cheap)
    inputs, output, button, status, status_button = api
    button.click(handlers.api_restore, inputs, output, api_name="restore", concurrency_limit=concurrency,
                 concurrency_id=FIT_QUEUE, validator=handlers.admit_api)
    status_button.click(handlers.queue_status, None, status, api_name="queue_status", concurrency_limit=None)


def _brush(image: Image | None = None) -> gr.Brush:
    """A red brush about a thirtieth of the photo across (Gradio's automatic size is far larger)."""
    size = max(2, min(image.height, image.width) // 30) if image is not None else "auto"
    return gr.Brush(default_size=size, colors=["#ff3030"], color_mode="fixed")


def loss_figure(points):
    """The loss curve so far (log scale) as a matplotlib figure; None before the first point."""
    if not points:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global state shared between sessions

    fig = Figure(figsize=(6.4, 2.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.semilogy([p[0] for p in points], [p[1] for p in points], color="#ea580c", linewidth=1.5,
                marker="o" if len(points) < 10 else None, markersize=3)
    ax.set_title("Loss curve", fontsize=10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (log scale)")
    ax.grid(True, which="both", alpha=0.25)
    return fig


def _examples(image_in, task, scale, mask_in, mode):
    """The bundled photos, each with the task it was made for."""
    ex = EXAMPLES_DIR
    rows = [
        [str(ex / "chelsea-noisy.png"), "denoise", 2, None, "text"],
        [str(ex / "astronaut-small.png"), "upscale", 4, None, "text"],
        [str(ex / "coffee-text.png"), "inpaint", 2, str(ex / "coffee-text-mask.png"), "text"],
        [str(ex / "rocket-hole.png"), "inpaint", 2, str(ex / "rocket-hole-mask.png"), "hole"],
        [str(ex / "rocket-jpeg.png"), "dejpeg", 2, None, "text"],
        [str(ex / "camera-blur.png"), "deblur", 2, None, "text"],  # blurred with gaussian:1.5, the default
    ]
    rows = [r for r in rows if Path(r[0]).is_file()]
    if rows:
        gr.Examples(rows, [image_in, task, scale, mask_in, mode], label="Examples to try",
                    cache_examples=False, examples_per_page=10)


#: How Gradio begins its refusals of a file path a client names instead of uploading
#: (gradio.exceptions.InvalidPathError): their text names the server's working folder.
_PATH_REFUSALS = ("Cannot move ", "Dotfiles located ")
PATH_REFUSAL = "only an uploaded image can be restored: upload the file, then send what the upload returned"


async def _answer_bad_request(request, exc):
    """Gradio's 400 answers as they are, except a refused file path, which gets the app's own line."""
    from fastapi.responses import JSONResponse

    detail = exc.detail
    if isinstance(detail, str) and detail.startswith(_PATH_REFUSALS):
        detail = PATH_REFUSAL
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def launch(
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    concurrency: int | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    block: bool = True,
    app: gr.Blocks | None = None,
    **build_options,
):
    """Build (unless ``app`` is given) and serve the web app; returns the app and its URL.

    With ``block=False`` the server runs in a background thread (as the tests use it); stop it
    with ``app.close()``.
    """
    if max_upload_mb <= 0:
        raise DeepPriorError(f"max upload size must be positive, got {max_upload_mb} MB")
    if not 0 <= port <= 65535:
        raise DeepPriorError(f"port must be between 0 and 65535, got {port}")
    if app is None:
        app = build_app(concurrency=concurrency, max_pixels=max_pixels, **build_options)
    app.queue(default_concurrency_limit=app.deepprior_settings.concurrency)
    theme = gr.themes.Default(
        font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],  # no web-font downloads
        font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"],
    )
    try:
        _, url, _ = app.launch(
            server_name=host,
            server_port=port,
            max_file_size=int(max_upload_mb * 1024 * 1024),
            allowed_paths=[str(EXAMPLES_DIR)],
            prevent_thread_lock=True,
            show_error=False,
            inbrowser=False,
            share=False,
            ssr_mode=False,
            theme=theme,
            css=_CSS,
            quiet=True,
            app_kwargs={"exception_handlers": {400: _answer_bad_request}},
        )
    except OSError as e:
        raise DeepPriorError(f"cannot serve on {host}:{port} ({e})") from None
    if block:
        print(f"deepprior: serving the web app on {url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
        _serve_until_interrupted(app)
    return app, url


def _serve_until_interrupted(app: gr.Blocks) -> None:
    """Wait while the server runs; Ctrl-C or SIGTERM closes it (running fits end with it)."""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: only Ctrl-C or close() will end it
        old = None
    try:
        while app.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("deepprior: stopping the web app", file=sys.stderr, flush=True)
    finally:
        app.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)


__all__ = ["build_app", "launch", "Settings", "EXAMPLES_DIR", "DEFAULT_MAX_PIXELS"]
