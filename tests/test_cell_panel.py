"""The desktop side of cells, finished (issue 22): the cells view's differential panel (N, each
class's % with its 95% interval, the blast line and its advice, what is counted apart, the
reviewers' agreement, "not a diagnosis"), following a key at once and the database after the
save; renaming the case; exporting one row per cell from the GUI; other seats' cell labels
appearing on the next refresh. Real widgets, offscreen."""
from __future__ import annotations

import csv

import pytest
from PySide6.QtCore import Qt
from sqlalchemy import select

from core.review.differential import case_differential, clopper_pearson
from core.storage import Case
from tests.test_cell_view import cell_window, written  # noqa: F401  (the fixture)

pytest.importorskip("pytestqt")

REQUIRED = ["path", "sha256", "cell", "x0", "y0", "x1", "y1", "um_per_px", "predicted_label", "confidence",
            "uncertain", "out_of_distribution", "reviewed_label", "reviewer", "model_version"]


def row_of(pane, cls: str) -> list[str]:
    t = pane.differential
    for r in range(t.rowCount()):
        if t.item(r, 0).text() == cls:
            return [t.item(r, c).text() for c in range(t.columnCount())]
    raise AssertionError(f"no row {cls} in the differential")


def interval(k: int, n: int) -> str:
    low, high = clopper_pearson(k, n)
    return f"{100 * low:.1f}–{100 * high:.1f}"


def read_differential(qtbot, pane):
    """Wait for the database's differential (read in the pool after a save or a reload)."""
    with qtbot.waitSignal(pane.differentialRead, timeout=10_000):
        pane.refresh_differential()


def test_panel_shows_the_interval_and_blast_line_and_follows_a_class_key(qtbot, cell_window):  # noqa: F811
    w, pane, cells = cell_window
    w.peer_cells.stop()  # the save itself brings the database's differential, not the next poll
    read_differential(qtbot, pane)
    assert [pane.differential.horizontalHeaderItem(c).text() for c in range(5)] == [
        "Class", "Cells", "%", "95% interval", "Reviewed"]
    # the ALL cell the model is unsure of (0.55) waits for a reviewer: it is not in N
    assert row_of(pane, "ALL") == ["ALL", "2", "50.0", interval(2, 4), "0"]
    assert row_of(pane, "Normal") == ["Normal", "2", "50.0", interval(2, 4), "0"]
    assert "N = 4 white cells counted: 0 reviewed, 4 as the model classed them" in pane.diff_head.text()
    blast = pane.blast_label.text()
    assert "ALL (blasts): 2 of 4 = 50.0% (95% interval 6.8-93.2%)" in blast and "more cells" in blast
    assert "Counted apart, not in N: 0 outside the model's experience, 1 the model is unsure of" in pane.diff_note.text()
    assert "not a diagnosis" in pane.diff_small.text()

    first = pane.current_row()  # the least confident ALL cell, unsure: relabelled Normal, it counts
    assert first.uncertain and first.predicted == "ALL"
    qtbot.keyClick(pane.view, Qt.Key_2)
    # the count follows the key at once, before the save
    assert row_of(pane, "ALL")[:3] == ["ALL", "2", "40.0"]
    assert row_of(pane, "Normal")[1] == "3"
    with qtbot.waitSignal(pane.differentialRead, timeout=10_000):
        written(qtbot, w, 1)
    assert row_of(pane, "ALL") == ["ALL", "2", "40.0", interval(2, 5), "0"]
    assert row_of(pane, "Normal") == ["Normal", "3", "60.0", interval(3, 5), "1"]
    assert "ALL (blasts): 2 of 5 = 40.0%" in pane.blast_label.text()
    assert "1 reviewed, 4 as the model classed them" in pane.diff_head.text()
    with w.db.session() as s:  # what the panel shows is the case's differential as stored
        d = case_differential(s, w.folder, pane.version["id"])
    assert pane.shown_differential == d and first.cell_id in cells


def test_panel_reports_the_reviewers_agreement(qtbot, cell_window):  # noqa: F811
    w, pane, cells = cell_window
    from core.review.cells import record_cell_labels

    a, b, c = list(cells)[:3]
    with w.db.session() as s:
        record_cell_labels(s, [a, b, c], "ALL", "ann", taxonomy="all_vs_normal")
        record_cell_labels(s, [a], "Normal", "bob", taxonomy="all_vs_normal")
        record_cell_labels(s, [b, c], "ALL", "bob", taxonomy="all_vs_normal")
    assert "kappa" not in pane.diff_note.text()
    read_differential(qtbot, pane)
    assert "ann and bob agree on 2 of the 3 cells both labelled (Cohen's kappa" in pane.diff_note.text()


