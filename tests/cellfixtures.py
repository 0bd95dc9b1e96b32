"""Cells for the tests: synthetic single-cell crops the finder judges as such, and cell rows
written through core.cells.records as the finder's results are."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np

from core.cells.finder import FINDER_NAME, FieldCells, FoundCell
from core.cells.records import store_field_cells
from core.storage import Cell, Image

BACKGROUND = (236, 232, 236)
CYTOPLASM = (212, 190, 226)
NUCLEUS = (112, 62, 160)


def single_cell_crop(seed: int = 0, size: int = 360) -> np.ndarray:
    """A pre-cut white cell (12 um across at the finder's default 0.1 um/px): a purple nucleus
    in a pale cytoplasm, centred on a light background, blurred and noisy like a camera's."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BACKGROUND
    c = size // 2
    cv2.circle(img, (c, c), 60, CYTOPLASM, -1, cv2.LINE_AA)
    cv2.circle(img, (c + 5, c - 4), 40, NUCLEUS, -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 3)
    return np.clip(img + np.random.default_rng(seed).normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def field_of_three(seed: int = 0) -> np.ndarray:
    """A 100 x 75 um field with three white cells: no single-cell crop."""
    img = np.empty((750, 1000, 3), np.uint8)
    img[:] = BACKGROUND
    for x, y in ((250, 220), (720, 200), (500, 550)):
        cv2.circle(img, (x, y), 60, CYTOPLASM, -1, cv2.LINE_AA)
        cv2.circle(img, (x, y), 40, NUCLEUS, -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 3)
    return np.clip(img + np.random.default_rng(seed).normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def write_png(path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def found_cell(box, flags=()) -> FoundCell:
    x0, y0, x1, y1 = box
    contour = np.array([[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]], np.int32)
    return FoundCell(box=tuple(box), contour=contour, nucleus_contour=None, area_px=(x1 - x0) * (y1 - y0),
                     flags=frozenset(flags))


def add_image(session, name: str, width: int = 640, height: int = 480) -> int:
    """An image row (no file needed for what reads only the database)."""
    image = Image(sha256=hashlib.sha256(name.encode()).hexdigest(), width=width, height=height, phash="0" * 16)
    session.add(image)
    session.flush()
    return image.id


def add_cells(session, image_id: int, boxes, finder: str = FINDER_NAME, um_per_px: float = 0.2,
              scale_source: str = "red_cells", flags=None, single: bool = False) -> list[int]:
    """The finder's result for one image, stored as classify stores it; the cells' ids in order."""
    flags = flags or [()] * len(boxes)
    found = FieldCells(tuple(found_cell(b, f) for b, f in zip(boxes, flags)), um_per_px, scale_source, 12, single)
    store_field_cells(session, image_id, found, finder)
    session.flush()
    return list(session.scalars(Cell.__table__.select().with_only_columns(Cell.id)
                                .where(Cell.image_id == image_id, Cell.finder == finder).order_by(Cell.number)))
