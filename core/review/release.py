"""Release of a case (issue 24): a supervisor signs a case off; the release is an append-only
event holding the SHA-256 of the exact PDF produced and of the case's label state. A released
case is read-only (core/review/released.py); a change afterwards is an amendment with a reason,
listed in the next report ("amended after release: who, when, why") and in the history."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import CaseReleasedError
from core.imaging.fspath import display
from core.imaging.scan import folder_prefix, images_under
from core.review.cases import case_name
from core.review.cell_labels import latest_cell_events
from core.review.labels import latest_events
from core.storage import Cell, CellLabelEvent, Image, LabelEvent, ReleaseEvent, utcnow
from core.storage.identity import current_identity


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def label_state(session: Session, folder: str | os.PathLike) -> dict:
    """The case's current labels, canonically: each image by its content hash with its label,
    taxonomy and note; each cell by (image hash, finder, number) with the same."""
    ids = [i for i, _ in images_under(session, folder)]
    sha = dict(session.execute(select(Image.id, Image.sha256).where(Image.id.in_(ids))).all()) if ids else {}
    images = []
    for image_id, ev in latest_events(session, ids).items():
        if ev.label is not None:
            images.append([sha[image_id], ev.taxonomy, ev.label, ev.note or ""])
    cells_of = {c.id: c for c in session.scalars(select(Cell).where(Cell.image_id.in_(ids)))} if ids else {}
    cells = []
    for cell_id, ev in latest_cell_events(session, list(cells_of)).items():
        if ev.label is not None:
            c = cells_of[cell_id]
            cells.append([sha[c.image_id], c.finder, c.number, ev.taxonomy, ev.label, ev.note or ""])
    return {"images": sorted(images), "cells": sorted(cells)}


def label_state_sha256(session: Session, folder: str | os.PathLike) -> str:
    canonical = json.dumps(label_state(session, folder), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def releases(session: Session, folder: str | os.PathLike) -> list[ReleaseEvent]:
    """The case's releases, oldest first."""
    return list(session.scalars(select(ReleaseEvent).where(ReleaseEvent.case_root == folder_prefix(folder))
                                .order_by(ReleaseEvent.id)))


def record_release(session: Session, folder: str | os.PathLike, pdf: str | os.PathLike,
                   local_name: str | None = None, when: datetime | None = None,
                   labels_sha256: str | None = None) -> ReleaseEvent:
    """Record that this seat's login released the case in ``folder`` with the report ``pdf``
    (already written). A supervisor's act (NotPermittedError, and on PostgreSQL the privileges
    on release_events, refuse anyone else). ``labels_sha256``: the label state the PDF was
    made from; the release is refused if the labels changed since. The caller's transaction commits."""
    ident = current_identity(session, local_name)
    ident.check("release")
    state = label_state_sha256(session, folder)
    if labels_sha256 is not None and labels_sha256 != state:
        raise CaseReleasedError("the case's labels changed while its report was being written (another seat?); "
                                "nothing was released: release it again")
    row = ReleaseEvent(case_root=folder_prefix(folder), case_name=case_name(session, folder), login=ident.login,
                       display_name=ident.display_name[:128], created_at=when or utcnow(),
                       pdf_sha256=file_sha256(pdf), labels_sha256=state)
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class Amendment:
    """A label changed after the case was released: who, when, why, what."""

    who: str
    login: str | None
    when: datetime
    reason: str
    item: str  # the image's (or cell's) name
    label: str | None
    previous_label: str | None


def amendments(session: Session, folder: str | os.PathLike) -> list[Amendment]:
    """The case's amendments (label events with a reason), oldest first."""
    paths = dict(images_under(session, folder))
    if not paths:
        return []
    out = []
    for ev in session.scalars(select(LabelEvent).where(LabelEvent.image_id.in_(list(paths)),
                                                       LabelEvent.amend_reason.is_not(None))):
        out.append(Amendment(ev.reviewer, ev.login, ev.created_at, ev.amend_reason, _name(paths[ev.image_id]),
                             ev.label, ev.previous_label))
    cells = dict(session.execute(select(Cell.id, Cell.image_id).where(Cell.image_id.in_(list(paths)))).all())
    if cells:
        for ev in session.scalars(select(CellLabelEvent).where(CellLabelEvent.cell_id.in_(list(cells)),
                                                               CellLabelEvent.amend_reason.is_not(None))):
            out.append(Amendment(ev.reviewer, ev.login, ev.created_at, ev.amend_reason,
                                 f"{_name(paths[cells[ev.cell_id]])} (cell)", ev.label, ev.previous_label))
    return sorted(out, key=lambda a: a.when)


def _name(path: str) -> str:
    return Path(display(path)).name
