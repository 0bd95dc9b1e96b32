"""Reviewed labels as training data, read from the database for the trainer (which holds
no SQL): the latest label per image, the fixed train / validation side of every reviewed
image, and the files that are still there.

Validation assignment: each reviewed image gets ``images.split`` = ``train`` or ``val``
once, from its content hash (``int(sha256[:16], 16) / 2**64 < val_fraction`` -> val),
and keeps it forever, so a validation image never leaks into a later training run.
Near duplicates (core.imaging.duplicates, within ``phash_distance`` bits) are joined into groups;
a group follows the side of any member that already has one, else the hash of its
smallest SHA-256 decides for the whole group. Exact duplicates are one ``images`` row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models.registry import active_version, require_active_version
from core.storage import (Cell, CellLabelEvent, CellPrediction, CellSearch, Database, Image, ImageFile, LabelEvent,
                          ModelVersion)
from core.cells.finder import decode_for_cells
from core.cells.signature import lab_signatures
from core.imaging.fspath import to_fs
from core.imaging.images import read_and_hash
from core.inference.cells import cell_model_inputs, stored_cell
from core.models.registry import CELL, input_kind_of
from core.imaging.duplicates import NEAR_DUPLICATE_BITS, duplicate_pairs, hamming, hash_int, union_find
from core.models.taxonomy import OTHER
from core.models.taxonomy import get_taxonomy
from core.errors import ImageError
from core.imaging.images import FileChanged
from core.inference.predict import Predictor

SPLIT_TRAIN = "train"
SPLIT_VAL = "val"


def _hash_fraction(sha256: str) -> float:
    return int(sha256[:16], 16) / 2.0**64

def _chunks(seq: list, n: int = 900):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def assign_splits(session, image_ids: Iterable[int], val_fraction: float = 0.2, phash_distance: int = 4) -> dict[int, str]:
    """Give every image in ``image_ids`` without one a fixed side (see module doc) and
    store it in ``images.split``. Returns image_id -> side for all of ``image_ids``."""
    from sqlalchemy import select, update

    ids = list(dict.fromkeys(int(i) for i in image_ids))
    rows = []
    for chunk in _chunks(ids):
        rows += session.execute(select(Image.id, Image.sha256, Image.phash, Image.split).where(Image.id.in_(chunk))).all()
    out = {r.id: r.split for r in rows if r.split}
    todo = [r for r in rows if not r.split]
    if not todo:
        return out
    anchors = session.execute(select(Image.phash, Image.split).where(Image.split.is_not(None))).all()
    a_ph = np.array([hash_int(p) for p, _ in anchors], dtype=np.uint64)
    a_side = [s for _, s in anchors]
    t_ph = np.array([hash_int(r.phash) for r in todo], dtype=np.uint64)
    n = len(todo)
    root = union_find(n, duplicate_pairs([r.sha256 for r in todo], t_ph, phash_distance))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(int(root[i]), []).append(i)
    for members in groups.values():
        inherited: set[str] = set()
        if len(a_ph):
            for i in members:
                near = np.nonzero(hamming(a_ph, t_ph[i]) <= phash_distance)[0]
                inherited.update(a_side[k] for k in near)
        if inherited:  # a near duplicate already has a side: follow it (val wins a conflict: no leak)
            side = SPLIT_VAL if SPLIT_VAL in inherited else SPLIT_TRAIN
        else:
            key = min(todo[i].sha256 for i in members)
            side = SPLIT_VAL if _hash_fraction(key) < val_fraction else SPLIT_TRAIN
        for i in members:
            out[todo[i].id] = side
    by_side: dict[str, list[int]] = {}
    for r in todo:
        by_side.setdefault(out[r.id], []).append(r.id)
    for side, sids in by_side.items():
        for chunk in _chunks(sids):
            session.execute(update(Image).where(Image.id.in_(chunk), Image.split.is_(None)).values(split=side))
    session.flush()
    return out


# ---- training data -------------------------------------------------------------------------


def reviewed_labels(session, taxonomy: str, sources: Iterable[str] = ("human",)) -> dict[int, str]:
    """image_id -> label: the latest event per image among ``sources`` wins; an image
    whose latest such event cleared its label (or is of another taxonomy) is left out."""
    from sqlalchemy import func, select

    latest = (select(func.max(LabelEvent.id)).where(LabelEvent.source.in_(list(sources)))
              .group_by(LabelEvent.image_id).scalar_subquery())
    out: dict[int, str] = {}
    for image_id, label, tax in session.execute(
            select(LabelEvent.image_id, LabelEvent.label, LabelEvent.taxonomy).where(LabelEvent.id.in_(latest))):
        if label is not None and tax == taxonomy:
            out[image_id] = label
    return out


def _present_paths(session, ids: list[int]) -> dict[int, tuple[str, str]]:
    from sqlalchemy import func, select

    out = {}
    for chunk in _chunks(ids):
        for image_id, path, sha in session.execute(
                select(ImageFile.image_id, func.min(ImageFile.path), Image.sha256)
                .join(Image, Image.id == ImageFile.image_id)
                .where(ImageFile.image_id.in_(chunk), ImageFile.missing.is_(False))
                .group_by(ImageFile.image_id, Image.sha256)):
            out[image_id] = (path, sha)
    return out


def reviewed_summary(db: Database, taxonomy: str = "all_subtype", sources: Iterable[str] = ("human",),
                     cells: bool = False) -> dict:
    """Per-class counts of reviewed images (``cells``: reviewed cells, each on its field's side)
    and their (existing or future) side, without assigning anything: what the Retrain dialog
    shows before a run."""
    from sqlalchemy import select

    with db.session() as s:
        if cells:

            labels = reviewed_cell_labels(s, taxonomy, sources)
            image_of: dict[int, int] = {}
            for chunk in _chunks(list(labels)):
                image_of.update(dict(s.execute(select(Cell.id, Cell.image_id).where(Cell.id.in_(chunk))).all()))
        else:
            labels = reviewed_labels(s, taxonomy, sources)
            image_of = {i: i for i in labels}
        sides = {}
        for chunk in _chunks(sorted(set(image_of.values()))):
            sides.update(dict(s.execute(select(Image.id, Image.split).where(Image.id.in_(chunk))).all()))

    classes = list(get_taxonomy(taxonomy).classes)
    per = {c: {"reviewed": 0, "val": 0} for c in classes}
    for i, lab in labels.items():
        if lab in per:
            per[lab]["reviewed"] += 1
            per[lab]["val"] += sides.get(image_of.get(i)) == SPLIT_VAL
    return {"taxonomy": taxonomy, "per_class": per, "n_reviewed": len(labels), "cells": cells,
            "n_unassigned": sum(1 for i in labels if not sides.get(image_of.get(i)))}


def learns_from_cells(db: Database, card: dict, sources: Iterable[str] = ("human",)) -> bool:
    """Whether a retrain of the version with ``card`` learns from cell labels: a cell model does,
    except one that sees single-cell crops whole and has no cell label yet (it learns from crops
    labelled as images, as before cells were found)."""

    if input_kind_of(card) != CELL:
        return False
    return (card.get("cell_crops") or "whole") != "whole" or has_cell_labels(db, card["taxonomy"], sources)


def present_paths(session, ids: list[int]) -> dict[int, tuple[str, str]]:
    """image_id -> (stored path of a file still there, SHA-256); images whose files are all gone are left out."""
    return _present_paths(session, ids)


@dataclass
class ReviewedImages:
    """What retrain trains on, as plain data: image_id -> label, side and (path, sha256)."""
    labels: dict[int, str]
    sides: dict[int, str]
    files: dict[int, tuple[str, str]]
    other: dict[int, tuple[str, str]]  # reviewed "Other": (path, sha256) of those still there
    val_hashes: dict[str, str | None] = field(default_factory=dict)  # sha256 -> phash of the validation side


def reviewed_images(db: Database, taxonomy: str, classes: list[str], sources: Iterable[str] = ("human",),
                    val_fraction: float = 0.2, phash_distance: int = NEAR_DUPLICATE_BITS) -> ReviewedImages:
    """The reviewed images of ``classes`` (sides assigned where new, in one transaction) and
    those reviewed as "Other"."""
    from sqlalchemy import select

    with db.session() as s:
        labels = reviewed_labels(s, taxonomy, sources)
        other_ids = [i for i, lab in labels.items() if lab == OTHER]
        labels = {i: lab for i, lab in labels.items() if lab in classes}
        sides = assign_splits(s, labels, val_fraction, phash_distance)
        files = _present_paths(s, list(labels))
        other = _present_paths(s, other_ids)
        val_hashes: dict[str, str | None] = {}
        for chunk in _chunks([i for i in labels if sides.get(i) == SPLIT_VAL]):
            val_hashes.update(dict(s.execute(select(Image.sha256, Image.phash).where(Image.id.in_(chunk))).all()))
    return ReviewedImages(labels, sides, files, other, val_hashes)


def validation_side(db: Database, taxonomy: str, classes: list[str], sources: Iterable[str] = ("human",)
                    ) -> list[tuple[str, int, str]]:
    """The lab's fixed validation images of ``taxonomy`` (set aside by the first retrain,
    never trained on): (stored path, class index, sha256) of those whose files are there."""
    from sqlalchemy import select

    with db.session() as s:
        labels = {i: lab for i, lab in reviewed_labels(s, taxonomy, sources).items() if lab in classes}
        val = []
        for chunk in _chunks(list(labels)):
            val += [i for (i,) in s.execute(select(Image.id).where(Image.id.in_(chunk), Image.split == SPLIT_VAL))]
        files = _present_paths(s, val)
    return [(files[i][0], classes.index(labels[i]), files[i][1]) for i in sorted(files)]


def measure_on_validation_side(db: Database, versions: list[dict], cancel=None) -> dict[str, dict]:
    """Every version (plain dicts: name, path, taxonomy, classes) on the same images: its
    taxonomy's fixed validation side. name -> {n, accuracy, macro_recall} (n = 0: none yet).
    What the model panel shows beside the cards' own figures, which come from different sets."""

    out: dict[str, dict] = {}
    sides: dict[str, list] = {}
    for v in versions:
        if cancel is not None and cancel.is_set():
            break
        key = v["taxonomy"]
        if key not in sides:
            sides[key] = validation_side(db, key, list(v["classes"]))
        items = sides[key]
        if not items:
            out[v["name"]] = {"n": 0}
            continue
        pred = Predictor(v["path"])
        x, y = [], []
        for path, label, sha in items:
            try:
                x.append(pred.load_image(path, sha))
                y.append(label)
            except (OSError, ImageError, FileChanged):
                continue  # gone or changed since review: not part of the basis
        if not x:
            out[v["name"]] = {"n": 0}
            continue
        y_arr = np.array(y)
        probs = np.concatenate([pred.predict(np.stack(x[i : i + 64])) for i in range(0, len(x), 64)])
        hit = probs.argmax(1) == y_arr
        recalls = [hit[y_arr == c].mean() for c in np.unique(y_arr)]
        out[v["name"]] = {"n": int(len(y_arr)), "accuracy": float(hit.mean()), "macro_recall": float(np.mean(recalls))}
    return out


