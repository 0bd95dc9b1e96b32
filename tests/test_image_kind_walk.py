"""What a new user tripped over in the declared-image-kind walk under Xvfb (docs/walkthrough.md,
walk11): real widgets, offscreen."""
from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
from tests.test_desktop import window  # noqa: E402,F401  (the shown main window)

SCREEN_WIDTH = 1360  # the walk's screen, a common laptop's


def test_the_cells_view_with_nine_classes_fits_a_1360_pixel_screen(qtbot, window, tmp_path):  # noqa: F811
    """The review buttons (9 classes, Other, Accept, Undo, Redo) were one row 1,750 px wide: the
    window grew past the screen, hiding the field, Undo and the status bar."""
    from PySide6.QtWidgets import QApplication

    w = window
    (tmp_path / "case").mkdir()
    w.open_folder(tmp_path / "case", classify=False)
    w.show_view("cells")  # the bundled differential, the first start's cell model: 9 classes
    qtbot.waitUntil(lambda: len(w.cell_pane.classes) >= 9, timeout=30_000)
    qtbot.waitUntil(lambda: any(b.isVisible() and b.text() == "9  Platelet" for b in w.class_buttons), timeout=10_000)
    QApplication.sendPostedEvents()  # the bar laid out with its new buttons
    QApplication.processEvents()
    assert w.minimumSizeHint().width() <= SCREEN_WIDTH, w.minimumSizeHint()
    w.resize(SCREEN_WIDTH, 820)
    qtbot.waitUntil(lambda: w.width() <= SCREEN_WIDTH)
    buttons = [b for b in w.review_buttons.values() if b.isVisible()]
    for b in buttons:  # every button whole inside the window
        right = b.mapTo(w, b.rect().bottomRight())
        assert right.x() <= w.width() and right.y() <= w.height(), (b.text(), right, w.size())


def test_a_new_image_kind_says_what_the_folder_is_and_that_labelled_cells_were_kept(qtbot, paths, db, tmp_path,
                                                                                    monkeypatch):
    """Declaring "fields" after labelling a cell: the cells are found again except in the labelled
    image, and the window said none of it: the closing message began "Nothing new to classify",
    nothing said the labelled cell was kept, and nothing showed the folder's declared kind."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QInputDialog
    from sqlalchemy import select

    from core.storage import CellLabelEvent
    from tests.cellfixtures import write_png
    from tests.test_cell_image_kind import _centred_field
    from tests.test_cell_stage import make_cell_model_active
    from tests.test_desktop import JOB_TIMEOUT, close_window, open_window

    make_cell_model_active(db)  # beside the active field model
    folder = tmp_path / "camera"
    for n in range(2):
        write_png(folder / f"field{n}.png", _centred_field(11.0, 8.0 + n))  # judged crops until told
    w = open_window(qtbot, paths, tmp_path)
    said: list[str] = []
    w.statusBar().messageChanged.connect(lambda text: said.append(text) if text else None)
    try:
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.open_folder(folder)
        w.show_view("cells")
        pane = w.cell_pane
        qtbot.waitUntil(lambda: not pane.busy and pane.model.rowCount() > 0, timeout=10_000)
        assert "hemascan judges each one" in pane.info.text()  # never said: judged per image
        pane.view.setFocus()
        qtbot.keyClick(pane.view, Qt.Key_1)
        qtbot.waitUntil(lambda: w.label_writer.flush(0) and _events(db) == 1, timeout=10_000)

        asked = []

        def get_item(_parent, _title, label, items, current=0, editable=True):
            asked.append(label)
            return next(t for t in items if t.startswith("Fields from a camera")), True

        monkeypatch.setattr(QInputDialog, "getItem", staticmethod(get_item))
        said.clear()
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.a_image_kind.trigger()
        assert "finds the cells again" in asked[0] and "labels stay" in asked[0]  # said before the choice
        assert "camera fields" in pane.info.text()
        closing = [t for t in said if t.startswith(("Done", "Nothing new"))]
        assert closing, said
        assert not closing[-1].startswith("Nothing new"), closing[-1]  # the cells were classified again
        assert closing[-1].endswith("; 1 image(s) with labelled cells kept as they were"), closing[-1]
        assert _events(db) == 1
        with db.session() as s:
            assert s.scalar(select(CellLabelEvent.label)) == pane.classes[0]
    finally:
        close_window(w)


def _events(db) -> int:
    from sqlalchemy import func, select

    from core.storage import CellLabelEvent

    with db.session() as s:
        return s.scalar(select(func.count()).select_from(CellLabelEvent))


def test_a_first_start_window_leaves_room_for_its_title_bar(qtbot, paths, tmp_path):
    """On the walk's 1360x860 screen the first window was 860 px tall inside a title bar: its
    status bar, where every "Done" and "kept" message is said, was below the screen's edge."""
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from desktop.mainwindow import MainWindow
    from desktop.viewstate import TITLE_BAR_ALLOWANCE_PX

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)  # no geometry kept: a first start
    settings.setValue("reviewer", "tester")
    w = MainWindow(paths, settings=settings, device="cpu")
    qtbot.addWidget(w)
    avail = QApplication.primaryScreen().availableGeometry()
    assert w.height() + TITLE_BAR_ALLOWANCE_PX <= avail.height(), (w.size(), avail)
    assert w.width() <= avail.width()
