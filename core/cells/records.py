"""Cells as records: what the finder found in an image, written with the image's content-hash
identity, idempotently (a re-run, or a run after a kill, adds nothing twice). The caller owns
the transaction: one per batch of images."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.storage import Cell, CellLabelEvent, CellSearch
from core.storage.dbutil import insert_ignore

if TYPE_CHECKING:  # the finder's types; records need only their attributes
    from core.cells.finder import FieldCells

#: ``Cell.finder`` of a cell a reviewer added by hand (the finder missed it).
ADDED_BY_REVIEWER = "reviewer"
#: ``CellSearch.scale_source`` of a search that did not look for cells: the image carries no
#: colour, and white cells are found by their stain's colour (recorded, so it is said, not retried).
GRAYSCALE = "grayscale"


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


# ---- which search counts: one rule for the Cells view, the differential, the export and classify --

_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True)
class CountedSearch:
    """The finder run whose cells count for an image (see :func:`counted_searches`)."""

    image_id: int
    finder: str
    um_per_px: float
    scale_source: str
    n_cells: int
    single_cell_crop: bool
    labelled: bool  # a reviewer labelled (or cleared) one of its cells: it is never replaced


def counted_searches(session: Session, image_ids: Iterable[int]) -> dict[int, CountedSearch]:
    """Per searched image, the search whose cells count: the newest search one of whose cells
    carries a cell label event, else the newest search. So a newer finder version replaces an
    older search nobody reviewed, and never hides a reviewer's work (an image whose cells were
    labelled keeps that search; :func:`images_to_search` does not search it again). Exactly one
    search counts per image: no cell is counted twice."""
    ids = list(dict.fromkeys(image_ids))
    out: dict[int, CountedSearch] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        labelled = set(session.execute(
            select(Cell.image_id, Cell.finder).join(CellLabelEvent, CellLabelEvent.cell_id == Cell.id)
            .where(Cell.image_id.in_(chunk), Cell.finder != ADDED_BY_REVIEWER).distinct()).all())
        best: dict[int, tuple[tuple[bool, int], CountedSearch]] = {}
        for sid, image_id, finder, um, source, n, single in session.execute(
                select(CellSearch.id, CellSearch.image_id, CellSearch.finder, CellSearch.um_per_px,
                       CellSearch.scale_source, CellSearch.n_cells, CellSearch.single_cell_crop)
                .where(CellSearch.image_id.in_(chunk))):
            is_labelled = (image_id, finder) in labelled
            rank = (is_labelled, sid)
            if image_id not in best or rank > best[image_id][0]:
                best[image_id] = (rank, CountedSearch(image_id, finder, float(um), source, int(n or 0),
                                                      bool(single), is_labelled))
        out.update({i: c for i, (_, c) in best.items()})
    return out


def images_to_search(session: Session, finder: str, image_ids: Iterable[int],
                     also_current: Iterable[str] = ()) -> set[int]:
    """Of ``image_ids``, those the finder ``finder`` should run on: never searched, or whose
    counted search is an unlabelled one by another finder (a new version, or the same method
    told another image kind: core.cells.finder.finder_name, replaces it). A search by one of
    ``also_current`` stays too (import-labels keeps whatever kind a classify was told)."""
    ids = list(dict.fromkeys(image_ids))
    counted = counted_searches(session, ids)
    current = {finder, *also_current}
    return {i for i in ids if i not in counted or (counted[i].finder not in current and not counted[i].labelled)}


def counted_cells(session: Session, image_ids: Sequence[int],
                  counted: dict[int, CountedSearch] | None = None) -> dict[int, list[Cell]]:
    """The cells that count for each image: those of its counted search and those reviewers
    added, found ones first, in order (an image never searched: only its added cells)."""
    counted = counted_searches(session, image_ids) if counted is None else counted
    by_finder: dict[str, list[int]] = {}
    for i in image_ids:
        by_finder.setdefault(counted[i].finder if i in counted else ADDED_BY_REVIEWER, []).append(i)
    out: dict[int, list[Cell]] = {i: [] for i in image_ids}
    for finder, ids in by_finder.items():
        for start in range(0, len(ids), _CHUNK):
            out.update(cells_of_images(session, ids[start:start + _CHUNK], finder))
    return out


def display_numbers(cells: Iterable[Cell]) -> dict[int, int]:
    """cell id -> the one number a person sees for it (the view, the cells CSV's ``cell`` column,
    the PDF report), counted per image from 1: the cells the finder found in its reading order
    (``Cell.number``), then those reviewers added in the order they were added. ``cells``: the
    cells of each image that are listed (those of its counted finder run, :func:`counted_searches`,
    and the added ones), so that every reader numbers the same set the same way."""
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