def retrain_parent(session: Session) -> ModelVersion:
    """The version a retrain starts from when none is named: the active field model, unless
    only the active cell model's taxonomy has reviewed labels (a lab reviewing single cells)."""
    field = require_active_version(session)
    cell = active_version(session, "cell")
    if cell is None or cell.taxonomy == field.taxonomy:
        return field

    def labelled(taxonomy: str) -> bool:  # images or, for a cell model's taxonomy, cells

        return any(session.scalar(select(event.id).where(event.taxonomy == taxonomy).limit(1)) is not None
                   for event in (LabelEvent, CellLabelEvent))

    return cell if labelled(cell.taxonomy) and not labelled(field.taxonomy) else field


# ---- reviewed cells ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewedCell:
    """A reviewed cell as plain data, enough to cut it out again as a cell model sees it."""
    cell_id: int
    image_id: int
    path: str  # stored path of a file of its image still there
    sha256: str  # its image's
    box: tuple[int, int, int, int]  # original pixel grid
    contour: list
    um_per_px: float
    single_cell_crop: bool  # its image is a pre-cut single-cell crop
    label: str
    side: str  # its image's fixed side (SPLIT_TRAIN / SPLIT_VAL): the cells of one field never straddle


def reviewed_cell_labels(session, taxonomy: str, sources: Iterable[str] = ("human",)) -> dict[int, str]:
    """cell_id -> label, as reviewed_labels for images: the latest event among ``sources`` wins."""
    from sqlalchemy import func


    latest = (select(func.max(CellLabelEvent.id)).where(CellLabelEvent.source.in_(list(sources)))
              .group_by(CellLabelEvent.cell_id).scalar_subquery())
    return {cell_id: label for cell_id, label, tax in session.execute(
        select(CellLabelEvent.cell_id, CellLabelEvent.label, CellLabelEvent.taxonomy)
        .where(CellLabelEvent.id.in_(latest))) if label is not None and tax == taxonomy}


