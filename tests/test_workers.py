"""Issue 15.5: classify workers. ``hemascan submit`` queues a folder, ``hemascan worker``
claims and predicts it, on a real SQLite file and on a real PostgreSQL server
(tests/pgserver.py) with several worker processes, one of them killed mid-batch, and with
the server stopped under a waiting worker."""
from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from core.storage import Prediction, WorkItem
from core.jobs import run_job
from tests.conftest import hemascan_cmd, subprocess_env

N_SAMPLE = 16  # sample_folder: 4 per class


def _predicted(out: str) -> int:
    m = re.search(r"worker \S+: (\d+) predicted, (\d+) failed", out)
    assert m, out
    return int(m.group(1))


# ---- SQLite, in process ------------------------------------------------------------------------

def test_submit_twice_then_worker_once_on_sqlite_predicts_every_image_once(cli, sample_folder, paths):
    (sample_folder / "notes.txt").write_text("not an image")  # skipped, as by scan
    (sample_folder / "Benign" / "broken.jpg").write_text("this is a text file, not a picture")
    rc, out, err = cli("submit", sample_folder)
    assert rc == 0, err
    assert re.search(r"broken\.jpg: .*not a recognised image", out), out  # one sentence for the bad file
    assert f"queued {N_SAMPLE} of {N_SAMPLE} images" in out
    rc, out, err = cli("submit", sample_folder)  # again: nothing queued twice
    assert rc == 0, err
    assert f"queued 0 of {N_SAMPLE} images" in out and f"{N_SAMPLE} were queued already" in out

    from core.storage import Database

    db = Database(paths.db_url())
    try:
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(WorkItem)) == N_SAMPLE
        vanished = sorted(p for p in sample_folder.rglob("*.jpg") if p.name != "broken.jpg")[0]
        vanished.unlink()  # after submit, before the worker reads it: it fails, the rest goes on
        rc, out, err = cli("worker", "--once", "--claim", "5")
        assert rc == 0, err
        assert f"{N_SAMPLE - 1} predicted, 1 failed" in out, out
        assert vanished.name in err  # one sentence for the file that failed
        assert "Traceback" not in err
        with db.session() as s:
            per_image = s.execute(select(Prediction.image_id, func.count()).group_by(Prediction.image_id)).all()
            assert len(per_image) == N_SAMPLE - 1 and all(c == 1 for _, c in per_image)
            items = s.execute(select(WorkItem.status, WorkItem.attempts, func.count())
                              .group_by(WorkItem.status, WorkItem.attempts)).all()
            assert sorted(items) == [("done", 1, N_SAMPLE - 1), ("failed", 1, 1)]
        from core.app.workqueue import queue_status

        (q,) = queue_status(db, sample_folder)
        assert (q.total, q.done, q.failed, q.queued, q.running) == (N_SAMPLE, N_SAMPLE - 1, 1, 0, 0)
        rc, out, _ = cli("queue")
        assert rc == 0 and f"{N_SAMPLE - 1} done, 1 failed" in out
    finally:
        db.dispose()


def test_queue_status_counts_queued_running_done_and_expired_leases(db, paths, sample_folder, tmp_path):
    from core.inference.predict import classify
    from core.imaging.scan import scan
    from core.app.workqueue import claim, queue_status, submit

    summary = run_job(submit(db, paths, sample_folder))
    assert summary.n_queued == N_SAMPLE
    assert queue_status(db, tmp_path / "elsewhere") == []
    token_a, items_a = claim(db, "a", 3, lease_s=60)
    _, items_b = claim(db, "b", 2, lease_s=-1)  # a worker whose lease has already run out
    assert len(items_a) == 3 and len(items_b) == 2
    assert not {i.item_id for i in items_a} & {i.item_id for i in items_b}
    (q,) = queue_status(db, sample_folder)
    assert (q.total, q.queued, q.running, q.done, q.failed) == (N_SAMPLE, N_SAMPLE - 3, 3, 0, 0)
    _, again = claim(db, "c", 100, lease_s=60)  # takes the expired claim over, never a live one
    assert {i.item_id for i in items_b} <= {i.item_id for i in again}
    assert not {i.item_id for i in items_a} & {i.item_id for i in again}
    assert len(again) == N_SAMPLE - 3

    # predictions by classify count as done whatever the queue says; a new file is not queued
    run_job(classify(db, paths, sample_folder, device="cpu"))
    from core.app.sample import generate

    generate(sample_folder / "later", n_per_class=1, seed=99)
    run_job(scan(db, sample_folder))
    (q,) = queue_status(db, sample_folder)
    assert (q.done, q.queued, q.running) == (N_SAMPLE, 0, 0)
    assert q.total == q.done + q.not_queued and q.not_queued >= 1
    assert "not submitted" in q.describe()


