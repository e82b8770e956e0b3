"""Reading and writing photographs the way their owner had them.

The engine works on float32 arrays in [0, 1] of shape (height, width, channels) with one
(grayscale) or three (colour) channels. :class:`Image` carries such an array together with
what is needed to write the result back as the user had it: the alpha channel (carried
through untouched, never restored) and the bit depth (8 or 16).

:func:`load_image` accepts whatever people have: EXIF-rotated phone photos, palette and CMYK
files, 16-bit PNG and TIFF scans (gray, colour, with or without alpha), transparent PNGs,
embedded colour profiles. Anything it cannot read becomes a one-line
:class:`~deepprior.errors.DeepPriorError`, as does a pixel bomb over ``max_pixels`` (refused
from the header, before any pixel is decoded). Pillow holds 16-bit colour only at 8 bits, so
16-bit colour PNGs are decoded with OpenCV and 16-bit multi-channel TIFFs with tifffile (OpenCV
for compressions tifffile lacks); 16-bit results are written by this module's own PNG writer
and by tifffile.

:func:`save_image` writes through a temporary file and a rename, so a crash or a full disk
never leaves a half-written output behind.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import struct
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from .errors import DeepPriorError

#: Refuse images with more pixels than this unless told otherwise (about 50 megapixels).
DEFAULT_MAX_PIXELS = 50_000_000

#: Output formats by file extension.
OUTPUT_FORMATS = {
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
}

_SIXTEEN_BIT_FORMATS = {"PNG", "TIFF"}
_ALPHA_FORMATS = {"PNG", "TIFF", "WEBP"}
_ICC_FORMATS = {"PNG", "TIFF", "WEBP", "JPEG"}

#: The largest side each output format can hold (libwebp's limit, and libjpeg's).
_MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")

# We check the pixel count ourselves (with a clear message), so Pillow's own bomb guard,
# which warns and then raises with a message about DOS attacks, is switched off.
PILImage.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Image:
    """A photograph as the engine sees it.

    Attributes
    ----------
    pixels : ndarray
        float32 array of shape (H, W, C), C = 1 (grayscale) or 3 (colour), values in [0, 1].
    alpha : ndarray or None
        float32 array of shape (H, W) in [0, 1] when the original had transparency.
    bit_depth : int
        8 or 16: the precision the original was stored with, and the one results are written at.
    source : str or None
        Where the image came from, for reports.
    icc_profile : bytes or None
        The original's embedded colour profile (e.g. Display P3 from a phone), written back
        with the result so its colours are shown as they were. Only kept when it describes
        the pixels' colour space (a CMYK profile is dropped once the pixels are RGB).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    source: str | None = None
    icc_profile: bytes | None = None

    def __post_init__(self):
        p = self.pixels
        if p.ndim != 3 or p.shape[2] not in (1, 3):
            raise DeepPriorError(f"image array must be HxWx1 or HxWx3, got shape {p.shape}")
        if self.alpha is not None and self.alpha.shape != p.shape[:2]:
            raise DeepPriorError("alpha channel must match the image size")
        if self.bit_depth not in (8, 16):
            raise DeepPriorError(f"bit depth must be 8 or 16, got {self.bit_depth}")

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow reports it."""
        return self.width, self.height

    @property
    def mode(self) -> str:
        """The Pillow-style mode the image will be written with: L, LA, RGB or RGBA."""
        base = "L" if self.channels == 1 else "RGB"
        return base + ("A" if self.alpha is not None else "")

    def with_pixels(self, pixels: np.ndarray) -> "Image":
        """The same photograph with new pixel values (e.g. restored), alpha resized if needed."""
        pixels = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        alpha = self.alpha
        if alpha is not None and alpha.shape != pixels.shape[:2]:
            resized = PILImage.fromarray(alpha).resize(
                (pixels.shape[1], pixels.shape[0]), PILImage.Resampling.LANCZOS
            )
            alpha = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
        return replace(self, pixels=pixels, alpha=alpha)

    def to_array(self, dtype=np.uint8) -> np.ndarray:
        """Integer array (H, W), (H, W, 2), (H, W, 3) or (H, W, 4) with alpha appended."""
        peak = np.iinfo(dtype).max
        planes = self.pixels if self.alpha is None else np.dstack([self.pixels, self.alpha])
        out = np.rint(np.clip(planes, 0.0, 1.0) * peak).astype(dtype)
        return out[:, :, 0] if out.shape[2] == 1 else out

    def to_pil(self) -> PILImage.Image:
        """An 8-bit Pillow image (L, LA, RGB or RGBA) for display."""
        return PILImage.fromarray(self.to_array(np.uint8), mode=None)


def _fail(source: str | None, what: str) -> DeepPriorError:
    name = f"{source}: " if source else ""
    return DeepPriorError(f"{name}{what}")


def _png_header(data: bytes) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's IHDR, which is always the first chunk."""
    if len(data) > 25 and data.startswith(_PNG_SIGNATURE):
        return data[24], data[25]
    return 8, -1


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (1-8) to an (H, W, ...) array."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 1)[::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](array)) if orientation in ops else array


