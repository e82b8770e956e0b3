"""Reading and writing photographs the way their owner had them.

The engine works on float32 arrays in [0, 1] of shape (height, width, channels) with one
(grayscale) or three (colour) channels. :class:`Image` carries such an array together with
what is needed to write the result back as the user had it: the alpha channel (carried
through untouched, never restored) and the bit depth (8 or 16).

:func:`load_image` accepts whatever people have: EXIF-rotated phone photos, palette and CMYK
files, 16-bit PNG and TIFF scans, transparent PNGs. Anything it cannot read becomes a
one-line :class:`~deepprior.errors.DeepPriorError`, as does a pixel bomb over ``max_pixels``.
:func:`save_image` writes through a temporary file and a rename, so a crash or a full disk
never leaves a half-written output behind.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import tempfile
import warnings
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
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    source: str | None = None

    def __post_init__(self):
        p = self.pixels
        if p.ndim != 3 or p.shape[2] not in (1, 3):
            raise DeepPriorError(f"image array must be HxWx1 or HxWx3, got shape {p.shape}")
        if self.alpha is not None and self.alpha.shape != p.shape[:2]:
            raise DeepPriorError("alpha channel must match the image size")

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


def _png_bit_depth(data: bytes) -> int:
    # IHDR is always the first chunk: signature (8) + length (4) + type (4) + w, h (8) + depth.
    if len(data) > 25 and data[:8] == b"\x89PNG\r\n\x1a\n":
        return data[24]
    return 8


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


def _decode_16bit_colour(data: bytes, source: str | None, orientation: int) -> Image:
    """16-bit colour PNG/TIFF: Pillow would cut them to 8 bits, so OpenCV decodes them."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise _fail(source, "cannot decode this 16-bit image (truncated or corrupt?)")
    scale = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
    arr = _orient(arr.astype(np.float32) / scale, orientation)
    if arr.ndim == 2:
        return Image(arr[:, :, None], None, 16, source)
    alpha = arr[:, :, 3] if arr.shape[2] == 4 else None
    rgb = arr[:, :, 2::-1] if arr.shape[2] >= 3 else arr[:, :, :1]
    return Image(np.ascontiguousarray(rgb), alpha, 16, source)


def _from_pil(im: PILImage.Image, source: str | None) -> Image:
    """Convert a decoded Pillow image of any mode to an :class:`Image`."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float32)
        return Image(np.clip(arr / 65535.0, 0, 1)[:, :, None], None, 16, source)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        peak = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        return Image(np.clip(arr / peak, 0, 1)[:, :, None], None, 8, source)
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
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX ...
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        return Image(arr[:, :, None], None, 8, source)
    if im.mode == "LA":
        alpha = arr[:, :, 1] if arr[:, :, 1].min() < 1.0 else None
        return Image(np.ascontiguousarray(arr[:, :, :1]), alpha, 8, source)
    if im.mode == "RGBA":
        alpha = arr[:, :, 3] if arr[:, :, 3].min() < 1.0 else None
        return Image(np.ascontiguousarray(arr[:, :, :3]), alpha, 8, source)
    return Image(np.ascontiguousarray(arr), None, 8, source)


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
        return _from_pil(ImageOps.exif_transpose(source), None)

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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = PILImage.open(io.BytesIO(data))
            _check_pixels(im.size, max_pixels, name)
            im.load()
    except DeepPriorError:
        raise
    except PILImage.UnidentifiedImageError:
        raise _fail(name, "not an image file (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as e:
        raise _fail(name, f"image file is truncated or corrupt ({_short(e)})") from None
    except MemoryError:
        raise _fail(name, "image is too large to decode in memory") from None
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    orientation = 1
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not stop the photo from loading
        pass
    fmt = im.format
    colour16 = (
        fmt == "PNG" and _png_bit_depth(data) == 16 and im.mode in ("RGB", "RGBA")
    ) or (fmt == "TIFF" and _tiff_is_16bit_colour(im))
    if colour16:
        return _decode_16bit_colour(data, name, orientation)
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:
        pass
    return _from_pil(im, name)


def _tiff_is_16bit_colour(im) -> bool:
    try:
        bits = im.tag_v2.get(258)
    except AttributeError:
        return False
    if isinstance(bits, tuple):
        return len(bits) >= 3 and bits[0] == 16
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


def encode_image(image: Image, fmt: str = "PNG") -> bytes:
    """Encode an :class:`Image` to file bytes, at 16 bits where the original and format allow."""
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    keep_alpha = image.alpha is not None and fmt in _ALPHA_FORMATS
    if image.alpha is not None and not keep_alpha:
        image = replace(image, alpha=None)
    if image.bit_depth == 16 and fmt in _SIXTEEN_BIT_FORMATS:
        arr = image.to_array(np.uint16)
        if arr.ndim == 2 and fmt == "PNG":
            buf = io.BytesIO()
            PILImage.fromarray(arr).save(buf, format="PNG")  # saved as I;16
            return buf.getvalue()
        import cv2

        if arr.ndim == 3 and arr.shape[2] >= 3:
            arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
        ok, enc = cv2.imencode(".png" if fmt == "PNG" else ".tiff", arr)
        if not ok:
            raise DeepPriorError(f"could not encode a 16-bit {fmt} image")
        return enc.tobytes()
    im = image.to_pil()
    buf = io.BytesIO()
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}, "PNG": {"compress_level": 6}}
    im.save(buf, format=fmt, **options.get(fmt, {}))
    return buf.getvalue()


def check_output_path(path, *, inputs=()) -> Path:
    """Refuse an output path that cannot or must not be written, before any work is done."""
    path = Path(path)
    image_format(path)
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


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: all or nothing."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
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
