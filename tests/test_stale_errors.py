"""A file that failed under one model (say, a broken preprocessing) and is then predicted by
a good model is no longer reported as a bad file."""
from sqlalchemy import select, update

from core.storage import ImageFile
from core.jobs import run_job


def test_errors_left_by_another_models_run_are_cleared_when_the_file_is_predicted(db, paths, sample_folder):
    from core.inference.predict import classify
    from core.imaging.scan import scan

    run_job(classify(db, paths, sample_folder, device="cpu"))
    with db.session() as s:  # as a model whose preprocessing failed on every file left them
        s.execute(update(ImageFile).values(error="preprocessing failed with the previous model"))
    assert run_job(scan(db, sample_folder)).n_errors > 0  # reported while they are marked
    with db.session() as s:  # the good model predicts them again (a fresh run of its own)
        from core.storage import Prediction

        s.execute(Prediction.__table__.delete())
    s2 = run_job(classify(db, paths, sample_folder, device="cpu"))
    assert s2.n_predicted > 0 and s2.n_errors == 0
    with db.session() as s:
        assert s.scalars(select(ImageFile.error).where(ImageFile.error.is_not(None))).all() == []
    assert run_job(scan(db, sample_folder)).n_errors == 0
