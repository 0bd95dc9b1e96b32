"""The review state without Qt (core/review/state.py): what a key may do and why not, where
the next key lands, the queue position, impossible filters, undo/redo as one step."""
from __future__ import annotations

import pytest

from core.review.gallery import UNREVIEWED, GalleryFilter
from core.review.session import ReviewSession
from core.review.state import NEEDS_REVIEWER, ReviewState, disagreement_possible, normalise_filter


class MemoryReview(ReviewSession):
    """The undo stack of core.review.session over a dict instead of a database."""

    def __init__(self):
        super().__init__(db=None, reviewer="")
        self.labels: dict[int, str | None] = {}
        self.writes: list[dict] = []

    def _write(self, targets, note):
        self.writes.append(dict(targets))
        self.labels.update(targets)

    def current(self, image_ids):
        return {i: self.labels.get(i) for i in image_ids}


@pytest.fixture
def state():
    s = ReviewState(MemoryReview())
    s.set_reviewer("Ana Ruiz")
    s.open_folder("/lab/case-1")
    s.n_in_view = 10
    s.set_current(0, 100)
    return s


def test_refusals_say_why_in_order():
    s = ReviewState(MemoryReview())
    assert s.refusal() == "Open a folder first (Ctrl+O)."
    s.open_folder("/lab/case-1")
    assert "No image in view" in s.refusal()
    s.n_in_view = 3
    assert "No image selected" in s.refusal()
    s.set_current(0, 7)
    assert s.refusal() == NEEDS_REVIEWER
    out = s.label("Benign")
    assert out.refused and out.action is None and out.message == NEEDS_REVIEWER
    assert s.session.writes == []  # nothing written without a name
    with pytest.raises(ValueError, match="computer account"):
        s.set_reviewer("root")
    s.set_reviewer("  Ana Ruiz ")
    assert s.refusal() is None and s.session.reviewer == "Ana Ruiz"


def test_label_acts_on_the_selection_else_the_current_image(state):
    out = state.label("Pre-B")
    assert out.action.changes == ((100, None, "Pre-B"),) and "1 image(s) labelled Pre-B" in out.message
    state.selected = (101, 102, 101)
    out = state.label("Pro-B")
    assert [c[0] for c in out.action.changes] == [101, 102] and "Ctrl+Z undoes them all" in out.message
    again = state.label("Pro-B")
    assert again.action is None and not again.refused and "nothing changed" in again.message


def test_undo_and_redo_are_one_step_per_action(state):
    state.selected = (1, 2, 3)
    state.label("Benign")
    assert state.session.labels == {1: "Benign", 2: "Benign", 3: "Benign"}
    out = state.undo()
    assert out.message.startswith("Undone") and state.session.labels == {1: None, 2: None, 3: None}
    assert state.undo().refused  # nothing left to undo
    out = state.redo()
    assert out.message.startswith("Redone") and state.session.labels == {1: "Benign", 2: "Benign", 3: "Benign"}
    assert state.redo().refused


def test_accept_takes_the_models_call_and_refuses_without_one(state):
    state.selected = (100, 101)
    out = state.accept({100: "Pre-B", 101: None})
    assert out.action.changes == ((100, None, "Pre-B"),)
    state.selected = (101,)
    out = state.accept({101: None})
    assert out.refused and "no prediction yet" in out.message


def test_position_and_end_of_queue():
    s = ReviewState(MemoryReview())
    assert "Open a folder" in s.position()
    s.open_folder("/lab/case-1")
    assert s.position() == "No images match (yet)."
    s.n_in_view = 2500
    assert s.position() == "2,500 image(s) match"
    s.set_current(41, 9)
    assert s.position() == "Image 42 of 2,500 in this view"
    s.selected = (9, 10, 11)
    assert s.position() == "Image 42 of 2,500 in this view · 3 selected"  # a bulk label's size, before the key
    s.selected = ()
    assert s.next_row(1, 2500) == (42, None)
    assert s.next_row(-1, 2500) == (40, None)
    row, end = s.next_row(1, 42)  # the last row: it stays, and says so
    assert row == 41 and end.startswith("End of the queue") and "42 images" in end
    # after labelling rows 41..44 the next image is the one after the last of them
    assert s.next_row(1, 2500, after_rows=[41, 44, 43]) == (45, None)


