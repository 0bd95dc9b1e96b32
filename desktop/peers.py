"""Other seats' labels in the open folder: a timer that asks core, in a worker, for the label
events stored since its last look (core.review.labels.label_changes_since) and hands the changed
image ids to the window, which re-reads those tiles (GalleryModel.refresh_ids) and the counts.

The GUI thread never waits on the database: a slow or absent server only makes a tick late
or skipped (the next one asks again from the same event id), never a frozen window.
"""
from __future__ import annotations

import logging
from typing import Callable

from PySide6.QtCore import QObject, QTimer, Signal

from core.review.labels import PEER_REFRESH_MS, label_changes_since, last_event_id

from .workers import Workers

log = logging.getLogger(__name__)


class PeerLabels(QObject):
    """``changed(image_ids, reviewers)`` every ``interval_ms`` when other seats (or this one)
    stored labels for images under ``folder_fn()`` since the last tick."""

    changed = Signal(list, list)

    def __init__(self, workers: Workers, db, folder_fn: Callable[[], object], interval_ms: int = PEER_REFRESH_MS,
                 parent=None):
        super().__init__(parent)
        self.workers, self.db, self.folder_fn = workers, db, folder_fn
        self.last_event_id: int | None = None  # read in the first tick: events before this start are known
        self._busy = False
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.poll)
        self.timer.start()
        self.poll()

    def poll(self) -> None:
        if self._busy:
            return
        folder, db, after = self.folder_fn(), self.db, self.last_event_id

        def query():
            with db.session() as s:
                if after is None:
                    return last_event_id(s), None
                if folder is None:
                    return after, None
                changes = label_changes_since(s, after, folder)
                return changes.last_event_id, changes

        self._busy = True
        self.workers.submit(query, name="other seats' labels", on_result=self._show, on_error=self._failed,
                            on_finished=self._finished, priority=2)

    def _finished(self) -> None:
        self._busy = False

    def _failed(self, message) -> None:  # the database is away: the next tick asks again
        log.warning("could not look for other seats' labels: %s", message)

    def _show(self, out) -> None:
        self.last_event_id, changes = out
        if changes:
            self.changed.emit(list(changes.image_ids), list(changes.reviewers))

    def stop(self) -> None:
        self.timer.stop()
