"""Reading and writing images: every odd file people have, and every way a file can be bad.

The corpus (tests/corpus.py) holds the files; these tests check that each good one loads with
the right size, mode and bit depth, that each bad one is refused with one clear line, and that
writing is all-or-nothing.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

from deepprior.errors import DeepPriorError  # noqa: E402
from deepprior.images import (  # noqa: E402
    Image,
    atomic_write_bytes,
    check_output_path,
    encode_image,
    load_image,
    save_image,
)

GOOD = corpus.good_samples()
BAD = corpus.bad_samples()


def one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message.strip() and "Traceback" not in message


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted or failed write might have left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def png_bit_depth(data: bytes) -> int:
    assert data[:8] == corpus.PNG_SIGNATURE
    return data[24]


# --- the corpus: good files --------------------------------------------------------------


@pytest.mark.parametrize("sample", GOOD, ids=lambda s: s.name)
def test_good_file_loads_with_size_mode_and_depth(sample, tmp_path):
    path = tmp_path / sample.filename
    path.write_bytes(sample.data)
    image = load_image(path)
    assert (image.size, image.mode, image.bit_depth) == (sample.size, sample.mode, sample.bit_depth)
    assert image.pixels.dtype == np.float32
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    assert image.source == str(path)
    # Bytes and a path give the same image.
    np.testing.assert_array_equal(load_image(sample.data).pixels, image.pixels)


def test_exif_orientation_6_jpeg_is_turned_upright():
    sample = next(s for s in GOOD if s.name == "exif6_jpeg")
    image = load_image(sample.data)
    h, w = image.height, image.width
    assert (w, h) == (8, 16)  # stored 16 wide, 8 tall
    red = image.pixels[..., 0] > 0.6
    # Rotated 90 degrees clockwise, the stored top-left red quarter lies at the top right.
    assert red[: h // 2 - 2, w // 2 + 1 :].all()
    assert not red[:, : w // 2 - 1].any()
    assert not red[h // 2 + 1 :, :].any()


def test_exif_orientation_3_png_is_turned_half_round():
    sample = next(s for s in GOOD if s.name == "exif3_png")
    image = load_image(sample.data)
    expected = corpus.marker_image(16, 8)[::-1, ::-1] / 255.0
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_sixteen_bit_colour_png_with_exif_orientation_keeps_every_value():
    arr = corpus.smooth(4, 10, 3, seed=6, dtype=np.uint16)
    data = corpus.png_insert_chunk(corpus.cv2_png16(arr), b"eXIf", corpus.exif_orientation(6))
    image = load_image(data)
    expected = np.rot90(arr, -1).astype(np.float32) / 65535.0
    np.testing.assert_array_equal(image.pixels, expected)


@pytest.mark.parametrize("name", ["gray16_png", "gray16_tiff", "rgb16_png", "rgb16_tiff", "la16_png", "la16_tiff"])
def test_sixteen_bit_files_keep_their_precision(name):
    """Neighbouring 16-bit values stay distinct: nothing is cut to 8 bits on the way in."""
    sample = next(s for s in GOOD if s.name == name)
    image = load_image(sample.data)
    levels = np.unique(np.rint(image.pixels * 65535).astype(np.int64))
    assert (levels % 257 != 0).any()  # 8-bit values scaled to 16 bits are all multiples of 257
    np.testing.assert_allclose(image.pixels * 65535, np.rint(image.pixels * 65535), atol=1e-2)


def test_sixteen_bit_gray_alpha_png_keeps_gray_and_alpha_exactly():
    arr = corpus.smooth(5, 7, 2, seed=5, dtype=np.uint16)
    image = load_image(corpus.la16_png(arr))
    np.testing.assert_array_equal(np.rint(image.pixels[..., 0] * 65535), arr[..., 0])
    np.testing.assert_array_equal(np.rint(image.alpha * 65535), arr[..., 1])


def test_cmyk_jpeg_becomes_rgb_with_the_right_colours():
    rgb = corpus.smooth(8, 12, 3)
    sample = next(s for s in GOOD if s.name == "cmyk_jpeg")
    image = load_image(sample.data)
    assert np.abs(image.pixels - rgb / 255.0).mean() < 0.05


def test_palette_transparency_becomes_alpha():
    sample = next(s for s in GOOD if s.name == "palette_transparent_png")
    image = load_image(sample.data)
    assert image.alpha[0, 0] == 0.0
    assert (image.alpha.ravel()[1:] == 1.0).all() or image.alpha.mean() > 0.5


def test_opaque_alpha_is_kept_so_rgba_stays_rgba(tmp_path):
    sample = next(s for s in GOOD if s.name == "rgba_opaque_png")
    image = load_image(sample.data)
    assert image.mode == "RGBA" and (image.alpha == 1.0).all()
    out = tmp_path / "out.png"
    save_image(image, out)
    assert PILImage.open(out).mode == "RGBA"


def test_colour_profile_is_carried_to_the_output(tmp_path):
    profile = corpus.srgb_profile()
    image = load_image(next(s for s in GOOD if s.name == "icc_png").data)
    assert image.icc_profile == profile
    for ext in (".png", ".jpg", ".webp", ".tif"):
        save_image(image, tmp_path / f"out{ext}")
        assert PILImage.open(tmp_path / f"out{ext}").info.get("icc_profile") == profile, ext
    sixteen = Image(image.pixels, None, 16, None, profile)
    for ext in (".png", ".tif"):
        save_image(sixteen, tmp_path / f"out16{ext}")
        assert load_image(tmp_path / f"out16{ext}").icc_profile == profile, ext


def test_cmyk_profile_is_dropped_with_the_cmyk_pixels():
    cmyk_profile = bytearray(corpus.srgb_profile())
    cmyk_profile[16:20] = b"CMYK"
    im = PILImage.fromarray(corpus.smooth(6, 6, 3)).convert("CMYK")
    image = load_image(corpus.encode(im, "JPEG", icc_profile=bytes(cmyk_profile)))
    assert image.mode == "RGB" and image.icc_profile is None


# --- the corpus: bad files ---------------------------------------------------------------


@pytest.mark.parametrize("sample", BAD, ids=lambda s: s.name)
def test_bad_file_is_refused_with_one_line(sample, tmp_path):
    path = tmp_path / sample.filename
    path.write_bytes(sample.data)
    with pytest.raises(DeepPriorError) as e:
        load_image(path)
    message = str(e.value)
    assert one_line(message)
    assert message.startswith(f"{path}: ")
    assert sample.error in message
    with pytest.raises(DeepPriorError):
        load_image(sample.data)


def test_bomb_is_refused_before_any_pixel_is_allocated():
    """20000 x 20000 would be 1.6 GB as floats; the refusal must come from the header alone."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(DeepPriorError, match="400.0 megapixels"):
            load_image(corpus.png_bomb())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