def has_cell_labels(db: Database, taxonomy: str, sources: Iterable[str] = ("human",)) -> bool:
    """Whether any cell has a label event of ``taxonomy`` from ``sources``."""

    with db.session() as s:
        return s.scalar(select(CellLabelEvent.id).where(CellLabelEvent.taxonomy == taxonomy,
                                                        CellLabelEvent.source.in_(list(sources))).limit(1)) is not None


def reviewed_cells(db: Database, taxonomy: str, classes: list[str], sources: Iterable[str] = ("human",),
                   val_fraction: float = 0.2, phash_distance: int = NEAR_DUPLICATE_BITS
                   ) -> tuple[list[ReviewedCell], list[ReviewedCell]]:
    """The reviewed cells of ``classes`` and those reviewed "Other", whose image's file is still
    there. Each takes its image's fixed train/validation side (assigned where new, in this
    transaction, exactly as for reviewed images: near duplicates together), so cells of one
    field, and of near-duplicate fields, are never split between training and validation."""
    with db.session() as s:
        labels = {c: lab for c, lab in reviewed_cell_labels(s, taxonomy, sources).items()
                  if lab in classes or lab == OTHER}
        rows = _cell_rows(s, list(labels))
        sides = assign_splits(s, sorted({r.image_id for r in rows}), val_fraction, phash_distance)
        cells = _plain_cells(s, rows, labels, sides)
    return [c for c in cells if c.label != OTHER], [c for c in cells if c.label == OTHER]


