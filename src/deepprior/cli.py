"""The ``deepprior`` command line: a thin shell over :func:`deepprior.restore`.

Each restoration command reads the input, builds its task, checks the output path before any
work, runs the fit with a progress bar, and writes the result (and an optional JSON report)
atomically. Problems the user can fix print one line and exit with status 2; Ctrl-C or SIGTERM
during a fit stops it and writes the best result so far.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import signal
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from . import __version__, degrade as deg
from .errors import DeepPriorError
from .images import DEFAULT_MAX_PIXELS, check_output_path, check_output_size, load_image, save_image
from .fitting import STAGE_LINES, START_STAGES, resolve_device, returned_phrase, why_returned
from .restoration import configure, restore
try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx

from .tasks import SCALES, Deblur, DeJPEG, Denoise, FlashNoFlash, Inpaint, Reconstruct, SuperResolution, load_mask
from .tiling import DEFAULT_MAX_FIT_PIXELS

app = typer.Typer(
    name="deepprior",
    help="Restore damaged photographs with the Deep Image Prior (no training data, no pretrained weights).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, markup=False)  # messages carry paths and package names: brackets are text


class PresetName(str, Enum):
    fast = "fast"
    paper = "paper"


class LargeMethod(str, Enum):
    auto = "auto"
    crops = "crops"
    tiles = "tiles"


class DenoiseStart(str, Enum):
    auto = "auto"
    bm3d = "bm3d"
    nlm = "nlm"


class StopMode(str, Enum):
    auto = "auto"
    off = "off"


class StopRule(str, Enum):
    variance = "variance"
    holdout = "holdout"


class HoleMode(str, Enum):
    text = "text"
    hole = "hole"


# Options shared by every restoration command, declared once.
Input = Annotated[Path, typer.Argument(help="Degraded image to restore.", show_default=False)]
Output = Annotated[Path, typer.Option("-o", "--output", help="Where to write the result (.png, .tif, .jpg, .webp, .bmp).")]
PresetOpt = Annotated[PresetName, typer.Option("--preset", help="fast (CPU-friendly) or paper (published settings).")]
Iters = Annotated[Optional[int], typer.Option("--iters", help="Maximum iterations (default: the preset's; 0: the "
                                                              "classical start alone, no network fitted).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed reproduces a run.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="CPU threads for PyTorch.")]
Stop = Annotated[Optional[StopMode], typer.Option("--stop", help="auto: stop near the best iterate; off: run all iterations.")]
StopRuleOpt = Annotated[Optional[StopRule], typer.Option(
    "--stop-rule",
    help="What --stop auto watches: variance (of the last outputs) or holdout (the error on a few pixels "
         "left out of the fit). Default: the preset's.")]
Reference = Annotated[Optional[Path], typer.Option("--reference", help="Ground truth, only to report PSNR/SSIM.")]
Report = Annotated[Optional[Path], typer.Option("--report", help="Write a JSON report of the run here.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]
Bayes = Annotated[bool, typer.Option("--bayes", help="Bayesian mode (SGLD): posterior mean, no early stopping needed.")]
UncertaintyOpt = Annotated[Optional[Path], typer.Option("--uncertainty", help="With --bayes: write a per-pixel uncertainty map (PNG) here.")]
Npz = Annotated[Optional[Path], typer.Option("--npz", help="Write the raw result (and, with --bayes, its standard deviation) as .npz.")]
MaxFitPixels = Annotated[int, typer.Option(
    "--max-fit-pixels",
    help="Largest result fitted in one piece (about 1.1 GB per megapixel with the fast preset); a larger "
         "one is restored as --large says. 0: fit any size whole.")]
Large = Annotated[LargeMethod, typer.Option(
    "--large",
    help="How an image above --max-fit-pixels is restored: crops (the network fitted on random crops, then "
         "run over the whole image: minutes at 12 megapixels), tiles (every tile fitted on its own, blended), "
         "auto (crops where the preset can).")]

RayAddress = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Join this Ray cluster ('auto': the one started here with ray start); default: start a local one.")]
TileExecutor = Annotated[str, typer.Option(
    "--executor",
    help="local, or ray: the tiles of a tiled restoration (--large tiles, or a preset that cannot fit on crops) "
         "are fitted as Ray tasks, with the same result as here for the same seed and --threads. A whole fit "
         "or a fit on crops runs here either way.")]


class Common:
    """The shared options, bundled so each command passes them on in one piece."""

    def __init__(self, output, preset, iters, seed, device, threads, stop, reference, report, quiet, max_pixels,
                 bayes=False, uncertainty=None, npz=None, max_fit_pixels=DEFAULT_MAX_FIT_PIXELS, stop_rule=None,
                 large=LargeMethod.auto, executor="local", ray_address=None):
        self.output, self.preset, self.iters, self.seed = output, preset.value, iters, seed
        self.device, self.threads, self.stop = device, threads, stop.value if stop else None
        self.reference, self.report, self.quiet, self.max_pixels = reference, report, quiet, max_pixels
        self.bayes, self.uncertainty, self.npz = bayes, uncertainty, npz
        self.max_fit_pixels, self.large = max_fit_pixels, large.value
        self.executor, self.ray_address = executor, ray_address
        self.stop_rule = stop_rule.value if stop_rule else None


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops the fit like Ctrl-C does, so the best result so far is still written."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def _native_stderr_silenced():
    """Send what C decoders print straight to file descriptor 2 to /dev/null meanwhile.

    libtiff (inside Pillow) and libpng (inside OpenCV) print their own complaints about odd
    files ("TIFFFetchNormalTag: ...") past Python; the user should see our one line instead.
    Used only around reading the inputs, before the progress bar starts.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # no real stderr: nothing to silence
        yield
        return
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _check_options(c: Common) -> None:
    """Refuse impossible shared options before anything is read or computed."""
    if c.iters is not None and c.iters < 0:
        raise DeepPriorError(f"--iters must be 0 (the classical start alone) or more, got {c.iters}")
    if c.max_pixels < 1:
        raise DeepPriorError(f"--max-pixels must be positive, got {c.max_pixels}")
    if c.threads is not None and c.threads < 1:
        raise DeepPriorError(f"--threads must be at least 1, got {c.threads}")
    if c.max_fit_pixels < 0:
        raise DeepPriorError(f"--max-fit-pixels must be positive (or 0: never tile), got {c.max_fit_pixels}")
    if not -SEED_LIMIT <= c.seed <= SEED_LIMIT:
        raise DeepPriorError(f"--seed must be between {-SEED_LIMIT} and {SEED_LIMIT}, got {c.seed}")
    try:
        resolve_device(c.device)
    except DeepPriorError:
        raise
    except (RuntimeError, ValueError):
        raise DeepPriorError(f"--device must be auto, cpu or cuda (or cuda:N), got {c.device!r}") from None


