"""Synthetic smear fields with white cells at known places: for the finder's tests and the
docs' figure (no real image may be committed). Drawn at any camera scale, so the same field
can be seen through two cameras."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

BACKGROUND = (236, 232, 236)
RED_CELL = (222, 168, 172)
RED_CELL_CENTRE = (230, 196, 198)
CYTOPLASM = (212, 190, 226)
NUCLEUS = (112, 62, 160)


@dataclass(frozen=True)
class WhiteCell:
    x_um: float
    y_um: float
    cell_um: float = 12.0  # whole-cell diameter
    nucleus_um: float = 8.0


@dataclass
class Field:
    width_um: float = 100.0
    height_um: float = 75.0
    red_cell_um: float = 7.5
    white_cells: list[WhiteCell] = field(default_factory=list)
    red_cells: list[tuple[float, float]] = field(default_factory=list)  # centres, um
    specks: list[tuple[float, float]] = field(default_factory=list)  # platelet-like purple specks, um


def standard_field() -> Field:
    """Two isolated white cells, two touching ones, one cut by the left border, a platelet-like
    speck, and red cells in the free space."""
    whites = [WhiteCell(25, 22), WhiteCell(72, 20, 13, 9), WhiteCell(40, 55), WhiteCell(52, 55),
              WhiteCell(2.5, 50)]
    specks = [(88, 62)]
    reds = []
    for y in range(6, 75, 10):
        for x in range(8, 100, 10):
            ok = all((x - w.x_um) ** 2 + (y - w.y_um) ** 2 > (w.cell_um / 2 + 5) ** 2 for w in whites)
            ok &= all((x - s[0]) ** 2 + (y - s[1]) ** 2 > 6 ** 2 for s in specks)
            if ok:
                reds.append((x + (y % 3), y + (x % 2)))
    return Field(white_cells=whites, red_cells=reds, specks=specks)


def draw(f: Field, um_per_px: float, seed: int = 0) -> np.ndarray:
    """The field as an RGB uint8 image at um_per_px (blurred like optics, with sensor noise)."""
    w, h = round(f.width_um / um_per_px), round(f.height_um / um_per_px)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    s = 1.0 / um_per_px
    for x, y in f.red_cells:
        cv2.circle(img, (round(x * s), round(y * s)), round(f.red_cell_um / 2 * s), RED_CELL, -1, cv2.LINE_AA)
        cv2.circle(img, (round(x * s), round(y * s)), round(f.red_cell_um / 6 * s), RED_CELL_CENTRE, -1, cv2.LINE_AA)
    for c in f.white_cells:
        cv2.circle(img, (round(c.x_um * s), round(c.y_um * s)), round(c.cell_um / 2 * s), CYTOPLASM, -1, cv2.LINE_AA)
    for c in f.white_cells:
        cv2.circle(img, (round(c.x_um * s), round(c.y_um * s)), round(c.nucleus_um / 2 * s), NUCLEUS, -1, cv2.LINE_AA)
    for x, y in f.specks:
        cv2.circle(img, (round(x * s), round(y * s)), round(1.2 * s), NUCLEUS, -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 0.3 * s)
    noise = np.random.default_rng(seed).normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def box_px(c: WhiteCell, um_per_px: float, size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """The white cell's true box (x0, y0, x1, y1) at um_per_px, clipped to size (w, h)."""
    s = 1.0 / um_per_px
    r = c.cell_um / 2
    x0, y0 = round((c.x_um - r) * s), round((c.y_um - r) * s)
    x1, y1 = round((c.x_um + r) * s), round((c.y_um + r) * s)
    if size is not None:
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(size[0], x1), min(size[1], y1)
    return x0, y0, x1, y1


def crowded_field(n: int = 500, um_per_px: float = 0.25) -> np.ndarray:
    """A field of ``n`` white cells in a grid 16 um apart (none touching, 25 to a row), red cells
    in a strip beside them for the scale: the finder's load test (500 cells, ~1840 x 1280 px)."""
    cols = 25
    rows = -(-n // cols)
    whites = [WhiteCell(8 + 16 * (k % cols), 8 + 16 * (k // cols)) for k in range(n)]
    width, height = 16 * cols + 60, 16 * rows
    reds = [(16 * cols + 8 + 10 * i, 6 + 10 * j) for i in range(5) for j in range(height // 10)]
    return draw(Field(width, height, white_cells=whites, red_cells=reds), um_per_px)


def packed_field() -> tuple[Field, list[WhiteCell]]:
    """Four lone blasts (10 um nuclei) and four packed ones whose nuclei touch, 10.4 um apart
    (three in a row, one below the middle: Taleqani's crowded fields), red cells in the free
    space -> (field, the packed cells)."""
    lone = [WhiteCell(15, 15, 12, 10), WhiteCell(85, 15, 12, 10), WhiteCell(15, 60, 12, 10), WhiteCell(85, 60, 12, 10)]
    packed = [WhiteCell(40 + 10.4 * k, 32, 11, 10) for k in range(3)] + [WhiteCell(50.4, 42.4, 11, 10)]
    whites = lone + packed
    reds = [(x, y) for y in range(6, 75, 9) for x in range(6, 100, 9)
            if all((x - w.x_um) ** 2 + (y - w.y_um) ** 2 > (w.cell_um / 2 + 4.5) ** 2 for w in whites)]
    return Field(white_cells=whites, red_cells=reds), packed


def burn_label(img: np.ndarray, colour: tuple[int, int, int] = (40, 40, 200)) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The image with a scale label burnt into its bottom-right corner, as microscope software
    does: a white box with "10 um" and a bar in ``colour`` (by default a stain-like blue) ->
    (image, the box x0, y0, x1, y1)."""
    out = img.copy()
    h, w = out.shape[:2]
    x0, y0 = int(w * 0.7), int(h * 0.82)
    cv2.rectangle(out, (x0, y0), (w - 2, h - 2), (255, 255, 255), -1)
    cv2.putText(out, "10 um", (x0 + 4, h - 8), cv2.FONT_HERSHEY_SIMPLEX, max(0.3, w / 700), colour, max(1, w // 300))
    cv2.line(out, (x0 + 4, h - 5), (w - 8, h - 5), colour, max(1, w // 200))
    return out, (x0, y0, w - 1, h - 1)
