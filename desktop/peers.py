"""Other seats' labels in the open folder: a timer that asks core for the label events
stored since its last look (core.labels.label_changes_since) and hands the changed image ids
to the window, which re-reads those tiles (GalleryModel.refresh_ids) and the counts.

The query runs on the GUI thread: it is one indexed SELECT of the events since the last
poll (milliseconds); a database that is away makes it skip that tick, never a dialog.
"""
from __future__ import annotations

import logging
from typing import Callable

from PySide6.QtCore import QObject, QTimer, Signal

from core.labels import PEER_REFRESH_MS, label_changes_since, last_event_id

log = logging.getLogger(__name__)


class PeerLabels(QObject):
    """``changed(image_ids, reviewers)`` every ``interval_ms`` when other seats (or this one)
    stored labels for images under ``folder_fn()`` since the last tick."""

    changed = Signal(list, list)

    def __init__(self, db, folder_fn: Callable[[], object], interval_ms: int = PEER_REFRESH_MS, parent=None):
        super().__init__(parent)
        self.db = db
        self.folder_fn = folder_fn
        with db.session() as s:
            self.last_event_id = last_event_id(s)
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.poll)
        self.timer.start()

    def poll(self) -> list[int]:
        folder = self.folder_fn()
        if folder is None:
            return []
        try:
            with self.db.session() as s:
                changes = label_changes_since(s, self.last_event_id, folder)
        except Exception as exc:  # the database is away: the next tick tries again
            log.warning("could not look for other seats' labels: %s", exc)
            return []
        self.last_event_id = changes.last_event_id
        if changes:
            self.changed.emit(list(changes.image_ids), list(changes.reviewers))
        return list(changes.image_ids)

    def stop(self) -> None:
        self.timer.stop()
