"""What other seats do on this database, polled off the GUI thread (desktop.workers.Poller):

- ``PeerLabels``: the label events stored since its last look for images in the open folder
  (core.review.labels.label_changes_since); the window re-reads those tiles and the counts.
- ``PeerCellLabels``: the same for cell labels (core.review.cells.cell_label_changes_since);
  the cells view re-reads those cells' labels and its differential.
- ``ActivationWatch``: the newest row of ``model_activations``; when another seat made a
  version active that is not the one this window shows, the window says so and keeps the
  version it shows (it never switches silently mid-review) until the reviewer asks for it.

A slow or absent server only makes a tick late or skipped (the next one asks again).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from PySide6.QtCore import QObject, Signal
from sqlalchemy import select

from core.review.cells import cell_label_changes_since, last_cell_event_id
from core.review.labels import PEER_REFRESH_MS, label_changes_since, last_event_id
from core.storage import ModelActivation, ModelVersion
from core.models.registry import FIELD

from .controller import local_time
from .workers import Poller, Workers

log = logging.getLogger(__name__)


class PeerLabels(QObject):
    """``changed(image_ids, reviewers)`` every ``interval_ms`` when other seats (or this one)
    stored labels for images under ``folder_fn()`` since the last tick."""

    changed = Signal(list, list)

    def __init__(self, workers: Workers, db, folder_fn: Callable[[], object], interval_ms: int = PEER_REFRESH_MS,
                 parent=None):
        super().__init__(parent)
        self.db, self.folder_fn = db, folder_fn
        self.last_event_id: int | None = None  # read in the first tick: events before this start are known
        self.poller = Poller(workers, self._query, interval_ms, "other seats' labels", self)
        self.timer = self.poller.timer
        self.poller.result.connect(self._show)
        self.poller.failed.connect(lambda err: log.warning("could not look for other seats' labels: %s", err))
        self.poller.start()

    def _query(self):
        folder, db, after = self.folder_fn(), self.db, self.last_event_id

        def query():
            with db.session() as s:
                if after is None:
                    return last_event_id(s), None
                if folder is None:
                    return after, None
                changes = label_changes_since(s, after, folder)
                return changes.last_event_id, changes

        return query

    def _show(self, out) -> None:
        self.last_event_id, changes = out
        if changes:
            self.changed.emit(list(changes.image_ids), list(changes.reviewers))

    def stop(self) -> None:
        self.poller.stop()


class PeerCellLabels(PeerLabels):
    """``changed(cell_ids, reviewers)`` when cell labels were stored (by any seat, or the
    command line) for cells of images under ``folder_fn()`` since the last tick."""

    def _query(self):
        folder, db, after = self.folder_fn(), self.db, self.last_event_id

        def query():
            with db.session() as s:
                if after is None:
                    return last_cell_event_id(s), None
                if folder is None:
                    return after, None
                changes = cell_label_changes_since(s, after, folder)
                return changes.last_event_id, changes

        return query

    def _show(self, out) -> None:
        self.last_event_id, changes = out
        if changes:
            self.changed.emit(list(changes.cell_ids), list(changes.reviewers))


@dataclass(frozen=True)
class Activation:
    """One row of the activation log, as plain values."""

    id: int
    version_id: int
    name: str
    action: str
    by: str
    at: str  # local time, for the sentence


def latest_activation(session, kind: str = FIELD) -> Activation | None:
    """The newest activation of a model of input ``kind``: the window shows a field model, so
    another seat's switch of the cell model is no news to its gallery."""
    row = session.execute(select(ModelActivation, ModelVersion.name)
                          .join(ModelVersion, ModelVersion.id == ModelActivation.model_version_id)
                          .where(ModelVersion.input_kind == kind)
                          .order_by(ModelActivation.id.desc()).limit(1)).first()
    if row is None:
        return None
    a, name = row
    return Activation(a.id, a.model_version_id, name, a.action, a.activated_by,
                      local_time(a.created_at)[:16] if a.created_at else "")


PENDING_POLLS = 30  # polls a window waits for its own activation to show in the log


class ActivationWatch(QObject):
    """``elsewhere(Activation)`` once per activation that made another version active than
    ``shown_fn()`` (the version id the window shows); ``current()`` when the window shows the
    active version again."""

    elsewhere = Signal(object)
    current = Signal()

    def __init__(self, workers: Workers, db, shown_fn: Callable[[], int | None], interval_ms: int = PEER_REFRESH_MS,
                 parent=None):
        super().__init__(parent)
        self.db, self.shown_fn = db, shown_fn
        self.latest: Activation | None = None
        self._said: int | None = None  # the activation already announced
        # Versions this window is itself making active (version id -> polls left to see its row):
        # until the log shows that row, an answer read before it (a poll already under way) is
        # stale, not news; and the row itself, landing before the window shows the version (a
        # question may be open meanwhile), is this window's own.
        self._pending: dict[int, int] = {}
        self._own: set[int] = set()  # activation ids this window made
        self.poller = Poller(workers, self._query, interval_ms, "model activations", self)
        self.timer = self.poller.timer
        self.poller.result.connect(self._seen)
        self.poller.failed.connect(lambda err: log.warning("could not read the model activations: %s", err))
        self.poller.start()

    def _query(self):
        db = self.db

        def query():
            with db.session() as s:
                return latest_activation(s)

        return query

    def mine(self, version_id: int) -> None:
        """This window is making ``version_id`` active: its activation is not announced."""
        self._pending[int(version_id)] = PENDING_POLLS

    def _seen(self, latest: Activation | None) -> None:
        self.latest = latest
        # a pending activation that never lands (it failed) stops holding back the news
        self._pending = {v: n - 1 for v, n in self._pending.items() if n > 1}
        self.check()

    def check(self) -> None:
        """Compare the newest activation with the version shown (also called after a switch here)."""
        latest, shown = self.latest, self.shown_fn()
        if latest is None or shown is None:
            return
        if self._pending.pop(latest.version_id, None) is not None:
            self._own.add(latest.id)
        if latest.version_id == shown:
            if self._said is not None:
                self._said = None
                self.current.emit()
            return
        if latest.id in self._own or self._pending:
            return
        if self._said != latest.id:
            self._said = latest.id
            self.elsewhere.emit(latest)

    def stop(self) -> None:
        self.poller.stop()
