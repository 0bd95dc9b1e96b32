"""Issue 22.3, the window's side: the Models dialog shows what each version looks at (whole
images or single cells) and the active field and cell models; making a cell model active there
changes the active cell model only, and the image gallery keeps its field model."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from .test_desktop import window  # noqa: E402,F401  (fixture)
from .test_model_kinds import CELL_PACKAGE, _renamed_copy  # noqa: E402


def test_making_a_cell_model_active_keeps_the_gallerys_field_model(qtbot, window, tmp_path,  # noqa: F811
                                                                  monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from core.models.registry import activation_log, register_package

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.No)
    w = window
    field = w.version["name"]
    with w.db.session() as s:
        register_package(s, w.paths, _renamed_copy(CELL_PACKAGE, tmp_path / "c2", "cell-two-v1"))
    dlg = w.model_menu.models_dialog()
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: dlg.table.rowCount() == 4, timeout=10_000)  # read in a worker: 3 bundled + 1
    col = {dlg.table.horizontalHeaderItem(c).text(): c for c in range(dlg.table.columnCount())}
    rows = {dlg.table.item(r, col["Name"]).text(): r for r in range(dlg.table.rowCount())}
    looks = {name: dlg.table.item(r, col["Looks at"]).text() for name, r in rows.items()}
    cell = next(v["name"] for v in dlg.versions if v["input_kind"] == "cell" and v["is_active"])
    assert looks == {field: "whole images", **{n: "single cells" for n in rows if n != field}}
    assert cell in rows and "cell-two-v1" in rows
    marked = {name for name, r in rows.items() if dlg.table.item(r, col["Active"]).text() == "●"}
    assert marked == {field, cell}  # one active of each kind
    assert f"Active field model (it looks at whole images, shown in the image gallery): {field}." \
        in dlg.active_text.text()
    assert f"Active cell model (it looks at single cells found in each image): {cell}." in dlg.active_text.text()

    shown = []
    w.versionShown.connect(shown.append)
    dlg.table.selectRow(rows["cell-two-v1"])
    with qtbot.waitSignal(dlg.listed, timeout=30_000):  # read again once the activation has landed
        dlg.activate.click()
    marked = {v["name"] for v in dlg.versions if v["is_active"]}
    assert marked == {field, "cell-two-v1"}
    assert "Active cell model (it looks at single cells found in each image): cell-two-v1." in dlg.active_text.text()
    assert w.version["name"] == field and shown == []  # the gallery still shows (and classifies with) the field model
    assert "cell-two-v1 is now the active cell model" in w.statusBar().currentMessage()
    last = activation_log(w.db)[-1]
    assert (last["name"], last["previous"], last["input_kind"], last["by"]) == ("cell-two-v1", cell, "cell", w.reviewer)
    qtbot.wait(300)  # the activation watch polls meanwhile: the window's own cell switch is no notice
    assert w.filters.model_notice.isHidden()
    dlg.close()
