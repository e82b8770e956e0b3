"""Hostile and unusual input through the Python API and the command line.

What people have must work and come back as they had it (gray stays gray, alpha is carried
through, 16-bit stays 16-bit, EXIF-rotated photos are turned upright, 1x1 images get every task);
what is wrong must fail with one line on stderr, exit status 2, no output file and no traceback;
an interrupt or a full disk must leave the best result or nothing, never half a file.

The command line runs in-process (``deepprior.cli.main``) except for the signal tests, which
need a real process to signal.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402
from test_images import FullDisk, hostile_bytes, image_files, leftovers, one_line  # noqa: E402

from deepprior import restore, tasks  # noqa: E402
from deepprior.cli import main  # noqa: E402
from deepprior.errors import DeepPriorError  # noqa: E402
from deepprior.images import Image, load_image, save_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FEW = dict(iterations=2, stop="off", threads=1)
CLI_FEW = ["--iters", "2", "--stop", "off", "--threads", "1", "-q"]


def run_cli(args, capfd) -> tuple[int, str]:
    """Run the command line in this process; (exit status, everything written to stderr)."""
    capfd.readouterr()
    rc = main([str(a) for a in args])
    return rc, capfd.readouterr().err


def assert_clean_failure(rc: int, err: str, out: Path, fragment: str = "") -> None:
    assert rc == 2, err
    assert one_line(err), err
    assert err.startswith("deepprior: error: "), err
    assert fragment in err, err
    assert not out.exists()
    assert leftovers(out.parent) == []


# --- what people have must work ------------------------------------------------------------

# Good corpus files through the command line: output extension for each, and what comes back.
CLI_CASES = {
    "gray_jpeg": ".png",
    "la_png": ".png",
    "rgba_png": ".webp",
    "rgba_opaque_png": ".tif",
    "palette_png": ".png",
    "palette_transparent_png": ".png",
    "palette_gray_gif": ".bmp",
    "gray16_png": ".png",
    "rgb16_tiff": ".tif",
    "la16_png": ".tif",
    "cmyk_jpeg": ".jpg",
    "exif6_jpeg": ".png",
    "tiny_1x1_png": ".png",
    "webp_rgb": ".webp",
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_restores_what_people_have_as_they_had_it(name, tmp_path, capfd):
    sample = next(s for s in corpus.good_samples() if s.name == name)
    src = tmp_path / sample.filename
    src.write_bytes(sample.data)
    out = tmp_path / f"restored{CLI_CASES[name]}"
    rc, err = run_cli(["denoise", src, "-o", out, *CLI_FEW], capfd)
    assert rc == 0, err
    back = load_image(out)
    assert back.size == sample.size
    assert back.mode == sample.mode
    assert back.bit_depth == sample.bit_depth
    assert leftovers(tmp_path) == []


def test_sixteen_bit_is_restored_and_written_at_sixteen_bits(tmp_path, capfd):
    """The result file is really 16-bit, and its values are not 8-bit values scaled up."""
    import tifffile

    for name, ext in (("gray16_png", ".png"), ("rgb16_png", ".tif")):
        sample = next(s for s in corpus.good_samples() if s.name == name)
        src = tmp_path / sample.filename
        src.write_bytes(sample.data)
        out = tmp_path / f"out_{name}{ext}"
        rc, err = run_cli(["denoise", src, "-o", out, *CLI_FEW], capfd)
        assert rc == 0, err
        if ext == ".png":
            assert out.read_bytes()[24] == 16  # IHDR bit depth
            arr = np.asarray(PILImage.open(out)).astype(np.int64)
        else:
            raw = tifffile.imread(out)
            assert raw.dtype == np.uint16
            arr = raw.astype(np.int64)
        assert (arr % 257 != 0).mean() > 0.5  # 8-bit values scaled to 16 bits are multiples of 257
        assert len(np.unique(arr)) > 8


def test_exif_rotated_photo_is_restored_upright(tmp_path, capfd):
    sample = next(s for s in corpus.good_samples() if s.name == "exif6_jpeg")
    src = tmp_path / "rotated.jpg"
    src.write_bytes(sample.data)
    out = tmp_path / "out.png"
    rc, err = run_cli(["denoise", src, "-o", out, "--iters", "30", "--stop", "off", "--threads", "1", "-q"], capfd)
    assert rc == 0, err
    im = np.asarray(PILImage.open(out).convert("RGB")).astype(float)
    assert im.shape == (16, 8, 3)  # stored 16 wide and 8 tall: width and height swap
    top_right, top_left = im[1:6, 5:8].mean(axis=(0, 1)), im[1:6, 0:3].mean(axis=(0, 1))
    assert top_right[0] > top_right[2]  # red where the stored top-left corner went
    assert top_left[2] > top_left[0]  # blue elsewhere


def test_alpha_is_carried_through_untouched(tmp_path, capfd):
    rgba = corpus.smooth(12, 10, 4, seed=9)
    src = tmp_path / "in.png"
    PILImage.fromarray(rgba, "RGBA").save(src)
    out = tmp_path / "out.png"
    rc, err = run_cli(["denoise", src, "-o", out, *CLI_FEW], capfd)
    assert rc == 0, err
    back = np.asarray(PILImage.open(out))
    assert back.shape == (12, 10, 4)
    np.testing.assert_array_equal(back[..., 3], rgba[..., 3])


def test_upscaled_alpha_follows_the_image(tmp_path, capfd):
    src = tmp_path / "in.png"
    PILImage.fromarray(corpus.smooth(5, 3, 2), "LA").save(src)
    out = tmp_path / "out.png"
    rc, err = run_cli(["upscale", src, "-o", out, "--scale", "4", *CLI_FEW], capfd)
    assert rc == 0, err
    back = PILImage.open(out)
    assert back.mode == "LA" and back.size == (12, 20)


def _all_tasks(h: int, w: int, rng) -> list:
    flash = Image(rng.random((h, w, 3)).astype(np.float32))
    found = [tasks.Denoise(), tasks.DeJPEG(), tasks.Deblur.from_spec("gaussian:2"),
             tasks.Deblur.from_spec("motion:9,30"), tasks.FlashNoFlash(flash=flash)]
    found += [tasks.SuperResolution(scale=s) for s in (2, 3, 4, 8)]
    if h * w > 1:  # a mask needs a pixel to keep and one to fill
        fill = np.zeros((h, w), bool)
        fill.flat[-1] = True
        found += [tasks.Inpaint(mask=fill), tasks.Inpaint(mask=fill, mode="hole"), tasks.Reconstruct(mask=fill)]
    return found


@pytest.mark.parametrize("h, w, c", [(1, 1, 3), (3, 2, 1), (7, 5, 3)])
def test_every_task_gives_the_right_size_on_tiny_images(h, w, c):
    rng = np.random.default_rng(h * w)
    image = Image(rng.random((h, w, c)).astype(np.float32), rng.random((h, w)).astype(np.float32))
    for task in _all_tasks(h, w, rng):
        r = restore(image, task, **FEW)
        s = getattr(task, "scale", 1)
        assert r.image.pixels.shape == (h * s, w * s, c), task
        assert r.image.alpha.shape == (h * s, w * s), task
        assert np.isfinite(r.image.pixels).all()


def test_upscale_x8_of_one_pixel_is_eight_by_eight(tmp_path, capfd):
    sample = next(s for s in corpus.good_samples() if s.name == "tiny_1x1_png")
    src = tmp_path / "dot.png"
    src.write_bytes(sample.data)
    out = tmp_path / "big.png"
    rc, err = run_cli(["upscale", src, "-o", out, "--scale", "8", *CLI_FEW], capfd)
    assert rc == 0, err
    assert PILImage.open(out).size == (8, 8)


@pytest.mark.parametrize("size", [(1, 33), (40, 1), (2, 3)])
def test_long_thin_images_upscale(size, tmp_path, capfd):
    w, h = size
    src = tmp_path / "thin.png"
    src.write_bytes(corpus.photo_png(w, h))
    out = tmp_path / "out.bmp"
    rc, err = run_cli(["upscale", src, "-o", out, "--scale", "3", *CLI_FEW], capfd)
    assert rc == 0, err
    assert PILImage.open(out).size == (3 * w, 3 * h)


# --- what is wrong must fail cleanly ---------------------------------------------------------


@pytest.mark.parametrize("sample", corpus.bad_samples(), ids=lambda s: s.name)
def test_cli_refuses_bad_files_with_one_line(sample, tmp_path, capfd):
    src = tmp_path / sample.filename
    src.write_bytes(sample.data)
    out = tmp_path / "out.png"
    rc, err = run_cli(["denoise", src, "-o", out, *CLI_FEW], capfd)
    assert_clean_failure(rc, err, out, sample.error)


def test_bomb_limit_follows_max_pixels(tmp_path, capfd):
    src = tmp_path / "photo.png"
    src.write_bytes(corpus.photo_png(30, 20))
    out = tmp_path / "out.png"
    rc, err = run_cli(["denoise", src, "-o", out, "--max-pixels", "599", *CLI_FEW], capfd)
    assert_clean_failure(rc, err, out, "over the limit")
    rc, err = run_cli(["denoise", src, "-o", out, "--max-pixels", "600", *CLI_FEW], capfd)
    assert rc == 0, err


@pytest.fixture()
def photo(tmp_path) -> Path:
    src = tmp_path / "photo.png"
    src.write_bytes(corpus.photo_png(12, 10))
    return src


BAD_OPTIONS = {
    "scale 5": (["upscale", "{src}", "-o", "{out}", "--scale", "5"], "--scale must be one of"),
    "negative sigma": (["denoise", "{src}", "-o", "{out}", "--sigma", "-3"], "sigma must be >= 0"),
    "negative iterations": (["denoise", "{src}", "-o", "{out}", "--iters", "-1"], "--iters must be 0"),
    "negative threads": (["denoise", "{src}", "-o", "{out}", "--threads", "-2"], "--threads must be at least 1"),
    "zero max pixels": (["denoise", "{src}", "-o", "{out}", "--max-pixels", "0"], "--max-pixels must be positive"),
    "unknown device": (["denoise", "{src}", "-o", "{out}", "--device", "gpu9"], "unknown device"),
    "huge seed": (["denoise", "{src}", "-o", "{out}", "--seed", str(2**64)], "--seed must be between"),
    "word for iters": (["denoise", "{src}", "-o", "{out}", "--iters", "many"], "'--iters'"),
    "unknown option": (["denoise", "{src}", "-o", "{out}", "--strength", "3"], "--strength"),
    "unknown preset": (["denoise", "{src}", "-o", "{out}", "--preset", "best"], "'--preset'"),
    "unknown denoiser": (["denoise", "{src}", "-o", "{out}", "--start", "wavelets"], "'--start'"),
    "unknown task": (["sharpen", "{src}", "-o", "{out}"], "sharpen"),
    "infinite gaussian": (["deblur", "{src}", "-o", "{out}", "-k", "gaussian:inf"], "at most 16"),
    "huge motion": (["deblur", "{src}", "-o", "{out}", "-k", "motion:1e6,0"], "1 to 101"),
    "kernel word": (["deblur", "{src}", "-o", "{out}", "-k", "boxblur"], "bad kernel"),
    "no mask": (["inpaint", "{src}", "-o", "{out}"], "--mask"),
    "missing input": (["denoise", "{tmp}/nothing.png", "-o", "{out}"], "no such file"),
    "input is a folder": (["denoise", "{tmp}", "-o", "{out}"], "is a directory"),
    "output is a folder": (["denoise", "{src}", "-o", "{tmp}"], "unknown output format"),
    "output folder.png is a folder": (["denoise", "{src}", "-o", "{tmp}/dir.png"], "is a directory"),
    "output folder missing": (["denoise", "{src}", "-o", "{tmp}/no/out.png"], "does not exist"),
    "output extension": (["denoise", "{src}", "-o", "{tmp}/out.psd"], "unknown output format"),
    "output is the input": (["denoise", "{src}", "-o", "{src}"], "overwrite the input"),
    "output is the input, relative": (["denoise", "{src}", "-o", "{tmp}/sub/../photo.png"], "overwrite the input"),
    "report is the output": (["denoise", "{src}", "-o", "{out}", "--report", "{out}"], "report would overwrite"),
    "report is the input": (["denoise", "{src}", "-o", "{out}", "--report", "{src}"], "report would overwrite"),
    "reference of another size": (["denoise", "{src}", "-o", "{out}", "--reference", "{other}"], "reference is"),
    "flash of another size": (["flash", "{src}", "-o", "{out}", "--flash", "{other}"], "flash image is"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_cli_refuses_bad_options_and_paths_with_one_line(case, photo, capfd):
    tmp = photo.parent
    (tmp / "dir.png").mkdir()
    (tmp / "sub").mkdir()
    other = tmp / "other.png"
    other.write_bytes(corpus.photo_png(7, 7))
    args, fragment = BAD_OPTIONS[case]
    out = tmp / "out.png"
    fill = dict(src=photo, out=out, tmp=tmp, other=other)
    before = photo.read_bytes()
    rc, err = run_cli([a.format(**fill) for a in args] + ["-q"], capfd)
    assert_clean_failure(rc, err, out, fragment)
    assert photo.read_bytes() == before  # the input is never touched


MASK_CASES = {
    "another size": ("half", (13, 10), "mask is 13x10 but the image is 12x10"),
    "all black": ("black", (12, 10), "no pixel to fill"),
    "all white": ("white", (12, 10), "no known pixel"),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
@pytest.mark.parametrize("command", ["inpaint", "reconstruct"])
def test_bad_masks_are_refused(case, command, photo, capfd):
    kind, (w, h), fragment = MASK_CASES[case]
    mask = photo.parent / "mask.png"
    mask.write_bytes(corpus.mask_png(w, h, kind))
    out = photo.parent / "out.png"
    rc, err = run_cli([command, photo, "-o", out, "--mask", mask, *CLI_FEW], capfd)
    assert_clean_failure(rc, err, out, fragment)


def test_mask_that_is_not_an_image_or_is_the_output(photo, capfd):
    tmp = photo.parent
    notes = tmp / "mask.png"
    notes.write_text("fill the scratches please")
    out = tmp / "out.png"
    rc, err = run_cli(["inpaint", photo, "-o", out, "--mask", notes, *CLI_FEW], capfd)
    assert_clean_failure(rc, err, out, "not an image")
    notes.write_bytes(corpus.mask_png(12, 10))
    rc, err = run_cli(["inpaint", photo, "-o", notes, "--mask", notes, *CLI_FEW], capfd)
    assert rc == 2 and "overwrite the input" in err and one_line(err)


KERNEL_CASES = {
    "a photo": (lambda: corpus.photo_png(500, 500), "at most 101x101"),
    "all black": (lambda: corpus.black_png(9, 9), "positive sum"),
    "not an image": (lambda: b"gaussian blur, about 2 pixels", "bad kernel"),
    "empty": (lambda: b"", "bad kernel"),
}


@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_kernel_images_that_are_not_kernels(case, photo, capfd):
    make, fragment = KERNEL_CASES[case]
    kernel = photo.parent / "kernel.png"
    kernel.write_bytes(make())
    out = photo.parent / "out.png"
    rc, err = run_cli(["deblur", photo, "-o", out, "--kernel", kernel, *CLI_FEW], capfd)
    assert_clean_failure(rc, err, out, fragment)


def test_result_too_large_for_the_format_is_refused_before_the_fit(tmp_path, capfd, monkeypatch):
    src = tmp_path / "strip.png"
    src.write_bytes(corpus.photo_png(2100, 1))
    out = tmp_path / "big.webp"
    monkeypatch.setattr("deepprior.cli.restore", lambda *a, **k: pytest.fail("the fit should not start"))
    rc, err = run_cli(["upscale", src, "-o", out, "--scale", "8", *CLI_FEW], capfd)
    assert_clean_failure(rc, err, out, "16800x8, too large for WEBP")


def test_out_of_memory_during_the_fit_is_one_line(photo, capfd, monkeypatch):
    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes.")

    monkeypatch.setattr("deepprior.cli.restore", exhausted)
    out = photo.parent / "out.png"
    rc, err = run_cli(["denoise", photo, "-o", out, *CLI_FEW], capfd)
    assert_clean_failure(rc, err, out, "out of memory restoring a 12x10 image")


def test_output_on_a_read_only_filesystem(photo, capfd):
    """Tests run as root here, so a chmod would not stop the write: /proc/sys is read-only."""
    folder = Path("/proc/sys")
    if not folder.is_dir() or os.access(folder, os.W_OK):
        pytest.skip("no read-only filesystem at /proc/sys")
    out = folder / "restored.png"
    rc, err = run_cli(["denoise", photo, "-o", out, *CLI_FEW], capfd)
    assert rc == 2 and one_line(err) and "not writable" in err
    assert not out.exists()


def test_output_in_a_folder_without_permission(photo, capfd):
    locked = photo.parent / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: folder permissions do not stop this user")
        rc, err = run_cli(["denoise", photo, "-o", locked / "out.png", *CLI_FEW], capfd)
        assert_clean_failure(rc, err, locked / "out.png", "not writable")
    finally:
        locked.chmod(0o755)


def test_api_refuses_bad_options_with_deeprior_error():
    image = Image(np.full((6, 6, 3), 0.5, np.float32))
    for kwargs, fragment in (
        (dict(iterations=-1), "iterations must be 0"),
        (dict(threads=-1), "threads must be at least 1"),
        (dict(lr=-0.1), "learning rate"),
        (dict(stop="sometimes"), "stop must be"),
        (dict(wibble=3), "unknown fit option"),
        (dict(fit_share=1.5), "share must be between 0 and 1"),
        (dict(executor="slurm"), "unknown executor"),
        (dict(ray_address="auto"), "goes with the ray executor"),
    ):
        with pytest.raises(DeepPriorError, match=fragment):
            restore(image, tasks.Denoise(), **kwargs)
    for make, fragment in (
        (lambda: tasks.SuperResolution(scale=5), "scale must be one of"),
        (lambda: tasks.Denoise(sigma=-1), "sigma must be >= 0"),
        (lambda: tasks.from_name("sharpen"), "unknown task"),
        (lambda: tasks.from_name("inpaint", image_size=(6, 6)), "needs a mask"),
        (lambda: tasks.Deblur.from_spec("gaussian:nan"), "bad kernel"),
    ):
        with pytest.raises(DeepPriorError, match=fragment):
            make()


# --- faults: full disk, interrupts ---------------------------------------------------------


def test_full_disk_after_the_fit_is_one_line_and_no_file(photo, capfd, monkeypatch):
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(fd))
    out = photo.parent / "out.png"
    rc, err = run_cli(["denoise", photo, "-o", out, *CLI_FEW], capfd)
    assert_clean_failure(rc, err, out, "disk full")


def test_interrupt_while_writing_leaves_nothing(photo, capfd, monkeypatch):
    """A Ctrl-C (or SIGTERM, which the CLI turns into one) mid-write removes the temp file."""

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    out = photo.parent / "out.png"
    rc, err = run_cli(["denoise", photo, "-o", out, *CLI_FEW], capfd)
    assert rc == 130 and one_line(err) and "interrupted; nothing was written" in err
    assert not out.exists() and leftovers(photo.parent) == []


# A real process, signalled once the fit has begun: the wrapper prints FITTING at the first
# progress callback of the fit itself (every 5 iterations), then the test sends the signal.
WRAPPER = textwrap.dedent(
    """
    import sys
    import deepprior.cli as cli

    real = cli.restore

    def restore(*args, callback=None, **kwargs):
        told = []

        def tell(progress):
            if not told and progress.stage == "fit":
                told.append(1)
                print("FITTING", flush=True)
            return callback(progress) if callback else None

        return real(*args, callback=tell, **kwargs)

    cli.restore = restore
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def _start(tmp_path: Path, out: Path) -> subprocess.Popen:
    src = tmp_path / "in.png"
    src.write_bytes(corpus.photo_png(24, 20))
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    args = [sys.executable, str(script), "denoise", str(src), "-o", str(out),
            "--iters", "100000", "--stop", "off", "--threads", "1", "-q"]
    # Start it as a shell would, with SIGINT at its default: a child inherits an ignored SIGINT. In
    # full runs of the suite (only there) the Ctrl-C case timed out, as if something earlier in the
    # test process had left SIGINT ignored; alone it passed. Which test does it was not found.
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    buf = b""
    while text.encode() not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"the fit never started: {proc.stderr.read().decode()[-500:]}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            buf += os.read(proc.stdout.fileno(), 100)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_fit_writes_the_best_result_so_far(sig, tmp_path):
    out = tmp_path / "out.png"
    proc = _start(tmp_path, out)
    _wait_for_line(proc, "FITTING")
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the process did not stop after the signal")
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err
    image = load_image(out)
    assert image.size == (24, 20) and image.mode == "RGB"
    assert leftovers(tmp_path) == []


