"""A corpus of odd and hostile image files, made with Pillow (and OpenCV) in a few milliseconds.

Each :class:`Sample` is the bytes of one file, the name to give it, and what loading it must
give: either the size, mode and bit depth of the result (``good``), or a fragment of the one-line
error (``bad``). The web-app and batch tests reuse it::

    from corpus import good_samples, bad_samples, write_corpus
    paths = write_corpus(tmp_path)          # {sample name: path}
    for s in good_samples(): ...            # s.name, s.filename, s.data, s.size, s.mode, s.bit_depth

Nothing here allocates a large image: the decompression bombs are real files whose headers
claim 20000x20000 (PNG) or 65000x65000 (JPEG) pixels, built by hand around a few bytes of data.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageCms

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Sample:
    """One corpus file and what loading it must give."""

    name: str
    filename: str
    data: bytes
    size: tuple[int, int] | None = None  # (width, height) after orientation, for good files
    mode: str | None = None  # L, LA, RGB or RGBA, for good files
    bit_depth: int | None = None  # 8 or 16, for good files
    error: str | None = None  # a fragment of the error message, for bad files

    @property
    def good(self) -> bool:
        return self.error is None


# --- small builders ------------------------------------------------------------------------


def smooth(h: int, w: int, c: int, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """A smooth random image (gradients plus a little noise): compresses well, not constant."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for k in range(c):
        a, b, p = rng.uniform(-1, 1, 3)
        v = 0.5 + 0.35 * np.sin(a * x / max(w, 1) * 3 + b * y / max(h, 1) * 3 + p * 3)
        planes.append(v + rng.normal(0, 0.03, (h, w)))
    arr = np.clip(np.stack(planes, axis=-1), 0, 1)
    peak = np.iinfo(dtype).max
    out = np.rint(arr * peak).astype(dtype)
    return out[:, :, 0] if c == 1 else out