#: The fit derives two more generators from the seed (seed + 1, seed + 2); all must fit in 64 bits.
SEED_LIMIT = 2**63 - 3


def _run(task_factory, input_path: Path, c: Common, extra_inputs=()) -> None:
    """Read, restore, write; a Ctrl-C outside the fit (which Typer would turn into a silent
    exit 130) says what it left behind."""
    c.written = False
    try:
        _restore_and_write(task_factory, input_path, c, extra_inputs)
    except KeyboardInterrupt:
        left = f"{c.output} was written" if c.written else "nothing was written"
        print(f"deepprior: interrupted; {left}", file=sys.stderr)
        raise typer.Exit(130) from None


def _restore_and_write(task_factory, input_path: Path, c: Common, extra_inputs=()) -> None:
    _check_options(c)
    inputs = (input_path, *extra_inputs, c.reference)
    check_output_path(c.output, inputs=inputs)
    if c.uncertainty is not None and not c.bayes:
        raise DeepPriorError("--uncertainty needs --bayes")
    for extra, suffix in ((c.uncertainty, None), (c.npz, ".npz")):
        if extra is not None:
            check_output_path(extra, inputs=(*inputs, c.output, c.report), suffix=suffix)
    if c.report is not None:
        check_output_path(c.report.with_suffix(".png"), inputs=())  # folder exists and is writable
        if c.report.is_dir():
            raise DeepPriorError(f"{c.report}: report path is a directory")
        for other in (*inputs, c.output):
            if other is not None and _same_path(c.report, other):
                raise DeepPriorError(f"{c.report}: the report would overwrite {other}; choose another name")
    with _native_stderr_silenced():
        image = load_image(input_path, max_pixels=c.max_pixels)
        task = task_factory(image)
        configure(task, c.preset, iterations=c.iters)  # a preset with no start to return at 0 iterations
        scale = getattr(task, "scale", 1)
        check_output_size(c.output, (image.width * scale, image.height * scale))
        # The ground truth is as large as the result (an upscale's is 64 times the input at x8).
        reference = load_image(c.reference, max_pixels=c.max_pixels * 64) if c.reference else None

    progress = None
    bar = None
    if not c.quiet:
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[what]}"),
            TextColumn("{task.fields[loss]}"),
            TextColumn("{task.fields[psnr]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=err,
            transient=False,
        )
        progress.start()
        bar = progress.add_task(task.name, total=None, what="starting", loss="", psnr="", eta="-")

    def on_progress(p):
        if progress is not None:
            tile = f"tile {p.tile}/{p.tiles} " if p.tiles > 1 else ""
            if p.stage == "apply":
                what = f"applying the fit, tile {p.tile}/{p.tiles}"
            elif p.stage == "settle":
                what = f"measuring BatchNorm, batch {p.tile}/{p.tiles}"
            elif p.stage in START_STAGES:
                what = tile + STAGE_LINES[p.stage]
            else:
                what = f"{tile}it {p.iteration}/{p.max_iterations}"
            progress.update(
                bar,
                completed=p.iteration,
                total=p.max_iterations,
                what=what,
                loss=f"loss {p.loss:.5f}" if math.isfinite(p.loss) else "",
                psnr=f"PSNR {p.psnr:.2f} dB" if p.psnr is not None else "",
                eta=_fmt_time(p.eta_s),
            )

    # SIGTERM is Ctrl-C for the whole fit-and-write: during the fit it ends the fit (the best
    # result so far is written); during the write it removes the temporary file, so nothing
    # half-written is ever left.
    with _sigterm_as_interrupt():
        try:
            result = restore(
                image,
                task,
                c.preset,
                seed=c.seed,
                device=c.device,
                threads=c.threads,
                callback=on_progress,
                callback_every=5,
                reference=reference,
                iterations=c.iters,
                stop=c.stop,
                stop_rule=c.stop_rule,
                bayes=c.bayes or None,
                max_fit_pixels=c.max_fit_pixels or None,
                large=c.large,
                executor=c.executor,
                ray_address=c.ray_address,
            )
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and not _out_of_memory(e):
                raise
            raise DeepPriorError(
                f"out of memory restoring a {image.width}x{image.height} image on {c.device}; "
                "try a smaller --max-fit-pixels (it restores in tiles), or a smaller image"
            ) from None
        finally:
            if progress is not None:
                progress.stop()
        result.save(c.output)
        c.written = True
        if c.report is not None:
            result.save_report(c.report)
        if c.uncertainty is not None:
            if result.uncertainty is None:
                err.print("no uncertainty map: the fit ended before its burn-in, so there are no posterior samples",
                          highlight=False)
            else:
                result.save_uncertainty(c.uncertainty)
        if c.npz is not None:
            result.save_arrays(c.npz)
    o = result.outcome
    how = {"auto": "stopped automatically", "interrupted": "interrupted", "callback": "stopped"}.get(o.stop_reason, "ran all iterations")
    t = result.tiling
    ran = "no network fitted" if o.iterations == 0 else None
    if t and t["method"] == "crops":
        fit_line = (f"fitted on {t['crops']} crops of {t['crop_size'][1]}x{t['crop_size'][0]} ({o.iterations} iterations, "
                    f"{how}), then run over the whole image, {o.elapsed_s:.1f} s")
    elif t and t["method"] == "window":
        top, left, wh, ww = t["window"]
        at = "" if t["size"] == [wh, ww] else f" reduced to {t['size'][1]}x{t['size'][0]}"
        fit_line = (f"restored {ww}x{wh} around the missing pixels{at}, {ran or f'{o.iterations} iterations, {how}'}, "
                    f"{o.elapsed_s:.1f} s")
    elif t and t["method"] == "windows":
        fit_line = (f"restored {t['tiles']} windows around the missing pixels, "
                    f"{ran or f'{o.iterations} iterations in all, {how}'}, {o.elapsed_s:.1f} s")
    elif t:
        fitted = f"{t['tiles_done']} of {t['tiles']} tiles of {t['tile_size'][1]}x{t['tile_size'][0]}"
        fit_line = f"{fitted}, {o.iterations} iterations in all, {how}, {o.elapsed_s:.1f} s"
    elif o.iterations == 0:
        fit_line = f"no network fitted, {o.elapsed_s:.1f} s"
    else:
        fit_line = f"{o.iterations} iterations, {how}, result from iteration {o.stopped_at}, {o.elapsed_s:.1f} s"
    line = f"wrote {c.output} ({result.image.width}x{result.image.height} {result.image.mode}); {fit_line}"
    if o.held_out_errors or o.fixed_share:
        line += f"; returned the {returned_phrase(o)} ({why_returned(o)})"
    if result.metrics:
        line += "; " + ", ".join(f"{k.upper()} {v:.4g}" for k, v in result.metrics.items())
    err.print(line, highlight=False, soft_wrap=True)
    if o.stop_reason == "interrupted":
        raise typer.Exit(130)


