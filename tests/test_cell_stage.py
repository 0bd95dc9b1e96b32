"""The cell stage of classify (core/inference/cells.py): with a cell model active, classify finds
each image's cells, stores them, and classifies their cut-outs; idempotently; single-cell crops
also get their image prediction; a bad file is recorded and the batch goes on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, update

from core.cells.finder import FINDER_NAME
from core.jobs import run_job
from core.inference.predict import classify
from core.storage import Cell, CellPrediction, CellSearch, ImageFile, ModelVersion, Prediction
from tests.cellfields import single_cell_crop, write, write_fields

CELL_MODEL = "all-vs-normal-seed-cnn3-v1"  # the bundled ALL-vs-normal model: trained on single cells


def make_cell_model_active(db, keep_field_active: bool = True) -> int:
    """The bundled ALL-vs-normal version as the active cell model, beside the active field model
    (one active model per input kind: the bundled differential, active after setup, is not)."""
    with db.session() as s:
        vid = s.scalar(select(ModelVersion.id).where(ModelVersion.name == CELL_MODEL))
        assert vid is not None, "the bundled ALL-vs-normal model is registered at setup"
        if not keep_field_active:
            s.execute(update(ModelVersion).values(is_active=False))
        s.execute(update(ModelVersion).where(ModelVersion.input_kind == "cell").values(is_active=False))
        s.execute(update(ModelVersion).where(ModelVersion.id == vid).values(input_kind="cell", is_active=True))
    return vid


def cell_model_and_fields(db, tmp_path, n: int):
    """The ALL-vs-normal version as the active cell model, ``n`` synthetic fields in
    tmp_path/case1, and the version's VersionRef: (version id, folder, ref)."""
    from core.models.registry import version_ref_by_id

    vid = make_cell_model_active(db)
    folder = tmp_path / "case1"
    write_fields(folder, n)
    with db.session() as s:
        ref = version_ref_by_id(s, vid)
    return vid, folder, ref


def counts(db, vid: int) -> dict[str, int]:
    with db.session() as s:
        return dict(
            searches=s.scalar(select(func.count()).select_from(CellSearch)),
            cells=s.scalar(select(func.count()).select_from(Cell)),
            cell_predictions=s.scalar(select(func.count()).select_from(CellPrediction)
                                      .where(CellPrediction.model_version_id == vid)),
            image_predictions_of_cell_model=s.scalar(select(func.count()).select_from(Prediction)
                                                     .where(Prediction.model_version_id == vid)),
            image_predictions=s.scalar(select(func.count()).select_from(Prediction)),
        )


def test_classify_finds_and_classifies_the_cells_of_every_field(db, paths, tmp_path):
    vid = make_cell_model_active(db)
    folder = tmp_path / "case1"
    write_fields(folder, 5, white_per_field=3)
    summary = run_job(classify(db, paths, folder, workers=2))
    assert summary.n_predicted == 5  # the field model ran as before
    assert (summary.n_cells, summary.n_cell_images, summary.n_cells_classified) == (15, 5, 15)
    c = counts(db, vid)
    assert c["searches"] == 5 and c["cells"] == 15 and c["cell_predictions"] == 15
    assert c["image_predictions_of_cell_model"] == 0  # fields, not crops: only the cells get its label
    with db.session() as s:
        rows = s.execute(select(CellPrediction, Cell).join(Cell, Cell.id == CellPrediction.cell_id)).all()
        for p, cell in rows:
            assert p.label in ("ALL", "Normal") and 0.5 <= p.confidence <= 1 and len(p.probabilities) == 2
            assert p.runtime and cell.finder == FINDER_NAME
        assert {round(um, 2) for um in s.scalars(select(CellSearch.um_per_px))} == {0.21}  # from the red cells


