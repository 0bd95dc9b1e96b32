"""The classify workers' progress for the open folder, in the status bar: "Workers: 12
queued, 4 running, 100 done, 1 failed" (core.app.workqueue.queue_status), refreshed every few
seconds by a desktop.workers.Poller, so a slow or absent database server never freezes the
window. Hidden while the folder was never submitted (``hemascan submit``)."""
from __future__ import annotations

import os
from typing import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel

from .workers import Poller, Workers
from core.app.workqueue import queue_status

REFRESH_MS = 5000


class QueueStatusLabel(QLabel):
    progressed = Signal()  # workers elsewhere predicted more of the folder: the gallery shows them

    def __init__(self, workers: Workers, database: Callable[[], object], parent=None,
                 interval_ms: int = REFRESH_MS):
        super().__init__(parent)
        self.database = database
        self.folder: str | None = None
        self._done: tuple[int, int] | None = None  # (images queued in all, done) when last shown
        self.setVisible(False)
        self.poller = Poller(workers, self._query, interval_ms, "queue status", self)
        self.timer = self.poller.timer
        self.poller.result.connect(self._show)
        self.poller.failed.connect(self._failed)

    @property
    def _busy(self) -> bool:  # a query is out
        return self.poller._busy

    def set_folder(self, folder: str | os.PathLike | None) -> None:
        """Show the queue of ``folder`` (None: nothing) and refresh now."""
        self.folder = None if folder is None else os.fspath(folder)
        self._done = None
        self.setVisible(False)
        if self.folder is None:
            self.poller.stop()
            return
        self.poller.start()

    def refresh(self) -> None:
        self.poller.poll()

    def _query(self):
        if self.folder is None:
            return None

        folder, db = self.folder, self.database()
        return lambda: (folder, queue_status(db, folder))

    def _failed(self, err) -> None:
        self.setText("Workers: queue not available now")
        self.setToolTip(str(err))

    def _show(self, result) -> None:
        folder, statuses = result
        if folder != self.folder:  # the user opened another folder meanwhile
            return
        seen = (statuses[0].total, statuses[0].done) if statuses else (0, 0)
        if self._done is not None and seen != self._done:  # submitted (scanned) or predicted elsewhere
            self.progressed.emit()
        self._done = seen
        if not statuses:
            self.setVisible(False)
            return
        q = statuses[0]
        self.setText(f"Workers: {q.describe()}")
        self.setToolTip(f"{q.folder}: submitted {q.submitted_at:%Y-%m-%d %H:%M} by {q.submitted_by} for "
                        f"{q.model}; 'hemascan worker' on any machine using this database classifies it")
        self.setVisible(True)