def test_max_pixels_is_the_callers_choice():
    data = corpus.photo_png(20, 10)
    assert load_image(data, max_pixels=200).size == (20, 10)
    with pytest.raises(DeepPriorError, match="over the limit"):
        load_image(data, max_pixels=199)
    assert load_image(data, max_pixels=None).size == (20, 10)


def test_missing_file_directory_and_fifo(tmp_path):
    with pytest.raises(DeepPriorError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(DeepPriorError, match="is a directory"):
        load_image(tmp_path)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(DeepPriorError, match="not a regular file"):
        load_image(fifo)  # would block for ever if it were opened


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((0, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.int64), "unsupported array type"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_arrays_are_refused(array, fragment):
    with pytest.raises(DeepPriorError, match=fragment):
        load_image(array)


def test_lazily_opened_truncated_pillow_image_is_refused():
    data = corpus.photo_png(32, 32)
    im = PILImage.open(io.BytesIO(data[: len(data) // 2]))  # opened, not yet decoded
    with pytest.raises(DeepPriorError, match="cannot read this image"):
        load_image(im)


# --- writing ------------------------------------------------------------------------------


def _image(mode: str, depth: int, h: int = 6, w: int = 9) -> Image:
    rng = np.random.default_rng(1)
    channels = 1 if mode.startswith("L") else 3
    smooth = corpus.smooth(h, w, channels, seed=2, dtype=np.uint16).reshape(h, w, channels)
    pixels = (smooth / 65535.0).astype(np.float32)  # smooth, so that JPEG keeps it close
    alpha = rng.random((h, w)).astype(np.float32) if mode.endswith("A") else None
    return Image(pixels, alpha, depth)


# (mode, bit depth, extension) -> (mode, bit depth) after reading the file back.
ROUND_TRIPS = {
    ("L", 8, ".png"): ("L", 8), ("LA", 8, ".png"): ("LA", 8), ("RGB", 8, ".png"): ("RGB", 8),
    ("RGBA", 8, ".png"): ("RGBA", 8), ("L", 16, ".png"): ("L", 16), ("LA", 16, ".png"): ("LA", 16),
    ("RGB", 16, ".png"): ("RGB", 16), ("RGBA", 16, ".png"): ("RGBA", 16),
    ("L", 8, ".tif"): ("L", 8), ("LA", 8, ".tif"): ("LA", 8), ("RGB", 8, ".tif"): ("RGB", 8),
    ("RGBA", 8, ".tif"): ("RGBA", 8), ("L", 16, ".tif"): ("L", 16), ("LA", 16, ".tif"): ("LA", 16),
    ("RGB", 16, ".tif"): ("RGB", 16), ("RGBA", 16, ".tif"): ("RGBA", 16),
    # WebP has no grayscale (libwebp stores RGB), BMP and JPEG no alpha, none of the three 16 bits.
    ("L", 8, ".webp"): ("RGB", 8), ("RGB", 8, ".webp"): ("RGB", 8), ("RGBA", 16, ".webp"): ("RGBA", 8),
    ("L", 16, ".bmp"): ("L", 8), ("RGB", 8, ".bmp"): ("RGB", 8), ("RGBA", 8, ".bmp"): ("RGB", 8),
    ("L", 8, ".jpg"): ("L", 8), ("RGB", 16, ".jpg"): ("RGB", 8), ("LA", 8, ".jpeg"): ("L", 8),
}


@pytest.mark.parametrize("key", list(ROUND_TRIPS), ids=lambda k: f"{k[0]}{k[1]}{k[2]}")
def test_save_and_reload_keeps_mode_depth_and_values(key, tmp_path):
    mode, depth, ext = key
    image = _image(mode, depth)
    path = tmp_path / f"out{ext}"
    save_image(image, path)
    back = load_image(path)
    assert (back.size, back.mode, back.bit_depth) == (image.size, *ROUND_TRIPS[key])
    lossless = ext in (".png", ".tif", ".webp", ".bmp")
    step = 1 / 65535 if back.bit_depth == 16 else 1 / 255
    tol = step / 2 + 1e-6 if lossless else 0.15
    if back.channels == image.channels:
        np.testing.assert_allclose(back.pixels, image.pixels, atol=tol)
    if back.alpha is not None:
        np.testing.assert_allclose(back.alpha, image.alpha, atol=step / 2 + 1e-6)


def test_sixteen_bit_output_files_really_are_sixteen_bit(tmp_path):
    import tifffile

    for mode in ("L", "LA", "RGB", "RGBA"):
        image = _image(mode, 16)
        png = encode_image(image, "PNG")
        assert png_bit_depth(png) == 16
        save_image(image, tmp_path / "x.tif")
        arr = tifffile.imread(tmp_path / "x.tif")
        assert arr.dtype == np.uint16
        assert (arr % 257 != 0).any()
        decoded = np.rint(load_image(png).pixels * 65535)
        np.testing.assert_array_equal(decoded, np.rint(image.pixels * 65535))


def test_webp_and_jpeg_size_limits_are_a_clear_error(tmp_path):
    wide = Image(np.zeros((1, 16384, 3), np.float32))
    with pytest.raises(DeepPriorError, match="too large for WEBP"):
        save_image(wide, tmp_path / "wide.webp")
    assert not (tmp_path / "wide.webp").exists()
    save_image(wide, tmp_path / "wide.png")  # PNG has no such limit
    assert PILImage.open(tmp_path / "wide.png").size == (16384, 1)


def test_unknown_output_extension(tmp_path):
    with pytest.raises(DeepPriorError, match="unknown output format"):
        save_image(_image("RGB", 8), tmp_path / "out.xyz")
    with pytest.raises(DeepPriorError, match="unknown output format"):
        check_output_path(tmp_path / "out")


# --- output paths and all-or-nothing writes -------------------------------------------------


def test_output_path_checks(tmp_path, monkeypatch):
    src = tmp_path / "in.png"
    src.write_bytes(corpus.photo_png(4, 4))
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(DeepPriorError, match="is a directory"):
        check_output_path(tmp_path / "folder.png")
    with pytest.raises(DeepPriorError, match="does not exist"):
        check_output_path(tmp_path / "no" / "out.png")
    with pytest.raises(DeepPriorError, match="overwrite the input"):
        check_output_path(src, inputs=(src,))
    link = tmp_path / "link.png"
    link.symlink_to(src)
    with pytest.raises(DeepPriorError, match="overwrite the input"):
        check_output_path(link, inputs=(src,))
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DeepPriorError, match="overwrite the input"):
        check_output_path(Path("sub/../in.png"), inputs=(src,))
    assert check_output_path(tmp_path / "new.png", inputs=(src,)) == tmp_path / "new.png"


def test_output_on_a_read_only_filesystem_is_refused():
    """/proc/sys is mounted read-only in containers: os.access says so even to root."""
    folder = Path("/proc/sys")
    if not folder.is_dir() or os.access(folder, os.W_OK):
        pytest.skip("no read-only filesystem at /proc/sys on this machine")
    with pytest.raises(DeepPriorError, match="not writable"):
        check_output_path(folder / "out.png")


def test_output_folder_without_write_permission_is_refused(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: permissions do not stop this user from writing")
        with pytest.raises(DeepPriorError, match="not writable"):
            check_output_path(folder / "out.png")
    finally:
        folder.chmod(0o755)


class FullDisk(io.RawIOBase):
    """A file object that accepts nothing, the way a full disk does."""

    def __init__(self, fd):
        os.close(fd)

    def writable(self):
        return True

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    out = tmp_path / "out.png"
    out.write_bytes(b"the previous result")
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(fd))
    with pytest.raises(DeepPriorError, match="disk full") as e:
        save_image(_image("RGB", 8), out)
    assert one_line(str(e.value))
    assert out.read_bytes() == b"the previous result"
    assert leftovers(tmp_path) == []
    with pytest.raises(DeepPriorError, match="disk full"):
        save_image(_image("RGB", 8), tmp_path / "fresh.png")
    assert not (tmp_path / "fresh.png").exists() and leftovers(tmp_path) == []


def test_permission_error_while_writing_is_one_line(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(DeepPriorError, match="permission denied"):
        atomic_write_bytes(tmp_path / "out.png", b"data")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_while_writing_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_image(_image("RGB", 8), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


# --- property-based ------------------------------------------------------------------------

MAGIC = [b"", corpus.PNG_SIGNATURE, b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
         b"RIFF\x10\x00\x00\x00WEBP", b"P6\n", b"\x00\x00\x01\x00", b"8BPS"]
SEEDS = [s.data for s in GOOD if len(s.data) < 4000]


@st.composite
def hostile_bytes(draw):
    """Random bytes, random bytes behind a format's magic number, or a real file mutated."""
    kind = draw(st.sampled_from(["random", "magic", "mutate", "truncate"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "magic":
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_bytes())
def test_load_image_on_hostile_bytes_gives_an_image_or_one_clean_line(data):
    try:
        image = load_image(data, max_pixels=100_000)
    except DeepPriorError as e:
        assert one_line(str(e))
        return
    assert image.pixels.ndim == 3 and image.pixels.shape[2] in (1, 3)
    assert image.width * image.height <= 100_000
    assert np.isfinite(image.pixels).all()
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0


def make_file(mode: str, h: int, w: int, content: str, seed: int) -> tuple[bytes, str, int]:
    """A file of ``mode`` and the (mode, bit depth) it must load as."""
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if mode in ("I;16", "RGB;16", "LA;16") else np.uint8
    peak = np.iinfo(dtype).max
    c = {"L": 1, "I;16": 1, "LA": 2, "LA;16": 2, "RGBA": 4}.get(mode, 3)
    if content == "zeros":
        arr = np.zeros((h, w, c), dtype)
    elif content == "full":
        arr = np.full((h, w, c), peak, dtype)
    elif content == "noise":
        arr = rng.integers(0, peak + 1, (h, w, c)).astype(dtype)
    else:
        arr = corpus.smooth(h, w, c, seed=seed, dtype=dtype).reshape(h, w, c)
    flat = arr[:, :, 0] if c == 1 else arr
    if mode == "I;16":
        return corpus.encode(PILImage.fromarray(flat), "PNG"), "L", 16
    if mode == "RGB;16":
        return corpus.cv2_png16(arr), "RGB", 16
    if mode == "LA;16":
        return corpus.la16_png(arr), "LA", 16
    if mode == "CMYK":
        return corpus.encode(PILImage.fromarray(arr).convert("CMYK"), "JPEG"), "RGB", 8
    if mode == "P":
        im = PILImage.fromarray(arr).convert("P", palette=PILImage.Palette.ADAPTIVE, colors=32)
        rgb = np.asarray(im.convert("RGB"))
        gray = (rgb[..., :1] == rgb[..., 1:]).all()
        return corpus.encode(im, "PNG"), "L" if gray else "RGB", 8
    return corpus.encode(PILImage.fromarray(flat, mode), "PNG"), mode, 8


MODES = ["L", "LA", "RGB", "RGBA", "P", "I;16", "CMYK", "RGB;16", "LA;16"]
image_files = st.builds(
    make_file,
    st.sampled_from(MODES),
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from(["zeros", "full", "noise", "smooth"]),
    st.integers(0, 2**16),
)


@settings(max_examples=80, deadline=None)
@given(image_files, st.sampled_from([".png", ".tif"]))
def test_any_valid_image_loads_and_saves_back_as_it_was(tmp_path_factory, made, ext):
    data, mode, depth = made
    image = load_image(data)
    assert (image.mode, image.bit_depth) == (mode, depth)
    folder = tmp_path_factory.mktemp("rt")
    save_image(image, folder / f"out{ext}")
    back = load_image(folder / f"out{ext}")
    assert (back.size, back.mode, back.bit_depth) == (image.size, mode, depth)
    np.testing.assert_allclose(back.pixels, image.pixels, atol=0.5 / (2**depth - 1) + 1e-6)
