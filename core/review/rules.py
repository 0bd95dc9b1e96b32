"""The rules every label event follows, for images and cells alike: where a label may come
from, and which names can stand for the person who gives it."""
from __future__ import annotations

from typing import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models.registry import active_version

#: where a label event comes from: a person in the app, an import, a dataset's class folders
SOURCES = ("human", "import", "dataset")

NOT_REVIEWER_NAMES = frozenset({"root", "admin", "administrator", "user", "guest", "unknown", "nobody", "test",
                                "pi", "ubuntu", "debian", "hemascan", "lab", "default"})


def reviewer_problem(name: str | None) -> str | None:
    """Why ``name`` cannot stand for the person who gives labels (one sentence), or None."""
    name = (name or "").strip()
    if not name:
        return "a reviewer name is needed: it is stored with every label you give"
    if name.casefold() in NOT_REVIEWER_NAMES:
        return f"'{name}' is a computer account, not a person: type your own name"
    if len(name) > 128 or any(ord(c) < 32 for c in name):
        return "a reviewer name is at most 128 printable characters"
    return None


def latest_label_events(session: Session, event, key, ids: Iterable[int] | None = None,
                        taxonomy: str | None = None) -> dict:
    """Latest event per item of an append-only label table (image or cell labels): the current
    label (``label`` None when cleared). ``event`` is the ORM class, ``key`` its item column;
    ``taxonomy`` limits it to events of that taxonomy."""
    latest = select(func.max(event.id)).group_by(key)
    if taxonomy is not None:
        latest = latest.where(event.taxonomy == taxonomy)
    if ids is not None:
        wanted = list(ids)
        if not wanted:
            return {}
        latest = latest.where(key.in_(wanted))
    events = session.scalars(select(event).where(event.id.in_(latest.scalar_subquery())))
    return {getattr(e, key.key): e for e in events}


def shown_classes(session: Session, kind: str, prediction, key, ids: list[int]) -> tuple[int | None, dict[int, str]]:
    """(the active ``kind`` model's id, id -> the class it showed) for the images or cells ``ids``:
    only sure predictions inside its experience show a class, as the "corrected" rule has it.
    ``prediction``: the prediction table's model (Prediction, CellPrediction); ``key``: its id column."""
    version = active_version(session, kind)
    if version is None or not ids:
        return (version.id if version is not None else None), {}
    rows = session.execute(select(key, prediction.label).where(
        prediction.model_version_id == version.id, key.in_(ids),
        prediction.uncertain.is_not(True), prediction.out_of_distribution.is_not(True)))
    return version.id, dict(rows.all())
