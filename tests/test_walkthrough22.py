"""Defects L2-L5 of the issue 22 walkthrough (docs/walkthrough.md): every field of a case can be
opened in the cells view to add a missed cell (also one where no cell was found); a cell has one
number in the view, the cells CSV and the PDF report; a correction is a change of the class the
reviewer was shown, and a gallery's heading stays with its first thumbnails; the Review menu
speaks of cells in the cells view; a re-run of classify says that nothing new was to be found;
the progress is one line per stage when stderr is not a terminal."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from PySide6.QtCore import Qt
from sqlalchemy import select

from core.cells.records import add_cell
from core.jobs import Progress
from core.review.cell_labels import record_cell_labels
from core.review.differential import CaseCell, summarise
from core.storage import Cell
from tests.test_cell_view import cell_window  # noqa: F401  (the fixture)
from tests.test_cell_view import drag as _drag

pytest.importorskip("pytestqt")


def _off_thread(fn, *args):
    """Desktop code that reads the database, run where the window would run it: not on the GUI thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


# ---- L2: a field without cells can be opened, and a missed cell added on it --------------------

def test_a_field_without_cells_is_listed_and_a_missed_cell_can_be_added_on_it(qtbot, cell_window):  # noqa: F811
    w, pane, cells = cell_window
    with_cells = {v[0] for v in cells.values()}
    empty = [f for f in pane.fields if f.image_id not in with_cells]
    assert empty, "the fixture's folder has fields where no cell was found"
    assert pane.field_box.count() == len(pane.fields) > len(with_cells)
    assert pane.fields_note.text() == f"Fields without cells: {len(empty)}"
    k = pane.field_box.findData(empty[0].image_id)
    assert pane.field_box.itemText(k).endswith("no cell found")

    pane.field_box.setCurrentIndex(k)  # what a choice in the list does
    with qtbot.waitSignal(pane.fieldShown, timeout=10_000) as shown:
        pane.field_box.activated.emit(k)
    assert shown.args == [empty[0].image_id] and pane.shown_image == empty[0].image_id
    assert pane.current_row() is None and pane.field.outlines == {}
    assert pane.view.hasFocus()  # the keys stay with the gallery

    qtbot.keyClick(pane.view, Qt.Key_N)
    assert pane.field.adding
    with qtbot.waitSignal(pane.loaded, timeout=10_000):
        _drag(qtbot, pane.field, 40, 40, 90, 95)
    added = pane.current_row()
    assert (added.image_id, added.source, added.number) == (empty[0].image_id, "added", 1)
    assert added.cell_id in pane.field.outlines
    with w.db.session() as s:
        stored = s.scalars(select(Cell).where(Cell.image_id == empty[0].image_id)).all()
    assert [(c.source, c.added_by) for c in stored] == [("added", "tester")]
    assert pane.field_box.itemText(pane.field_box.findData(empty[0].image_id)).endswith("1 cell")
    assert pane.fields_note.text() == (f"Fields without cells: {len(empty) - 1}" if len(empty) > 1 else "")


def test_choosing_a_field_with_cells_selects_its_first_cell(qtbot, cell_window):  # noqa: F811
    w, pane, cells = cell_window
    other = next(v[0] for v in cells.values() if v[0] != pane.current_row().image_id)
    k = pane.field_box.findData(other)
    pane.field_box.setCurrentIndex(k)
    pane.field_box.activated.emit(k)
    row = pane.current_row()
    assert (row.image_id, row.number) == (other, 1)


# ---- L3: one number per cell: view, cells CSV, PDF ----------------------------------------------

