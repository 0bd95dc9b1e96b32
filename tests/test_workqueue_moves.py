"""Issue 20.7: the work queue follows the files. A submitted folder that is moved, renamed or
re-mounted elsewhere and submitted again under its new path gets its items re-pointed (the
images are the same content, so the same image ids, under new paths) and the workers classify
them there; on SQLite and on PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.jobs import run_job
from core.storage import Prediction, WorkFolder, WorkItem

N_SAMPLE = 16  # sample_folder: 4 per class


@pytest.mark.parametrize("worker_first", [True, False], ids=["failed-then-resubmitted", "resubmitted-while-queued"])
def test_a_moved_folder_submitted_again_is_classified_by_the_workers(tmp_path, db_url, sample_folder, worker_first):
    from core.app.bootstrap import open_database
    from core.app.workqueue import queue_status, run_worker, submit
    from core.config import resolve_paths

    paths = resolve_paths(tmp_path / "seat").ensure()
    db = open_database(paths, db_url)
    try:
        assert run_job(submit(db, paths, sample_folder)).n_queued == N_SAMPLE
        # renamed, and on another mount point: nothing is left at the old path
        moved = tmp_path / "share" / "renamed-smears"
        moved.parent.mkdir()
        sample_folder.rename(moved)
        if worker_first:  # a worker looked before anyone submitted the new path: every file is gone
            w = run_job(run_worker(db, paths, once=True, device="cpu"))
            assert (w.n_predicted, w.n_failed) == (0, N_SAMPLE)
        again = run_job(submit(db, paths, moved))
        assert again.n_images == N_SAMPLE and again.n_queued == 0  # the same images: nothing queued twice
        assert (again.n_requeued, again.n_already_queued) == ((N_SAMPLE, 0) if worker_first else (0, N_SAMPLE))
        with db.session() as s:
            new_folder = s.scalar(select(WorkFolder.id).where(WorkFolder.root.contains("renamed-smears")))
            assert set(s.scalars(select(WorkItem.folder_id))) == {new_folder}  # every item re-pointed
        w = run_job(run_worker(db, paths, once=True, device="cpu"))
        assert (w.n_predicted, w.n_failed) == (N_SAMPLE, 0), w.errors
        with db.session() as s:
            assert s.scalar(select(func.count(func.distinct(Prediction.image_id)))) == N_SAMPLE
            assert dict(s.execute(select(WorkItem.status, func.count()).group_by(WorkItem.status)).all()) == \
                {"done": N_SAMPLE}
        (status,) = queue_status(db, moved)
        assert (status.total, status.done, status.failed, status.queued) == (N_SAMPLE, N_SAMPLE, 0, 0)
    finally:
        db.dispose()
