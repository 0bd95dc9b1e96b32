"""Walk 12's open defects of the cells view, with real widgets (offscreen): the outside-experience
heading follows the labels (2); the gallery/field split stays where it was when the line above the
cells or the field's name grows (5); the tile bands and the detail note fit (6)."""
from __future__ import annotations

import dataclasses

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from tests.test_cell_view import cell_window, written  # noqa: F401  (the fixture)

pytest.importorskip("pytestqt")


def headings(pane):
    from desktop.cell_view import Heading, heading_text

    return [heading_text(it) for it in pane.model.items if isinstance(it, Heading)]


def test_a_labelled_outside_cell_leaves_the_outside_heading_count(qtbot, cell_window):  # noqa: F811
    w, pane, cells = cell_window
    rows = [dataclasses.replace(r, outside=True) if r.predicted == "ALL" else r for r in pane.model.rows()]
    pane.model.set_rows(sorted(rows, key=lambda r: r.group != "Outside the model's experience"))
    pane._go(1)
    assert headings(pane)[0] == "Outside the model's experience — 3 cells"
    qtbot.keyClick(pane.view, Qt.Key_2)  # Normal
    written(qtbot, w, 1)
    # as the differential: 2 outside the model's experience, the labelled one counted as Normal
    assert headings(pane)[0] == "Outside the model's experience — 2 cells · 1 labelled"
    qtbot.keyClick(pane.view, Qt.Key_Z, Qt.ControlModifier)
    written(qtbot, w, 2)
    assert headings(pane)[0] == "Outside the model's experience — 3 cells"


def test_the_gallery_field_split_stays_when_the_texts_grow(qtbot, cell_window):  # noqa: F811
    w, pane, cells = cell_window
    w.resize(1366, 740)
    QApplication.processEvents()
    before = pane.widget.sizes()
    long = "Cell 1 of 171 · model: all-cell-effnet-lite0-v2 · images: hemascan judges each one " * 3
    pane.info.setText(long)
    pane.field_title.setText("Taleqani_PreB_" + "x" * 200 + ".jpg, cell 3")
    QApplication.processEvents()
    assert pane.widget.sizes() == before
    assert pane.info.toolTip() == long  # the whole line, shortened on screen
    # a long file name in the Field box: shortened in the middle, the whole name in the tooltip
    name = pane.field_box.itemText(pane.field_box.currentIndex())
    pane.field_box.setItemText(pane.field_box.currentIndex(), "very_long_folder_prefix_" * 6 + name)
    pane._show_field_in_box()
    QApplication.processEvents()
    shown = pane.field_box.lineEdit().text()
    assert "…" in shown and shown.startswith("very_long")
    assert "very_long_folder_prefix_" * 6 in pane.field_box.toolTip()
    assert pane.widget.sizes() == before


def test_tile_bands_fit_and_class_names_do_not_break_at_the_hyphen(qtbot):
    from PySide6.QtGui import QFont, QFontMetrics

    from core.review.gallery import GalleryRow, tile_caption
    from desktop.cell_view import CELL_TILE, tile_caption as cell_caption
    from desktop.tiles import TILE

    fields = {f.name: None for f in dataclasses.fields(GalleryRow)}
    row = GalleryRow(**{**fields, "image_id": 1, "path": "a.jpg", "predicted": "Pre-B", "confidence": 0.42,
                        "uncertain": False, "outside": True, "reviewed": "Pre-B", "reviewer": None})
    f = QFont(QApplication.font())
    f.setPointSizeF(max(7.0, f.pointSizeF() * 0.85))
    fm = QFontMetrics(f)
    for caption in (tile_caption(row), tile_caption(dataclasses.replace(row, reviewed=None))):
        assert fm.horizontalAdvance(caption) <= TILE.width() - 6 - 8, caption
    cell = type("R", (), {"source": "found", "reviewed": None, "predicted": "Pre-B", "outside": True,
                          "uncertain": False, "confidence": 0.4})()
    f.setPointSizeF(max(7.0, QApplication.font().pointSizeF() * 0.8))
    assert QFontMetrics(f).horizontalAdvance(cell_caption(cell)) <= CELL_TILE.width() - 4 - 6
    from desktop.detail import no_break

    assert no_break("Pre-B") == "Pre\u2011B" and "-" not in no_break("Early Pre-B")


def test_a_field_chosen_by_typing_shows_its_long_name_shortened_in_the_middle(qtbot, cell_window):  # noqa: F811
    w, pane, cells = cell_window
    box = pane.field_box
    at = box.currentIndex()
    long = "Taleqani-slide-07_field-0005_PreB_second-look_" * 3 + box.itemText(at)
    box.setItemText(at, long)
    box.setFocus()
    box.lineEdit().setText("second-look")
    box.completer().activated[str].emit(long)  # as a click on the completer's line
    box.lineEdit().setText(long)  # the line edit takes the whole name after the signal, as Qt's completer does
    qtbot.waitUntil(lambda: box.lineEdit().text() != long, timeout=5000)
    shown = box.lineEdit().text()
    assert "…" in shown and shown.startswith("Taleqani-slide") and long in box.toolTip()
