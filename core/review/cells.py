"""The cells of a folder for review (headless): every white cell found in (or added to) the
folder's images, with what the active cell model said about it and its current label,
grouped by predicted class with the least confident first within a class (the order of a
CellaVision verification screen). Qt-free: the desktop's cell view and anyone else who lists
cells use it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.cells.records import ADDED_BY_REVIEWER, counted_cells, counted_searches, display_numbers
from core.review.cell_labels import latest_cell_events, record_cell_labels  # noqa: F401  (re-exported)
from core.imaging.fspath import display
from core.imaging.scan import under_folder
from core.models.taxonomy import get_taxonomy
from core.review.labels import PEER_LOOKBACK_EVENTS, PEER_LOOKBACK_S
from core.models.registry import VersionRef
from core.storage import Cell, CellLabelEvent, CellPrediction, ImageFile, ModelVersion, utcnow

#: The group of a cell whose prediction is outside the model's experience (its class is not shown).
OUTSIDE_GROUP = "Outside the model's experience"
#: The group of a cell the cell model has not classified (yet).
UNCLASSIFIED_GROUP = "Not classified"


@dataclass(frozen=True)
class CellRow:
    cell_id: int
    image_id: int
    path: str  # the image's stored path (core.imaging.fspath.to_fs before opening)
    name: str  # the image's file name, for display
    number: int  # the cell's number in its image, as shown everywhere (core.cells.records.display_numbers)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the original image's grid (x1, y1 exclusive)
    contour: tuple[tuple[int, int], ...]  # outline, original grid
    flags: tuple[str, ...]  # core.cells.finder.CELL_FLAGS
    um_per_px: float
    predicted: str | None
    confidence: float | None
    uncertain: bool
    outside: bool | None  # outside the model's experience; None: not assessed
    probabilities: tuple[float, ...]
    reviewed: str | None  # the current label (latest event of the model's taxonomy)
    reviewer: str | None
    source: str  # found (by the finder) / added (by a reviewer)

    @property
    def group(self) -> str:
        """The heading it is shown under: its predicted class, or why it has none."""
        if self.predicted is None:
            return UNCLASSIFIED_GROUP
        return OUTSIDE_GROUP if self.outside else self.predicted

    @property
    def centre(self) -> tuple[float, float]:  # what core.cells.finder.cut_out centres on
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


def version_taxonomy(session: Session, version_id: int | None) -> str | None:
    if version_id is None:
        return None
    return session.scalar(select(ModelVersion.taxonomy).where(ModelVersion.id == version_id))


def _folder_images(session: Session, folder) -> dict[int, str]:
    """image id -> its first stored path, for the usable images under ``folder``."""
    q = (select(ImageFile.image_id, func.min(ImageFile.path))
         .where(under_folder(ImageFile.path, folder), ImageFile.image_id.is_not(None), ImageFile.missing.is_(False))
         .group_by(ImageFile.image_id))
    return {i: p for i, p in session.execute(q)}


def disagreeing_cells(session: Session, cell_ids: Iterable[int], taxonomy: str | None = None) -> set[int]:
    """Cells whose latest labels by two different reviewers differ (a cleared label is no opinion)."""
    ids = list(cell_ids)
    by_cell: dict[int, dict[str, str | None]] = {}
    for start in range(0, len(ids), 500):
        q = (select(CellLabelEvent.cell_id, CellLabelEvent.reviewer, CellLabelEvent.label)
             .where(CellLabelEvent.cell_id.in_(ids[start:start + 500])).order_by(CellLabelEvent.id))
        if taxonomy is not None:
            q = q.where(CellLabelEvent.taxonomy == taxonomy)
        for cell_id, reviewer, label in session.execute(q):
            by_cell.setdefault(cell_id, {})[reviewer] = label  # in id order: the last one stays
    return {c for c, latest in by_cell.items() if len({v for v in latest.values() if v is not None}) > 1}


def order_key(row: CellRow, classes: list[str] | tuple[str, ...] = ()) -> tuple:
    """Grouped by predicted class (the model's class order), outside-experience and unclassified
    cells after them; the least confident first within a group."""
    group = row.group
    rank = classes.index(group) if group in classes else len(classes) + (0 if group not in (
        OUTSIDE_GROUP, UNCLASSIFIED_GROUP) else 1 if group == OUTSIDE_GROUP else 2)
    conf = row.confidence if row.confidence is not None else 2.0
    return (rank, group, conf, row.image_id, row.cell_id)


def folder_cells(session: Session, folder: str | os.PathLike, cell_version_id: int | None, *,
                 reviewers_disagree: bool = False) -> list[CellRow]:
    """The cells of the images under ``folder`` (those of each image's counted finder run,
    core.cells.records.counted_searches, and those reviewers added), with ``cell_version_id``'s predictions and the current labels of
    its taxonomy, in review order (:func:`order_key`). ``reviewers_disagree``: only the cells
    whose latest labels by two reviewers differ."""
    images = _folder_images(session, folder)
    if not images:
        return []
    taxonomy = version_taxonomy(session, cell_version_id)
    cells: list[Cell] = [c for cs in counted_cells(session, list(images)).values() for c in cs]
    numbers = display_numbers(cells)  # of every listed cell, before any filter
    cell_ids = [c.id for c in cells]
    preds: dict[int, CellPrediction] = {}
    if cell_version_id is not None:
        for start in range(0, len(cell_ids), 500):
            for p in session.scalars(select(CellPrediction).where(
                    CellPrediction.cell_id.in_(cell_ids[start:start + 500]),
                    CellPrediction.model_version_id == cell_version_id)):
                preds[p.cell_id] = p
    events = latest_cell_events(session, cell_ids, taxonomy) if taxonomy is not None else latest_cell_events(
        session, cell_ids)
    if reviewers_disagree:
        keep = disagreeing_cells(session, cell_ids, taxonomy)
        cells = [c for c in cells if c.id in keep]
    rows = []
    for c in cells:
        p, e = preds.get(c.id), events.get(c.id)
        rows.append(CellRow(
            cell_id=c.id, image_id=c.image_id, path=images[c.image_id],
            name=os.path.basename(display(images[c.image_id])), number=numbers[c.id],
            box=(c.x0, c.y0, c.x1, c.y1), contour=tuple((int(x), int(y)) for x, y in (c.contour or ())),
            flags=tuple(c.flags or ()), um_per_px=float(c.um_per_px),
            predicted=p.label if p else None, confidence=p.confidence if p else None,
            uncertain=bool(p.uncertain) if p else False,
            outside=None if p is None or p.out_of_distribution is None else bool(p.out_of_distribution),
            probabilities=tuple(p.probabilities or ()) if p else (),
            reviewed=e.label if e else None, reviewer=e.reviewer if e and e.label is not None else None,
            source=c.source))
    classes: list[str] = []
    if cell_version_id is not None:
        card = session.scalar(select(ModelVersion.card).where(ModelVersion.id == cell_version_id)) or {}
        classes = list(card.get("classes") or ())
    rows.sort(key=lambda r: order_key(r, classes))
    return rows


@dataclass(frozen=True)
class FieldRow:
    """A field (an image) of the case, whether or not a cell was found in it."""

    image_id: int
    path: str  # its stored path
    name: str  # its file name, for display


def folder_fields(session: Session, folder: str | os.PathLike) -> list[FieldRow]:
    """Every usable image under ``folder``, by file name: also those where the finder found no
    cell, so that a reviewer can open any field and add the cells it missed."""
    rows = [FieldRow(i, p, os.path.basename(display(p))) for i, p in _folder_images(session, folder).items()]
    return sorted(rows, key=lambda f: (f.name.lower(), f.path, f.image_id))


def folder_cell_counts(session: Session, folder: str | os.PathLike) -> tuple[int, int]:
    """(cells, images with at least one cell) under ``folder``, counted as :func:`folder_cells`
    lists them: each image's counted finder run's cells (core.cells.records.counted_searches) and
    those reviewers added."""
    images = _folder_images(session, folder)
    finders = {i: c.finder for i, c in counted_searches(session, list(images)).items()}
    per_image: dict[int, int] = {}
    ids = list(images)
    for start in range(0, len(ids), 500):
        for image_id, finder in session.execute(select(Cell.image_id, Cell.finder).where(
                Cell.image_id.in_(ids[start:start + 500]))):
            if finder == ADDED_BY_REVIEWER or finders.get(image_id) == finder:
                per_image[image_id] = per_image.get(image_id, 0) + 1
    return sum(per_image.values()), len(per_image)


def images_with_labelled_cells(session: Session, folder: str | os.PathLike) -> int:
    """How many images under ``folder`` keep their cells whatever the finder is told next: a
    reviewer labelled one of the cells that count (core.cells.records.images_to_search)."""
    ids = list(_folder_images(session, folder))
    return sum(c.labelled for start in range(0, len(ids), 500)
               for c in counted_searches(session, ids[start:start + 500]).values())


def active_cell_version(session: Session) -> dict | None:
    """The active cell model: {"id", "name", "taxonomy", "classes", "architecture", "card", "ref"} (plain
    data: ``ref`` a VersionRef, what a retrain starting from it is given), or None."""
    v = session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True), ModelVersion.input_kind == "cell")
                       .order_by(ModelVersion.id.desc()))
    if v is None:
        return None
    classes = list((v.card or {}).get("classes") or get_taxonomy(v.taxonomy).classes)
    return {"id": v.id, "name": v.name, "taxonomy": v.taxonomy, "classes": classes, "architecture": v.architecture,
            "card": dict(v.card or {}), "ref": VersionRef.of(v), "input_kind": v.input_kind}


def image_scale(session: Session, image_id: int) -> float | None:
    """um per pixel of the image's counted cell search (what a cell added by hand is cut out at)."""
    counted = counted_searches(session, [image_id]).get(image_id)
    return counted.um_per_px if counted is not None else None


# ---- other seats' cell labels: what changed since the last look --------------------------

@dataclass(frozen=True)
class CellLabelChanges:
    """Cell label events stored since a poll: pass ``last_event_id`` to the next one."""

    last_event_id: int
    cell_ids: tuple[int, ...] = ()  # cells (of images under the folder asked about) whose label changed
    reviewers: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.cell_ids)


