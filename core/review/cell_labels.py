"""Cell labels: the same append-only audit as image labels (core/review/labels.py), per cell.

A cell's current label is its latest event; nothing is ever updated or deleted, so an undo
is a new event that gives back the previous label (or clears it: ``label=None``). The labels
a reviewer may give are the taxonomy's classes and "Other" (Other / not assessable: no class
fits, an artefact, a smudge cell), with an optional free-text note, exactly as for images.
"""
from __future__ import annotations

from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models.taxonomy import OTHER, get_taxonomy, review_labels
from core.review.rules import SOURCES, latest_label_events, reviewer_problem, shown_classes
from core.models.registry import CELL
from core.review.released import check_amendment, releases_of_cells
from core.storage import CellLabelEvent, CellPrediction, utcnow
from core.storage.identity import reviewer_for


def latest_cell_events(session: Session, cell_ids: Iterable[int] | None = None,
                       taxonomy: str | None = None) -> dict[int, CellLabelEvent]:
    """cell_id -> its latest label event (of ``taxonomy`` when given): the current label
    (``label`` None when cleared)."""
    return latest_label_events(session, CellLabelEvent, CellLabelEvent.cell_id, cell_ids, taxonomy)


def shown_cell_predictions(session: Session, cell_ids: list[int]) -> tuple[int | None, dict[int, str]]:
    """(the active cell model's id, cell_id -> the class it showed: sure and inside its experience)."""
    return shown_classes(session, CELL, CellPrediction, CellPrediction.cell_id, cell_ids)


def cell_history(session: Session, cell_id: int) -> list[CellLabelEvent]:
    """Every label event of one cell, oldest first."""
    return list(session.scalars(select(CellLabelEvent).where(CellLabelEvent.cell_id == cell_id)
                                .order_by(CellLabelEvent.id)))


def record_cell_labels(session: Session, cell_ids: Iterable[int], label: str | None, reviewer: str, *,
                       taxonomy: str, source: str = "human", note: str | None = None,
                       amend_reason: str | None = None) -> list[CellLabelEvent]:
    """Append one event per cell (``label=None`` clears). The caller's transaction commits.

    Raises ValueError (one sentence) for an unknown source or taxonomy, a label that is not a
    class of the taxonomy nor "Other", or a reviewer name that cannot stand for a person."""
    if source not in SOURCES:
        raise ValueError(f"unknown label source {source!r}")
    try:
        get_taxonomy(taxonomy)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if label is not None and label not in review_labels(taxonomy):
        raise ValueError(f"{label!r} is not a class of taxonomy {taxonomy!r} (nor {OTHER!r})")
    why = reviewer_problem(reviewer) if source == "human" else None
    if why:
        raise ValueError(why)
    ids = list(dict.fromkeys(int(i) for i in cell_ids))
    reason = check_amendment(session, releases_of_cells(session, ids), amend_reason)
    login, reviewer = reviewer_for(session, None, reviewer.strip())
    shown_version, shown = shown_cell_predictions(session, ids)
    current = latest_cell_events(session, ids)
    now = utcnow()
    events = [
        CellLabelEvent(cell_id=i, taxonomy=taxonomy, label=label,
                       previous_label=current[i].label if i in current else None,
                       reviewer=reviewer, source=source, created_at=now, note=note, login=login,
                       shown_label=shown.get(i), shown_model_version_id=shown_version, amend_reason=reason)
        for i in ids
    ]
    session.add_all(events)
    session.flush()
    return events
