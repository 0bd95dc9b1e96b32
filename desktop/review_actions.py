"""The window's review actions: label, accept, undo, redo, the reviewer's name. The
decisions are core.review.state's; this renders them and writes through a LabelWriter."""
from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QInputDialog

from core.review.labels import LabelWriter, reviewer_problem
from core.review.session import ReviewSession
from core.review.state import NEEDS_REVIEWER, Outcome
from core.models.taxonomy import OTHER, OTHER_TITLE

from .gallery import ROW_ROLE

log = logging.getLogger(__name__)


class LabelSignals(QObject):
    """The label writer's thread reports here; Qt queues it to the GUI thread (plain data)."""

    saved = Signal(list, int)  # image ids written, writes still pending
    waiting = Signal(str, int)  # why the database refused (one sentence), writes pending


class QueuedReview(ReviewSession):
    """The review actions of core.review.session, written through a LabelWriter: a key press never
    waits on the database for longer than a frame, and a write the database refuses (locked
    by another process, disk full) is queued and retried, never dropped. Labels still in the
    queue count as current, so undo and redo stay right while they wait."""

    def __init__(self, db, reviewer: str, writer: LabelWriter):
        super().__init__(db, reviewer)
        self.writer = writer

    def _write(self, targets: dict[int, str | None], note: str) -> None:
        self.writer.write(targets, self.reviewer, self.taxonomy, note)

    def current(self, image_ids) -> dict[int, str | None]:
        got = super().current(image_ids)
        pending = self.writer.pending_labels(self.taxonomy)
        return {i: pending[i] if i in pending else got[i] for i in got}


class ReviewMixin:
    """Part of MainWindow (desktop/mainwindow.py)."""

    def _ready(self) -> bool:
        """Whether a review key can act now; if not, the status bar says why."""
        self._sync_state()
        why = self.state.refusal()
        if why == NEEDS_REVIEWER and self.ask_reviewer():  # first label without a name: ask once
            why = self.state.refusal()
        if why:
            self._refuse(why)
        return why is None

    def review_refusal(self) -> str | None:
        self._sync_state()
        return self.state.refusal()

    def _refuse(self, why: str) -> None:
        self.statusBar().showMessage(f"⚠ {why}", 6000)

    def _run(self, do) -> Outcome | None:
        try:
            return do()
        except Exception as exc:
            log.exception("review action failed")
            self.show_error(f"Could not save the label: {exc}")
            return None

    def label_selected(self, label: str | None, note: str | None = None) -> None:
        if not self._ready():
            return
        rows = [r for r in map(self.model.row_of, self.state.targets()) if r is not None]
        out = self._run(lambda: self.state.label(label, note))
        self._after_label(out, advance=True, rows_before=rows)

    def label_other_with_note(self) -> None:
        """"Other / not assessable" with the reviewer's free-text note (what the image shows)."""
        if not self._ready():
            return
        note, ok = QInputDialog.getText(self, OTHER_TITLE, "Note (optional): what does the image show?")
        if ok:
            self.label_selected(OTHER, note=note.strip() or None)

    def accept_prediction(self) -> None:
        if not self._ready():
            return
        rows = [r for r in map(self.model.row_of, self.state.targets()) if r is not None]
        predicted = {self.model.row_at(r).image_id: self.model.row_at(r).predicted for r in rows}
        out = self._run(lambda: self.state.accept(predicted))  # one undo step for all of them
        self._after_label(out, advance=True, rows_before=rows)

    def undo(self) -> None:
        out = self._run(self.state.undo)
        self._after_label(out, advance=False)
        if out is not None and out.action is not None:
            target = out.action.changes[0][0]
            if not self.select_image(target):  # it had left the view ("Unreviewed only"): back in it
                self._drop_reviewed.stop()
                self.reload_gallery()
                self.select_image(target)

    def redo(self) -> None:
        self._after_label(self._run(self.state.redo), advance=False)

    def _after_label(self, out: Outcome | None, advance: bool, rows_before: list[int] | None = None) -> None:
        if out is None:  # an error, already shown
            return
        if out.refused:
            return self._refuse(out.message)
        self.statusBar().showMessage(out.message, 4000)
        before = self.state.current_id
        if out.action is not None:
            ids = [i for i, _, _ in out.action.changes]
            self.model.refresh_ids(ids)
            self._update_counts()
            self.labelsChanged.emit(ids)
        if advance:
            self.move_current(1, rows_before)  # the next image's detail comes with the move
        if out.action is None:
            return
        self._sync_state()
        cur = self.view.currentIndex()
        if cur.isValid() and self.state.current_id == before:  # still on a labelled image: its new label
            self._show_detail(cur.data(ROW_ROLE), reload_image=False)
        self._update_actions()
        if self.state.drops_reviewed:  # reviewed images leave the queue after a short grace:
            self._drop_reviewed.start()  # the next key still lands on the image now shown

    def _labels_saved(self, ids: list, pending: int) -> None:
        """A queued label write reached the database: show it."""
        self.model.refresh_ids(ids)
        if self.state.drops_reviewed and not self._drop_reviewed.isActive():
            self._drop_reviewed.start()
        self._update_counts()
        cur = self.view.currentIndex()
        if cur.isValid():
            self._show_detail(cur.data(ROW_ROLE), reload_image=False)
        self.labelsChanged.emit(ids)
        if pending:
            self.statusBar().showMessage(f"Saving labels: {pending} action(s) still waiting for the database", 0)
        else:
            self.statusBar().showMessage("All labels saved", 5000)

    def _labels_waiting(self, message: str, pending: int) -> None:
        self.statusBar().showMessage(f"⚠ {pending} label action(s) not saved yet, retrying: {message} "
                                     "(nothing is lost)", 0)

    # ---------------------------------------------------------------- reviewer
    @property
    def reviewer(self) -> str | None:
        return self.state.reviewer

    def ask_reviewer(self) -> bool:
        """Ask for the reviewer's name until it is a person's or the dialog is cancelled."""
        prompt = "Your name, stored with every label you give:"
        while True:
            name, ok = QInputDialog.getText(self, "Reviewer", prompt, text=self.reviewer or "")
            if not ok:
                return self.reviewer is not None
            why = reviewer_problem(name)
            if why is None:
                self.set_reviewer(name)
                return True
            prompt = f"{why[0].upper()}{why[1:]}.\nYour name, stored with every label you give:"

    def set_reviewer(self, name: str) -> None:
        self.state.set_reviewer(name)
        self.settings.setValue("reviewer", self.state.reviewer)
        self._show_reviewer()

    def _show_reviewer(self) -> None:
        self.reviewer_label.setText(f"reviewer: {self.reviewer}" if self.reviewer else "reviewer: (not set)")
