"""Reading image files safely: every way a file can be bad becomes an ImageError with a
message a person can act on, never a crash (corrupt, truncated, empty, not an image,
16-bit, grayscale, RGBA, CMYK, decompression bombs)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

SUPPORTED_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
# Far above any smear field or whole camera frame, far below what exhausts memory.
DEFAULT_MAX_PIXELS = 80_000_000

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


def read_file(path: str) -> bytes:
    """Read a file, turning OS errors into ImageError with the reason."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except PermissionError:
        raise ImageError("permission denied") from None
    except FileNotFoundError:
        raise ImageError("file disappeared before it could be read") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
