"""Makers of every kind of awkward image file a lab folder may hold."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.app.sample import smear_image


def rgb(seed: int = 0, size: int = 64) -> np.ndarray:
    return smear_image("Pre-B", np.random.default_rng(seed), size)


def jpeg_bytes(seed: int = 0, size: int = 64) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb(seed, size), cv2.COLOR_RGB2BGR))
    return buf.tobytes()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims a huge image (valid CRCs)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def pil_bytes(img: Image.Image, fmt: str) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt)
    return b.getvalue()


def write_awkward_folder(folder: Path) -> dict[str, str]:
    """Write good-but-unusual and bad files; return {file name: 'ok' | 'error'}."""
    folder.mkdir(parents=True, exist_ok=True)
    base = rgb(1)
    files: dict[str, tuple[bytes, str]] = {
        "good.jpg": (jpeg_bytes(2), "ok"),
        "UPPER.JPEG": (jpeg_bytes(3), "ok"),
        "gray.png": (pil_bytes(Image.fromarray(base[:, :, 0]), "PNG"), "ok"),
        "rgba.png": (pil_bytes(Image.fromarray(np.dstack([base, np.full(base.shape[:2], 128, np.uint8)])), "PNG"), "ok"),
        "cmyk.jpg": (pil_bytes(Image.fromarray(rgb(4)).convert("CMYK"), "JPEG"), "ok"),
        "sixteen.tif": (cv2.imencode(".tif", (base.astype(np.uint16) * 257))[1].tobytes(), "ok"),
        "sixteen_gray.png": (cv2.imencode(".png", (base[:, :, 1].astype(np.uint16) * 257))[1].tobytes(), "ok"),
        "field.bmp": (cv2.imencode(".bmp", rgb(5))[1].tobytes(), "ok"),
        "empty.jpg": (b"", "error"),
        "text.jpg": (b"this is a text file, not a picture\n" * 10, "error"),
        "truncated.jpg": (jpeg_bytes(6)[:300], "error"),
        "bomb.png": (png_bomb(), "error"),
        "garbage.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "error"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("not an image, skipped")
    (folder / "scan.xml").write_text("<x/>")
    return {name: kind for name, (_, kind) in files.items()}
