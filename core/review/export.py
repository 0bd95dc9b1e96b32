"""Exporters, by format name (a registry). ``csv``: one row per image file: where it is, what
the model said, and what a person said. ``cells``: one row per cell of those images, the same
for each cell (its box in the original image, the active cell model's prediction, its label).

Every value is written so a spreadsheet shows it as text, never runs it as a formula
(:func:`spreadsheet_safe`): a reviewer's name or a file name is anyone's input."""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.cells.records import counted_cells, counted_searches, display_numbers
from core.errors import HemascanError
from core.storage import CellPrediction, Database, Image, ImageFile, ModelVersion, Prediction
from core.imaging.fspath import display
from core.review.cell_labels import latest_cell_events
from core.review.labels import latest_events
from core.models.registry import active_version, get_version
from core.imaging.scan import under_folder

#: What a spreadsheet reads as the start of a formula (OWASP, "CSV injection"): = + - @, and
#: tab and carriage return, which some programs skip before looking for one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


#: A plain number written as text ("-0.25", "+3", "1e-5"): a spreadsheet reads it as a number,
#: never as a formula, so it is left as it is (numbers stay numbers).
PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(value):
    """A text value that a spreadsheet would run as a formula, prefixed with a single quote
    so it shows as text (OWASP's advice); a number, or a plain number as text, unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


#: Characters that change the direction of the text around them (embeddings, overrides,
#: isolates, marks). A U+202E in a file name reversed a whole caption of the PDF report.
BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
FSI, PDI = "\u2068", "\u2069"  # first-strong isolate ... pop directional isolate


def bidi_isolated(value) -> str:
    """A name or note as a document shows it: its own direction controls removed, and the rest
    isolated (FSI ... PDI), so a right-to-left name reads right to left inside it and never
    reorders the text around it."""
    return FSI + BIDI_CONTROLS.sub("", str(value)) + PDI


#: What the label event says beside the label: the note (an "Other" label's note), the database
#: login that gave it, and for a change to a released case, the amendment's reason.
LABEL_DETAIL_COLUMNS = ("note", "reviewer_login", "amend_reason")


def label_details(ev) -> dict:
    return {"note": (ev.note or "") if ev else "", "reviewer_login": (ev.login or "") if ev else "",
            "amend_reason": (ev.amend_reason or "") if ev else ""}


def export_rows(session: Session, folder: str | os.PathLike | None = None,
                version: ModelVersion | None = None) -> tuple[list[str], Iterator[dict]]:
    version = version or active_version(session)
    classes = list(version.card["classes"]) if version else []
    # One row per file present on disk: byte-identical copies share one image (and so one
    # prediction and label) but a lab looks files up by path.
    q = (
        select(Image.id, Image.sha256, ImageFile.path)
        .join(ImageFile, ImageFile.image_id == Image.id)
        .where(ImageFile.missing.is_(False))
        .order_by(ImageFile.path)
    )
    if folder is not None:
        q = q.where(under_folder(ImageFile.path, folder))
    rows = session.execute(q).all()
    columns = ["path", "sha256", "predicted_label", "confidence", "entropy", "uncertain", "out_of_distribution",
               *[f"p_{c}" for c in classes], "reviewed_label", "reviewer", "reviewed_at", "label_source",
               "model_version", "runtime", *LABEL_DETAIL_COLUMNS]

    def gen() -> Iterator[dict]:
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            ids = list({r[0] for r in chunk})
            preds = {}
            if version is not None:
                preds = {p.image_id: p for p in session.scalars(
                    select(Prediction).where(Prediction.model_version_id == version.id, Prediction.image_id.in_(ids)))}
            labels = latest_events(session, ids)
            for image_id, sha, path in chunk:
                p, ev = preds.get(image_id), labels.get(image_id)
                row = {"path": display(path), "sha256": sha,
                       "predicted_label": p.label if p else "", "confidence": f"{p.confidence:.4f}" if p else "",
                       "entropy": f"{p.entropy:.4f}" if p else "", "uncertain": int(p.uncertain) if p else "",
                       # 1: outside the model's experience (foreign-image guard); empty: not assessed
                       "out_of_distribution": "" if p is None or p.out_of_distribution is None
                       else int(p.out_of_distribution),
                       "reviewed_label": ev.label or "" if ev else "", "reviewer": ev.reviewer if ev else "",
                       "reviewed_at": ev.created_at.isoformat() if ev else "", "label_source": ev.source if ev else "",
                       "model_version": version.name if (p and version) else "",
                       "runtime": (p.runtime or "") if p else "", **label_details(ev)}
                for c, prob in zip(classes, p.probabilities if p else [""] * len(classes)):
                    row[f"p_{c}"] = f"{prob:.4f}" if p else ""
                yield row

    return columns, gen()


def _write_csv(output: str | os.PathLike, columns: list[str], rows: Iterator[dict]) -> int:
    """Write rows as they come, atomically (temp file, then rename); return how many."""
    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp")
    n = 0
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({k: spreadsheet_safe(v) for k, v in row.items()})
            n += 1
    os.replace(tmp, output)
    return n


def export_csv(db: Database, output: str | os.PathLike, folder=None, model: str | None = None) -> int:
    """One row per image file; ``model``: whose predictions (default: the active model)."""
    with db.session() as s:
        version = get_version(s, model) if model else None
        return _write_csv(output, *export_rows(s, folder, version))


# ---- cells --------------------------------------------------------------------------------

def cell_rows(session: Session, folder: str | os.PathLike | None = None,
              version: ModelVersion | None = None) -> tuple[list[str], Iterator[dict]]:
    """One row per cell (those the finder found and those reviewers added) of every image file
    under ``folder``; predictions of ``version`` (default: the active cell model)."""
    version = version or active_version(session, "cell")
    classes = list(version.card["classes"]) if version else []
    q = (select(Image.id, Image.sha256, ImageFile.path)
         .join(ImageFile, ImageFile.image_id == Image.id)
         .where(ImageFile.missing.is_(False))
         .order_by(ImageFile.path))
    if folder is not None:
        q = q.where(under_folder(ImageFile.path, folder))
    files = session.execute(q).all()
    columns = ["path", "sha256", "cell", "cell_id", "source", "x0", "y0", "x1", "y1", "um_per_px", "scale_source",
               "flags", "predicted_label", "confidence", "entropy", "uncertain", "out_of_distribution",
               *[f"p_{c}" for c in classes], "reviewed_label", "reviewer", "reviewed_at", "label_source",
               "model_version", "runtime", *LABEL_DETAIL_COLUMNS]

    def gen() -> Iterator[dict]:
        for start in range(0, len(files), 500):
            chunk = files[start : start + 500]
            image_ids = list({r[0] for r in chunk})
            # the cells that count (core.cells.records.counted_searches, as the Cells view and the
            # differential count them: a labelled older finder run is kept, none counted twice)
            counted = counted_searches(session, image_ids)
            cells = counted_cells(session, image_ids, counted)
            scale = {i: c.scale_source for i, c in counted.items()}
            cell_ids = [c.id for cs in cells.values() for c in cs]
            preds = {}
            if version is not None and cell_ids:
                preds = {p.cell_id: p for p in session.scalars(select(CellPrediction).where(
                    CellPrediction.model_version_id == version.id, CellPrediction.cell_id.in_(cell_ids)))}
            labels = latest_cell_events(session, cell_ids)
            numbers = display_numbers(c for cs in cells.values() for c in cs)
            for image_id, sha, path in chunk:
                for c in sorted(cells[image_id], key=lambda c: numbers[c.id]):
                    p, ev = preds.get(c.id), labels.get(c.id)
                    row = {"path": display(path), "sha256": sha, "cell": numbers[c.id], "cell_id": c.id, "source": c.source,
                           "x0": c.x0, "y0": c.y0, "x1": c.x1, "y1": c.y1, "um_per_px": f"{c.um_per_px:.5f}",
                           "scale_source": scale.get(image_id, ""), "flags": " ".join(c.flags),
                           "predicted_label": p.label if p else "",
                           "confidence": f"{p.confidence:.4f}" if p else "",
                           "entropy": f"{p.entropy:.4f}" if p else "", "uncertain": int(p.uncertain) if p else "",
                           "out_of_distribution": "" if p is None or p.out_of_distribution is None
                           else int(p.out_of_distribution),
                           "reviewed_label": ev.label or "" if ev else "", "reviewer": ev.reviewer if ev else "",
                           "reviewed_at": ev.created_at.isoformat() if ev else "",
                           "label_source": ev.source if ev else "",
                           "model_version": version.name if (p and version) else "",
                           "runtime": (p.runtime or "") if p else "", **label_details(ev)}
                    for cls, prob in zip(classes, p.probabilities if p else [""] * len(classes)):
                        row[f"p_{cls}"] = f"{prob:.4f}" if p else ""
                    yield row

    return columns, gen()


def export_cells_csv(db: Database, output: str | os.PathLike, folder=None, model: str | None = None) -> int:
    """One row per cell; ``model``: a cell model's name (default: the active cell model)."""
    with db.session() as s:
        version = None
        if model:
            version = get_version(s, model)
            if version.input_kind != "cell":
                raise HemascanError(f"{model!r} classifies whole images, not cells: name a cell model "
                                    "(hemascan models list)")
        return _write_csv(output, *cell_rows(s, folder, version))


EXPORTERS: dict[str, Callable[..., int]] = {"csv": export_csv, "cells": export_cells_csv}
