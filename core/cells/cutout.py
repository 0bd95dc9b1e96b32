"""A cell cut out the way a cell model's card says its training cells were made.

The one place a cell model's input is cut out of a field (the classify cell stage, the report's
galleries and the desktop cell gallery call it): a square ``side_um`` wide centred on the cell
(core.cells.finder.cut_out), and, where the card's preprocessing says ``cell_background:
"black"``, everything farther than ``cell_margin_um`` outside the cell's outline set to black,
as segmented single-cell data sets (C-NMC) publish their cells.
"""
from __future__ import annotations

import math
from typing import Protocol

import cv2
import numpy as np

from core.cells.finder import FoundCell, cut_out


class CellPreprocessing(Protocol):
    """What of a card's preprocessing (core.imaging.preprocessing.Preprocessing) the cut-out reads;
    named here, not imported: that module reaches torch, and the cell finder's package never does."""

    cell_background: str
    cell_margin_um: float

_SHIFT = 4  # fillPoly's fixed-point bits: the outline is placed to 1/16 of a pixel


def cut_out_for_model(rgb: np.ndarray, cell: FoundCell, um_per_px: float, *, side_um: float, out_px: int,
                      prep: CellPreprocessing, reduced_by: int = 1) -> np.ndarray:
    """``cut_out``'s square (out_px, out_px, 3) uint8, with the card's background outside the
    cell's outline (``prep.cell_background``). A cell without an outline (fewer than 3 points)
    is cut out as it is: there is nothing to mask by."""
    crop = cut_out(rgb, cell, um_per_px, side_um=side_um, out_px=out_px, reduced_by=reduced_by)
    if prep.cell_background == "keep":
        return crop
    contour = np.asarray(cell.contour, dtype=np.float64).reshape(-1, 2)
    if len(contour) < 3:
        return crop
    inside = cell_mask(rgb.shape[:2], cell, um_per_px, side_um=side_um, out_px=out_px, reduced_by=reduced_by,
                       margin_um=prep.cell_margin_um)
    crop = crop.copy()
    crop[~inside] = 0
    return crop


def cell_mask(shape: tuple[int, int], cell: FoundCell, um_per_px: float, *, side_um: float, out_px: int,
              reduced_by: int = 1, margin_um: float = 0.0) -> np.ndarray:
    """(out_px, out_px) bool: True inside the cell's outline (grown by ``margin_um``), in the
    geometry of ``cut_out``'s square for the same arguments on an image of ``shape`` (the mask is
    drawn on the image's grid and cut out by cut_out itself, so the two always line up, mirrored
    borders included)."""
    h, w = shape
    r = reduced_by
    cx, cy = cell.centre[0] / r, cell.centre[1] / r
    half = side_um / (um_per_px * r) / 2.0 + 2.0  # the square, plus a pixel of slack each side
    # only the window of the image the square can touch is drawn: a field is megapixels
    ox, oy = max(0, int(math.floor(cx - half))), max(0, int(math.floor(cy - half)))
    ex, ey = min(w, int(math.ceil(cx + half)) + 1), min(h, int(math.ceil(cy + half)) + 1)
    if ex <= ox or ey <= oy:
        return np.zeros((out_px, out_px), bool)
    window = np.zeros((ey - oy, ex - ox), np.uint8)
    pts = np.asarray(cell.contour, dtype=np.float64).reshape(-1, 2)
    pts = (pts + 0.5) / r - 0.5 - (ox, oy)  # original grid -> the window's pixels
    cv2.fillPoly(window, [np.round(pts * (1 << _SHIFT)).astype(np.int32)], 255, cv2.LINE_8, _SHIFT)
    grow = margin_um / (um_per_px * r)
    if grow >= 0.5:
        k = 2 * int(round(grow)) + 1
        window = cv2.dilate(window, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    x0, y0, x1, y1 = cell.box
    moved = FoundCell((x0 - ox * r, y0 - oy * r, x1 - ox * r, y1 - oy * r), cell.contour, None, 0, frozenset())
    square = cut_out(window, moved, um_per_px, side_um=side_um, out_px=out_px, reduced_by=r)
    return square[:, :, 0] >= 128


__all__ = ["cell_mask", "cut_out_for_model"]
