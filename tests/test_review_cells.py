"""core/review/cells.py: the cells of a folder for review, in review order, and who disagrees."""
from __future__ import annotations

from core.review.cells import OUTSIDE_GROUP, disagreeing_cells, folder_cells, record_cell_labels
from core.storage import CellPrediction
from tests.cellfolder import make_cell_folder


def test_folder_cells_grouped_by_class_least_confident_first(db, tmp_path):
    folder, vid, cells = make_cell_folder(db, tmp_path)
    with db.session() as s:
        rows = folder_cells(s, folder, vid)
    assert len(rows) == len(cells) == 5
    got = [(r.predicted, r.confidence) for r in rows]
    # the model's class order (ALL, Normal), least confident first within each
    assert got == [("ALL", 0.55), ("ALL", 0.74), ("ALL", 0.91), ("Normal", 0.62), ("Normal", 0.97)]
    r = rows[0]
    image_id, box, *_ = cells[r.cell_id]
    assert (r.image_id, r.box, r.uncertain, r.source, r.um_per_px) == (image_id, box, True, "found", 0.25)
    assert r.contour[0] == box[:2] and r.reviewed is None


def test_outside_cells_come_after_the_classes(db, tmp_path):
    folder, vid, cells = make_cell_folder(db, tmp_path)
    first = next(iter(cells))
    with db.session() as s:
        p = s.query(CellPrediction).filter_by(cell_id=first).one()
        p.out_of_distribution = True
    with db.session() as s:
        rows = folder_cells(s, folder, vid)
    assert rows[-1].cell_id == first and rows[-1].group == OUTSIDE_GROUP


def test_labels_and_reviewers_disagree(db, tmp_path):
    folder, vid, cells = make_cell_folder(db, tmp_path)
    a, b, c = list(cells)[:3]
    with db.session() as s:
        record_cell_labels(s, [a, b, c], "ALL", "ann", taxonomy="all_vs_normal")
        record_cell_labels(s, [a], "Normal", "bob", taxonomy="all_vs_normal")  # disagrees with ann
        record_cell_labels(s, [b], "ALL", "bob", taxonomy="all_vs_normal")  # agrees
        record_cell_labels(s, [c], "Normal", "bob", taxonomy="all_vs_normal")
        record_cell_labels(s, [c], None, "bob", taxonomy="all_vs_normal")  # ... then cleared: no opinion
    with db.session() as s:
        assert disagreeing_cells(s, cells) == {a}
        rows = {r.cell_id: r for r in folder_cells(s, folder, vid)}
        only = folder_cells(s, folder, vid, reviewers_disagree=True)
    assert (rows[a].reviewed, rows[a].reviewer) == ("Normal", "bob")
    assert rows[c].reviewed is None and rows[c].reviewer is None
    assert [r.cell_id for r in only] == [a]


def test_label_writer_writes_cell_labels_in_its_queue(db, tmp_path):
    """Cell labels go through the image labels' writer: the same queue and rules, their own
    events and callback; a cell's pending label is never taken for an image's."""
    import pytest

    from core.review.labels import CELL, LabelWriter
    from core.storage import CellLabelEvent, LabelEvent

    _folder, _vid, cells = make_cell_folder(db, tmp_path)
    a, b = list(cells)[:2]
    image_saved, cells_saved = [], []
    writer = LabelWriter(db, on_saved=lambda ids, n: image_saved.append(ids),
                         on_cells_saved=lambda ids, n: cells_saved.append(ids), off_caller_thread=True)
    with pytest.raises(ValueError):
        writer.write_cells({a: "Pre-B"}, "ann", "all_vs_normal")  # not a class of the cell model
    writer.write_cells({a: "ALL", b: "Other"}, "ann", "all_vs_normal", note="bulk")
    assert writer.pending_labels("all_vs_normal") == {}  # the image side sees no cell label
    assert writer.pending_labels("all_vs_normal", kind=CELL) in ({a: "ALL", b: "Other"}, {})
    writer.write_cells({a: None}, "ann", "all_vs_normal", note="undo")
    assert writer.flush(10) and writer.close() == []
    with db.session() as s:
        got = [(e.cell_id, e.previous_label, e.label, e.reviewer, e.taxonomy, e.note)
               for e in s.query(CellLabelEvent).order_by(CellLabelEvent.id)]
        assert s.query(LabelEvent).count() == 0
    assert got == [(a, None, "ALL", "ann", "all_vs_normal", "bulk"), (b, None, "Other", "ann", "all_vs_normal", "bulk"),
                   (a, "ALL", None, "ann", "all_vs_normal", "undo")]
    assert image_saved == [] and sorted(sum(cells_saved, [])) == sorted([a, b, a])
