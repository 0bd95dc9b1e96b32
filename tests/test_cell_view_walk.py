"""Defects found walking the cells view under Xvfb (docs/walkthrough.md, issue 22): a cell
added by a reviewer is outlined and highlighted on its field; Home and End move in the cells."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from tests.test_cell_view import cell_window  # noqa: F401  (the fixture)
from tests.test_cell_view import drag as _drag

pytest.importorskip("pytestqt")


def test_an_added_cell_is_outlined_and_highlighted_on_its_field(qtbot, cell_window):  # noqa: F811
    w, pane, cells = cell_window
    row = pane.current_row()
    qtbot.waitUntil(lambda: pane.shown_image == row.image_id and bool(pane.field.outlines), timeout=10_000)
    qtbot.keyClick(pane.view, Qt.Key_N)
    with qtbot.waitSignal(pane.loaded, timeout=10_000):
        _drag(qtbot, pane.field, 150, 150, 200, 205)
    added = pane.current_row()
    assert added.source == "added" and added.image_id == row.image_id
    # the field shown is the same image: its outlines must now include the new cell, highlighted
    assert added.cell_id in pane.field.outlines
    widths = {cid: item.pen().widthF() for cid, item in pane.field.outlines.items()}
    assert widths[added.cell_id] == max(widths.values()) > min(widths.values())


def test_home_and_end_move_to_the_first_and_last_cell(qtbot, cell_window):  # noqa: F811
    w, pane, cells = cell_window
    first = pane.current_row().cell_id
    pane.view.setFocus()
    qtbot.keyClick(pane.view, Qt.Key_End)
    last = pane.current_row().cell_id
    assert last != first
    assert pane.model.row_of(last) == pane.model.rowCount() - 1
    qtbot.keyClick(pane.view, Qt.Key_Home)
    assert pane.current_row().cell_id == first