def _out_of_memory(e: BaseException) -> bool:
    """PyTorch reports a failed allocation as a RuntimeError (torch.OutOfMemoryError on GPUs)."""
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def _same_path(a: Path, b) -> bool:
    """Whether two paths name the same file (existing or not)."""
    b = Path(b)
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


_P = inspect.Parameter
#: The options every restoration command takes, after its own arguments.
_SHARED_OPTIONS = [
    _P("output", _P.KEYWORD_ONLY, annotation=Output),
    _P("preset", _P.KEYWORD_ONLY, annotation=PresetOpt, default=PresetName.fast),
    _P("iters", _P.KEYWORD_ONLY, annotation=Iters, default=None),
    _P("seed", _P.KEYWORD_ONLY, annotation=Seed, default=0),
    _P("device", _P.KEYWORD_ONLY, annotation=Device, default="auto"),
    _P("threads", _P.KEYWORD_ONLY, annotation=Threads, default=None),
    _P("stop", _P.KEYWORD_ONLY, annotation=Stop, default=None),
    _P("stop_rule", _P.KEYWORD_ONLY, annotation=StopRuleOpt, default=None),
    _P("reference", _P.KEYWORD_ONLY, annotation=Reference, default=None),
    _P("report", _P.KEYWORD_ONLY, annotation=Report, default=None),
    _P("quiet", _P.KEYWORD_ONLY, annotation=Quiet, default=False),
    _P("max_pixels", _P.KEYWORD_ONLY, annotation=MaxPixels, default=DEFAULT_MAX_PIXELS),
    _P("bayes", _P.KEYWORD_ONLY, annotation=Bayes, default=False),
    _P("uncertainty", _P.KEYWORD_ONLY, annotation=UncertaintyOpt, default=None),
    _P("npz", _P.KEYWORD_ONLY, annotation=Npz, default=None),
    _P("max_fit_pixels", _P.KEYWORD_ONLY, annotation=MaxFitPixels, default=DEFAULT_MAX_FIT_PIXELS),
    _P("large", _P.KEYWORD_ONLY, annotation=Large, default=LargeMethod.auto),
    _P("executor", _P.KEYWORD_ONLY, annotation=TileExecutor, default="local"),
    _P("ray_address", _P.KEYWORD_ONLY, annotation=RayAddress, default=None),
]


