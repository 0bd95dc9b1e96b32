"""The one perceptual hash and the one duplicate finder of hemascan.

``perceptual_hash`` is what `scan` stores for every image and what the trainer's splits
and retrain's validation sides use to keep near duplicates on one side: the same bytes
give the same hash everywhere. ``duplicate_groups`` joins exact (same SHA-256) and near
(Hamming distance of the hashes <= d bits) duplicates with union-find.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import cv2
import numpy as np

from core.imaging.images import decode_rgb, probe

HASH_BITS = 64
NEAR_DUPLICATE_BITS = 4  # default distance: measured on the Taleqani share (docs/trainer.md "Splits")

_REDUCED_GRAY = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
                 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _hash_gray(data: bytes, info) -> np.ndarray:
    """A small grayscale version for the perceptual hash (which works at 32x32 anyway).
    JPEGs decode at 1/2..1/8 scale straight from the DCT, several times faster than a
    full decode; anything OpenCV cannot reduce goes through the full, careful decoder."""
    factor = max(f for f in _REDUCED_GRAY if f == 1 or min(info.width, info.height) // f >= 64)
    if info.mode in ("RGB", "L"):
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_GRAY[factor])
        if gray is not None:
            return gray
    return cv2.cvtColor(decode_rgb(data), cv2.COLOR_RGB2GRAY)


def perceptual_hash(data: bytes, info=None) -> str:
    """64-bit DCT perceptual hash (imagehash.phash) of an encoded image, as 16 hex digits.
    ``info``: the image's ``core.imaging.images.probe`` result when the caller has it already."""
    import imagehash
    from PIL import Image as PILImage

    info = info if info is not None else probe(data)
    return str(imagehash.phash(PILImage.fromarray(_hash_gray(data, info))))


def hash_int(h: str | None) -> int:
    """A stored hex hash as an integer (0 for none or garbage: such images match nothing
    by accident only if their neighbours are also 0, and they are joined by SHA-256)."""
    try:
        return int(h, 16) if h else 0
    except ValueError:
        return 0


def hamming(a: np.ndarray, b: int | np.ndarray) -> np.ndarray:
    """Bit distance between uint64 hashes ``a`` (array) and ``b`` (one, or as many as ``a``)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.uint64(b) if np.isscalar(b) else np.asarray(b, np.uint64))
    return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def duplicate_pairs(sha256: Sequence[str], phash: np.ndarray, distance: int = NEAR_DUPLICATE_BITS
                    ) -> list[tuple[int, int]]:
    """Index pairs that are exact (same SHA-256) or near (hash distance <= ``distance``) duplicates."""
    pairs: list[tuple[int, int]] = []
    first: dict[str, int] = {}
    for i, s in enumerate(sha256):
        if s in first:
            pairs.append((first[s], i))
        else:
            first[s] = i
    ph = np.asarray(phash, dtype=np.uint64)
    for i in range(len(ph) - 1):
        for j in np.nonzero(hamming(ph[i + 1 :], ph[i]) <= distance)[0]:
            pairs.append((i, i + 1 + int(j)))
    return pairs


def union_find(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """The group of each of ``n`` items joined by ``pairs``: the lowest index of its group."""
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def duplicate_groups(sha256: Sequence[str], phash: np.ndarray, distance: int = NEAR_DUPLICATE_BITS) -> np.ndarray:
    """Group id (lowest member index) of every image: exact and near duplicates share one."""
    return union_find(len(sha256), duplicate_pairs(sha256, phash, distance))
