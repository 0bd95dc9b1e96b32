"""The review screen's state without Qt: folder, filter, queue position, selection,
reviewer and the undo stack, and every decision the screen makes from them (what a key
may do and why not, where the next key lands, what the status line says).

The desktop's views render this and forward the user's input to it (napari keeps a
Qt-free model behind its views the same way); its tests need no display.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from core.review.gallery import UNREVIEWED, GalleryFilter
from core.review.labels import reviewer_problem
from core.review.session import Action, ReviewSession


NEEDS_REVIEWER = "Labels need your name: Review ▸ Reviewer name…"


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
        what = label or "(cleared)"
        msg = (f"{n} image(s) labelled {what}" + (" (Ctrl+Z undoes them all)" if n > 1 else "")
               if action else f"Already labelled {what}: nothing changed")
        return Outcome(action, msg)

    def accept(self, predicted: dict[int, str | None]) -> Outcome:
        """Accept the model's call for the target images (``predicted``: image id -> class)."""
        why = self.refusal()
        if why:
            return Outcome(None, why, refused=True)
        labels = {i: predicted[i] for i in self.targets() if predicted.get(i)}
        if not labels:
            return Outcome(None, "Nothing to accept: the selected image has no prediction yet "
                           "(classify with Ctrl+R).", refused=True)
        action = self.session.apply(labels, f"accept {len(labels)} prediction(s)", "accepted prediction")
        msg = (f"{len(action.changes)} prediction(s) accepted (Ctrl+Z undoes them all)" if action
               else "Already accepted: nothing changed")
        return Outcome(action, msg)

    def undo(self) -> Outcome:
        if not self.session.can_undo:
            return Outcome(None, "Nothing to undo.", refused=True)
        action = self.session.undo()
        return Outcome(action, f"Undone: {action.description}")

    def redo(self) -> Outcome:
        if not self.session.can_redo:
            return Outcome(None, "Nothing to redo.", refused=True)
        action = self.session.redo()
        return Outcome(action, f"Redone: {action.description}")