def _icc_for(profile, channels: int) -> bytes | None:
    """Keep an ICC profile only if it describes ``channels``-channel pixels (RGB or gray)."""
    if not isinstance(profile, (bytes, bytearray)) or len(profile) < 20:
        return None
    space = bytes(profile[16:20])
    if (channels == 3 and space == b"RGB ") or (channels == 1 and space == b"GRAY"):
        return bytes(profile)
    return None


def _from_uint16(arr: np.ndarray, gray: bool, source, orientation: int, icc) -> Image:
    """A 16-bit (H, W, C) array in RGB(A) or gray(+alpha) channel order to an :class:`Image`."""
    arr = _orient(arr.astype(np.float32) / 65535.0, orientation)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    c = arr.shape[2]
    if gray:
        pixels, alpha = arr[:, :, :1], (arr[:, :, -1] if c in (2, 4) else None)
    else:
        pixels, alpha = arr[:, :, :3], (arr[:, :, 3] if c >= 4 else None)
    alpha = None if alpha is None else np.ascontiguousarray(alpha)
    return Image(np.ascontiguousarray(pixels), alpha, 16, source, _icc_for(icc, pixels.shape[2]))


def _cv2():
    try:
        import cv2
    except ImportError:
        raise DeepPriorError(
            "reading 16-bit colour images needs OpenCV: pip install opencv-contrib-python-headless"
        ) from None
    # OpenCV prints warnings and errors about odd files to stderr; the caller gets our one line instead.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def _png_core(data: bytes) -> bytes:
    """The PNG with only its IHDR, IDAT and IEND chunks.

    A 16-bit PNG needs nothing else (orientation and profile are read by Pillow), and libpng
    prints warnings to stderr about broken ancillary chunks, which this leaves out.
    """
    out, pos = [data[:8]], 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            break
        if kind in (b"IHDR", b"IDAT", b"IEND"):
            out.append(data[pos:end])
        if kind == b"IEND":
            break
        pos = end
    return b"".join(out)