def encode(im: PILImage.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_insert_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """Insert a chunk right after IHDR (e.g. an eXIf orientation block)."""
    if kind == b"eXIf" and body.startswith(b"Exif\x00\x00"):
        body = body[6:]  # PNG's eXIf holds the bare TIFF structure
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + png_chunk(kind, body) + png[ihdr_end:]


def exif_orientation(value: int) -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid-looking PNG header claiming ``width`` x ``height`` gray pixels, a few bytes long."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))  # one row's worth; the rest is "missing"
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_bomb(width: int = 65000, height: int = 65000) -> bytes:
    """A small JPEG whose frame header (SOF) is rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode(PILImage.new("RGB", (8, 8), (90, 120, 200)), "JPEG"))
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        i = data.find(marker)
        if i >= 0:
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
    raise RuntimeError("no SOF marker in Pillow's JPEG")


def cv2_png16(arr: np.ndarray) -> bytes:
    """A 16-bit colour PNG (RGB or RGBA uint16 array), written by OpenCV as a camera tool would."""
    import cv2

    bgr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    ok, enc = cv2.imencode(".png", bgr)
    assert ok
    return enc.tobytes()


def la16_png(arr: np.ndarray) -> bytes:
    """A 16-bit gray+alpha PNG (colour type 4), which neither Pillow nor OpenCV can write."""
    h, w = arr.shape[:2]
    raw = np.ascontiguousarray(arr.astype(">u2")).view(np.uint8).reshape(h, w * 4)
    rows = np.concatenate([np.zeros((h, 1), np.uint8), raw], axis=1)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows.tobytes()))
            + png_chunk(b"IEND", b""))


def tiff16(arr: np.ndarray, photometric: str) -> bytes:
    import tifffile

    buf = io.BytesIO()
    extra = ["unassalpha"] if arr.ndim == 3 and arr.shape[2] in (2, 4) else None
    tifffile.imwrite(buf, arr, photometric=photometric, extrasamples=extra)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def srgb_profile() -> bytes:
    """An sRGB ICC profile (made once: its header holds the time it was made)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def marker_image(width: int = 16, height: int = 8) -> np.ndarray:
    """RGB (height, width): a red block in the stored top-left quarter, blue elsewhere.

    Stored with EXIF orientation 6 (rotate 90 degrees clockwise to view), the red block must
    end up in the top-right quarter of a ``height`` x ``width`` (width x height swapped) view.
    """
    arr = np.zeros((height, width, 3), np.uint8)
    arr[...] = (20, 40, 220)
    arr[: height // 2, : width // 2] = (230, 20, 20)
    return arr


def animated_gif() -> bytes:
    frames = [PILImage.fromarray(smooth(9, 11, 3, seed=k)).convert("P") for k in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


# --- the corpus ----------------------------------------------------------------------------


def good_samples() -> list[Sample]:
    """Files that must load, with the size, mode and bit depth they must load as."""
    s: list[Sample] = []

    def add(name, filename, data, size, mode, depth):
        s.append(Sample(name, filename, data, size, mode, depth))

    rgb = PILImage.fromarray(smooth(7, 5, 3))
    add("rgb_png", "rgb.png", encode(rgb, "PNG"), (5, 7), "RGB", 8)
    add("gray_png", "gray.png", encode(PILImage.fromarray(smooth(9, 6, 1)), "PNG"), (6, 9), "L", 8)
    add("gray_jpeg", "gray.jpg", encode(PILImage.fromarray(smooth(10, 13, 1)), "JPEG"), (13, 10), "L", 8)
    add("bilevel_png", "bilevel.png", encode(PILImage.fromarray(smooth(8, 8, 1) > 128), "PNG"), (8, 8), "L", 8)
    rgba = smooth(6, 9, 4)
    add("rgba_png", "rgba.png", encode(PILImage.fromarray(rgba, "RGBA"), "PNG"), (9, 6), "RGBA", 8)
    opaque = rgba.copy()
    opaque[:, :, 3] = 255
    add("rgba_opaque_png", "rgba_opaque.png", encode(PILImage.fromarray(opaque, "RGBA"), "PNG"), (9, 6), "RGBA", 8)
    add("la_png", "la.png", encode(PILImage.fromarray(smooth(5, 8, 2), "LA"), "PNG"), (8, 5), "LA", 8)
    pal = rgb.convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16)
    add("palette_png", "palette.png", encode(pal, "PNG"), (5, 7), "RGB", 8)
    pal_t = pal.copy()
    pal_t.putpixel((0, 0), 0)
    add("palette_transparent_png", "palette_t.png", encode(pal_t, "PNG", transparency=0), (5, 7), "RGBA", 8)
    gray_pal = PILImage.fromarray(smooth(6, 6, 1)).convert("P")
    add("palette_gray_gif", "gray.gif", encode(gray_pal, "GIF"), (6, 6), "L", 8)
    add("animated_gif", "anim.gif", animated_gif(), (11, 9), "RGB", 8)

    g16 = smooth(7, 9, 1, dtype=np.uint16)
    add("gray16_png", "gray16.png", encode(PILImage.fromarray(g16), "PNG"), (9, 7), "L", 16)
    add("gray16_tiff", "gray16.tif", encode(PILImage.fromarray(g16), "TIFF"), (9, 7), "L", 16)
    c16 = smooth(6, 10, 3, seed=3, dtype=np.uint16)
    add("rgb16_png", "rgb16.png", cv2_png16(c16), (10, 6), "RGB", 16)
    add("rgb16_tiff", "rgb16.tif", tiff16(c16, "rgb"), (10, 6), "RGB", 16)
    c16a = smooth(6, 10, 4, seed=4, dtype=np.uint16)
    add("rgba16_png", "rgba16.png", cv2_png16(c16a), (10, 6), "RGBA", 16)
    add("rgba16_tiff", "rgba16.tif", tiff16(c16a, "rgb"), (10, 6), "RGBA", 16)
    la16 = smooth(5, 7, 2, seed=5, dtype=np.uint16)
    add("la16_png", "la16.png", la16_png(la16), (7, 5), "LA", 16)
    add("la16_tiff", "la16.tif", tiff16(la16, "minisblack"), (7, 5), "LA", 16)
    rot16 = png_insert_chunk(cv2_png16(smooth(4, 10, 3, seed=6, dtype=np.uint16)), b"eXIf", exif_orientation(6))
    add("rgb16_png_exif6", "rgb16_rot.png", rot16, (4, 10), "RGB", 16)

    cmyk = PILImage.fromarray(smooth(8, 12, 3)).convert("CMYK")
    add("cmyk_jpeg", "cmyk.jpg", encode(cmyk, "JPEG", quality=95), (12, 8), "RGB", 8)
    marked = PILImage.fromarray(marker_image(16, 8))
    add("exif6_jpeg", "rotated.jpg", encode(marked, "JPEG", quality=95, exif=exif_orientation(6)), (8, 16), "RGB", 8)
    add("exif3_png", "rot180.png", encode(marked, "PNG", exif=exif_orientation(3)), (16, 8), "RGB", 8)
    add("progressive_jpeg", "progressive.jpg", encode(rgb, "JPEG", progressive=True), (5, 7), "RGB", 8)
    add("icc_png", "icc.png", encode(rgb, "PNG", icc_profile=srgb_profile()), (5, 7), "RGB", 8)

    for w, h in ((1, 1), (2, 3), (5, 7), (40, 1), (1, 33)):
        add(f"tiny_{w}x{h}_png", f"tiny_{w}x{h}.png", encode(PILImage.fromarray(smooth(h, w, 3)), "PNG"), (w, h), "RGB", 8)
    add("webp_rgb", "rgb.webp", encode(rgb, "WEBP", lossless=True), (5, 7), "RGB", 8)
    add("webp_rgba", "rgba.webp", encode(PILImage.fromarray(rgba, "RGBA"), "WEBP", lossless=True), (9, 6), "RGBA", 8)
    add("bmp_rgb", "rgb.bmp", encode(rgb, "BMP"), (5, 7), "RGB", 8)
    add("bmp_gray", "gray.bmp", encode(PILImage.fromarray(smooth(9, 6, 1)), "BMP"), (6, 9), "L", 8)
    add("tiff_rgb", "rgb.tif", encode(rgb, "TIFF"), (5, 7), "RGB", 8)
    add("tiff_rgba_deflate", "rgba.tif", encode(PILImage.fromarray(rgba, "RGBA"), "TIFF", compression="tiff_deflate"),
        (9, 6), "RGBA", 8)
    return s


def bad_samples() -> list[Sample]:
    """Files that must be refused with one clear line (``error`` is part of that line)."""
    png = encode(PILImage.fromarray(smooth(32, 32, 3)), "PNG")
    jpeg = encode(PILImage.fromarray(smooth(32, 32, 3)), "JPEG", quality=90)
    png16 = cv2_png16(smooth(16, 16, 3, dtype=np.uint16))
    s = [
        Sample("empty", "empty.png", b"", error="empty"),
        Sample("text_as_png", "notes.png", b"These are my holiday notes, not a picture.\n" * 3, error="not an image"),
        Sample("html_as_jpeg", "page.jpg", b"<!doctype html><html><body>404</body></html>", error="not an image"),
        Sample("truncated_png", "cut.png", png[: len(png) // 2], error="truncated"),
        Sample("truncated_jpeg", "cut.jpg", jpeg[: len(jpeg) // 2], error="truncated"),
        Sample("truncated_png16", "cut16.png", png16[: len(png16) // 2], error="truncated"),
        Sample("signature_only_png", "sig.png", PNG_SIGNATURE, error="not an image"),
        Sample("png_bomb", "bomb.png", png_bomb(), error="megapixels"),
        Sample("jpeg_bomb", "bomb.jpg", jpeg_bomb(), error="megapixels"),
        Sample("png_zero_width", "zero.png", png_bomb(0, 5), error="not an image"),
    ]
    return s


def write_corpus(folder, samples=None) -> dict[str, Path]:
    """Write ``samples`` (default: all good and bad ones) into ``folder``; {name: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for sample in samples if samples is not None else good_samples() + bad_samples():
        path = folder / sample.filename
        path.write_bytes(sample.data)
        paths[sample.name] = path
    return paths


# --- masks and kernels ---------------------------------------------------------------------


def mask_png(width: int, height: int, kind: str = "half") -> bytes:
    """A mask image: ``half`` (left half white = fill), ``black`` (nothing to fill), ``white`` (all fill)."""
    arr = np.zeros((height, width), np.uint8)
    if kind == "half":
        arr[:, : max(1, width // 2)] = 255
    elif kind == "white":
        arr[:] = 255
    elif kind != "black":
        raise ValueError(kind)
    return encode(PILImage.fromarray(arr), "PNG")


def photo_png(width: int, height: int, seed: int = 0) -> bytes:
    """A plain RGB photo-like PNG of the given size."""
    return encode(PILImage.fromarray(smooth(height, width, 3, seed=seed)), "PNG")


def black_png(width: int, height: int) -> bytes:
    return encode(PILImage.new("L", (width, height), 0), "PNG")