def test_a_rerun_adds_nothing_and_reads_no_file(db, paths, tmp_path):
    vid = make_cell_model_active(db)
    folder = tmp_path / "case1"
    write_fields(folder, 4)
    run_job(classify(db, paths, folder, workers=2))
    before = counts(db, vid)
    again = run_job(classify(db, paths, folder, workers=2))
    assert counts(db, vid) == before
    assert (again.n_cells, again.n_cells_classified, again.n_predicted) == (0, 0, 0)


def test_cells_left_unclassified_by_a_cut_off_run_are_classified_by_the_next(db, paths, tmp_path):
    vid = make_cell_model_active(db)
    folder = tmp_path / "case1"
    write_fields(folder, 3)
    run_job(classify(db, paths, folder, workers=2))
    full = counts(db, vid)
    with db.session() as s:  # as if killed after the search of one image was stored, before its cells' predictions
        victim = s.scalars(select(Cell.id).order_by(Cell.id).limit(4)).all()
        s.execute(CellPrediction.__table__.delete().where(CellPrediction.cell_id.in_(victim)))
    assert counts(db, vid)["cell_predictions"] == full["cell_predictions"] - 4
    again = run_job(classify(db, paths, folder, workers=2))
    assert again.n_cells == 0 and again.n_cells_classified == 4  # found before: not searched again
    assert counts(db, vid) == full


def test_a_cell_model_asked_for_runs_alone(db, paths, tmp_path):
    vid, folder, ref = cell_model_and_fields(db, tmp_path, 2)
    summary = run_job(classify(db, paths, folder, ref, workers=2))
    assert summary.model == CELL_MODEL and summary.n_predicted == 2 and summary.n_cells_classified == 6
    assert counts(db, vid)["image_predictions"] == 0  # the field model did not run


def test_a_single_cell_crop_gets_its_cell_and_the_image_prediction(db, paths, tmp_path):
    vid = make_cell_model_active(db, keep_field_active=False)
    folder = tmp_path / "crops"
    write(folder / "ALL" / "crop1.png", single_cell_crop())
    summary = run_job(classify(db, paths, folder, workers=2))
    assert summary.n_cells == 1 and summary.n_cells_classified == 1
    with db.session() as s:
        search = s.scalar(select(CellSearch))
        assert search.single_cell_crop and search.n_cells == 1
        cell_p = s.scalar(select(CellPrediction).where(CellPrediction.model_version_id == vid))
        image_p = s.scalar(select(Prediction).where(Prediction.model_version_id == vid))
        assert image_p is not None and image_p.image_id == search.image_id
        assert (image_p.label, image_p.confidence, image_p.probabilities) == \
               (cell_p.label, cell_p.confidence, cell_p.probabilities)


def test_the_crop_is_given_whole_through_the_preprocessing_as_an_image_is(db, paths, tmp_path):
    """The same figures as the image pipeline gives for the same crop with the same model."""
    from core.inference.predict import Predictor
    from core.models.registry import version_package, version_ref_by_id

    vid = make_cell_model_active(db, keep_field_active=False)
    crop = write(tmp_path / "crops" / "c.png", single_cell_crop())
    run_job(classify(db, paths, crop.parent, workers=2))
    with db.session() as s:
        package = version_package(s, version_ref_by_id(s, vid), paths)
        stored = s.scalar(select(CellPrediction.probabilities))
    p = Predictor(package, device="cpu")
    direct = p.predict(p.load_image(str(crop))[None])[0]
    assert stored == pytest.approx([float(x) for x in direct], abs=1e-4)


