"""The window's folder and classification job: open a folder, scan and classify it in a
worker (desktop/workers.JobSlot: one job at a time, a new folder supersedes the old job),
progress with rate and time left in the status bar, a visible Cancel."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from PySide6.QtWidgets import QFileDialog

from .gallery import ID_ROLE
from .viewstate import load_folder_view, save_folder_view

log = logging.getLogger(__name__)


def fmt_eta(s) -> str:
    if s is None:
        return "…"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ClassifyJobMixin:
    """Part of MainWindow (desktop/mainwindow.py)."""

    @property
    def folder(self) -> str | None:
        return self.state.folder

    @property
    def job(self):
        """The running scan + classify job (None when idle)."""
        return self.jobs.task

    def choose_folder(self) -> None:
        start = self.folder or (self.recent_folders() or [str(Path.home())])[0]
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of smear images", start)
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder, classify: bool = True) -> None:
        folder = os.path.abspath(os.fspath(folder))
        if not os.path.isdir(folder):
            self.show_error(f"Not a folder: {folder}")
            return
        self.jobs.supersede()  # a job on the previous folder stops after its batch; its result is dropped
        self._end_job()
        if self.folder is not None:
            save_folder_view(self.settings, self.folder, self.folder_view())
        self.state.open_folder(folder)
        self._restore = load_folder_view(self.settings, folder)
        if self._restore is not None:  # as the reviewer left this folder (a class the model lacks: Any)
            self.filters.show_filter(self._restore)
        self.state.set_filter(self.filters.filter())
        self.queue_label.set_folder(folder)
        self.setWindowTitle(f"{Path(folder).name} — hemascan")
        self._add_recent(folder)
        self.loader.clear()
        self.reload_gallery()
        self.folderOpened.emit(folder)
        if classify:
            self.classify()

    def classify(self) -> None:
        if self.folder is None or self.jobs.running:
            return
        from core.inference.predict import classify

        folder, db, paths, device = self.folder, self.db, self.paths, self.device_pref
        self._job_stage = None
        self.jobs.start(lambda cancel: classify(db, paths, folder, device=device, cancel=cancel), "classification")
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_btn.setVisible(True)
        self.progress_label.setText("scanning…")
        self._update_actions()

    def cancel_job(self) -> None:
        if self.jobs.cancel():
            self.progress_label.setText("cancelling after this batch…")

    def _job_progress(self, p) -> None:
        if p.stage != self._job_stage:
            if self._job_stage == "scan":  # the folder's images are known: show them
                self.reload_gallery(keep_current=True)
            self._job_stage = p.stage
        if p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)
        if p.stage == "classify":
            rate = p.extra.get("rate")
            text = f"classified {p.done:,} / {p.total:,}" if p.total else f"classified {p.done:,}"
            if rate:
                text += f" · {rate:.0f} img/s · {fmt_eta(p.extra.get('eta_s'))} left"
            if p.extra.get("device"):
                self.device_label.setText(p.extra["device"])
            elif p.message and p.done == 0:
                text = p.message if "compil" in p.message else text
        else:
            text = f"scanning: {p.done:,} files" + (f" / {p.total:,}" if p.total else "")
        self.progress_label.setText(text)
        now = time.monotonic()
        if now - self._last_counts > 1.0:
            self._last_counts = now
            self._update_counts()
            if p.stage == "classify" and self.model.rowCount() <= 2000:  # tiles fill in as predictions land
                self.model.refresh_ids([self.model.row_at(r).image_id for r in range(self.model.rowCount())])

    def _job_done(self, summary) -> None:
        self._end_job()
        cur = self.view.currentIndex()
        untouched = self._restore is None and cur.isValid() and cur.data(ID_ROLE) == self._auto_picked
        # A folder just classified starts at the top of the new order (least confident first),
        # unless the reviewer has already moved or the folder's saved view says where they were.
        self.reload_gallery(keep_current=not untouched)
        self._restore = None
        if summary is not None:
            if summary.device:
                self.device_label.setText(summary.device)
            msg = (f"{'Cancelled' if summary.cancelled else 'Done'}: {summary.n_predicted:,} images classified "
                   f"with {summary.model}")
            if not summary.cancelled and not summary.n_predicted and not summary.n_errors:
                msg = f"Nothing new to classify: every image here already has a prediction of {summary.model}"
            if summary.seconds > 0 and summary.n_predicted:
                msg += f" ({summary.rate:.0f} img/s)"
            bad = summary.scan.n_errors + summary.n_errors
            if bad:
                msg += f"; {bad} file(s) could not be used (listed under the counts: Show…)"
                for path, why in (summary.scan.errors + summary.errors)[:50]:
                    log.warning("unreadable: %s: %s", path, why)
            self.statusBar().showMessage(msg, 15000)
            log.info(msg)
        self.jobFinished.emit(summary)

    def _job_failed(self, message) -> None:
        self._end_job()
        self.show_error(message)
        self.reload_gallery(keep_current=True)
        self.jobFinished.emit(None)

    def _end_job(self) -> None:
        self.progress.setVisible(False)
        self.cancel_btn.setVisible(False)
        self.progress_label.setText("")
        self._update_actions()

    def _describe_device(self) -> str:
        from core.inference.predict import describe_device, select_device

        return describe_device(select_device(self.device_pref))
