"""Synthetic, smear-like sample images for the demo and the tests.

These are NOT real blood smears: pink background, pale red cells with central pallor,
and one purple "blast" per field whose size, shape and chromatin texture depend on the
class, so a model can learn the classes from shape, not only colour. Deterministic for
a given seed.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.models.taxonomy import TAXONOMIES

# Folder names follow the public datasets (Taleqani, C-NMC) so import-labels maps them via
# the alias table.
SAMPLE_FOLDERS = {"Benign": "Benign", "Early Pre-B": "Early", "Pre-B": "Pre", "Pro-B": "Pro",
                  "ALL": "all", "Normal": "hem"}

# class -> (nucleus radius range as fraction of size, eccentricity range, texture strength, nucleoli)
_CLASS_SHAPE = {
    "Benign": ((0.07, 0.09), (0.0, 0.15), 0.05, 0),
    "Early Pre-B": ((0.10, 0.13), (0.0, 0.2), 0.15, 1),
    "Pre-B": ((0.12, 0.15), (0.2, 0.4), 0.25, 2),
    "Pro-B": ((0.14, 0.18), (0.35, 0.55), 0.35, 3),
    # ALL vs normal: a blast is large with nucleoli, a normal lymphoid cell small and round
    "ALL": ((0.15, 0.19), (0.2, 0.5), 0.35, 3),
    "Normal": ((0.08, 0.10), (0.0, 0.15), 0.05, 0),
}

# Taxonomies whose images are single segmented cells on black (C-NMC), not smear fields.
_SEGMENTED_CELLS = {"all_vs_normal"}


def smear_image(cls: str, rng: np.random.Generator, size: int = 224, segmented: bool = False) -> np.ndarray:
    """One RGB uint8 synthetic smear field of the given class; ``segmented``: the cell alone
    on black, as C-NMC publishes its cells."""
    bg = np.array([236, 214, 222], np.float32) + rng.normal(0, 6, 3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = bg
    img += rng.normal(0, 3, (size, size, 1))
    # red cells
    for _ in range(rng.integers(10, 22)):
        c = rng.integers(0, size, 2)
        r = int(size * rng.uniform(0.05, 0.075))
        col = np.array([214, 150, 160], np.float32) + rng.normal(0, 8, 3)
        cv2.circle(img, (int(c[0]), int(c[1])), r, col.tolist(), -1, cv2.LINE_AA)
        cv2.circle(img, (int(c[0]), int(c[1])), max(1, r // 3), (col * 0.5 + bg * 0.5).tolist(), -1, cv2.LINE_AA)
    (r0, r1), (e0, e1), texture, nucleoli = _CLASS_SHAPE[cls]
    cx, cy = (size / 2 + rng.normal(0, size * 0.06, 2)).astype(int)
    r = size * rng.uniform(r0, r1)
    ecc = rng.uniform(e0, e1)
    axes = (int(r * (1 + ecc)), int(r * (1 - ecc * 0.6)))
    angle = float(rng.uniform(0, 180))
    cyto = np.array([190, 170, 215], np.float32) + rng.normal(0, 8, 3)
    cv2.ellipse(img, (int(cx), int(cy)), (int(axes[0] * 1.25), int(axes[1] * 1.25)), angle, 0, 360, cyto.tolist(), -1, cv2.LINE_AA)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (int(cx), int(cy)), axes, angle, 0, 360, 255, -1, cv2.LINE_AA)
    nucleus = np.array([95, 50, 135], np.float32) + rng.normal(0, 10, 3)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.5)
    shade = 1.0 + texture * noise[..., None]
    m = (mask.astype(np.float32) / 255.0)[..., None]
    img = img * (1 - m) + (nucleus * shade) * m
    for _ in range(nucleoli):
        off = rng.normal(0, r * 0.35, 2)
        cv2.circle(img, (int(cx + off[0]), int(cy + off[1])), max(2, int(r * 0.15)), (150, 110, 175), -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    if segmented:
        cell = np.zeros((size, size), np.uint8)
        cv2.ellipse(cell, (int(cx), int(cy)), (int(axes[0] * 1.25), int(axes[1] * 1.25)), angle, 0, 360, 255, -1, cv2.LINE_AA)
        img = img * (cell.astype(np.float32) / 255.0)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(
    folder: Path,
    n_per_class: int = 12,
    seed: int = 0,
    size: int = 224,
    ext: str = ".jpg",
    taxonomy: str = "all_subtype",
) -> list[Path]:
    """Write ``n_per_class`` images per class into ``folder/<class folder>/``; return paths.
    Idempotent: files are written only when missing."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    written: list[Path] = []
    for cls in TAXONOMIES[taxonomy].classes:
        sub = folder / SAMPLE_FOLDERS.get(cls, cls)
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            path = sub / f"sample-{SAMPLE_FOLDERS.get(cls, cls)}-{i + 1:04d}{ext}"
            img = smear_image(cls, rng, size, segmented=taxonomy in _SEGMENTED_CELLS)
            if not path.exists():
                ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise RuntimeError(f"could not encode {path}")
                path.write_bytes(buf.tobytes())
            written.append(path)
    return written