def test_a_bad_file_is_recorded_and_the_batch_goes_on(db, paths, tmp_path):
    vid = make_cell_model_active(db, keep_field_active=False)
    folder = tmp_path / "case1"
    write_fields(folder, 3)
    bad = folder / "field_001.png"
    good_bytes = bad.read_bytes()
    summary = None

    # the scan hashes the good bytes; the file is then damaged before the cell stage reads it
    import core.imaging.images as images
    real = images.read_and_hash

    def damaged(path, max_bytes=None):
        content = real(path, max_bytes)
        if Path(path).name == bad.name:
            return type(content)(**{**content.__dict__, "data": good_bytes[:200]}) \
                if hasattr(content, "__dict__") else content._replace(data=good_bytes[:200])
        return content

    import core.inference.cells as cells_mod
    orig = cells_mod.read_and_hash
    cells_mod.read_and_hash = damaged
    try:
        summary = run_job(classify(db, paths, folder, workers=2))
    finally:
        cells_mod.read_and_hash = orig
    assert summary.n_cell_errors == 1 and summary.n_cells_classified == 6
    assert any("field_001" in p for p, _ in summary.errors)
    with db.session() as s:
        err = s.scalar(select(ImageFile.error).where(ImageFile.path.like("%field_001.png")))
        assert err and "\n" not in err
    assert counts(db, vid)["searches"] == 2


def test_the_cli_says_how_many_cells_it_found(cli, db, tmp_path):
    make_cell_model_active(db)
    folder = tmp_path / "case1"
    write_fields(folder, 2)
    rc, out, err = cli("classify", folder, "--workers", "2")
    assert rc == 0, err
    assert "cells: 6 found in 2 images, 6 classified" in out


def test_the_classify_workers_find_and_classify_the_cells_of_a_cell_versions_items(db, paths, tmp_path):
    from core.app.workqueue import run_worker, submit
    from core.storage import WorkItem

    vid, folder, ref = cell_model_and_fields(db, tmp_path, 5)
    queued = run_job(submit(db, paths, folder, version=ref))
    assert queued.n_queued == 5
    worked = run_job(run_worker(db, paths, once=True, claim_size=3))
    assert worked.n_predicted == 5 and worked.n_failed == 0
    c = counts(db, vid)
    assert (c["searches"], c["cells"], c["cell_predictions"]) == (5, 15, 15)
    assert c["image_predictions"] == 0  # an item of a cell version: its cells, not the field model
    with db.session() as s:
        assert s.execute(select(WorkItem.status, func.count()).group_by(WorkItem.status)).all() == [("done", 5)]
    again = run_job(submit(db, paths, folder, version=ref))  # all found and classified: nothing to queue
    assert again.n_queued == 0 and again.n_already_done == 5


def test_the_window_shows_the_cell_stage_and_what_it_classified(qtbot, paths, db, tmp_path):
    from tests.test_desktop import JOB_TIMEOUT, close_window, open_window

    make_cell_model_active(db)
    folder = tmp_path / "case1"
    write_fields(folder, 3)
    w = open_window(qtbot, paths, tmp_path)
    try:
        seen, messages = [], []
        w.job_part.slot.progress.connect(lambda p: seen.append((p.stage, w.job_part.progress_label.text())))
        w.job_part.message.connect(lambda text, _ms: messages.append(text))
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.open_folder(folder)
        cell_texts = [t for stage, t in seen if stage == "cells"]
        assert cell_texts and all(t.startswith("finding cells") for t in cell_texts), seen
        assert any("9 cells classified" in t for t in cell_texts), cell_texts
        assert any("9 cells classified with" in m for m in messages), messages
    finally:
        close_window(w)