def test_sigterm_before_the_fit_leaves_nothing(tmp_path):
    out = tmp_path / "out.png"
    proc = _start(tmp_path, out)
    time.sleep(0.3)  # still importing: Python's default SIGTERM ends it at once
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not out.exists() and leftovers(tmp_path) == []


# --- property-based ------------------------------------------------------------------------


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(hostile_bytes())
def test_cli_on_hostile_bytes_restores_or_says_why_in_one_line(tmp_path, capfd, data):
    src = tmp_path / "input.png"
    src.write_bytes(data)
    out = tmp_path / "out.png"
    out.unlink(missing_ok=True)
    rc, err = run_cli(["denoise", src, "-o", out, "--max-pixels", "100000", *CLI_FEW], capfd)
    if rc == 0:
        assert load_image(out).size == load_image(src).size
    else:
        assert_clean_failure(rc, err, out)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(image_files, st.sampled_from([".png", ".tif"]))
def test_any_image_restores_to_the_same_size_mode_and_depth(tmp_path, made, ext):
    data, mode, depth = made
    image = load_image(data)
    result = restore(image, tasks.Denoise(), **FEW)
    out = tmp_path / f"restored{ext}"
    save_image(result.image, out)
    back = load_image(out)
    assert (back.size, back.mode, back.bit_depth) == (image.size, mode, depth)
