"""File ▸ Images in this folder are…: the lab says what a folder's images are; the classify the
window runs tells the cell finder, and the choice is kept per folder. Real widgets, offscreen."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from core.cells.finder import finder_name
from core.storage import CellSearch
from tests.cellfixtures import write_png
from tests.test_cell_image_kind import _centred_field
from tests.test_cell_stage import make_cell_model_active

pytest.importorskip("pytestqt")


def _searches(db) -> dict[str, int]:
    with db.session() as s:
        return {f: n for f, n in s.execute(select(CellSearch.finder, CellSearch.n_cells))}


def test_choosing_fields_classifies_again_with_every_cell_and_is_kept_for_the_folder(qtbot, paths, db, tmp_path,
                                                                                      monkeypatch):
    from PySide6.QtWidgets import QInputDialog

    from tests.test_desktop import JOB_TIMEOUT, close_window, open_window

    make_cell_model_active(db, keep_field_active=False)
    folder = tmp_path / "camera"
    write_png(folder / "field.png", _centred_field(11.0, 8.0))  # judged a crop until told: one cell
    w = open_window(qtbot, paths, tmp_path)
    try:
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.open_folder(folder)
        assert _searches(db) == {finder_name("auto"): 1}

        asked = []

        def get_item(_parent, _title, label, items, current=0, editable=True):
            asked.append((items[current], items))
            return next(t for t in items if t.startswith("Fields from a camera")), True

        monkeypatch.setattr(QInputDialog, "getItem", staticmethod(get_item))
        assert w.a_image_kind.isEnabled()
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.a_image_kind.trigger()
        assert asked and asked[0][0] == "Let hemascan judge each image"  # not said yet: the finder judged
        assert _searches(db) == {finder_name("auto"): 1, finder_name("fields"): 3}

        w.open_folder(tmp_path, classify=False)  # another folder: judged per image
        assert w.ctl.image_kind is None
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.open_folder(folder)  # back: still fields, and nothing searched twice
        assert w.ctl.image_kind == "fields"
        assert _searches(db) == {finder_name("auto"): 1, finder_name("fields"): 3}
    finally:
        close_window(w)


def test_the_images_view_says_the_folders_declared_kind_as_the_cells_view_does(qtbot, paths, db, tmp_path):
    """The image gallery (Ctrl+1) said nothing of what the lab declared the folder's images are,
    while the Cells view did: the same words, from the one definition, in both views."""
    from tests.test_desktop import JOB_TIMEOUT, close_window, open_window

    make_cell_model_active(db, keep_field_active=False)
    folder = tmp_path / "camera"
    write_png(folder / "field.png", _centred_field(11.0, 8.0))
    w = open_window(qtbot, paths, tmp_path)
    try:
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.open_folder(folder)
        w.show_view("images")
        qtbot.waitUntil(lambda: w.gallery.model.total == 1, timeout=10_000)
        assert "hemascan judges each one" in w.gallery.info.text()  # never said: judged per image
        assert w.gallery.info.text().endswith(" · " + w.ctl.image_kind_words())

        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.choose_image_kind("crops")
        assert "single-cell crops" in w.gallery.info.text()
        w.show_view("cells")
        qtbot.waitUntil(lambda: "single-cell crops" in w.cell_pane.info.text(), timeout=10_000)
        assert w.cell_pane.info.text().endswith(" · " + w.ctl.image_kind_words())

        said: list[str] = []
        w.statusBar().messageChanged.connect(lambda text: said.append(text) if text else None)
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.choose_image_kind("auto")  # searched so before: that search counts again, and the window says so
        # what the window says while it finds them: short, in the views' words (a long message ran
        # under the job's progress text, and lower-cased "CellaVision")
        assert "Finding the cells again · " + w.ctl.image_kind_words() in said, said
        assert any(t.endswith("1 image(s) already searched with hemascan judging each image: the cells found then count again (1 cell(s))") for t in said), said
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.choose_image_kind("crops")

        w.open_folder(tmp_path, classify=False)  # another folder, then back: the kind is said again
        w.show_view("images")
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.open_folder(folder)
        qtbot.waitUntil(lambda: "single-cell crops" in w.gallery.info.text(), timeout=10_000)
    finally:
        close_window(w)