def last_cell_event_id(session: Session) -> int:
    """The newest cell label event's id (0 when there is none): where a window starts polling."""
    return session.scalar(select(func.max(CellLabelEvent.id))) or 0


def cell_label_changes_since(session: Session, after_event_id: int, folder: str | os.PathLike,
                             lookback_s: float = PEER_LOOKBACK_S) -> CellLabelChanges:
    """The cells under ``folder`` whose label changed since cell event ``after_event_id`` (from
    any seat or the command line), as core.review.labels.label_changes_since does for images
    (events of the last ``lookback_s`` seconds come again: a late commit is not missed)."""
    recent = utcnow() - timedelta(seconds=lookback_s)
    images = select(ImageFile.image_id).where(under_folder(ImageFile.path, folder), ImageFile.image_id.is_not(None))
    q = (select(CellLabelEvent.id, CellLabelEvent.cell_id, CellLabelEvent.reviewer)
         .join(Cell, Cell.id == CellLabelEvent.cell_id)
         .where(CellLabelEvent.id > after_event_id - PEER_LOOKBACK_EVENTS,
                (CellLabelEvent.id > after_event_id) | (CellLabelEvent.created_at >= recent),
                Cell.image_id.in_(images))
         .order_by(CellLabelEvent.id))
    ids: dict[int, None] = {}
    who: dict[str, None] = {}
    for _event_id, cell_id, reviewer in session.execute(q):
        ids[cell_id] = None
        who[reviewer] = None
    # the newest id overall, also when it was under another folder: the next poll starts there
    return CellLabelChanges(max(after_event_id, last_cell_event_id(session)), tuple(ids), tuple(who))


def current_cell_labels(session: Session, cell_ids: Iterable[int], taxonomy: str | None
                        ) -> tuple[dict[int, tuple[str | None, str | None]], set[int]]:
    """cell id -> (current label, its reviewer) for ``cell_ids`` (None, None: never labelled or
    cleared), and which of them two reviewers now disagree on."""
    ids = list(cell_ids)
    events = latest_cell_events(session, ids, taxonomy) if ids else {}
    out: dict[int, tuple[str | None, str | None]] = {i: (None, None) for i in ids}
    for i, e in events.items():
        out[i] = (e.label, e.reviewer if e.label is not None else None)
    return out, disagreeing_cells(session, ids, taxonomy)
