"""Review actions with undo/redo over the append-only label audit (headless).

Every action (label some images, accept predictions, undo, redo) is written at once, in
one transaction, as new ``label_events`` rows: an undo appends events restoring each
image's previous label, a redo appends the action's labels again. Nothing is deleted.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.storage import Database
from core.review.labels import latest_events, record_labels


@dataclass(frozen=True)
class Action:
    """What one user action changed: image_id -> (label before, label after)."""

    changes: tuple[tuple[int, str | None, str | None], ...]
    description: str


class ReviewSession:
    def __init__(self, db: Database, reviewer: str, taxonomy: str = "all_subtype"):
        self.db = db
        self.reviewer = reviewer
        self.taxonomy = taxonomy
        self._undo: list[Action] = []
        self._redo: list[Action] = []

    def _write(self, targets: dict[int, str | None], note: str) -> None:
        by_label: dict[str | None, list[int]] = {}
        for image_id, label in targets.items():
            by_label.setdefault(label, []).append(image_id)
        with self.db.session() as s:  # one transaction per user action
            for label, ids in by_label.items():
                record_labels(s, ids, label, self.reviewer, source="human", taxonomy=self.taxonomy, note=note)

    def current(self, image_ids) -> dict[int, str | None]:
        with self.db.session() as s:
            ev = latest_events(s, image_ids)
        return {i: (ev[i].label if i in ev and ev[i].taxonomy == self.taxonomy else None) for i in image_ids}

    def apply(self, labels: dict[int, str | None], description: str, note: str | None = None) -> Action | None:
        """Set each image's label; images already carrying that label get no event."""
        before = self.current(list(labels))
        changes = tuple((i, before[i], lab) for i, lab in labels.items() if before[i] != lab)
        if not changes:
            return None
        self._write({i: after for i, _, after in changes}, note)
        action = Action(changes, description)
        self._undo.append(action)
        self._redo.clear()
        return action

    def label(self, image_ids, label: str | None, note: str | None = None) -> Action | None:
        ids = list(dict.fromkeys(image_ids))
        return self.apply({i: label for i in ids}, f"label {len(ids)} image(s) as {label}", note)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def forget(self) -> None:
        """Drop the undo and redo stacks (another folder is opened: an undo never changes a
        label in a folder the reviewer no longer sees)."""
        self._undo.clear()
        self._redo.clear()

    def undo(self) -> Action | None:
        if not self._undo:
            return None
        action = self._undo.pop()
        self._write({i: before for i, before, _ in action.changes}, f"undo: {action.description}")
        self._redo.append(action)
        return action

    def redo(self) -> Action | None:
        if not self._redo:
            return None
        action = self._redo.pop()
        self._write({i: after for i, _, after in action.changes}, f"redo: {action.description}")
        self._undo.append(action)
        return action