@contextmanager
def _quiet_logger(name: str):
    """Silence a library's log (tifffile logs every odd tag as an error) for the duration."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _decode_16bit_png(data: bytes, source, orientation: int, icc, gray: bool) -> Image:
    """16-bit colour or gray+alpha PNG: Pillow would cut them to 8 bits, so OpenCV decodes them."""
    cv2 = _cv2()
    arr = cv2.imdecode(np.frombuffer(_png_core(data), np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        raise _fail(source, "cannot decode this 16-bit image (truncated or corrupt?)")
    if arr.ndim == 3 and arr.shape[2] >= 3:  # OpenCV's BGR(A) to RGB(A); gray+alpha comes as BGRA
        arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    return _from_uint16(arr, gray, source, orientation, icc)


def _decode_16bit_tiff(data: bytes, source, max_pixels) -> Image:
    """16-bit TIFF with more than one sample (colour, gray+alpha), which Pillow cannot hold.

    tifffile (a scikit-image dependency) reads every layout but not every compression without
    extra codecs; OpenCV's libtiff reads LZW and the rest, but not gray+alpha.
    """
    import tifffile

    with _quiet_logger("tifffile"), tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        _check_pixels((page.imagewidth, page.imagelength), max_pixels, source)
        samples, photometric = page.samplesperpixel, int(page.photometric)
        orientation = int(page.tags.valueof(274, 1) or 1)
        icc = page.tags.valueof(34675)
        try:
            arr = page.asarray()
            if page.planarconfig == 2 and arr.ndim == 3 and arr.shape[0] == samples:
                arr = np.moveaxis(arr, 0, -1)
        except Exception:
            arr = None
    gray = photometric in (0, 1)  # MinIsWhite / MinIsBlack
    if arr is not None and photometric == 0:
        arr = 65535 - arr
    if arr is None and not gray:
        cv2 = _cv2()
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is not None and arr.dtype == np.uint16 and arr.ndim == 3:
            arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]  # IMREAD_UNCHANGED leaves orientation to us
        else:
            arr = None
    if arr is None or arr.dtype != np.uint16 or arr.ndim not in (2, 3):
        raise _fail(source, "cannot decode this 16-bit TIFF (compression not supported, or corrupt)")
    if arr.ndim == 3 and arr.shape[2] > 4:
        arr = arr[:, :, :4]
    return _from_uint16(arr, gray, source, orientation, icc)


def _from_pil(im: PILImage.Image, source: str | None) -> Image:
    """Convert a decoded Pillow image of any mode to an :class:`Image`.

    An alpha channel in the original is kept even where it is fully opaque, so an RGBA file
    comes back RGBA. A palette image whose colours are all gray becomes grayscale.
    """
    mode = im.mode
    icc = im.info.get("icc_profile")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float32)
        return Image(np.clip(arr / 65535.0, 0, 1)[:, :, None], None, 16, source, _icc_for(icc, 1))
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        peak = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        return Image(np.clip(arr / peak, 0, 1)[:, :, None], None, 8, source, _icc_for(icc, 1))
    palette = mode in ("P", "PA")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, I;16 variants with colour ...
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    has_alpha = im.mode in ("LA", "RGBA")
    alpha = np.ascontiguousarray(arr[:, :, -1]) if has_alpha else None
    pixels = arr[:, :, :-1] if has_alpha else arr
    if palette and pixels.shape[2] == 3 and (pixels[:, :, :1] == pixels[:, :, 1:]).all():
        pixels = pixels[:, :, :1]
    return Image(np.ascontiguousarray(pixels), alpha, 8, source, _icc_for(icc, pixels.shape[2]))


def _from_array(arr: np.ndarray, source: str | None) -> Image:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or 0 in arr.shape:
        raise _fail(source, f"not an image array: shape {arr.shape}")
    if arr.dtype == np.uint8:
        depth, f = 8, arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        depth, f = 16, arr.astype(np.float32) / 65535.0
    elif arr.dtype.kind == "f":
        depth, f = 8, np.clip(arr.astype(np.float32), 0.0, 1.0)
    elif arr.dtype == np.bool_:
        depth, f = 8, arr.astype(np.float32)
    else:
        raise _fail(source, f"unsupported array type {arr.dtype}")
    if not np.isfinite(f).all():
        raise _fail(source, "image array contains NaN or infinity")
    alpha = f[:, :, -1] if f.shape[2] in (2, 4) else None
    pixels = f[:, :, :-1] if alpha is not None else f
    return Image(np.ascontiguousarray(pixels), alpha, depth, source)


def load_image(source, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Read a photograph from a path, bytes, a Pillow image or a numpy array.

    The image is turned upright by its EXIF orientation, palette and CMYK images become RGB,
    transparency is kept aside as alpha, and 16-bit files keep 16-bit precision.

    Raises
    ------
    DeepPriorError
        When the file is missing, empty, not an image, truncated, or has more than
        ``max_pixels`` pixels.
    """
    if isinstance(source, Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, None)
    if isinstance(source, PILImage.Image):
        _check_pixels(source.size, max_pixels, None)
        try:
            try:
                source = ImageOps.exif_transpose(source)
            except Exception:  # a broken EXIF block must not stop the photo from loading
                pass
            return _from_pil(source, None)
        except DeepPriorError:
            raise
        except Exception as e:
            raise _fail(None, f"cannot read this image ({_short(e)})") from None

    name = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise _fail(name, "no such file")
        if path.is_dir():
            raise _fail(name, "is a directory, not an image file")
        try:
            if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or /dev/zero would never end
                raise _fail(name, "not a regular file")
            data = path.read_bytes()
        except OSError as e:
            raise _fail(name, f"cannot read file ({e.strerror or e})") from None
    if not data:
        raise _fail(name, "file is empty")
    return _decode(data, name, max_pixels)


def _check_pixels(size, max_pixels, name):
    w, h = size
    if w <= 0 or h <= 0:
        raise _fail(name, f"image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise _fail(
            name,
            f"image is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.1f} (raise it with --max-pixels)",
        )