def test_a_folder_submitted_with_an_image_kind_is_searched_with_it_by_the_workers(db, paths, tmp_path):
    from core.app.workqueue import run_worker, submit
    from core.cells.finder import finder_name
    from core.storage import WorkFolder

    vid, folder, ref = cell_model_and_fields(db, tmp_path, 4)

    def finders() -> list[str]:
        with db.session() as s:
            return sorted(set(s.scalars(select(CellSearch.finder))))

    assert run_job(submit(db, paths, folder, version=ref, image_kind="crops")).n_queued == 4
    with db.session() as s:
        assert s.scalar(select(WorkFolder.image_kind)) == "crops"
    assert run_job(run_worker(db, paths, once=True, claim_size=3)).n_predicted == 4
    assert finders() == [finder_name("crops")]
    # said again without a kind: the folder keeps "crops", nothing is queued again
    again = run_job(submit(db, paths, folder, version=ref))
    assert (again.n_queued, again.n_requeued, again.n_already_done) == (0, 0, 4)
    # the lab says they are fields after all: every image is searched again, as fields
    changed = run_job(submit(db, paths, folder, version=ref, image_kind="fields"))
    assert (changed.n_requeued, changed.n_already_done) == (4, 0)
    assert run_job(run_worker(db, paths, once=True)).n_predicted == 4
    assert finder_name("fields") in finders()
    assert counts(db, vid)["cells"] >= 12  # three cells per field found as fields (crops give one each)


def test_submit_refuses_an_unknown_image_kind_before_scanning(db, paths, tmp_path):
    from core.app.workqueue import submit

    make_cell_model_active(db)
    folder = tmp_path / "case1"
    write_fields(folder, 1)
    with pytest.raises(ValueError, match="image kind"):
        run_job(submit(db, paths, folder, image_kind="slides"))


def test_the_queue_says_what_kind_a_folder_was_submitted_as(cli, db, tmp_path):
    vid = make_cell_model_active(db)
    with db.session() as s:
        cell_model = s.get(ModelVersion, vid).name
    folder = tmp_path / "case1"
    write_fields(folder, 2)
    # the kind is for finding cells: the field model (the default version) finds none
    rc, out, err = cli("submit", folder, "--images", "crops")
    assert rc != 0 and f"--model {cell_model}" in err and "Traceback" not in err, (out, err)
    rc, out, err = cli("submit", folder, "--images", "crops", "--model", cell_model)
    assert rc == 0, err
    assert "images: crops" in out
    rc, out, err = cli("queue")
    assert rc == 0 and "images: crops" in out, (out, err)


def test_a_crop_with_more_than_one_cell_takes_its_central_cells_prediction(db, paths, tmp_path, monkeypatch):
    """A pre-cut crop given to a cut-out cell model (the differential): every found cell is
    classified, and the image's own prediction is that of the cell nearest the centre, wherever
    it comes in reading order."""
    import core.inference.cells as cells_stage
    from core.cells.finder import FieldCells, find_cells as real_find_cells

    with db.session() as s:
        vid = s.scalar(select(ModelVersion.id).where(ModelVersion.input_kind == "cell", ModelVersion.is_active.is_(True)))
        assert s.get(ModelVersion, vid).name.startswith("wbc-differential")  # cut_out crops
    crop = single_cell_crop()
    crop[240:290, 240:290] = (95, 45, 150)  # a dark blob in a corner: a second "cell" after the central one

    def two_cells(rgb, **kw):
        found = real_find_cells(rgb, **kw)
        (central,) = found.cells
        corner = type(central)((240, 240, 290, 290), np.array([[240, 240], [290, 240], [290, 290], [240, 290]]),
                               None, 0, frozenset())
        return FieldCells((central, corner), found.um_per_px, found.scale_source, found.n_red_cells, True)

    monkeypatch.setattr(cells_stage, "find_cells", two_cells)
    write(tmp_path / "crops" / "c.png", crop)
    summary = run_job(classify(db, paths, tmp_path / "crops", workers=1))
    assert summary.n_cells_classified == 2
    with db.session() as s:
        by_number = dict(s.execute(select(Cell.number, CellPrediction.probabilities)
                                   .join(CellPrediction, CellPrediction.cell_id == Cell.id)
                                   .where(CellPrediction.model_version_id == vid)).all())
        image_p = s.scalar(select(Prediction.probabilities).where(Prediction.model_version_id == vid))
    assert by_number[0] != by_number[1]
    assert image_p == by_number[0]  # the central cell (first in reading order), not the last one