def test_rename_case_writes_the_case_row_and_the_window_shows_it(qtbot, cell_window, monkeypatch):  # noqa: F811
    from PySide6.QtWidgets import QInputDialog

    w, pane, cells = cell_window
    asked: list[str] = []
    answers = iter([("   ", True), ("Patient 7 — smear A", True)])

    def get_text(_parent, _title, prompt, text=""):
        asked.append(prompt)
        return next(answers)

    monkeypatch.setattr(QInputDialog, "getText", staticmethod(get_text))
    assert w.specs["rename_case"][1].isEnabled()
    with qtbot.waitSignal(w.cases.renamed, timeout=10_000):
        w.a_rename_case.trigger()
    assert "A case name is needed: it cannot be empty." in asked[1]  # the bad name's one sentence, asked again
    with w.db.session() as s:
        assert [(c.name) for c in s.scalars(select(Case))] == ["Patient 7 — smear A"]
    assert w.windowTitle() == "Patient 7 — smear A (case) — hemascan"
    assert "Patient 7 — smear A" in pane.diff_title.text()

    # a name it cannot have, given without the dialog: one sentence, nothing written
    w.cases.rename("x" * 300)
    assert w.statusBar().currentMessage() == "⚠ A case name is at most 200 characters (this one has 300)."
    with w.db.session() as s:
        assert s.scalars(select(Case.name)).all() == ["Patient 7 — smear A"]

    # the PDF report is titled with it; a window opened later reads it back
    seen = {}
    import desktop.window_menus as wm

    real = wm.write_report
    monkeypatch.setattr(wm, "write_report", lambda *a, **k: (seen.update(k), real(*a, **k))[1])
    with qtbot.waitSignal(w.reportWritten, timeout=30_000):
        w.export_pdf(path=str(w.paths.data_dir / "r.pdf"))
    assert seen["case"] == "Patient 7 — smear A"
    w.cases.name = None
    with qtbot.waitSignal(w.cases.named, timeout=10_000, check_params_cb=lambda n: n == "Patient 7 — smear A"):
        w.cases.load()


def test_gui_export_offers_cells_and_writes_one_row_per_cell(qtbot, cell_window, tmp_path, monkeypatch):  # noqa: F811
    from PySide6.QtWidgets import QFileDialog

    from desktop.window_menus import CSV_FORMATS, LAST_SAVE_FOLDER

    w, pane, cells = cell_window
    saves = tmp_path / "saves"
    saves.mkdir()
    w.settings.setValue(LAST_SAVE_FOLDER, str(saves))
    offered = []

    def save_dialog(_parent, _title, start, filters):
        offered.append((start, filters))
        return str(saves / "cells.csv"), CSV_FORMATS["cells"]

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(save_dialog))
    with qtbot.waitSignal(w.reportWritten, timeout=30_000):
        w.a_csv.trigger()
    start, filters = offered[0]
    assert str(start).startswith(str(saves)) and "-cells-" in start  # in the last save folder
    assert filters.split(";;") == [CSV_FORMATS["cells"], CSV_FORMATS["csv"]]  # the cells view's first
    with open(saves / "cells.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
        header = list(rows[0]) if rows else []
    assert set(REQUIRED) <= set(header), header
    assert sorted(int(r["cell_id"]) for r in rows) == sorted(cells)
    assert {r["model_version"] for r in rows} == {pane.version["name"]}
    assert "Exported 5 cell rows" in w.statusBar().currentMessage()


def test_a_cell_label_from_another_seat_appears_on_the_next_refresh(qtbot, cell_window):  # noqa: F811
    from core.app.bootstrap import open_database
    from core.review.cells import record_cell_labels

    w, pane, cells = cell_window
    w.peer_cells.timer.setInterval(100)
    qtbot.waitUntil(lambda: w.peer_cells.last_event_id is not None, timeout=10_000)
    target = next(i for i, v in cells.items() if v[2] == "Normal")
    assert pane.model.labels_of([target]) == {target: None}
    other = open_database(w.paths)  # another seat (or the command line): its own engine
    try:
        with other.session() as s:
            record_cell_labels(s, [target], "ALL", "carol", taxonomy="all_vs_normal")
    finally:
        other.dispose()
    qtbot.waitUntil(lambda: pane.model.labels_of([target]) == {target: "ALL"}, timeout=10_000)
    item = pane.model.items[pane.model.row_of(target)]
    assert item.reviewer == "carol"
    qtbot.waitUntil(lambda: row_of(pane, "ALL")[1:] == ["3", "75.0", interval(3, 4), "1"], timeout=10_000)