def _cell_rows(session, cell_ids: list[int]) -> list:

    rows = []
    for chunk in _chunks(cell_ids):
        rows += session.execute(select(Cell.id, Cell.image_id, Cell.finder, Cell.x0, Cell.y0, Cell.x1, Cell.y1,
                                       Cell.contour, Cell.um_per_px).where(Cell.id.in_(chunk))).all()
    return sorted(rows, key=lambda r: r.id)


def _plain_cells(session, rows: list, labels: dict[int, str], sides: dict[int, str]) -> list[ReviewedCell]:
    """Rows of cells -> ReviewedCell, those whose image has a file still there."""

    image_ids = sorted({r.image_id for r in rows})
    files = _present_paths(session, image_ids)
    crops: set[tuple[int, str]] = set()
    for chunk in _chunks(image_ids):
        crops.update(session.execute(select(CellSearch.image_id, CellSearch.finder).where(
            CellSearch.image_id.in_(chunk), CellSearch.single_cell_crop.is_(True))).all())
    return [ReviewedCell(r.id, r.image_id, *files[r.image_id], (r.x0, r.y0, r.x1, r.y1), r.contour, r.um_per_px,
                         (r.image_id, r.finder) in crops, labels.get(r.id, ""), sides.get(r.image_id, ""))
            for r in rows if r.image_id in files]


def lab_cells(db: Database, version_id: int, limit: int) -> tuple[list[ReviewedCell], list[bool | None]]:
    """The lab's own cells for checking a retrained cell model against its parent (what
    core.models.labsample.lab_sample is for images): up to ``limit`` cells the parent classified,
    a fixed sample (by image content hash, then cell), with the parent's stored "outside its
    experience" flag. Unlabelled: ``label`` and ``side`` are empty."""

    with db.session() as s:
        picked = s.execute(
            select(CellPrediction.cell_id, CellPrediction.out_of_distribution)
            .join(Cell, Cell.id == CellPrediction.cell_id).join(Image, Image.id == Cell.image_id)
            .where(CellPrediction.model_version_id == version_id)
            .order_by(Image.sha256, Cell.id).limit(limit)).all()
        outside = {cid: (None if o is None else bool(o)) for cid, o in picked}
        cells = _plain_cells(s, _cell_rows(s, list(outside)), {}, {})
    return cells, [outside[c.cell_id] for c in cells]


def cell_inputs(cells: list[ReviewedCell], prep, side_um: float, cell_crops: str = "whole",
                max_bytes: int | None = None, signatures: list | None = None
                ) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """The cell model's inputs for ``cells`` (``prep``, ``side_um``, ``cell_crops``: its card's),
    cut out exactly as classify cuts them
    (core.inference.cells.cell_model_inputs), each field read and decoded once: uint8
    (N, S, S, 3), the cell ids in that order, and cell_id -> why for those left out (the file
    changed since it was scanned, or cannot be read). ``signatures``: a list that receives each
    cell's lab signature in the same order (core.cells.signature, as classify computes it)."""

    by_image: dict[int, list[ReviewedCell]] = {}
    for c in cells:
        by_image.setdefault(c.image_id, []).append(c)
    out, ids, failed = [], [], {}
    for group in by_image.values():
        first = group[0]
        try:
            content = read_and_hash(to_fs(first.path), max_bytes)
            if content.sha256 != first.sha256:
                raise FileChanged("the file changed after it was reviewed")
            rgb, reduced_by = decode_for_cells(content.data)
            for c in group:
                x = cell_model_inputs(content.data, rgb, reduced_by, [stored_cell(c.box, c.contour)], c.um_per_px,
                                      c.single_cell_crop, prep, side_um, cell_crops)
                out.append(x[0])
                ids.append(c.cell_id)
                if signatures is not None:
                    signatures.append(lab_signatures(rgb, reduced_by, [stored_cell(c.box, c.contour)], c.um_per_px,
                                                     side_um)[0])
        except (OSError, ImageError, FileChanged) as exc:
            failed.update({c.cell_id: str(exc) for c in group})
    size = prep.input_size
    return (np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)), ids, failed
