"""The review screen's state without Qt: folder, filter, queue position, selection,
reviewer and the undo stack, and every decision the screen makes from them (what a key
may do and why not, where the next key lands, what the status line says).

The desktop's views render this and forward the user's input to it (napari keeps a
Qt-free model behind its views the same way); its tests need no display.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from core.models.taxonomy import OTHER, OTHER_TITLE
from core.review.gallery import UNREVIEWED, GalleryFilter
from core.review.labels import reviewer_problem
from core.review.session import Action, ReviewSession


NEEDS_REVIEWER = "Labels need your name: Review ▸ Reviewer name…"
OUTSIDE = "outside"  # why a prediction is not shown as a class: outside the model's experience
UNSURE = "uncertain"  # ... or the model is not sure of it


def class_keys(classes: list[str]) -> str:
    """The class keys of a model in words: "1–4"."""
    n = min(len(classes), 9)
    return f"1–{n}" if n > 1 else "1"


def shown(label: str | None) -> str:
    return OTHER_TITLE if label == OTHER else str(label)


def undo_message(changes, undone: bool, name_of: Callable[[int], str | None] | None = None) -> str:
    """What an undo (or a redo) did, in plain words: "Undone: removed the label Pre-B from x.jpg"."""
    ids = [i for i, _, _ in changes]
    name = name_of(ids[0]) if name_of is not None and len(ids) == 1 else None
    subject = name or f"{len(ids)} image(s)"
    now = [before if undone else after for _, before, after in changes]  # the labels in place now
    was = [after if undone else before for _, before, after in changes]  # those taken away
    head = "Undone" if undone else "Redone"
    if all(x is None for x in now):
        what = f" {shown(was[0])}" if len(set(was)) == 1 else "s"
        return f"{head}: removed the label{what} from {subject}"
    if len(set(now)) == 1:
        again = " again" if undone else ""
        return f"{head}: {subject} labelled {shown(now[0])}{again}"
    return f"{head}: {subject} back to their labels before" if undone else f"{head}: {subject} labelled again"


@dataclass(frozen=True)
class Outcome:
    """What a review action did: the change (None when nothing changed) and one sentence
    for the status line; ``refused`` when the action could not act at all."""

    action: Action | None
    message: str
    refused: bool = False


def normalise_filter(f: GalleryFilter) -> GalleryFilter:
    """A combination that can match nothing is not kept: "reviewed differs from predicted"
    needs a reviewed image of a class other than the predicted one."""
    return f if disagreement_possible(f) or not f.disagreement else replace(f, disagreement=False)


def disagreement_possible(f: GalleryFilter) -> bool:
    return not (f.reviewed == UNREVIEWED or (f.reviewed is not None and f.reviewed == f.predicted))


@dataclass
class ReviewState:
    session: ReviewSession  # writes labels and keeps the undo/redo stack
    folder: str | None = None
    filter: GalleryFilter = field(default_factory=GalleryFilter)
    reviewer: str | None = None
    current_row: int | None = None  # in the current view (the queue the keys walk through)
    current_id: int | None = None
    selected: tuple[int, ...] = ()  # image ids selected besides the current one
    n_in_view: int = 0  # images matching the filter (all of them, not only those loaded)

    # ---------------------------------------------------------------- folder, filter, queue
    def open_folder(self, folder: str) -> None:
        if folder != self.folder:  # Ctrl+Z used to undo, unseen, a label in the folder left behind
            self.session.forget()
        self.folder = folder
        self.set_current(None, None)
        self.selected = ()

    def set_filter(self, f: GalleryFilter) -> GalleryFilter:
        self.filter = normalise_filter(f)
        return self.filter

    @property
    def drops_reviewed(self) -> bool:
        """Under "Unreviewed only" an image leaves the queue once it is reviewed."""
        return self.filter.reviewed == UNREVIEWED

    def set_current(self, row: int | None, image_id: int | None) -> None:
        self.current_row, self.current_id = row, image_id

    def targets(self) -> list[int]:
        """The images a label key acts on: the selection, or else the current image."""
        if self.selected:
            return list(dict.fromkeys(self.selected))
        return [self.current_id] if self.current_id is not None else []

    def position(self) -> str:
        """Where am I: "Image n of N in this view"."""
        if self.folder is None:
            return "Open a folder of smear images (File ▸ Open, Ctrl+O, or drop it here)."
        if not self.n_in_view:
            return "No images match (yet)."
        if self.current_row is not None:
            many = len(set(self.selected))
            return (f"Image {self.current_row + 1:,} of {self.n_in_view:,} in this view"
                    + (f" · {many:,} selected" if many > 1 else ""))
        return f"{self.n_in_view:,} image(s) match"

    def next_row(self, step: int, n_loaded: int, after_rows: list[int] | None = None) -> tuple[int, str | None]:
        """The row a move by ``step`` lands on among ``n_loaded`` rows, and the end-of-queue
        sentence when it runs past the last one. After a label, the move starts from the
        last of the rows just labelled (``after_rows``), not from a row that has left."""
        base = max(after_rows) if (after_rows and step > 0) else (
            self.current_row if self.current_row is not None else -1)
        row = base + step
        end = None
        if row >= n_loaded and step > 0:
            end = (f"End of the queue: this was the last of the {n_loaded:,} images in this view. "
                   "Change the filters for more, or Home to go back to the first.")
        return max(0, min(n_loaded - 1, row)), end

    # ---------------------------------------------------------------- review actions
    def refusal(self) -> str | None:
        """Why a review key cannot act now, in one sentence (None: it can)."""
        if self.folder is None:
            return "Open a folder first (Ctrl+O)."
        if self.n_in_view == 0:
            return "No image in view: change the filters to see images."
        if not self.targets():
            return "No image selected: click one, or use the arrow keys."
        if self.reviewer is None:
            return NEEDS_REVIEWER
        return None

    def set_reviewer(self, name: str) -> None:
        why = reviewer_problem(name)
        if why:
            raise ValueError(why)
        self.reviewer = self.session.reviewer = name.strip()

    def label(self, label: str | None, note: str | None = None) -> Outcome:
        why = self.refusal()
        if why:
            return Outcome(None, why, refused=True)
        action = self.session.label(self.targets(), label, note)
        n = len(action.changes) if action else 0
        if label is None:
            msg = f"Label removed from {n} image(s)" if action else "No label to remove: nothing changed"
        else:
            msg = (f"{n} image(s) labelled {label}" + (" (Ctrl+Z undoes them all)" if n > 1 else "")
                   if action else f"Already labelled {label}: nothing changed")
        return Outcome(action, msg)

    def accept(self, predicted: dict[int, str | None], hidden: dict[int, str] | None = None,
               keys: str = "1–9") -> Outcome:
        """Accept the model's call for the target images (``predicted``: image id -> class).
        A class the tile does not show as the model's call (``hidden``: image id -> OUTSIDE or
        UNSURE) is never stored: such images are skipped and counted, and when nothing is
        left the reviewer is asked for the class key they see (``keys``, "1–4")."""
        why = self.refusal()
        if why:
            return Outcome(None, why, refused=True)
        hidden = hidden or {}
        targets = self.targets()
        skipped = [i for i in targets if predicted.get(i) and i in hidden]
        labels = {i: predicted[i] for i in targets if predicted.get(i) and i not in hidden}
        if not labels and skipped:
            if len(targets) == 1:  # the detail pane shows the model's guess and its bars: say why it is not taken
                msg = ("Not accepted: the model is outside its experience here (its guess is not reliable). "
                       if hidden[skipped[0]] == OUTSIDE
                       else "Not accepted: the model is not sure of this image (its guess is not reliable). ")
                return Outcome(None, msg + f"Press the class you see ({keys}), or O for Other.", refused=True)
            return Outcome(None, f"Not accepted: the model's guess is not reliable for any of the {len(targets)} "
                           f"selected images (outside its experience or not sure). Press the class you see ({keys}).",
                           refused=True)
        if not labels:
            return Outcome(None, "Nothing to accept: the selected image has no prediction yet "
                           "(classify with Ctrl+R).", refused=True)
        action = self.session.apply(labels, f"accept {len(labels)} prediction(s)", "accepted prediction")
        msg = (f"{len(action.changes)} prediction(s) accepted" if action else "Already accepted: nothing changed")
        if skipped:
            msg += (f"; {len(skipped)} skipped (outside the model's experience or not sure: give them a class "
                    f"with {keys})")
        if action and len(action.changes) > 1:
            msg += " (Ctrl+Z undoes them all)"
        return Outcome(action, msg)

    def undo(self, name_of: Callable[[int], str | None] | None = None) -> Outcome:
        if not self.session.can_undo:
            return Outcome(None, "Nothing to undo.", refused=True)
        action = self.session.undo()
        return Outcome(action, undo_message(action.changes, True, name_of))

    def redo(self, name_of: Callable[[int], str | None] | None = None) -> Outcome:
        if not self.session.can_redo:
            return Outcome(None, "Nothing to redo.", refused=True)
        action = self.session.redo()
        return Outcome(action, undo_message(action.changes, False, name_of))
