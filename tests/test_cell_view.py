"""The cells view of the window (issue 22 item 5), with real widgets: cells grouped by class,
least confident first; class keys, A, undo on the selected cells; the field with its cells
outlined; adding a missed cell by a drag; the reviewers-disagree filter; the live count."""
from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, Qt
from sqlalchemy import select

from core.storage import Cell, CellLabelEvent
from tests.cellfolder import make_cell_folder
from tests.test_desktop import close_window, open_window

pytest.importorskip("pytestqt")


@pytest.fixture
def cell_window(qtbot, paths, tmp_path):
    from core.app.bootstrap import open_database

    db = open_database(paths)
    folder, vid, cells = make_cell_folder(db, tmp_path)
    db.dispose()
    w = open_window(qtbot, paths, tmp_path)
    w.open_folder(folder, classify=False)
    w.show_view("cells")
    pane = w.cell_pane
    qtbot.waitUntil(lambda: not pane.busy and pane.version is not None and pane.model.rowCount() > 0, timeout=10_000)
    yield w, pane, cells
    close_window(w)


def cell_events(w):
    with w.db.session() as s:
        return [(e.cell_id, e.previous_label, e.label, e.reviewer, e.note)
                for e in s.scalars(select(CellLabelEvent).order_by(CellLabelEvent.id))]


def shown(pane):
    """What the gallery shows, in order: headings and (class, confidence) of each cell."""
    from desktop.cell_view import Heading

    return [f"# {it.group} {it.count}" if isinstance(it, Heading) else (it.predicted, it.confidence)
            for it in pane.model.items]


def drag(qtbot, view, x0, y0, x1, y1):
    """A mouse drag on the field view from scene point (x0, y0) to (x1, y1), as a reviewer boxes a cell."""
    view.fit()
    a, b = view.mapFromScene(x0, y0), view.mapFromScene(x1, y1)
    qtbot.mousePress(view.viewport(), Qt.LeftButton, pos=a)
    qtbot.mouseMove(view.viewport(), pos=QPoint((a.x() + b.x()) // 2, (a.y() + b.y()) // 2))
    qtbot.mouseMove(view.viewport(), pos=b)
    qtbot.mouseRelease(view.viewport(), Qt.LeftButton, pos=b)


def written(qtbot, w, n):
    qtbot.waitUntil(lambda: w.label_writer.flush(0) and len(cell_events(w)) >= n, timeout=10_000)
    return cell_events(w)


def test_cells_grouped_by_class_least_confident_first(cell_window):
    w, pane, cells = cell_window
    assert shown(pane) == ["# ALL 3", ("ALL", 0.55), ("ALL", 0.74), ("ALL", 0.91),
                           "# Normal 2", ("Normal", 0.62), ("Normal", 0.97)]
    assert pane.current_row().confidence == 0.55  # the least confident cell first
    # the keys 1..N are the cell model's classes while the cells view is shown
    assert [a.text() for a in w.class_actions] == ["1  ALL", "2  Normal"]
    w.show_view("images")
    assert [a.text() for a in w.class_actions][:2] == ["1  Benign", "2  Early Pre-B"]


def test_class_key_labels_the_selected_cell_and_undo(qtbot, cell_window):
    w, pane, cells = cell_window
    first = pane.current_row()
    assert first.predicted == "ALL"
    qtbot.keyClick(pane.view, Qt.Key_2)  # Normal
    got = written(qtbot, w, 1)
    assert got == [(first.cell_id, None, "Normal", "tester", None)]
    assert pane.model.labels_of([first.cell_id]) == {first.cell_id: "Normal"}
    assert pane.current_row().cell_id != first.cell_id  # on to the next cell
    counts = pane.counts()  # the differential follows at once: one ALL became Normal
    assert counts["ALL"] == (2, 0) and counts["Normal"] == (3, 1)
    # the table shows it too, also once the saved label's re-read of the case has come back
    qtbot.waitUntil(lambda: pane.differential.item(1, 1).text() == "3", timeout=10_000)
    qtbot.keyClick(pane.view, Qt.Key_Z, Qt.ControlModifier)
    got = written(qtbot, w, 2)
    assert got[1] == (first.cell_id, "Normal", None, "tester", "undo: label 1 cell(s) as Normal")
    assert pane.current_row().cell_id == first.cell_id
    assert pane.counts()["ALL"] == (3, 0)
    assert w.review.can_undo is False  # the images' undo stack is untouched


def test_accept_refused_on_an_uncertain_cell_and_bulk_on_a_selection(qtbot, cell_window):
    w, pane, cells = cell_window
    assert pane.current_row().uncertain
    qtbot.keyClick(pane.view, Qt.Key_A)
    assert cell_events(w) == [] and w.label_writer.flush(1) and cell_events(w) == []
    assert "not sure of this cell" in w.statusBar().currentMessage()
    # the next two (sure) cells selected with Shift+Right: one A accepts both
    qtbot.keyClick(pane.view, Qt.Key_Right)
    qtbot.keyClick(pane.view, Qt.Key_Right, Qt.ShiftModifier)
    assert len(pane.targets()) == 2
    qtbot.keyClick(pane.view, Qt.Key_A)
    got = written(qtbot, w, 2)
    assert sorted(label for _, _, label, _, _ in got) == ["ALL", "ALL"]


def test_field_shows_every_cell_outlined_and_a_drag_adds_a_cell(qtbot, cell_window, tmp_path):
    w, pane, cells = cell_window
    row = pane.current_row()
    qtbot.waitUntil(lambda: pane.shown_image == row.image_id and bool(pane.field.outlines), timeout=10_000)
    same_image = {c for c, v in cells.items() if v[0] == row.image_id}
    assert set(pane.field.outlines) == same_image
    assert pane.field.outlines[row.cell_id].pen().width() > pane.field.outlines[
        next(iter(same_image - {row.cell_id}))].pen().width()  # the selected one highlighted
    w.grab().save(str(tmp_path / "cells.png"))

    qtbot.keyClick(pane.view, Qt.Key_N)
    assert pane.field.adding
    drag(qtbot, pane.field, 150, 150, 200, 205)
    with qtbot.waitSignal(pane.loaded, timeout=10_000):
        pass
    with w.db.session() as s:
        added = s.scalars(select(Cell).where(Cell.source == "added")).all()
        assert len(added) == 1 and added[0].image_id == row.image_id and added[0].added_by == "tester"
        assert abs(added[0].x0 - 150) <= 3 and abs(added[0].y1 - 205) <= 3
        new_id = added[0].id
    assert pane.current_row().cell_id == new_id and pane.current_row().source == "added"
    assert "added" in pane.model.data(pane.model.index(pane.model.row_of(new_id)), Qt.DisplayRole)


def test_reviewers_disagree_filter(qtbot, cell_window):
    w, pane, cells = cell_window
    from core.review.cells import record_cell_labels

    a, b = list(cells)[:2]
    with w.db.session() as s:
        record_cell_labels(s, [a, b], "ALL", "ann", taxonomy="all_vs_normal")
        record_cell_labels(s, [a], "Normal", "bob", taxonomy="all_vs_normal")
        record_cell_labels(s, [b], "ALL", "bob", taxonomy="all_vs_normal")
    with qtbot.waitSignal(pane.loaded, timeout=10_000):
        pane.disagree_box.setChecked(True)
    assert [r.cell_id for r in pane.model.rows()] == [a]
    with qtbot.waitSignal(pane.loaded, timeout=10_000):
        pane.disagree_box.setChecked(False)
    assert len(pane.model.rows()) == len(cells)
