"""Which images and cells belong to a released case, and the rule a label on them follows:
a released case is read-only; a change is an amendment, with a reason, by a supervisor.

The same rule is checked by the database on PostgreSQL (migration 0009's trigger
``ab_released_case_needs_amendment``); here it is checked first so that every seat says
it in one sentence, and on SQLite (one user) it is the only check."""
from __future__ import annotations

from typing import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import CaseReleasedError
from core.storage import Cell, ImageFile, ReleaseEvent
from core.storage.identity import current_identity


def releases_of_images(session: Session, image_ids: Iterable[int]) -> dict[int, ReleaseEvent]:
    """image_id -> the latest release of a case holding it (only the released ones)."""
    ids = list(dict.fromkeys(int(i) for i in image_ids))
    if not ids or session.scalar(select(func.count()).select_from(ReleaseEvent)) == 0:
        return {}
    out: dict[int, ReleaseEvent] = {}
    covers = func.substr(ImageFile.path, 1, func.length(ReleaseEvent.case_root)) == ReleaseEvent.case_root
    for start in range(0, len(ids), 500):
        q = (select(ImageFile.image_id, ReleaseEvent).join(ReleaseEvent, covers)
             .where(ImageFile.image_id.in_(ids[start:start + 500])).order_by(ReleaseEvent.id))
        for image_id, release in session.execute(q):
            out[image_id] = release  # ordered by id: the latest wins
    return out


def releases_of_cells(session: Session, cell_ids: Iterable[int]) -> dict[int, ReleaseEvent]:
    """cell_id -> the latest release of a case holding its image."""
    ids = list(dict.fromkeys(int(i) for i in cell_ids))
    if not ids:
        return {}
    image_of = dict(session.execute(select(Cell.id, Cell.image_id).where(Cell.id.in_(ids))).all())
    by_image = releases_of_images(session, set(image_of.values()))
    return {c: by_image[i] for c, i in image_of.items() if i in by_image}


def check_amendment(session: Session, released: dict[int, ReleaseEvent], amend_reason: str | None) -> str | None:
    """None when nothing labelled is in a released case; else the amendment's reason, once it is
    checked: one is given, and this login may amend (CaseReleasedError / NotPermittedError)."""
    if not released:
        return None
    release = next(iter(released.values()))
    reason = (amend_reason or "").strip()
    if not reason:
        raise CaseReleasedError(
            f"the case {release.case_name} was released by {release.display_name} on "
            f"{release.created_at:%Y-%m-%d %H:%M}: it is read-only, and a change is an amendment "
            "that needs a reason (--amend-reason in the command line; the app asks for it)")
    current_identity(session).check("amend")
    return reason
