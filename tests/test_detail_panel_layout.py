"""The Images view's side panel, driven for real (pytest-qt, offscreen): the outside-experience
note, which wraps to several lines, used to be drawn over the last probability bar when the
panel below the image had less room than its contents (the bars are fixed-height; the note's
label's rectangle was laid over the bars'), and on a narrow panel a long class name left no room
for its bar (drawn with a negative width: no bars at all)."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QRect  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from core.models.taxonomy import get_taxonomy  # noqa: E402
from core.review.gallery import GalleryRow  # noqa: E402

from .test_desktop import window  # noqa: E402,F401  (fixture)

FIELD_CLASSES = get_taxonomy("all_subtype").classes  # 4
CELL_CLASSES = get_taxonomy("wbc_differential").classes  # 9


def outside_row(classes) -> GalleryRow:
    probs = [0.5 / (len(classes) - 1)] * len(classes)
    probs[-2] = 0.5
    return GalleryRow(image_id=1, path="/smears/BloodImage_00001.jpg", name="BloodImage_00001.jpg",
                      predicted=classes[-2], confidence=0.5, entropy=1.0, uncertain=False,
                      probabilities=tuple(probs), reviewed=None, reviewer=None, outside=True)


def show_outside_row(w, classes, detail_width: int | None) -> None:
    """The side panel at the window's width for it, or narrowed to ``detail_width``, showing an
    image outside the model's experience."""
    if detail_width is not None:
        sizes = w.splitter.sizes()
        sizes[1] += sizes[2] - detail_width
        sizes[2] = detail_width
        w.splitter.setSizes(sizes)
    w.detail.show_row(outside_row(classes), classes)
    for _ in range(3):  # the layout requests the new text and bars posted: laid out as the event loop would
        QApplication.sendPostedEvents()
        QApplication.processEvents()
    if detail_width is not None:
        assert w.detail.width() <= detail_width + 10


def rect_in(widget, ancestor) -> QRect:
    return QRect(widget.mapTo(ancestor, QPoint(0, 0)), widget.size())


def assert_note_clear_of_bars(detail) -> None:
    """The note's rectangle is apart from the bars' and holds its whole wrapped text (a label
    shorter than its text cuts it off)."""
    note, bars = detail.summary, detail.bars
    assert "Outside this model's experience" in note.text()
    assert bars.height() >= bars.minimumHeight() > 0
    below = rect_in(note, detail)
    assert not below.intersects(rect_in(bars, detail)), (rect_in(bars, detail), below)
    assert below.top() >= rect_in(bars, detail).bottom()
    assert note.height() >= note.heightForWidth(note.width()), (note.size(), note.heightForWidth(note.width()))
    history = rect_in(detail.history_title, detail)
    assert not history.intersects(below) and history.top() >= below.bottom(), (below, history)


@pytest.mark.parametrize("classes", [FIELD_CLASSES, CELL_CLASSES], ids=["4 classes", "9 classes"])
@pytest.mark.parametrize("detail_width", [None, 230], ids=["default width", "narrow"])
def test_outside_note_never_overlaps_the_probability_bars(qtbot, window, classes, detail_width):  # noqa: F811
    w = window  # 1280 x 760, as a first start on a small screen
    show_outside_row(w, classes, detail_width)
    assert_note_clear_of_bars(w.detail)


def assert_rows_side_by_side(bars) -> None:
    """Each row's name, bar and percentage: inside the bars' own rectangle, apart, the bar long enough to read."""
    for i in range(len(bars.classes)):
        name, bar, percent = bars.row_rects(i)
        assert bars.rect().contains(name.united(bar).united(percent)), (i, bars.rect(), name, bar, percent)
        assert name.right() < bar.left() and bar.right() < percent.left(), (i, name, bar, percent)
        assert bar.width() >= bars.MIN_BAR_W, (i, bar)


@pytest.mark.parametrize("classes", [FIELD_CLASSES, CELL_CLASSES], ids=["4 classes", "9 classes"])
@pytest.mark.parametrize("detail_width", [None, 230], ids=["default width", "narrow"])
def test_every_probability_bar_has_room_beside_its_class_name(qtbot, window, classes, detail_width):  # noqa: F811
    show_outside_row(window, classes, detail_width)
    assert_rows_side_by_side(window.detail.bars)