def _decode(data: bytes, name: str | None, max_pixels: int | None) -> Image:
    """Decode file bytes. Any failure of a decoder on hostile bytes is the file's fault, so
    every exception becomes a one-line :class:`DeepPriorError` (memory too: a file may claim
    a size it never delivers)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _decode_unchecked(data, name, max_pixels)
    except DeepPriorError:
        raise
    except PILImage.UnidentifiedImageError:
        raise _fail(name, "not an image file (unknown or unsupported format)") from None
    except MemoryError:
        raise _fail(name, "image is too large to decode in memory") from None
    except (OSError, SyntaxError, EOFError, struct.error, zlib.error) as e:
        raise _fail(name, f"image file is truncated or corrupt ({_short(e)})") from None
    except Exception as e:  # noqa: BLE001 - decoders raise all sorts on corrupt input
        raise _fail(name, f"image file is corrupt ({_short(e)})") from None


def _decode_unchecked(data: bytes, name: str | None, max_pixels: int | None) -> Image:
    try:
        im = PILImage.open(io.BytesIO(data))
    except PILImage.UnidentifiedImageError:
        if data.startswith(_TIFF_MAGIC):  # e.g. 16-bit gray+alpha, which Pillow cannot open
            return _decode_16bit_tiff(data, name, max_pixels)
        raise
    _check_pixels(im.size, max_pixels, name)
    fmt = im.format
    if fmt == "TIFF" and _tiff_is_16bit_multisample(im):
        return _decode_16bit_tiff(data, name, max_pixels)
    im.load()
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    orientation = 1
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not stop the photo from loading
        pass
    depth, colour_type = _png_header(data) if fmt == "PNG" else (8, -1)
    if depth == 16 and colour_type in (2, 4, 6):  # RGB, gray+alpha, RGBA
        return _decode_16bit_png(data, name, orientation, im.info.get("icc_profile"), gray=colour_type == 4)
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:
        pass
    return _from_pil(im, name)


def _tiff_is_16bit_multisample(im) -> bool:
    try:
        bits = im.tag_v2.get(258)
    except AttributeError:
        return False
    if isinstance(bits, tuple):
        return len(bits) >= 2 and bits[0] == 16
    return False


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]


def image_format(path) -> str:
    """The output format for a path, from its extension; a clear error for unknown ones."""
    ext = Path(path).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        known = ", ".join(sorted(OUTPUT_FORMATS))
        raise DeepPriorError(f"{path}: unknown output format {ext or '(none)'!r}; use one of {known}")
    return OUTPUT_FORMATS[ext]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _encode_png16(arr: np.ndarray, icc: bytes | None) -> bytes:
    """A 16-bit PNG of gray, gray+alpha, RGB or RGBA (H, W[, C]) uint16 pixels.

    Written here because neither Pillow nor OpenCV writes 16-bit gray+alpha; each row uses
    the Sub filter, which is what makes photographs compress.
    """
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    raw = np.ascontiguousarray(arr.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
    bpp = 2 * c
    sub = raw.copy()
    sub[:, bpp:] -= raw[:, :-bpp]  # uint8 arithmetic wraps modulo 256, as PNG wants
    rows = np.concatenate([np.ones((h, 1), np.uint8), sub], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    if icc:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    chunks.append(_png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)))
    chunks.append(_png_chunk(b"IEND", b""))
    return _PNG_SIGNATURE + b"".join(chunks)


def _encode_tiff16(arr: np.ndarray, gray: bool, icc: bytes | None) -> bytes:
    """A 16-bit deflate-compressed TIFF of any channel layout, through tifffile."""
    import tifffile

    buf = io.BytesIO()
    extra = ["unassalpha"] if arr.ndim == 3 and arr.shape[2] in (2, 4) else None
    tags = [(34675, 7, len(icc), icc, True)] if icc else None
    tifffile.imwrite(
        buf, arr, photometric="minisblack" if gray else "rgb", extrasamples=extra,
        compression="zlib", extratags=tags, metadata=None,
    )
    return buf.getvalue()


def encode_image(image: Image, fmt: str = "PNG") -> bytes:
    """Encode an :class:`Image` to file bytes, at 16 bits where the original and format allow.

    Alpha is kept where the format has it (PNG, TIFF, WebP) and the colour profile where the
    format carries one. A format's own limits (WebP: 16383 px a side) become a
    :class:`DeepPriorError`.
    """
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in set(OUTPUT_FORMATS.values()):
        raise DeepPriorError(f"unknown output format {fmt!r}")
    side = _MAX_SIDE.get(fmt)
    if side is not None and max(image.width, image.height) > side:
        raise DeepPriorError(
            f"a {image.width}x{image.height} image is too large for {fmt} (at most {side} pixels a side); "
            "write PNG or TIFF instead"
        )
    keep_alpha = image.alpha is not None and fmt in _ALPHA_FORMATS
    if image.alpha is not None and not keep_alpha:
        image = replace(image, alpha=None)
    icc = image.icc_profile if fmt in _ICC_FORMATS else None
    try:
        if image.bit_depth == 16 and fmt in _SIXTEEN_BIT_FORMATS:
            arr = image.to_array(np.uint16)
            if fmt == "PNG":
                return _encode_png16(arr, icc)
            return _encode_tiff16(arr, image.channels == 1, icc)
        im = image.to_pil()
        buf = io.BytesIO()
        options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}, "PNG": {"compress_level": 6},
                   "TIFF": {"compression": "tiff_deflate"}}.get(fmt, {})
        if icc:
            options = {**options, "icc_profile": icc}
        im.save(buf, format=fmt, **options)
        return buf.getvalue()
    except DeepPriorError:
        raise
    except MemoryError:
        raise DeepPriorError(f"not enough memory to encode a {image.width}x{image.height} {fmt} image") from None
    except Exception as e:  # noqa: BLE001 - an encoder's refusal is reported, not a crash
        raise DeepPriorError(f"could not encode the result as {fmt} ({_short(e)})") from None


def check_output_size(path, size: tuple[int, int]) -> None:
    """Refuse, before a long fit, a result of ``size`` (width, height) the format cannot hold."""
    fmt = image_format(path)
    side = _MAX_SIDE.get(fmt)
    if side is not None and max(size) > side:
        raise DeepPriorError(
            f"{path}: the result will be {size[0]}x{size[1]}, too large for {fmt} "
            f"(at most {side} pixels a side); write PNG or TIFF instead"
        )


def check_output_path(path, *, inputs=(), suffix: str | None = None) -> Path:
    """Refuse an output path that cannot or must not be written, before any work is done.

    ``suffix`` names the one extension a non-image output must have (e.g. ".npz"); without it
    the path must name an image format.
    """
    path = Path(path)
    if suffix is None:
        image_format(path)
    elif path.suffix.lower() != suffix:
        raise DeepPriorError(f"{path}: this output must end in {suffix}")
    if path.is_dir():
        raise DeepPriorError(f"{path}: output path is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DeepPriorError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise DeepPriorError(f"{path}: output folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise DeepPriorError(f"{path}: output file is not writable")
    for src in inputs:
        if src is not None and _same_file(path, Path(src)):
            raise DeepPriorError(f"{path}: output would overwrite the input; choose another name")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _new_file_mode() -> int:
    """0666 less the process umask: the mode an ordinary open() would create a file with."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: all or nothing."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
        os.fchmod(fd, _new_file_mode())  # mkstemp makes 0600; give the usual rw-r--r-- (per umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DeepPriorError(f"{path}: disk full while writing; nothing was written") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise DeepPriorError(f"{path}: permission denied") from None
        if e.errno == errno.EISDIR:
            raise DeepPriorError(f"{path}: output path is a directory") from None
        raise DeepPriorError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def save_image(image: Image, path) -> Path:
    """Write ``image`` to ``path`` atomically, in the format its extension names."""
    fmt = image_format(path)
    return atomic_write_bytes(path, encode_image(image, fmt))


# Anchor colours of matplotlib's "magma" map, enough for a readable gradient without matplotlib.
_MAGMA = np.array(
    [[0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122],
     [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191]],
    dtype=np.float32,
) / 255.0


def colormap(values: np.ndarray, vmax: float | None = None) -> Image:
    """Map a 2-D array of non-negative values to a colour image (magma; 0 = black).

    ``vmax`` fixes the top of the scale (default: the 99th percentile, so a few outliers do not
    wash the map out).
    """
    v = np.asarray(values, dtype=np.float32)
    top = float(vmax) if vmax else float(np.percentile(v, 99)) or 1.0
    t = np.clip(v / top, 0.0, 1.0) * (len(_MAGMA) - 1)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, len(_MAGMA) - 1)
    w = (t - lo)[..., None]
    return Image(((1 - w) * _MAGMA[lo] + w * _MAGMA[hi]).astype(np.float32))
