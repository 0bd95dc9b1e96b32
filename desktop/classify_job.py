"""The classification job: scan and classify the open folder in a worker
(desktop/workers.JobSlot: one job at a time, a new folder supersedes the old job), with the
model version the window shows (never one another seat activated meanwhile), progress with
rate and time left in the status bar, a visible Cancel."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QLabel, QProgressBar, QToolButton

from .controller import Controller
from .workers import JobSlot
from core.inference import predict

log = logging.getLogger(__name__)


def fmt_eta(s) -> str:
    if s is None:
        return "…"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def describe_device(device: str | None) -> str:
    return predict.describe_device(predict.select_device(device))


def describe_plan(paths, version: dict | None, device: str | None) -> str:
    """What classifying with ``version`` uses on this machine: the runtime plan the classify
    job makes for it (its package's checked int8 model included), not a plan for no model."""
    if version is None:
        return describe_device(device)
    plan, _marker = predict.plan_for(paths, version["ref"], Path(version["path"]), device, None, "auto", 0)
    return plan.describe()


class ClassifyJob(QObject):
    """Owns the job slot and the status bar's progress, Cancel and device widgets."""

    scanned = Signal()  # the folder's images are known: the gallery shows them
    progressed = Signal(str)  # the classify stage advanced (a second since the last): counts and tiles follow
    finished = Signal(object)  # ClassifySummary, or None after an error
    failed = Signal(str)
    message = Signal(str, int)
    runningChanged = Signal()

    def __init__(self, ctl: Controller, workers, parent=None):
        super().__init__(parent)
        self.ctl = ctl
        self.slot = JobSlot(workers)  # the one place scan + classify jobs start
        self.slot.progress.connect(self._progress)
        self.slot.result.connect(self._done)
        self.slot.failed.connect(self._failed)
        self._stage = None
        self._note: str | None = None  # said after the running job's summary (add_note)
        self._last_tick = 0.0
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.progress_label = QLabel()
        self.cancel_btn = QToolButton()
        self.cancel_btn.setText("Cancel")
        self.cancel_btn.setVisible(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.device_label = QLabel("device: …")
        self.workers = workers
        self._plan_ticket = 0  # the latest plan asked for (a version switched meanwhile: an older answer is dropped)
        if ctl.version is None:  # the window names the version it shows: show_plan follows
            self.show_plan()

    def show_plan(self) -> None:
        """Say in the status bar what a classification with the version shown will use."""
        self._plan_ticket += 1
        ticket, paths, version, device = self._plan_ticket, self.ctl.paths, self.ctl.version, self.ctl.device

        def landed(text: str) -> None:
            if ticket == self._plan_ticket and not self.slot.running:  # a running job reports its own
                self.device_label.setText(text)

        self.workers.submit(lambda: describe_plan(paths, version, device), name="device check",
                            on_result=landed, on_error=lambda e: self.message.emit(f"⚠ {e}", 20000))

    @property
    def task(self):
        """The running scan + classify job (None when idle)."""
        return self.slot.task

    def start(self) -> None:
        if self.ctl.folder is None or self.slot.running:
            return

        folder, db, paths, device = self.ctl.folder, self.ctl.db, self.ctl.paths, self.ctl.device
        version = self.ctl.version["ref"] if self.ctl.version else None  # the version shown, not a lookup
        kind = self.ctl.image_kind
        self._stage = None
        self._note = None
        self.slot.start(lambda cancel: predict.classify(db, paths, folder, device=device, cancel=cancel, version=version,
                                                        image_kind=kind), "classification")
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_btn.setVisible(True)
        self.progress_label.setText("scanning…")
        self.runningChanged.emit()

    def add_note(self, note: str | None) -> None:
        """A sentence for the closing message of the job now running (none running: said now)."""
        if not note:
            return
        if self.slot.running:
            self._note = note
        else:
            self.message.emit(note, 15000)

    def cancel(self) -> None:
        if self.slot.cancel():
            self.progress_label.setText("cancelling after this batch…")

    def supersede(self) -> None:
        """A job on the previous folder stops after its batch; its result is dropped."""
        self.slot.supersede()
        self.end()

    def _progress(self, p) -> None:
        if p.stage != self._stage:
            if self._stage == "scan":
                self.scanned.emit()
            self._stage = p.stage
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
        elif p.stage == "cells":  # the cell model's stage: fields searched, cells classified
            text = f"finding cells: {p.done:,} / {p.total:,} images" if p.total else f"finding cells: {p.done:,} images"
            if p.extra.get("cells"):
                text += f" · {p.extra['cells']:,} cells classified"
            if p.extra.get("rate"):
                text += f" · {fmt_eta(p.extra.get('eta_s'))} left"
        else:
            text = f"scanning: {p.done:,} files" + (f" / {p.total:,}" if p.total else "")
        self.progress_label.setText(text)
        now = time.monotonic()
        if now - self._last_tick > 1.0:
            self._last_tick = now
            self.progressed.emit(p.stage)

    def _done(self, summary) -> None:
        self.end()
        if summary is not None:
            if summary.device:
                self.device_label.setText(summary.device)
            cells = (f"{summary.n_cells_classified:,} cells classified with {summary.cell_model}"
                     f" ({summary.n_cells:,} found in {summary.n_cell_images:,} images)"
                     if summary.cell_model is not None and summary.n_cells_classified else None)
            restored = summary.restored_cells_sentence()
            if restored:
                cells = f"{cells}; {restored}" if cells else restored
            msg = (f"{'Cancelled' if summary.cancelled else 'Done'}: {summary.n_predicted:,} images classified "
                   f"with {summary.model}") + (f"; {cells}" if cells else "")
            if not summary.cancelled and not summary.n_predicted and not summary.n_errors:
                # only the cells were new (their finder was told another image kind): say just that
                msg = (f"Done: {cells}" if cells else
                       f"Nothing new to classify: every image here already has a prediction of {summary.model}")
            if summary.seconds > 0 and summary.n_predicted:
                msg += f" ({summary.rate:.0f} img/s)"
            bad = summary.scan.n_errors + summary.n_errors
            if bad:
                msg += f"; {bad} file(s) could not be used (listed under the counts: Show…)"
                for path, why in (summary.scan.errors + summary.errors)[:50]:
                    log.warning("unreadable: %s: %s", path, why)
            if self._note and not summary.cancelled:
                msg += f"; {self._note}"
            self.message.emit(msg, 15000)
            log.info(msg)
        self._note = None
        self.finished.emit(summary)

    def _failed(self, message) -> None:
        self._note = None
        self.end()
        self.failed.emit(str(message))

    def end(self) -> None:
        self.progress.setVisible(False)
        self.cancel_btn.setVisible(False)
        self.progress_label.setText("")
        self.runningChanged.emit()