def test_the_view_the_cells_csv_and_the_pdf_give_a_cell_the_same_number(qtbot, cell_window, tmp_path):  # noqa: F811
    from core.review.export import cell_rows
    from desktop.report import build_report, report_data

    w, pane, cells = cell_window
    image_id = max({v[0] for v in cells.values()}, key=lambda i: sum(v[0] == i for v in cells.values()))
    with w.db.session() as s:  # two cells added by reviewers to a field with three found ones
        added = [add_cell(s, image_id, (5, 150, 40, 190), 0.25, "tester"),
                 add_cell(s, image_id, (180, 180, 220, 220), 0.25, "tester")]
        ids = [c.id for c in s.scalars(select(Cell).where(Cell.image_id == image_id))]
        # every cell of the field labelled as the blast class: all of them in the report's blast gallery
        record_cell_labels(s, ids, "ALL", "tester", taxonomy="all_vs_normal")
    with qtbot.waitSignal(pane.loaded, timeout=10_000):
        pane.reload()

    in_view = {}
    for cid in ids:
        assert pane.select_cell(cid)
        m = re.match(r"(.+): cell (\d+)( \(added by a reviewer\))?$", pane.field_title.text())
        assert m, pane.field_title.text()
        in_view[cid] = int(m.group(2))
        name = m.group(1)
    assert sorted(in_view.values()) == [1, 2, 3, 4, 5]  # found 1..3, then the added ones 4, 5
    assert [in_view[a] for a in added] == [4, 5]

    with w.db.session() as s:
        columns, rows = cell_rows(s, pane.ctl.folder)
        in_csv = {r["cell_id"]: r["cell"] for r in rows if r["cell_id"] in in_view}
    assert in_csv == in_view

    data = _off_thread(lambda: _read_report(w, report_data, pane.ctl.folder))
    text = build_report(w.db, pane.ctl.folder, None, "tester", "case", data).toPlainText()
    for cid, n in in_view.items():
        assert f"{name}: cell {n}" in text
    assert not re.search(r"#\d+", text)  # no database id


def _read_report(w, report_data, folder):
    with w.db.session() as s:
        return report_data(s, folder, None)


# ---- L4: what counts as a correction; the gallery heading stays with its thumbnails -----------

def _cell(cid, predicted, reviewed, outside=False, uncertain=False):
    return CaseCell(cid, 1, "/x.png", (0, 0, 10, 10), 0.25, (), predicted, 0.9, uncertain, outside, reviewed,
                    "tester" if reviewed else None)


def test_a_correction_is_a_change_of_the_class_shown():
    shown_and_changed = _cell(1, "ALL", "Normal")
    assert shown_and_changed.corrected
    assert _cell(2, "ALL", "Other").corrected  # "not a white cell" against a class shown
    assert not _cell(3, "ALL", "ALL").corrected
    assert not _cell(4, "ALL", "Normal", outside=True).corrected  # its class was never shown
    assert not _cell(5, "ALL", "Normal", uncertain=True).corrected  # shown as "not sure": nothing to correct
    assert not _cell(6, None, "Normal").corrected
    d = summarise([shown_and_changed, _cell(4, "ALL", "Normal", outside=True)], ["ALL", "Normal"], "ALL",
                  case="c", folder="/f")
    assert (d.n_reviewed, d.total) == (2, 2)  # the differential counts labels, not corrections


def test_the_report_counts_as_corrected_only_cells_whose_shown_class_was_changed(qtbot, cell_window):  # noqa: F811
    from desktop.report import cells_part

    w, pane, cells = cell_window
    sure = next(c for c, v in cells.items() if not v[4])
    unsure = next(c for c, v in cells.items() if v[4])
    other = {"ALL": "Normal", "Normal": "ALL"}
    with w.db.session() as s:
        record_cell_labels(s, [sure], other[cells[sure][2]], "tester", taxonomy="all_vs_normal")
        record_cell_labels(s, [unsure], other[cells[unsure][2]], "tester", taxonomy="all_vs_normal")

    def read():
        with w.db.session() as s:
            return cells_part(s, pane.ctl.folder)

    part = _off_thread(read)
    corrected = next(g for g in part.galleries if g[0] == "Cells corrected by a reviewer")
    assert corrected[2] == 1 and [c.cell_id for c, _ in corrected[3]] == [sure]