def restoration_command(func):
    """Register ``func`` as a command taking its own arguments plus the shared options.

    ``func`` declares only what is particular to its task and receives the shared options
    bundled as ``c`` (a :class:`Common`), so each option is declared once for all commands.
    """
    own = [p for name, p in inspect.signature(func, eval_str=True).parameters.items() if name != "c"]
    shared = [p.name for p in _SHARED_OPTIONS]

    @functools.wraps(func)
    def command(**kwargs):
        c = Common(**{name: kwargs.pop(name) for name in shared})
        return func(c=c, **kwargs)

    command.__signature__ = inspect.Signature(own + _SHARED_OPTIONS)
    return app.command(func.__name__)(command)


@restoration_command
def denoise(
    input: Input,
    c: Common,
    sigma: Annotated[Optional[float], typer.Option(help="Noise level on 0-255, if known: sets the strength of the classical start of the fit (estimated from the image otherwise).")] = None,
    start: Annotated[DenoiseStart, typer.Option(help="Classical denoiser the fit starts from: bm3d (needs the bm3d extra), nlm (non-local means), or auto: BM3D where installed, up to 2 megapixels.")] = DenoiseStart.auto,
):
    """Remove Gaussian (or unknown) noise."""
    _run(lambda image: Denoise(sigma=sigma, start=start.value), input, c)


@restoration_command
def upscale(
    input: Input,
    c: Common,
    scale: Annotated[int, typer.Option("--scale", "-s", help="Upscaling factor: 2, 3, 4 or 8.")] = 4,
):
    """Super-resolution by 2, 3, 4 or 8 (Lanczos downsampler as the operator). At 2-4 the fast
    preset fits from a classical upscale and returns a fixed blend of the fit and that upscale
    (the even mean; a quarter of the fit over the BM3D upscale at 2 and 3)."""
    if scale not in SCALES:
        raise DeepPriorError(f"--scale must be one of {', '.join(map(str, SCALES))}, got {scale}")
    _run(lambda image: SuperResolution(scale=scale), input, c)


MaskOpt = Annotated[Path, typer.Option("--mask", "-m", help="Mask image: white = pixel to fill (as in OpenCV).")]
MaskKnown = Annotated[bool, typer.Option("--mask-known", help="Read the mask the paper's way: white = known pixel.")]


def _mask_task(mask: Path, mask_known: bool, c: Common, make_task):
    """A task factory that reads the mask once the image (and so its size) is known."""

    def make(image):
        mask_image = load_image(mask, max_pixels=c.max_pixels)
        fill = load_mask(mask_image, size=(image.height, image.width), fill_is_white=not mask_known)
        return make_task(fill)

    return make


@restoration_command
def inpaint(
    input: Input,
    c: Common,
    mask: MaskOpt,
    mask_known: MaskKnown = False,
    mode: Annotated[HoleMode, typer.Option("--mode", help="text (text, scribbles, watermarks) or hole (large holes: the fast "
                                                          "preset returns the even mean of a classical start (six fills' mean, "
                                                          "leaning on FSR at half size) and a network drawn at about 128x128, "
                                                          "from a window around the hole reduced to 512x512 where larger; "
                                                          "--iters 0 the classical start alone).")] = HoleMode.text,
):
    """Fill the masked pixels of an image."""
    make = _mask_task(mask, mask_known, c, lambda fill: Inpaint(mask=fill, mode=mode.value))
    _run(make, input, c, extra_inputs=(mask,))


@restoration_command
def reconstruct(input: Input, c: Common, mask: MaskOpt, mask_known: MaskKnown = False):
    """Reconstruct an image from which random pixels were dropped (e.g. 50 %)."""
    _run(_mask_task(mask, mask_known, c, lambda fill: Reconstruct(mask=fill)), input, c, extra_inputs=(mask,))


