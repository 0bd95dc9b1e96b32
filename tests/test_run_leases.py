"""Issue 20.8: a training run holds a lease (host and pid, renewed by a heartbeat), not a local
pid. Two seats (two data directories, two processes) share a database, SQLite and PostgreSQL:
seat B neither fails seat A's live run nor starts a second exclusive one; once A is killed
and its lease has passed, B marks A's run failed and may start."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from core.errors import HemascanError
from core.storage import Setting, TrainingRun
from tests.conftest import subprocess_env, url_arg

LEASE_S = 6.0  # short, so the test waits seconds; heartbeats come every 2 s

SEAT_A = """
import sys, time
from core.storage import Database
from core.models.runs import start_run
db = Database(sys.argv[1])
print(start_run(db, "se_cnn", {"seat": "A"}, exclusive=True, lease_s=float(sys.argv[2])), flush=True)
time.sleep(600)  # training: the heartbeat thread renews the lease
"""


def _wait_for(condition, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.2)


def _status(db, run_id: int) -> TrainingRun:
    with db.session() as s:
        return s.get(TrainingRun, run_id)


@pytest.mark.slow
def test_another_seats_live_run_is_kept_and_a_killed_one_fails_after_its_lease(tmp_path, db_url):
    from core.app.bootstrap import open_database
    from core.config import resolve_paths
    from core.models.runs import LEASE_KEY, RunLease, fail_stale_runs, finish_run, start_run
    from core.storage.dbutil import db_now

    seat_b = resolve_paths(tmp_path / "seat-b").ensure()
    db_b = open_database(seat_b, db_url)
    seat_a = subprocess.Popen([sys.executable, "-c", SEAT_A, url_arg(db_url), str(LEASE_S)],
                              env=subprocess_env(tmp_path / "seat-a"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = seat_a.stdout.readline()
        assert line.strip().isdigit(), seat_a.stderr.read() if seat_a.poll() is not None else line
        run_a = int(line)

        def lease():
            with db_b.session() as s:
                return RunLease.from_json(s.scalar(select(Setting.value).where(Setting.key == LEASE_KEY.format(run_a))))

        first = lease()
        assert first is not None and first.holder.endswith(f":{seat_a.pid}")
        # A's first lease has passed: only its heartbeat keeps the run alive now
        def now():  # a transaction of its own each time: PostgreSQL's now() is its transaction's start
            with db_b.session() as s:
                return db_now(s)

        _wait_for(lambda: now() > first.until + timedelta(seconds=0.5), "the first lease to pass")
        assert lease().until > first.until
        assert fail_stale_runs(db_b) == 0  # B never fails A's live run ...
        with pytest.raises(HemascanError, match=f"training run {run_a} is still running on .*:{seat_a.pid}"):
            start_run(db_b, "se_cnn", {"seat": "B"}, exclusive=True, lease_s=LEASE_S)  # ... nor starts beside it
        assert _status(db_b, run_a).status == "running"
        with db_b.session() as s:
            assert s.scalar(select(TrainingRun.id).where(TrainingRun.status == "running")) == run_a  # B added none

        seat_a.kill()  # SIGKILL: no finally, no finish_run
        seat_a.wait(timeout=30)
        # dead, but its lease (renewed at most 2 s ago) still holds: a run is stale only when it expired
        assert fail_stale_runs(db_b) == 0 and _status(db_b, run_a).status == "running"
        _wait_for(lambda: fail_stale_runs(db_b) == 1, "A's run to be failed once its lease expired")
        failed = _status(db_b, run_a)
        assert failed.status == "failed" and "lease" in failed.error and failed.finished_at is not None
        assert lease() is None  # the lease went with it

        run_b = start_run(db_b, "se_cnn", {"seat": "B"}, exclusive=True, lease_s=LEASE_S)  # B may start now
        assert _status(db_b, run_b).status == "running" and lease_of(db_b, run_b) is not None
        finish_run(db_b, run_b, "completed")
        assert _status(db_b, run_b).status == "completed" and lease_of(db_b, run_b) is None
    finally:
        if seat_a.poll() is None:
            seat_a.kill()
            seat_a.wait()
        seat_a.stdout.close()
        seat_a.stderr.close()
        db_b.dispose()


def lease_of(db, run_id: int):
    from core.models.runs import LEASE_KEY

    with db.session() as s:
        return s.scalar(select(Setting.value).where(Setting.key == LEASE_KEY.format(run_id)))


def test_a_run_on_another_machine_whose_pid_is_unknown_here_is_kept_while_its_lease_holds(tmp_path, db_url):
    """The pid of a process on another machine means nothing here (it is not alive on this one):
    only the lease decides. Without one (a run left by a hemascan from before leases) it is stale."""
    from core.models.runs import LEASE_KEY, RunLease, fail_stale_runs, start_run
    from core.storage import Database
    from core.storage.dbutil import db_now

    db = Database(db_url)
    try:
        with db.session() as s:
            remote = TrainingRun(status="running", architecture="x", config={}, pid=2**22 + 12345)
            legacy = TrainingRun(status="running", architecture="x", config={}, pid=2**22 + 12346)
            s.add_all([remote, legacy])
            s.flush()
            s.add(Setting(key=LEASE_KEY.format(remote.id),
                          value=RunLease("gpu-box:4242", db_now(s) + timedelta(minutes=5)).to_json()))
            remote_id, legacy_id = remote.id, legacy.id
        assert fail_stale_runs(db) == 1
        assert _status(db, legacy_id).status == "failed"
        assert _status(db, remote_id).status == "running"
        with pytest.raises(HemascanError, match=f"training run {remote_id} is still running on gpu-box:4242"):
            start_run(db, "x", {}, exclusive=True)
    finally:
        db.dispose()