def test_a_gallery_heading_never_stands_alone_at_the_foot_of_a_page(qapp):
    from PySide6.QtCore import QSizeF
    from PySide6.QtGui import QTextDocument

    from desktop.report import gallery_html, keep_tables_whole

    thumbs = [f"<td width='16%'><div style='height:90px'>thumb {k}</div><small>x.png: cell {k}</small></td>"
              for k in range(1, 13)]
    gallery = gallery_html("<h3>Cells corrected by a reviewer: 12</h3><p><small>meaning.</small></p>", thumbs, 6, 3)
    page = 600.0
    for filler in range(0, 40):  # the heading at every height on the page
        doc = QTextDocument()
        doc.setPageSize(QSizeF(400, page))
        doc.setHtml("<p>line</p>" * filler + gallery)
        keep_tables_whole(doc, page)
        layout = doc.documentLayout()
        pages = {}
        block = doc.begin()
        while block.isValid():
            text = block.text()
            if text.startswith("Cells corrected") or text.endswith("x.png: cell 1"):
                pages[text[:15]] = int(layout.blockBoundingRect(block).top() // page)
            block = block.next()
        assert len(pages) == 2 and len(set(pages.values())) == 1, (filler, pages)


# ---- L5: wording ------------------------------------------------------------------------------

def test_the_review_menu_says_cell_in_the_cells_view(cell_window):  # noqa: F811
    w, pane, cells = cell_window
    assert (w.a_next.text(), w.a_prev.text()) == ("&Next cell", "&Previous cell")
    w.show_view("images")
    assert (w.a_next.text(), w.a_prev.text()) == ("&Next image", "&Previous image")
    w.show_view("cells")
    assert w.a_next.text() == "&Next cell"


def test_a_classify_rerun_says_nothing_new_was_to_be_found(cli, db, tmp_path):
    from tests.cellfields import write_fields
    from tests.test_cell_stage import make_cell_model_active

    make_cell_model_active(db)
    folder = tmp_path / "case1"
    write_fields(folder, 2)
    rc, out, err = cli("classify", folder, "--workers", "2")
    assert rc == 0 and "cells: 6 found in 2 images, 6 classified" in out
    rc, out, err = cli("classify", folder, "--workers", "2")
    assert rc == 0, err
    assert "cells: nothing new to find (6 cells in 2 images already found)" in out
    assert "0 found" not in out


def test_progress_is_one_line_per_stage_when_stderr_is_not_a_terminal(capsys):
    from core.app.command import App

    def job():
        for done in range(4):
            yield Progress("scan", done, 3)
        for done in range(3):
            yield Progress("classify", done, 2, message="cpu")
        return "summary"

    app = App.__new__(App)  # no data directory needed to show progress
    app.quiet = False
    assert app.progress(job(), "classify") == "summary"
    err = capsys.readouterr().err
    assert err.splitlines() == ["classify: scan: 3 of 3 img", "classify: classify: 2 of 2 img (cpu)"]


def test_typing_part_of_a_file_name_finds_the_field(qtbot, cell_window):  # noqa: F811
    # a case of thousands of fields: the Field list is searched by any part of a name, not scrolled
    w, pane, cells = cell_window
    target = next(f for f in pane.fields if f.image_id != pane.shown_image)
    part = target.name[len(target.name) // 3: len(target.name) // 3 + 4]
    box = pane.field_box
    qtbot.mouseClick(box.lineEdit(), Qt.LeftButton)
    box.lineEdit().clear()
    qtbot.keyClicks(box.lineEdit(), part)
    finder = box.completer()
    shown = [finder.completionModel().index(r, 0).data() for r in range(finder.completionModel().rowCount())]
    assert shown and all(part.casefold() in t.casefold() for t in shown)
    full = box.itemText(box.findData(target.image_id))
    assert full in shown
    with qtbot.waitSignal(pane.fieldShown, timeout=10_000) as got:
        finder.activated[str].emit(full)  # what picking it in the popup does
    assert got.args == [target.image_id] and pane.view.hasFocus()  # the keys are the gallery's again