# ---- PostgreSQL, worker processes ---------------------------------------------------------------

def _env(data_dir: Path, url, **extra) -> dict:
    return subprocess_env(data_dir, HEMASCAN_DB_URL=url.render_as_string(hide_password=False), **extra)


def _hemascan(env: dict, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*hemascan_cmd(), "-q", *map(str, argv)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _worker(env: dict, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([*hemascan_cmd(), "-q", "worker", "--device", "cpu", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(url, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def _check_every_image_predicted_once(url) -> None:
    per_image = _rows(url, "SELECT image_id, count(*) FROM predictions GROUP BY image_id")
    assert len(per_image) == N_SAMPLE and all(c == 1 for _, c in per_image), per_image
    assert _rows(url, "SELECT status, count(*) FROM work_items GROUP BY status") == [("done", N_SAMPLE)]


@pytest.mark.slow
def test_three_workers_on_postgresql_predict_every_image_exactly_once(pg_url, sample_folder, tmp_path):
    env = _env(tmp_path / "data", pg_url)
    sub = _hemascan(env, "submit", sample_folder)
    assert sub.returncode == 0, sub.stderr
    barrier = threading.Barrier(3)
    results: list = [None] * 3

    def run(i: int) -> None:
        barrier.wait()
        p = _worker(env, "--once", "--claim", "2", "--name", f"w{i}")
        results[i] = (p.wait(timeout=180), *p.communicate())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rc, out, err in results:
        assert rc == 0, err
        assert "Traceback" not in err
    # each image was computed by one worker only: the claims never overlapped
    assert sum(_predicted(out) for _, out, _ in results) == N_SAMPLE
    _check_every_image_predicted_once(pg_url)
    assert _rows(pg_url, "SELECT max(attempts) FROM work_items") == [(1,)]


@pytest.mark.slow
def test_a_killed_workers_batch_is_taken_over_after_its_lease(pg_url, sample_folder, tmp_path):
    env = _env(tmp_path / "data", pg_url)
    assert _hemascan(env, "submit", sample_folder).returncode == 0
    victim = _worker(env, "--claim", "4", "--lease", "2", "--name", "victim")
    stranded: list[tuple] = []
    deadline = time.monotonic() + 60
    try:
        while not stranded and time.monotonic() < deadline and victim.poll() is None:
            # claimed, not yet written: the model is loading or the batch is being predicted
            stranded = _rows(pg_url, "SELECT id FROM work_items WHERE worker = 'victim' AND status = 'running'")
            time.sleep(0.02)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
    assert stranded, "the victim never held a batch"
    stranded_ids = [i for (i,) in _rows(pg_url, "SELECT id FROM work_items WHERE worker = 'victim' AND status = 'running'")]
    assert stranded_ids  # SIGKILLed while holding it
    rescuer = _worker(env, "--once", "--claim", "4", "--lease", "2", "--poll", "0.2", "--name", "rescuer")
    out, err = rescuer.communicate(timeout=180)
    assert rescuer.returncode == 0, err
    _check_every_image_predicted_once(pg_url)
    taken_over = _rows(pg_url, "SELECT worker, attempts FROM work_items WHERE id IN (%s)" % ",".join(map(str, stranded_ids)))
    assert taken_over and all(w == "rescuer" and a == 2 for w, a in taken_over), taken_over
    done_by_victim = _rows(pg_url, "SELECT count(*) FROM work_items WHERE worker = 'victim'")[0][0]
    assert _predicted(out) == N_SAMPLE - done_by_victim


@pytest.mark.slow
def test_worker_waits_while_the_server_is_down_and_finishes_when_it_is_back(sample_folder, tmp_path, pg_server):
    from tests import pgserver

    server = pgserver.start()  # its own server: this test stops it (pg_server: the machine can run one)
    try:
        url = server.create_database("down")
        env = _env(tmp_path / "data", url, HEMASCAN_WORKER_RETRY_MAX_S="1")
        assert _hemascan(env, "submit", sample_folder).returncode == 0
        server.halt()
        err_file = tmp_path / "worker.err"
        with open(err_file, "w") as errf:
            worker = subprocess.Popen([*hemascan_cmd(), "-q", "worker", "--once", "--device", "cpu"], env=env,
                                      stdout=subprocess.PIPE, stderr=errf, text=True)
            deadline = time.monotonic() + 60
            while "retrying in" not in err_file.read_text() and time.monotonic() < deadline:
                assert worker.poll() is None, err_file.read_text()  # it does not give up
                time.sleep(0.1)
            time.sleep(1.5)  # a few more attempts
            server.resume()
            out, _ = worker.communicate(timeout=120)
        err = err_file.read_text()
        assert worker.returncode == 0, err
        assert "Traceback" not in err
        lines = [ln for ln in err.splitlines() if "retrying in" in ln]
        assert len(lines) >= 2 and all("could not reach" in ln for ln in lines), err
        assert _predicted(out) == N_SAMPLE
        _check_every_image_predicted_once(url)
    finally:
        server.stop()


def test_worker_exits_at_once_when_waiting_cannot_help(pg_server, tmp_path):
    """A missing database (or a wrong password) is not waited out: one sentence, exit 5."""
    env = _env(tmp_path / "data", pg_server.set(database="no_such_database"))
    proc = _hemascan(env, "worker", "--once", timeout=60)
    assert proc.returncode == 5, proc.stderr
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert "retrying" not in proc.stderr


def test_status_bar_label_shows_the_open_folders_queue(qtbot, db, paths, sample_folder, tmp_path):
    from desktop.queuestatus import QueueStatusLabel
    from desktop.workers import Workers
    from core.app.workqueue import claim, submit

    workers = Workers()
    label = QueueStatusLabel(workers, lambda: db)
    qtbot.addWidget(label)
    label.set_folder(sample_folder)
    workers.wait(10000)
    qtbot.waitUntil(lambda: not label._busy, timeout=10000)
    assert label.isHidden() and label.text() == ""  # never submitted: nothing shown
    run_job(submit(db, paths, sample_folder))
    claim(db, "w", 5, lease_s=60)
    label.refresh()
    qtbot.waitUntil(lambda: label.text().startswith("Workers:"), timeout=10000)
    assert not label.isHidden()
    assert label.text() == f"Workers: {N_SAMPLE - 5} queued, 5 running, 0 done, 0 failed"
    label.set_folder(None)
    workers.wait(10000)


def test_the_window_shows_another_machines_worker_and_its_predictions(qtbot, paths, sample_folder):
    """A folder classified by a worker elsewhere: the open window shows the queue in its status
    bar and the predictions in the gallery as they land, without being asked to."""
    from PySide6.QtCore import QSettings

    from core.app.bootstrap import open_database
    from core.app.workqueue import run_worker, submit
    from desktop.mainwindow import MainWindow

    settings = QSettings(str(paths.data_dir / "t.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "Ana Ruiz")
    w = MainWindow(paths, settings=settings)
    qtbot.addWidget(w)
    w.queue_label.timer.setInterval(200)
    w.open_folder(sample_folder, classify=False)
    qtbot.waitUntil(lambda: w.model.rowCount() == 0 or not w.queue_label._busy, timeout=10000)
    other = open_database(paths, paths.db_url())  # the worker's machine: its own connection
    run_job(submit(other, paths, sample_folder))
    qtbot.waitUntil(lambda: w.queue_label.text() == f"Workers: {N_SAMPLE} queued, 0 running, 0 done, 0 failed",
                    timeout=10000)
    qtbot.waitUntil(lambda: w.model.rowCount() == N_SAMPLE, timeout=10000)  # the gallery reads in a worker
    assert w.model.rowCount() == N_SAMPLE and all(w.model.row_at(r).predicted is None for r in range(N_SAMPLE))
    run_job(run_worker(other, paths, once=True))
    qtbot.waitUntil(lambda: w.queue_label.text().endswith(f"{N_SAMPLE} done, 0 failed"), timeout=10000)
    qtbot.waitUntil(lambda: all(w.model.row_at(r).predicted for r in range(w.model.rowCount())), timeout=10000)
    other.dispose()
