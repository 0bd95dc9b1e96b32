"""Labels: an append-only audit of label events. The current label of an image is its
latest event; nothing is ever updated or deleted (an undo is a new event)."""
from __future__ import annotations

import getpass
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .db import Database, ImageFile, LabelEvent, utcnow
from .fspath import to_fs
from .jobs import Job, Progress
from .scan import ScanSummary, scan, under_folder
from .taxonomy import OTHER, resolve_alias, review_labels

SOURCES = ("human", "import", "dataset")


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def latest_events(session: Session, image_ids: Iterable[int] | None = None) -> dict[int, LabelEvent]:
    """image_id -> its latest label event (the current label)."""
    latest = select(func.max(LabelEvent.id)).group_by(LabelEvent.image_id)
    if image_ids is not None:
        ids = list(image_ids)
        if not ids:
            return {}
        latest = latest.where(LabelEvent.image_id.in_(ids))
    events = session.scalars(select(LabelEvent).where(LabelEvent.id.in_(latest.scalar_subquery())))
    return {e.image_id: e for e in events}


def record_labels(
    session: Session,
    image_ids: Iterable[int],
    label: str | None,
    reviewer: str,
    source: str = "human",
    taxonomy: str = "all_subtype",
    note: str | None = None,
) -> list[LabelEvent]:
    """Append one event per image (``label=None`` clears). Caller's transaction commits."""
    if source not in SOURCES:
        raise ValueError(f"unknown label source {source!r}")
    if label is not None and label not in review_labels(taxonomy):
        raise ValueError(f"{label!r} is not a class of taxonomy {taxonomy!r} (nor {OTHER!r})")
    ids = list(dict.fromkeys(image_ids))
    current = latest_events(session, ids)
    now = utcnow()
    events = [
        LabelEvent(image_id=i, taxonomy=taxonomy, label=label,
                   previous_label=current[i].label if i in current else None,
                   reviewer=reviewer, source=source, created_at=now, note=note)
        for i in ids
    ]
    session.add_all(events)
    session.flush()
    return events


def history(session: Session, image_id: int) -> list[LabelEvent]:
    return list(session.scalars(select(LabelEvent).where(LabelEvent.image_id == image_id).order_by(LabelEvent.id)))


@dataclass
class ImportSummary:
    scan: ScanSummary
    n_labelled: int = 0
    n_already: int = 0
    n_unknown_folder: int = 0
    per_class: Counter = field(default_factory=Counter)
    unknown_folders: set[str] = field(default_factory=set)


def import_labels(db: Database, folder: str | os.PathLike, reviewer: str | None = None,
                  taxonomy: str | None = None, cancel: threading.Event | None = None) -> Job[ImportSummary]:
    """Record class-folder names as labels (source=dataset), mapped through the alias table.
    Re-importing the same folder adds nothing."""
    cancel = cancel or threading.Event()
    scan_summary = yield from scan(db, folder, cancel)
    summary = ImportSummary(scan_summary)
    reviewer = reviewer or default_reviewer()
    with db.session() as s:
        rows = s.execute(
            select(ImageFile.image_id, ImageFile.path)
            .where(under_folder(ImageFile.path, folder), ImageFile.image_id.is_not(None), ImageFile.missing.is_(False))
            .order_by(ImageFile.path)
        ).all()
    by_label: dict[tuple[str, str], list[int]] = {}
    for image_id, path in rows:
        folder_name = Path(to_fs(path)).parent.name
        hit = resolve_alias(folder_name, taxonomy)
        if hit is None:
            summary.n_unknown_folder += 1
            summary.unknown_folders.add(folder_name)
            continue
        by_label.setdefault(hit, []).append(image_id)
    total = sum(len(v) for v in by_label.values())
    done = 0
    for (tax, label), ids in by_label.items():
        ids = list(dict.fromkeys(ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            with db.session() as s:
                current = latest_events(s, chunk)
                new = [i for i in chunk if not (i in current and current[i].label == label and current[i].taxonomy == tax)]
                summary.n_already += len(chunk) - len(new)
                if new:
                    record_labels(s, new, label, reviewer, source="dataset", taxonomy=tax,
                                  note=f"imported from folder names under {Path(folder).name}")
                summary.n_labelled += len(new)
                summary.per_class[label] += len(new)
            done += len(chunk)
            yield Progress("import", done, total)
            if cancel.is_set():
                return summary
    return summary