@restoration_command
def dejpeg(input: Input, c: Common):
    """Remove JPEG compression artifacts (blind)."""
    _run(lambda image: DeJPEG(), input, c)


@restoration_command
def deblur(
    input: Input,
    c: Common,
    kernel: Annotated[str, typer.Option("--kernel", "-k", help="gaussian:SIGMA, motion:LENGTH,ANGLE, or a kernel image.")],
):
    """Remove a known blur."""
    with _native_stderr_silenced():
        task = Deblur.from_spec(kernel)  # checked before the image is read
    kernel_file = (Path(kernel),) if Path(kernel).is_file() else ()
    _run(lambda image: task, input, c, extra_inputs=kernel_file)


@restoration_command
def flash(
    input: Annotated[Path, typer.Argument(help="The no-flash image (the target).", show_default=False)],
    c: Common,
    flash: Annotated[Path, typer.Option("--flash", "-f", help="The flash image of the same scene (the network input).")],
):
    """Flash / no-flash fusion: the no-flash colours with the flash image's detail."""
    with _native_stderr_silenced():
        flash_image = load_image(flash, max_pixels=c.max_pixels)
    _run(lambda image: FlashNoFlash(flash=flash_image), input, c, extra_inputs=(flash,))


@app.command()
def degrade(
    input: Input,
    output: Output,
    noise: Annotated[Optional[float], typer.Option("--noise", help="Add Gaussian noise of this sigma (0-255).")] = None,
    downscale: Annotated[Optional[int], typer.Option("--downscale", help="Downscale by this factor (Lanczos).")] = None,
    drop: Annotated[Optional[float], typer.Option("--drop", help="Drop this fraction of pixels at random.")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="Write these words over the image.")] = None,
    hole: Annotated[bool, typer.Option("--hole", help="Cut a large hole.")] = False,
    jpeg: Annotated[Optional[int], typer.Option("--jpeg", help="Compress with this JPEG quality.")] = None,
    blur: Annotated[Optional[str], typer.Option("--blur", help="Blur: gaussian:SIGMA, motion:LENGTH,ANGLE or a kernel image.")] = None,
    mask_out: Annotated[Optional[Path], typer.Option("--mask-out", help="Write the mask (white = missing) here.")] = None,
    seed: Seed = 0,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
):
    """Make a degraded test input the way the paper did (and its mask, with --mask-out)."""
    chosen = [n for n, v in (("--noise", noise), ("--downscale", downscale), ("--drop", drop), ("--text", text),
                             ("--hole", hole or None), ("--jpeg", jpeg), ("--blur", blur)) if v is not None]
    if len(chosen) != 1:
        raise DeepPriorError("choose exactly one of --noise, --downscale, --drop, --text, --hole, --jpeg, --blur")
    check_output_path(output, inputs=(input,))
    masking = chosen[0] in ("--drop", "--text", "--hole")
    if mask_out is not None:
        if not masking:
            raise DeepPriorError("--mask-out goes with --drop, --text or --hole")
        check_output_path(mask_out, inputs=(input, output))
    with _native_stderr_silenced():
        image = load_image(input, max_pixels=max_pixels)
    shape = (image.height, image.width)
    fill = None
    if noise is not None:
        out = deg.add_noise(image, noise, seed)
    elif downscale is not None:
        out = deg.downscale(image, downscale)
    elif jpeg is not None:
        out = deg.jpeg(image, jpeg)
    elif blur is not None:
        out = deg.blur(image, blur)
    else:
        if drop is not None:
            fill = deg.random_mask(shape, drop, seed)
        elif text is not None:
            fill = deg.text_mask(shape, text, seed)
        else:
            fill = deg.hole_mask(shape, seed)
        out = deg.apply_mask(image, fill, value=1.0 if text is not None else 0.0)
    save_image(out, output)
    if fill is not None and mask_out is not None:
        save_image(deg.mask_image(fill), mask_out)
    note = f" and mask {mask_out}" if fill is not None and mask_out is not None else ""
    err.print(f"wrote {output}{note}", highlight=False)


@app.command()
def version():
    """Print the version."""
    typer.echo(__version__)


