"""Reading image files safely: every way a file can be bad becomes an ImageError with a
message a person can act on, never a crash (corrupt, truncated, empty, not an image,
16-bit, grayscale, RGBA, CMYK, decompression bombs)."""
from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from core.config import Settings
from core.errors import ImageError, os_reason

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
# Far above any smear field or whole camera frame, far below what exhausts memory.
DEFAULT_MAX_PIXELS = 80_000_000

# Files are read whole (once: the bytes hashed are the bytes decoded). A camera frame or
# smear field is a few MB; an 80-megapixel 8-bit TIFF is 240 MB. Bigger files are refused
# from their stat, before any read: four hash threads reading 2 GiB files would exhaust RAM.
# The limit is a setting (HEMASCAN_MAX_FILE_MB, core/config.py) that callers pass as ``max_bytes``.
DEFAULT_MAX_FILE_BYTES = Settings.defaults().max_file_bytes
MAX_FILE_ENV = Settings.variable("max_file_mb")
# In the reason recorded for a file over the limit (core.imaging.scan re-reads it once the limit is raised).
OVER_SIZE_LIMIT = "limit for one image"
# Tries before a file that changes on every read is given up on (until the next scan).
READ_ATTEMPTS = 3

# We do our own pixel-limit check (with a clear message) instead of PIL's warning/bomb error.
Image.MAX_IMAGE_PIXELS = None

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read the header only: size, mode, format. Raises ImageError for unusable files."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            info = ImageInfo(im.width, im.height, im.mode, im.format or "?")
    except UnidentifiedImageError:
        raise ImageError("not a recognised image file (wrong extension or corrupt header)") from None
    except Exception as exc:  # PIL raises many types on malformed headers
        if "truncated" in str(exc).lower():
            raise ImageError("truncated image: the file ends inside its header") from None
        raise ImageError(f"unreadable image header: {exc}") from None
    if info.width <= 0 or info.height <= 0:
        raise ImageError(f"invalid image size {info.width}x{info.height}")
    if info.width * info.height > max_pixels:
        raise ImageError(
            f"image too large: {info.width}x{info.height} pixels exceeds the limit of "
            f"{max_pixels:,} (possible decompression bomb)"
        )
    if info.format == "JPEG" and _JPEG_EOI not in data[-4096:]:
        raise ImageError("truncated JPEG: the file ends before the image data is complete")
    return info


def _to_rgb8(arr: np.ndarray, bgr_order: bool) -> np.ndarray:
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype in (np.float32, np.float64):
        hi = float(arr.max()) if arr.size else 1.0
        arr = np.clip(arr / (hi if hi > 1.0 else 1.0) * 255.0, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {arr.dtype}")
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    channels = arr.shape[2]
    if channels == 1:
        return cv2.cvtColor(arr[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB if bgr_order else cv2.COLOR_RGBA2RGB)
    if channels == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if bgr_order else arr
    raise ImageError(f"unsupported number of channels: {channels}")


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode file bytes to an RGB uint8 array (H, W, 3). Raises ImageError."""
    info = probe(data, max_pixels)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None and info.mode != "CMYK":
        return np.ascontiguousarray(_to_rgb8(arr, bgr_order=True))
    # OpenCV declines some valid files (CMYK, unusual TIFF layouts): let PIL try.
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode not in ("RGB", "L", "RGBA", "I;16", "I;16B", "I", "F"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except Exception as exc:
        raise ImageError(f"cannot decode image data ({info.format}, corrupt or truncated): {exc}") from None
    if arr.dtype == np.int32:
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    return np.ascontiguousarray(_to_rgb8(arr, bgr_order=False))


class FileChanged(ImageError):
    """The file's content is not (or not reliably) the content that was hashed: it changed
    while it was read, or since the scan. Whoever records this must make the next scan read
    the file again instead of trusting its stat."""


@dataclass(frozen=True)
class FileContent:
    """A file's bytes, their SHA-256, and the stat they belong to (taken before the read
    and unchanged after it)."""

    data: bytes
    sha256: str
    size: int
    mtime_ns: int


def format_bytes(n: int) -> str:
    """2147483648 -> '2.0 GiB', 268435456 -> '256 MiB', 150582 -> '147 KiB'."""
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    for unit, scale in (("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v >= 10 or v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"


def _stat_key(st: os.stat_result) -> tuple:
    # ctime too: a rewrite that keeps size and puts the mtime back still moves ctime.
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read_once(path, max_bytes: int | None) -> tuple[bytes, os.stat_result]:
    """Open, check the size from the stat (nothing is read over the limit), read the whole
    file in one pass, and check the file did not change (or get replaced) meanwhile."""
    limit = DEFAULT_MAX_FILE_BYTES if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as fh:
            before = os.fstat(fh.fileno())
            if before.st_size > limit:
                raise ImageError(f"file is {format_bytes(before.st_size)}, over the {format_bytes(limit)} "
                                 f"{OVER_SIZE_LIMIT} (set {MAX_FILE_ENV} to raise it)")
            data = fh.read(before.st_size + 1)  # one byte more: a file that grew shows it
            after = os.fstat(fh.fileno())
        try:
            now = os.stat(path)  # still the file that was read (not replaced by a rename)?
        except FileNotFoundError:
            raise ImageError("file disappeared while it was being read") from None
    except ImageError:
        raise
    except PermissionError:
        raise ImageError("permission denied") from None
    except FileNotFoundError:
        raise ImageError("file disappeared before it could be read") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except OSError as exc:
        raise ImageError(f"cannot read file: {os_reason(exc)}") from None
    if len(data) != before.st_size or _stat_key(after) != _stat_key(before) or _stat_key(now) != _stat_key(before):
        raise FileChanged("the file changed while it was being read; it will be read again on the next scan")
    return data, before


def _read_stable(path, max_bytes: int | None) -> tuple[bytes, os.stat_result]:
    for attempt in range(READ_ATTEMPTS):
        try:
            return _read_once(path, max_bytes)
        except FileChanged:
            if attempt == READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def read_and_hash(path, max_bytes: int | None = None) -> FileContent:
    """Read a file once and hash those bytes: what the scan records and what classify decodes.

    Refuses a file over ``max_bytes`` (default: DEFAULT_MAX_FILE_BYTES; the settings' limit where the caller has them) from its stat, without
    reading it. Retries a read during which the file changed; a file that keeps changing
    raises FileChanged. Every failure is an ImageError with a reason for people."""
    data, st = _read_stable(path, max_bytes)
    return FileContent(data, hashlib.sha256(data).hexdigest(), st.st_size, st.st_mtime_ns)


def read_file(path: str, max_bytes: int | None = None) -> bytes:
    """Read a file (same checks as read_and_hash, without the hash), turning OS errors into
    ImageError with the reason."""
    return _read_stable(path, max_bytes)[0]
