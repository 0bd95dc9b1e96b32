"""Issue 20.6: one version reference. A classify job predicts with exactly the version it was
given (or the one active when it started), even when another seat (another Database on the
same URL) activates another meanwhile; a window's poller reads other seats' activations."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.jobs import run_job
from core.storage import ModelVersion, Prediction

N_SAMPLE = 16  # sample_folder: 4 per class


def _seats(tmp_path, db_url):
    from core.app.bootstrap import open_database
    from core.config import resolve_paths

    a, b = resolve_paths(tmp_path / "seat-a").ensure(), resolve_paths(tmp_path / "seat-b").ensure()
    db_a = open_database(a, db_url)
    db_b = open_database(b, db_url)
    return a, db_a, db_b


def _another_version(db, active_id: int) -> str:
    """Another field model than ``active_id`` (a renamed copy of the bundled default): the only
    other bundled model is a cell model, and activating it leaves the field model active."""
    import json
    import shutil

    from core.models.registry import bundled_default_package, register_package

    dest = db.paths.data_dir / "another-field-model"
    shutil.copytree(bundled_default_package(), dest)
    card = json.loads((dest / "card.json").read_text())
    card["name"] = "another-field-model-v1"
    (dest / "card.json").write_text(json.dumps(card))
    with db.session() as s:
        version = register_package(s, db.paths, dest)
        assert version.id != active_id and version.input_kind == "field"
        return version.name


@pytest.mark.parametrize("given", [True, False], ids=["version-given", "active-at-start"])
def test_classify_predicts_with_its_version_while_another_seat_activates_another(tmp_path, db_url, sample_folder,
                                                                                  given):
    from core.inference.predict import classify
    from core.models.registry import activate, version_ref

    paths_a, db_a, db_b = _seats(tmp_path, db_url)
    try:
        with db_a.session() as s:
            version_a = version_ref(s)  # the version seat A shows
        other = _another_version(db_a, version_a.id)
        job = classify(db_a, paths_a, sample_folder, version_a if given else None, device="cpu")
        next(job)  # the job has started (it is scanning); no batch has run yet
        activate(db_b, other, who="seat-b")  # another seat switches the shared model meanwhile
        summary = run_job(job)
        assert summary.version == version_a and summary.model == version_a.name
        assert summary.n_predicted == N_SAMPLE
        with db_a.session() as s:
            # the field models' predictions (the active cell model also classifies the single-cell crops)
            by_version = dict(s.execute(select(Prediction.model_version_id, func.count())
                                        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                                        .where(ModelVersion.input_kind == "field")
                                        .group_by(Prediction.model_version_id)).all())
            assert by_version == {version_a.id: N_SAMPLE}  # every prediction is A's, none B's
            assert version_ref(s).name == other  # B is active now: the job did not follow it
    finally:
        db_a.dispose()
        db_b.dispose()


def test_a_window_poller_reads_another_seats_activations(tmp_path, db_url):
    from core.models.registry import activate, activations_since, last_activation_id, version_ref

    _, db_a, db_b = _seats(tmp_path, db_url)
    try:
        with db_a.session() as s:
            shown = version_ref(s)
            since = last_activation_id(s)
            assert since > 0 and activations_since(s, since) == []
        other = _another_version(db_a, shown.id)
        activate(db_b, other, who="dr.b")
        with db_a.session() as s:
            (seen,) = activations_since(s, since)
            assert (seen.version.name, seen.action, seen.by, seen.previous_version_id) == \
                (other, "activate", "dr.b", shown.id)
            assert seen.id == last_activation_id(s) > since
            assert activations_since(s, seen.id) == []
            everything = activations_since(s, 0)  # from the start: the setup's activation first
            assert everything[0].action == "setup" and everything[-1] == seen
    finally:
        db_a.dispose()
        db_b.dispose()


def test_classify_with_model_summarises_that_models_predictions(cli, sample_folder, paths):
    from core.app.bootstrap import open_database
    from core.models.registry import version_ref

    db = open_database(paths)
    try:
        with db.session() as s:
            active = version_ref(s)
        other = _another_version(db, active.id)
    finally:
        db.dispose()
    rc, out, err = cli("classify", sample_folder, "--model", other, "--device", "cpu")
    assert rc == 0, err
    assert f"model {other} on" in out
    assert f"predictions by {other}" in out  # the counts are the named model's, not the active one's


def test_an_unknown_model_is_one_sentence_before_any_scan(cli, sample_folder, paths):
    from core.storage import Database, Scan

    rc, out, err = cli("classify", sample_folder, "--model", "no-such-model", "--device", "cpu")
    assert rc != 0 and "Traceback" not in err
    assert "no model version 'no-such-model'" in err
    db = Database(paths.db_url())
    try:
        with db.session() as s:  # the version is resolved first: the folder was not walked for nothing
            assert s.scalar(select(func.count()).select_from(Scan)) == 0
    finally:
        db.dispose()
