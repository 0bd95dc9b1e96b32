"""Synthetic smear fields for the cell-stage tests: pale red discs and white cells with a purple
nucleus, drawn with OpenCV at a known scale, so how many cells each field holds is known."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

UM_PER_PX = 0.2
RED_D_PX = int(7.5 / UM_PER_PX)  # 37 px: a red cell's 7.5 um


def draw_field(n_white: int, seed: int, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """An RGB field with ``n_white`` white cells (placed apart, away from the border) among ~40 red cells."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.full((h, w, 3), (238, 232, 236), np.uint8)
    white_centres: list[tuple[int, int]] = []
    while len(white_centres) < n_white:
        c = (int(rng.integers(70, w - 70)), int(rng.integers(70, h - 70)))
        if all((c[0] - a) ** 2 + (c[1] - b) ** 2 > 150 ** 2 for a, b in white_centres):
            white_centres.append(c)
    for _ in range(40):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if all((c[0] - a) ** 2 + (c[1] - b) ** 2 > 80 ** 2 for a, b in white_centres):
            cv2.circle(img, c, RED_D_PX // 2, (222, 150, 160), -1, cv2.LINE_AA)
    for c in white_centres:
        cv2.circle(img, c, int(6.5 / UM_PER_PX), (205, 185, 220), -1, cv2.LINE_AA)  # cytoplasm
        cv2.circle(img, c, int(4.0 / UM_PER_PX), (95, 45, 150), -1, cv2.LINE_AA)  # nucleus
    return img


def single_cell_crop(seed: int = 0) -> np.ndarray:
    """A pre-cut single white cell on black, as C-NMC's crops are."""
    img = np.zeros((300, 300, 3), np.uint8)
    cv2.circle(img, (150, 150), 60, (205, 185, 220), -1, cv2.LINE_AA)
    cv2.circle(img, (150, 150), 40, (95, 45, 150), -1, cv2.LINE_AA)
    return img


def write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok, path
    return path


def write_fields(folder: Path, n: int, white_per_field: int = 3, seed: int = 0) -> list[Path]:
    return [write(folder / f"field_{k:03d}.png", draw_field(white_per_field, seed + k)) for k in range(n)]
