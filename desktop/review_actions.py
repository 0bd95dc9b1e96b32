"""The review actions: label, accept, undo, redo, the reviewer's name. The decisions are
core.review.state's; this renders them and writes through a LabelWriter. A key reads
nothing from the database: what an image is labelled now comes from the gallery's rows in
memory (and the writer's queue), the tiles change at once, and the database's answer
follows when the write lands."""
from __future__ import annotations

import logging

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QInputDialog

from core.models.taxonomy import OTHER, OTHER_TITLE
from core.review.labels import IMAGE, LabelWriter, reviewer_problem
from core.review.session import ReviewSession
from core.review.state import NEEDS_REVIEWER, OUTSIDE, UNSURE, Outcome, class_keys

from .browse import GalleryPane
from .controller import Controller
from .detail_view import DetailPane

log = logging.getLogger(__name__)

# Under "Unreviewed only" an image just labelled leaves the view after this pause, so the next
# key still lands where the reviewer expects. Only those images leave; nothing is re-sorted.
UNREVIEWED_GRACE_MS = 700


class LabelSignals(QObject):
    """The label writer's thread reports here; Qt queues it to the GUI thread (plain data)."""

    saved = Signal(list, int)  # image ids written, writes still pending
    waiting = Signal(str, int)  # why the database refused (one sentence), writes pending
    refused = Signal(str, object, bool)  # why a write is refused for good, the LabelWrite, amendable with a reason


class QueuedReview(ReviewSession):
    """The review actions of core.review.session, written through a LabelWriter: a key press never
    waits on the database, and a write the database refuses (locked by another process, disk
    full) is queued and retried, never dropped. What an image is labelled before an action is
    what the window shows (``shown(ids)``: the gallery's rows), with the writer's queue on top,
    so undo and redo stay right while writes wait."""

    def __init__(self, db, reviewer: str, writer: LabelWriter, shown=None):
        super().__init__(db, reviewer)
        self.writer = writer
        self.shown = shown  # image ids -> label shown now; None: ask the database (headless use)

    def _write(self, targets: dict[int, str | None], note: str) -> None:
        self.writer.write(targets, self.reviewer, self.taxonomy, note)

    def current(self, image_ids) -> dict[int, str | None]:
        got = self.shown(image_ids) if self.shown is not None else super().current(image_ids)
        pending = self.writer.pending_labels(self.taxonomy)
        return {i: pending[i] if i in pending else got[i] for i in got}


def pending_rows(writer: LabelWriter, taxonomy: str | None) -> dict[int, tuple[str | None, str]]:
    """Labels still in the writer's queue (of ``taxonomy``): image id -> (label, reviewer)."""
    out: dict[int, tuple[str | None, str]] = {}
    for write in writer.pending():
        if write.kind == IMAGE and write.taxonomy == taxonomy:  # a cell's id is not an image's
            out.update({i: (label, write.reviewer) for i, label in write.targets.items()})
    return out


