"""A new finder version never hides a reviewer's work: an image whose cells an older finder
found and a reviewer labelled keeps that search (it is not searched again); an image whose
older search nobody labelled is searched again and the new search replaces it. The Cells view,
the differential, the cells export and the cell stage count the same cells, none twice."""
from __future__ import annotations

from sqlalchemy import select

from core.cells.finder import FINDER_NAME, FieldCells
from core.cells.records import counted_searches
from core.imaging.scan import images_under, scan
from core.inference.predict import classify
from core.jobs import run_job
from core.review.cell_labels import record_cell_labels
from core.review.cells import folder_cells
from core.review.differential import case_differential
from core.review.export import cell_rows
from core.storage import CellPrediction, CellSearch
from tests.cellfields import write_fields
from tests.cellfixtures import add_cells, found_cell
from tests.test_cell_stage import make_cell_model_active

OLD = "stain-v1"
BOXES = [(40, 40, 110, 110), (200, 60, 270, 130), (400, 300, 470, 370)]


def _folder_with_old_searches(db, tmp_path, label_first: bool = True):
    """Two fields searched by the old finder (3 cells each); the first one's first cell labelled."""
    vid = make_cell_model_active(db, keep_field_active=False)
    folder = tmp_path / "case"
    write_fields(folder, 2, white_per_field=3)
    run_job(scan(db, folder))
    with db.session() as s:
        (kept, _), (replaced, _) = images_under(s, folder)
        old_kept = add_cells(s, kept, BOXES, finder=OLD)
        old_replaced = add_cells(s, replaced, BOXES, finder=OLD)
        if label_first:
            record_cell_labels(s, [old_kept[0]], "ALL", "ann", taxonomy="all_vs_normal")
    return vid, folder, kept, replaced, old_kept, old_replaced


def _searches(db, image_id):
    with db.session() as s:
        return set(s.scalars(select(CellSearch.finder).where(CellSearch.image_id == image_id)))


def test_a_labelled_old_search_is_kept_and_an_unlabelled_one_replaced(db, paths, tmp_path):
    vid, folder, kept, replaced, old_kept, old_replaced = _folder_with_old_searches(db, tmp_path)
    run_job(classify(db, paths, folder, workers=2))
    assert _searches(db, kept) == {OLD}  # the reviewer's search: not searched again
    assert _searches(db, replaced) == {OLD, FINDER_NAME}  # nothing is deleted, but the new one counts
    with db.session() as s:
        rows = folder_cells(s, folder, vid)
        ids = [r.cell_id for r in rows]
        assert len(ids) == len(set(ids))  # none twice
        by_image = {}
        for r in rows:
            by_image.setdefault(r.image_id, set()).add(r.cell_id)
        assert by_image[kept] == set(old_kept)
        assert not by_image[replaced] & set(old_replaced)
        n_new = s.scalar(select(CellSearch.n_cells).where(CellSearch.image_id == replaced,
                                                           CellSearch.finder == FINDER_NAME))
        assert n_new == 3 and len(by_image[replaced]) == 3
        labelled = [r for r in rows if r.cell_id == old_kept[0]]
        assert labelled and labelled[0].reviewed == "ALL" and labelled[0].reviewer == "ann"
        # the cell stage classified the cells that count, the kept old ones included
        predicted = set(s.scalars(select(CellPrediction.cell_id).where(CellPrediction.model_version_id == vid)))
        assert set(ids) <= predicted and not predicted & set(old_replaced)

        d = case_differential(s, folder, vid)
        assert d.n_cells == len(ids) == 6 and d.n_reviewed == 1 and d.n_unclassified == 0

        _, gen = cell_rows(s, folder)
        exported = list(gen)
    assert sorted(int(r["cell_id"]) for r in exported) == sorted(ids)
    assert [r["reviewed_label"] for r in exported if int(r["cell_id"]) == old_kept[0]] == ["ALL"]

    # a re-run searches nothing again and classifies nothing twice
    again = run_job(classify(db, paths, folder, workers=2))
    assert (again.n_cells, again.n_cells_classified) == (0, 0)
    assert _searches(db, kept) == {OLD}
    with db.session() as s:
        assert len(s.scalars(select(CellPrediction.id).where(CellPrediction.model_version_id == vid)).all()) == \
            len(predicted)


def test_labelled_cells_hidden_by_an_earlier_re_search_come_back(db, paths, tmp_path):
    """A database where the new finder already searched a labelled image again (before this
    rule): the labelled old search is the one that counts, the new one is not counted too."""
    vid, folder, kept, replaced, old_kept, _ = _folder_with_old_searches(db, tmp_path)
    with db.session() as s:
        new_ids = add_cells(s, kept, [(10, 10, 60, 60), (300, 200, 360, 260)], finder=FINDER_NAME)
        counted = counted_searches(s, [kept, replaced])
    assert counted[kept].finder == OLD and counted[kept].labelled
    assert counted[replaced].finder == OLD and not counted[replaced].labelled
    with db.session() as s:
        ids = {r.cell_id for r in folder_cells(s, folder, vid)}
        assert set(old_kept) <= ids and not ids & set(new_ids)
        assert case_differential(s, folder, vid).n_cells == 6


def test_an_image_labelled_under_the_new_finder_keeps_the_new_search(db, tmp_path):
    """The newest search with a label counts: labels under both keep the newer one."""
    vid, folder, kept, _, old_kept, _ = _folder_with_old_searches(db, tmp_path)
    with db.session() as s:
        found = FieldCells((found_cell((10, 10, 60, 60)),), 0.2, "red_cells", 12, False)
        from core.cells.records import store_field_cells
        store_field_cells(s, kept, found, FINDER_NAME)
        s.flush()
        new_id = s.scalar(select(CellSearch.id).where(CellSearch.image_id == kept, CellSearch.finder == FINDER_NAME))
        assert new_id
        from core.storage import Cell
        new_cell = s.scalar(select(Cell.id).where(Cell.image_id == kept, Cell.finder == FINDER_NAME))
        record_cell_labels(s, [new_cell], "Normal", "bob", taxonomy="all_vs_normal")
    with db.session() as s:
        assert counted_searches(s, [kept])[kept].finder == FINDER_NAME
        ids = {r.cell_id for r in folder_cells(s, folder, vid)}
        assert new_cell in ids and not ids & set(old_kept)
