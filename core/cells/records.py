"""Cells as records: what the finder found in an image, written with the image's content-hash
identity, idempotently (a re-run, or a run after a kill, adds nothing twice). The caller owns
the transaction: one per batch of images."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.storage import Cell, CellSearch
from core.storage.dbutil import insert_ignore

if TYPE_CHECKING:  # the finder's types; records need only their attributes
    from core.cells.finder import FieldCells

#: ``Cell.finder`` of a cell a reviewer added by hand (the finder missed it).
ADDED_BY_REVIEWER = "reviewer"


def _points(contour) -> list[list[int]]:
    return [[int(x), int(y)] for x, y in (contour.tolist() if hasattr(contour, "tolist") else contour)]


def store_field_cells(session: Session, image_id: int, found: "FieldCells", finder: str) -> None:
    """Record one finder run on one image: its scale and its cells (none is a result too).
    Idempotent: keyed by (image, finder) and (image, finder, number)."""
    insert_ignore(session, CellSearch.__table__, [{
        "image_id": image_id, "finder": finder, "um_per_px": float(found.um_per_px),
        "scale_source": found.scale_source, "n_red_cells": int(found.n_red_cells),
        "n_cells": len(found.cells), "single_cell_crop": bool(found.single_cell_crop)}],
        ["image_id", "finder"])
    insert_ignore(session, Cell.__table__, [{
        "image_id": image_id, "finder": finder, "number": n,
        "x0": int(c.box[0]), "y0": int(c.box[1]), "x1": int(c.box[2]), "y1": int(c.box[3]),
        "contour": _points(c.contour),
        "nucleus_contour": None if c.nucleus_contour is None else _points(c.nucleus_contour),
        "area_px": int(c.area_px), "um_per_px": float(found.um_per_px),
        "flags": sorted(c.flags), "source": "found", "added_by": None}
        for n, c in enumerate(found.cells)], ["image_id", "finder", "number"])


def searched_image_ids(session: Session, finder: str, image_ids: Iterable[int] | None = None) -> set[int]:
    """Images the finder ``finder`` has already been run on (whatever it found)."""
    q = select(CellSearch.image_id).where(CellSearch.finder == finder)
    if image_ids is not None:
        ids = list(image_ids)
        if not ids:
            return set()
        q = q.where(CellSearch.image_id.in_(ids))
    return set(session.scalars(q))


def cells_of_images(session: Session, image_ids: Sequence[int], finder: str) -> dict[int, list[Cell]]:
    """The cells of each image: those ``finder`` found and those reviewers added, in order."""
    out: dict[int, list[Cell]] = {i: [] for i in image_ids}
    if not image_ids:
        return out
    rows = session.scalars(select(Cell).where(Cell.image_id.in_(list(image_ids)),
                                              Cell.finder.in_([finder, ADDED_BY_REVIEWER]))
                           .order_by(Cell.image_id, Cell.source.desc(), Cell.number))
    for c in rows:
        out[c.image_id].append(c)
    return out


def display_numbers(cells: Iterable[Cell]) -> dict[int, int]:
    """cell id -> the one number a person sees for it (the view, the cells CSV's ``cell`` column,
    the PDF report), counted per image from 1: the cells the finder found in its reading order
    (``Cell.number``), then those reviewers added in the order they were added. ``cells``: the
    cells of each image that are listed (its newest finder run's and the added ones), so that
    every reader numbers the same set the same way."""
    by_image: dict[int, list[Cell]] = {}
    for c in cells:
        by_image.setdefault(c.image_id, []).append(c)
    out: dict[int, int] = {}
    for listed in by_image.values():
        listed.sort(key=lambda c: (c.source == "added", c.number, c.id))
        out.update({c.id: k for k, c in enumerate(listed, start=1)})
    return out


def cell_title(file_name: str, number: int) -> str:
    """How a cell is named to a person: its image's file name and its display number."""
    return f"{file_name}: cell {number}"


def add_cell(session: Session, image_id: int, box: tuple[int, int, int, int], um_per_px: float, who: str,
             contour: Sequence[Sequence[int]] | None = None) -> int:
    """A cell the finder missed, marked by a reviewer: a new row (``source`` "added"), its id.
    The outline defaults to the box."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("a cell's box must have a positive width and height")
    number = session.scalar(select(func.coalesce(func.max(Cell.number) + 1, 0))
                            .where(Cell.image_id == image_id, Cell.finder == ADDED_BY_REVIEWER))
    outline = _points(contour) if contour is not None else [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    cell = Cell(image_id=image_id, finder=ADDED_BY_REVIEWER, number=int(number), x0=x0, y0=y0, x1=x1, y1=y1,
                contour=outline, nucleus_contour=None, area_px=(x1 - x0) * (y1 - y0), um_per_px=float(um_per_px),
                flags=[], source="added", added_by=who)
    session.add(cell)
    session.flush()
    return cell.id