class ReviewActions(QObject):
    """Label, accept, undo, redo and the reviewer's name, for the window's keys and buttons."""

    labelsChanged = Signal(list)  # image ids whose label changed
    message = Signal(str, int)  # for the status bar
    enabledChanged = Signal()  # can-undo / selection may have changed: the actions' enabled state
    reviewerChanged = Signal(str)

    def __init__(self, ctl: Controller, gallery: GalleryPane, detail: DetailPane, writer: LabelWriter, settings,
                 dialog_parent, parent=None):
        super().__init__(parent)
        self.ctl, self.gallery, self.detail, self.writer, self.settings = ctl, gallery, detail, writer, settings
        self.dialog_parent = dialog_parent
        self.drop_reviewed = QTimer(self)  # "Unreviewed only": reviewed images leave the view after this
        self.drop_reviewed.setSingleShot(True)
        self.drop_reviewed.setInterval(UNREVIEWED_GRACE_MS)
        self.drop_reviewed.timeout.connect(self._drop_reviewed)
        self._leaving: set[int] = set()  # labelled under "Unreviewed only": they leave when the grace ends
        self._said_waiting = False  # the status bar says writes are waiting for the database
        self.signals = LabelSignals(self)
        self.signals.saved.connect(self._saved)
        self.signals.waiting.connect(self._waiting)
        self.signals.refused.connect(self._refused)

    @property
    def state(self):
        return self.ctl.state

    def ready(self) -> bool:
        """Whether a review key can act now; if not, the status bar says why."""
        self.gallery.auto_picked = None  # the reviewer has acted on the image shown: a reload keeps it
        self.gallery.sync_state()
        why = self.state.refusal()
        if why == NEEDS_REVIEWER and self.ask_reviewer():  # first label without a name: ask once
            why = self.state.refusal()
        if why:
            self.refuse(why)
        return why is None

    def _refused(self, message: str, item, amendable: bool) -> None:
        """A label the rules refused: on a released case, ask for the amendment's reason and write
        it again as an amendment (recorded with the reason, shown in the next report); else, or
        without a reason, say why and show the stored labels again."""
        if amendable:
            reason, ok = QInputDialog.getText(
                self.dialog_parent, "Amend a released case",
                f"{message[0].upper()}{message[1:]}.\n\nReason for the amendment (recorded, shown in the next "
                "report):")
            if ok and reason.strip():
                self.writer.write(dict(item.targets), item.reviewer, item.taxonomy, item.note, item.source,
                                  item.kind, amend_reason=reason.strip())
                self.message.emit("Amendment saved with its reason", 8000)
                return
        self.message.emit(f"⚠ Not saved: {message}", 20000)
        self.labelsChanged.emit(list(item.targets))  # the window shows the stored labels again

    def refusal(self) -> str | None:
        self.gallery.sync_state()
        return self.state.refusal()

    def refuse(self, why: str) -> None:
        self.message.emit(f"⚠ {why}", 6000)

    def _run(self, do) -> Outcome | None:
        try:
            return do()
        except Exception as exc:
            log.exception("review action failed")
            self.message.emit(f"⚠ Could not save the label: {exc}", 20000)
            return None

    def _rows(self) -> list[int]:
        return [r for r in map(self.gallery.model.row_of, self.state.targets()) if r is not None]

    def label_selected(self, label: str | None, note: str | None = None) -> None:
        if not self.ready():
            return
        rows = self._rows()
        # a cleared label stays in view: the image is there to be given its class
        self.after(self._run(lambda: self.state.label(label, note)), advance=label is not None, rows_before=rows)

    def label_other_with_note(self) -> None:
        """"Other / not assessable" with the reviewer's free-text note (what the image shows)."""
        if not self.ready():
            return
        note, ok = QInputDialog.getText(self.dialog_parent, OTHER_TITLE, "Note (optional): what does the image show?")
        if ok:
            self.label_selected(OTHER, note=note.strip() or None)

    def accept_prediction(self) -> None:
        if not self.ready():
            return
        rows, model = self._rows(), self.gallery.model
        shown = [model.row_at(r) for r in rows]
        predicted = {r.image_id: r.predicted for r in shown}
        # the tile shows no class (outside the model's experience) or a doubtful one: never stored unseen
        hidden = {r.image_id: OUTSIDE if r.outside else UNSURE for r in shown if r.outside or r.uncertain}
        keys = class_keys(self.ctl.classes)
        out = self._run(lambda: self.state.accept(predicted, hidden, keys))  # one undo step for all of them
        self.after(out, advance=True, rows_before=rows)

    def _name_of(self, image_id: int) -> str | None:
        row = self.gallery.model.row_of(image_id)
        return self.gallery.model.row_at(row).name if row is not None else None

    def undo(self) -> None:
        out = self._run(lambda: self.state.undo(self._name_of))
        self.after(out, advance=False)
        if out is not None and out.action is not None:
            target = out.action.changes[0][0]
            if not self.gallery.select_image(target):  # it had left the view ("Unreviewed only"): back in it
                self.gallery.reload(keep_id=target)

    def redo(self) -> None:
        """Redo as the label did: the label again, then on to the image after it."""
        out = self._run(lambda: self.state.redo(self._name_of))
        rows = []
        if out is not None and out.action is not None:
            rows = [r for r in (self.gallery.model.row_of(i) for i, _, _ in out.action.changes) if r is not None]
        self.after(out, advance=bool(rows) and any(a is not None for _, _, a in out.action.changes),
                   rows_before=rows)

    def after(self, out: Outcome | None, advance: bool, rows_before: list[int] | None = None) -> None:
        if out is None:  # an error, already shown
            return
        if out.refused:
            return self.refuse(out.message)
        self.message.emit(out.message, 4000)
        before = self.state.current_id
        if out.action is not None:
            ids = [i for i, _, _ in out.action.changes]
            self.gallery.model.set_labels({i: after for i, _, after in out.action.changes}, self.state.reviewer)
            self.gallery.update_counts()
            self.labelsChanged.emit(ids)
        if advance:
            self.gallery.move_current(1, rows_before)  # the next image's detail comes with the move
        if out.action is None:
            return
        self.gallery.sync_state()
        if self.state.current_id == before:  # still on a labelled image: its new label
            self.detail.show(self.gallery.current_row(), reload_image=False)
        self.enabledChanged.emit()
        if self.state.drops_reviewed:  # labelled images leave the queue after a short grace:
            self._leaving.update(i for i, _, after in out.action.changes if after is not None)
            self.drop_reviewed.start()  # the next key still lands on the image now shown

    def _drop_reviewed(self) -> None:
        leaving, self._leaving = self._leaving, set()
        if not self.state.drops_reviewed:
            return
        model = self.gallery.model
        still = [i for i in leaving if model.row_of(i) is not None and model.row_at(model.row_of(i)).reviewed]
        self.gallery.drop_reviewed(still)  # an undone one stays

    def _saved(self, ids: list, pending: int) -> None:
        """A queued label write reached the database: show what it holds now."""
        self.gallery.model.refresh_ids(ids)
        self.gallery.update_counts()
        row = self.gallery.current_row()
        if row is not None and row.image_id in ids:
            self.detail.refresh_history(row.image_id)
        self.labelsChanged.emit(ids)
        if pending and self._said_waiting:
            self.message.emit(f"Saving labels: {pending} action(s) still waiting for the database", 0)
        elif self._said_waiting:  # the queue the status bar spoke of is written
            self._said_waiting = False
            self.message.emit("All labels saved", 5000)

    def _waiting(self, message: str, pending: int) -> None:
        self._said_waiting = True
        self.message.emit(f"⚠ {pending} label action(s) not saved yet, retrying: {message} (nothing is lost)", 0)

    # ---------------------------------------------------------------- reviewer
    def ask_reviewer(self) -> bool:
        """Ask for the reviewer's name until it is a person's or the dialog is cancelled."""
        prompt = "Your name, stored with every label you give:"
        while True:
            name, ok = QInputDialog.getText(self.dialog_parent, "Reviewer", prompt, text=self.state.reviewer or "")
            if not ok:
                return self.state.reviewer is not None
            why = reviewer_problem(name)
            if why is None:
                self.set_reviewer(name)
                return True
            prompt = f"{why[0].upper()}{why[1:]}.\nYour name, stored with every label you give:"

    def set_reviewer(self, name: str) -> None:
        self.state.set_reviewer(name)
        self.settings.setValue("reviewer", self.state.reviewer)
        self.reviewerChanged.emit(self.state.reviewer)
        self.enabledChanged.emit()