def test_impossible_filters_are_not_kept():
    assert not disagreement_possible(GalleryFilter(reviewed=UNREVIEWED))
    assert not disagreement_possible(GalleryFilter(predicted="Pre-B", reviewed="Pre-B"))
    assert disagreement_possible(GalleryFilter(predicted="Pre-B", reviewed="Pro-B"))
    f = normalise_filter(GalleryFilter(reviewed=UNREVIEWED, disagreement=True, sort="name"))
    assert f == GalleryFilter(reviewed=UNREVIEWED, disagreement=False, sort="name")
    s = ReviewState(MemoryReview())
    assert s.set_filter(GalleryFilter(predicted="Benign", reviewed="Benign", disagreement=True)).disagreement is False
    assert not s.drops_reviewed
    s.set_filter(GalleryFilter(reviewed=UNREVIEWED))
    assert s.drops_reviewed


def test_a_new_folder_forgets_the_old_selection(state):
    state.selected = (1, 2)
    state.open_folder("/lab/case-2")
    assert state.targets() == [] and state.current_id is None and state.folder == "/lab/case-2"


def test_undo_never_reaches_into_a_folder_left_behind(state):
    """Found by a walkthrough: after opening another folder, Ctrl+Z silently changed a label
    in the previous one (the status bar only said "Undone")."""
    state.label("Pre-B")
    assert state.session.labels == {100: "Pre-B"}
    state.open_folder("/lab/case-1")  # the same folder again (a refresh): its undo stays
    assert state.session.can_undo
    state.open_folder("/lab/case-2")
    assert state.undo().refused and state.session.labels == {100: "Pre-B"}
    assert state.redo().refused


def test_accept_never_stores_a_class_the_tile_did_not_show(state):
    """Issue 21: on an image outside the model's experience (the tile shows no class) or one the
    model is not sure of, Accept stored the hidden predicted class."""
    from core.review.state import OUTSIDE, UNSURE, class_keys

    keys = class_keys(["Benign", "Early Pre-B", "Pre-B", "Pro-B"])
    assert keys == "1–4"
    out = state.accept({100: "Benign"}, {100: OUTSIDE}, keys)
    # the detail pane shows the model's guess and its bars: the sentence says why it is not taken
    assert out.refused and out.message == ("Not accepted: the model is outside its experience here (its guess is "
                                           "not reliable). Press the class you see (1–4), or O for Other.")
    out = state.accept({100: "Benign"}, {100: UNSURE}, keys)
    assert out.refused and out.message == ("Not accepted: the model is not sure of this image (its guess is not "
                                           "reliable). Press the class you see (1–4), or O for Other.")
    assert state.session.writes == []
    state.selected = (100, 101, 102)
    out = state.accept({100: "Benign", 101: "Pre-B", 102: "Pro-B"}, {101: OUTSIDE}, keys)
    assert state.session.labels == {100: "Benign", 102: "Pro-B"}
    assert out.message == ("2 prediction(s) accepted; 1 skipped (outside the model's experience or not sure: "
                           "give them a class with 1–4) (Ctrl+Z undoes them all)")
    state.selected = (101,)
    assert state.accept({101: "Pre-B"}, {101: OUTSIDE}, keys).refused and 101 not in state.session.labels


def test_undo_and_redo_say_what_they_did_in_plain_words(state):
    """Issue 21: "Undone: label 1 image(s) as None" said nothing a reviewer could use."""
    from core.models.taxonomy import OTHER, OTHER_TITLE

    names = {100: "field-7.jpg"}.get
    state.label("Pre-B")
    assert state.undo(names).message == "Undone: removed the label Pre-B from field-7.jpg"
    assert state.redo(names).message == "Redone: field-7.jpg labelled Pre-B"
    state.label(None)
    assert state.undo(names).message == "Undone: field-7.jpg labelled Pre-B again"
    assert state.redo(names).message == "Redone: removed the label Pre-B from field-7.jpg"
    state.selected = (1, 2)
    state.label(OTHER)
    assert state.undo().message == f"Undone: removed the label {OTHER_TITLE} from 2 image(s)"
    assert "None" not in state.redo().message