@app.command()
def batch(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders (searched recursively) or glob patterns.", show_default=False)],
    task: Annotated[str, typer.Option("--task", "-t", help="denoise, upscale, inpaint, reconstruct, dejpeg, deblur or flash (NAME.png with NAME_flash.png).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: mirrors the input tree; holds manifest.jsonl.")],
    scale: Annotated[int, typer.Option("--scale", "-s", help="upscale: 2, 3, 4 or 8.")] = 4,
    mask_known: MaskKnown = False,
    mode: Annotated[HoleMode, typer.Option("--mode", help="inpaint: text or hole.")] = HoleMode.text,
    kernel: Annotated[Optional[str], typer.Option("--kernel", "-k", help="deblur: gaussian:SIGMA, motion:LENGTH,ANGLE or a kernel image.")] = None,
    sigma: Annotated[Optional[float], typer.Option(help="denoise: noise level on 0-255, if known (estimated otherwise).")] = None,
    masks: Annotated[Optional[Path], typer.Option("--masks", help="Folder of masks NAME_mask.png or NAME.png (default: NAME_mask.png beside each image).")] = None,
    preset: PresetOpt = PresetName.fast,
    iters: Iters = None,
    seed: Seed = 0,
    executor: Annotated[str, typer.Option("--executor", help="local (this machine) or ray (a Ray cluster).")] = "local",
    ray_address: RayAddress = None,
    cpus_per_job: Annotated[Optional[int], typer.Option("--cpus-per-job", help="Threads (Ray CPUs) per image; default: the cores shared out over the images.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="local: at most this many images at once (default: cores // cpus-per-job).")] = None,
    retries: Annotated[int, typer.Option("--retries", help="Retry a job that failed for a reason other than its input this many times.")] = 0,
    device: Device = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only failures and the summary.")] = False,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
):
    """Restore many images; a rerun skips what is done (see OUT/manifest.jsonl) and redoes the rest."""
    from . import batch as batch_mod

    settings = batch_mod.Settings(
        task=task, scale=scale, mode=mode.value, mask_known=mask_known, kernel=kernel, sigma=sigma,
        preset=preset.value, iterations=iters, seed=seed, max_pixels=max_pixels,
    )
    summary = batch_mod.run_batch(
        inputs, out, settings, executor=executor, cpus_per_job=cpus_per_job, workers=workers, retries=retries,
        masks_dir=masks, ray_address=ray_address, device=device, console=err, quiet=quiet,
    )
    err.print(summary.line(), highlight=False, soft_wrap=True)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


@app.command()
def bench(
    suite: Annotated[str, typer.Argument(help="sr-x2, sr-x3, sr-x4, sr-x8, denoise-15, denoise-25, denoise-50, inpaint-50, inpaint-text or inpaint-hole; or speed (fast against paper preset: time, PSNR at equal time, memory), stopping (auto-stop against the true PSNR peak), app (the web app under load from many clients), photo (a 12-megapixel photo denoised, a 1-megapixel one upscaled x4, a 12-megapixel one's text or hole filled, on crops beside tile by tile: time, memory, PSNR), or report (markdown tables of finished suite runs).", show_default=False)],
    folders: Annotated[Optional[list[Path]], typer.Argument(help="report: the --out folders of suite runs.", show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Benchmark data folder (default: ../shared/data, else $DEEPPRIOR_DATA).")] = None,
    set_name: Annotated[Optional[str], typer.Option("--set", help="Image set: Set5 (default), Set14 or Kodak+Heide11 (256x256 centre crops) for super-resolution; CBM3D_color9 (default), Set5 or Set14 for denoising; Heide11_gray (default) or Set5 (in luminance) for inpaint-50; Set14+Heide11 (default), Set5+Kodak, Heide11+paper or dip_paper (the paper's own examples, whole, with their masks) for inpaint-text and inpaint-hole; corners (corner crops, grey and colour) for inpaint-hole.")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="Comma-separated methods (default: every method of the suite; photo: start, crops, tiles, the others kept from the --out folder's earlier run of the same photo).")] = None,
    preset: PresetOpt = PresetName.fast,
    images: Annotated[Optional[str], typer.Option("--images", help="Comma-separated image names (default: the whole set; photo: four colour images, CBM3D_color9 stems or set/stem such as Set14/monarch, default the Kodak four).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N images (photo: the first N of its 4 windows).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: bench-out/SUITE).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the results in --out, skipping finished (image, method) pairs.")] = False,
    seed: Seed = 0,
    iters: Annotated[Optional[int], typer.Option("--iters", help="DIP's maximum iterations (default: the preset's; at least "
                                                              "1: the classical starts are methods of their own).")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Real-ESRGAN weights: an RRDBNet .pth (basicsr key names) or an ncnn .param.")] = None,
    threads: Threads = None,
    quiet: Quiet = False,
    cases: Annotated[Optional[str], typer.Option("--cases", help="speed/stopping/photo: comma-separated cases (speed: house, cbm3d, set5, heide11, memory; stopping: cbm3d, set5, heide11; default: all; photo: denoise, upscale, inpaint, hole; default: denoise).")] = None,
    paper_iters: Annotated[Optional[int], typer.Option("--paper-iters", help="speed: iterations that time the paper preset's seconds per iteration (default 30).")] = None,
    paper_equal_time: Annotated[Optional[bool], typer.Option("--paper-equal-time/--no-paper-equal-time", help="speed: also run the paper preset for as long as the fast run took, for its PSNR at equal time (default: on).", show_default=False)] = None,
    bayes: Annotated[Optional[bool], typer.Option("--bayes/--no-bayes", help="stopping: also run the Bayesian (SGLD) mode, for its PSNR and time (default: off).", show_default=False)] = None,
    stop_rule: Annotated[Optional[StopRule], typer.Option("--stop-rule", help="stopping: the rule to measure (variance or holdout; default: each preset's).", show_default=False)] = None,
    observe_from: Annotated[Optional[list[Path]], typer.Option("--observe-from", help="stopping: a suite run's folder (deepprior bench SUITE --out) whose DIP fits, where they ran exactly the observed fit (fast preset, rule never fired, cap reached), stand in for it. Repeatable.")] = None,
    into: Annotated[Optional[Path], typer.Option("--into", help="report: replace each run's marked block in this markdown file (e.g. BENCHMARKS.md) instead of printing.")] = None,
    device: Annotated[str, typer.Option("--device", help="photo: where the restorations run (auto, cpu or cuda).")] = "cpu",
    clients: Annotated[Optional[int], typer.Option("--clients", help="app: API clients sending one request each, all at once (default 10, at most 50).", show_default=False)] = None,
    abandoned: Annotated[Optional[int], typer.Option("--abandoned", help="app: how many of them ask for a long fit and give up after 5 s (default 3).", show_default=False)] = None,
):
    """Benchmark DIP and classical baselines on a standard suite; writes results.csv/json and report.md.

    "bench speed" and "bench stopping" measure the presets instead: they print tables and write
    JSON and markdown to --out (default bench-out/speed, bench-out/stopping). "bench report
    FOLDER..." prints each finished suite run as the markdown block BENCHMARKS.md holds, or with
    --into rewrites those blocks in place.
    """
    from . import bench as bench_mod

    if suite == "report":
        _bench_report(folders or [], into)
        return
    if folders:
        raise DeepPriorError(f"bench {suite} takes no folders (only bench report does)")

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    measure = suite in bench_mod.MEASURES
    app_only = [n for n, v in (("--clients", clients), ("--abandoned", abandoned)) if v is not None]
    if suite in ("app", "photo"):
        wrong = [n for n, v in (("--set", set_name), ("--methods", methods if suite == "app" else None), ("--weights", weights),
                                ("--cases", cases if suite == "app" else None), ("--images", images if suite == "app" else None),
                                ("--limit", limit if suite == "app" else None), ("--iters", iters), ("--resume", resume or None),
                                ("--paper-iters", paper_iters), ("--paper-equal-time", paper_equal_time),
                                ("--bayes", bayes), ("--observe-from", observe_from), ("--stop-rule", stop_rule))
                 if v is not None] + (["--preset"] if preset != PresetName.fast else [])
        wrong += app_only if suite == "photo" else []
    elif measure:
        wrong = [n for n, v in (("--set", set_name), ("--methods", methods), ("--weights", weights))
                 if v is not None] + (["--preset"] if preset != PresetName.fast else []) + app_only
        if suite == "speed":
            wrong += [n for n, v in (("--bayes", bayes), ("--images", images), ("--observe-from", observe_from),
                                     ("--stop-rule", stop_rule)) if v is not None]
        else:
            wrong += [n for n, v in (("--paper-iters", paper_iters), ("--paper-equal-time", paper_equal_time)) if v is not None]
    else:
        wrong = [n for n, v in (("--cases", cases), ("--paper-iters", paper_iters), ("--paper-equal-time", paper_equal_time),
                                ("--bayes", bayes), ("--observe-from", observe_from), ("--stop-rule", stop_rule))
                 if v is not None] + app_only
    if suite != "photo" and device != "cpu":
        wrong.append("--device")
    if wrong:
        raise DeepPriorError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to bench {suite}")
    progress = None
    if not quiet:
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[fit]}"), console=err, transient=False)
        bar = progress.add_task("bench", total=None, fit="")

    def on_pair(done, total, label):
        if progress is not None:
            if not progress.live.is_started:
                progress.start()
            progress.update(bar, completed=done, total=total, description=label, fit="")

    def on_fit(p):
        if progress is not None:
            if p.stage in START_STAGES:
                progress.update(bar, fit=f"DIP {STAGE_LINES[p.stage]}")
                return
            progress.update(bar, fit=f"DIP it {p.iteration}/{p.max_iterations}"
                            + (f" PSNR {p.psnr:.2f}" if p.psnr is not None else ""))

    log = lambda s: err.print(s, highlight=False, soft_wrap=True)  # noqa: E731
    try:
        with _sigterm_as_interrupt():
            if suite == "app":
                options = dict(threads=threads, log=log)
                options.update({k: v for k, v in (("clients", clients), ("abandoned", abandoned)) if v is not None})
                results, path = bench_mod.measure(suite, out=out, **options)
            elif suite == "photo":
                options = dict(cases=split(cases) or ["denoise"], names=split(images), seed=seed, threads=threads,
                               device=str(resolve_device(device)), progress=on_pair, log=log)
                if methods:
                    options["rows"] = split(methods)
                if limit is not None:
                    options["windows"] = limit
                results, path = bench_mod.measure(suite, data=data, out=out, **options)
            elif measure:
                options = dict(cases=split(cases), limit=limit, iters=iters, seed=seed, resume=resume, threads=threads,
                               progress=on_pair, fit_callback=on_fit, log=log)
                if suite == "speed":
                    options.update({k: v for k, v in (("paper_iters", paper_iters), ("paper_equal_time", paper_equal_time))
                                    if v is not None})
                else:
                    options.update(bayes=bool(bayes), names=split(images), observe_from=observe_from,
                                   overrides={"stop_rule": stop_rule.value} if stop_rule else None)
                results, path = bench_mod.measure(suite, data=data, out=out, **options)
            else:
                results, path = bench_mod.run(
                    suite, data=data, set_name=set_name, out=out, methods=split(methods), preset=preset.value,
                    seed=seed, iters=iters, names=split(images), limit=limit, resume=resume, weights=weights,
                    threads=threads, progress=on_pair, dip_callback=on_fit, log=log,
                )
    except KeyboardInterrupt:
        if progress is not None:
            progress.stop()
            progress = None
        done = "steps" if measure else "(image, method) pairs"
        err.print(f"interrupted: finished {done} are saved; rerun with --resume to go on", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(130)
    finally:
        if progress is not None:
            progress.stop()
    if measure:
        out_console = Console() if sys.stdout.isatty() else Console(width=240)  # a file or pipe: don't fold the tables
        for table in bench_mod.measure_tables(suite, results):
            out_console.print(table)
    err.print(f"wrote {path}" + (f" ({len(results['rows'])} results)" if "rows" in results else ""), highlight=False,
              soft_wrap=True)


def _bench_report(folders: list[Path], into: Path | None) -> None:
    from .bench import report, runner
    from .images import atomic_write_bytes

    if not folders:
        raise DeepPriorError("bench report needs the --out folder of at least one suite run")
    sections = []
    for folder in folders:
        data = runner.read_results(folder)
        if data is None:
            raise DeepPriorError(f"{folder}: no results.json of a suite run there")
        if not data["rows"]:
            raise DeepPriorError(f"{folder}: the run has no results yet")
        sections.append(report.suite_section(data))
    if into is None:
        print("\n\n".join(sections))
        return
    try:
        text = into.read_text(encoding="utf-8")
    except OSError as e:
        raise DeepPriorError(f"{into}: cannot read ({e.strerror or e})") from None
    text, missing = report.update_document(text, sections)
    if missing:
        raise DeepPriorError(f"{into} has no block {missing[0]} ... {report.SECTION_END} to replace")
    atomic_write_bytes(into, text.encode())
    err.print(f"updated {len(sections)} block(s) in {into}", highlight=False, soft_wrap=True)


@app.command("app")
def app_command(
    host: Annotated[str, typer.Option("--host", help="Address to serve on: 127.0.0.1 is this computer only, 0.0.0.0 the whole network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 7860,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", help="Fits that run at the same time, each with its share of the CPU cores; other requests wait in a queue. Default: 2 (1 on a 1-core machine).", show_default=False)] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest upload accepted, in megabytes.")] = 64.0,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Largest image, and largest upscaled result, in pixels.")] = 16_000_000,
    max_fit_pixels: Annotated[int, typer.Option("--max-fit-pixels", help="Largest result fitted whole; a larger one is fitted on crops where the preset can (minutes at 12 megapixels), else tile by tile.")] = DEFAULT_MAX_FIT_PIXELS,
    max_iterations: Annotated[int, typer.Option("--max-iterations", help="Cap on any fit's iterations, whatever a user asks for (the paper preset's longest is 11000).")] = 12_000,
    max_work: Annotated[float, typer.Option("--max-work", help="Most work one request may ask for, in million pixel-iterations (result pixels x iterations); larger requests are refused with a message. 0: no limit.")] = 2000.0,
    max_queued: Annotated[int, typer.Option("--max-queued", help="Requests one client (a browser tab or API client) may have waiting or running at once.")] = 2,
):
    """Serve the web app; open the address it prints in a browser. Ctrl-C stops it."""
    from . import webapp  # imported here: gradio takes seconds to load and only this command needs it

    if max_work < 0:
        raise DeepPriorError(f"--max-work must be 0 (no limit) or positive, got {max_work}")
    webapp.launch(host=host, port=port, concurrency=concurrency, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                  max_iterations=max_iterations, max_work=max_work * 1e6 if max_work else None,
                  max_queued_per_client=max_queued, max_fit_pixels=max_fit_pixels)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (2 for any usage or input error)."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="deepprior", standalone_mode=False)
    except _cx.NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help() if e.ctx else str(e))
        return 0
    except _cx.ClickException as e:
        print(f"deepprior: error: {e.format_message()}", file=sys.stderr)
        return 2
    except DeepPriorError as e:
        print(f"deepprior: error: {e}", file=sys.stderr)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        print("deepprior: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
