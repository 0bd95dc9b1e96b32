"""Training runs (the ``training_runs`` table) whose process died: found by pid and marked
``failed``, so a killed run never looks as if it were still going."""
from __future__ import annotations

import os
import threading
from datetime import datetime, timezone

from sqlalchemy import select

from core.storage import Database, TrainingRun

_LIVE_RUNS: set[int] = set()  # training_runs ids being trained in this process
_LIVE_LOCK = threading.Lock()


def mark_live(run_id: int, live: bool = True) -> None:
    """Record that ``run_id`` is (or no longer is) being trained by this process."""
    with _LIVE_LOCK:
        (_LIVE_RUNS.add if live else _LIVE_RUNS.discard)(run_id)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def fail_stale_runs(db: Database) -> int:
    """Mark ``running`` rows whose process is gone (killed, crashed) as ``failed``."""
    n = 0
    with db.session() as s:
        for run in s.scalars(select(TrainingRun).where(TrainingRun.status == "running")):
            mine = run.pid == os.getpid()
            with _LIVE_LOCK:
                live_here = run.id in _LIVE_RUNS
            if (mine and not live_here) or (not mine and not pid_alive(run.pid)):
                run.status = "failed"
                run.finished_at = datetime.now(timezone.utc)
                run.error = (run.error or "") + "interrupted: the process ended before the run finished"
                n += 1
    return n


def start_run(db: Database, architecture: str, config: dict, parent_version_id: int | None = None,
              exclusive: bool = False) -> int:
    """A ``running`` training_runs row for this process (train, retrain, experiments alike).
    ``exclusive``: refuse while another run is still going (stale ones are failed first)."""
    from core.errors import HemascanError

    fail_stale_runs(db)
    with db.session() as s:
        if exclusive:
            other = s.scalar(select(TrainingRun).where(TrainingRun.status == "running"))
            if other is not None:
                raise HemascanError(f"training run {other.id} is still running (pid {other.pid}); "
                                    "cancel it or wait until it finishes")
        run = TrainingRun(status="running", architecture=architecture, config=config,
                          parent_version_id=parent_version_id, pid=os.getpid())
        s.add(run)
        s.flush()
        run_id = run.id
    mark_live(run_id)
    return run_id


def finish_run(db: Database, run_id: int, status: str, **values) -> None:
    """Close a run: completed / cancelled / failed, with any of its columns (metrics,
    error, model_version_id)."""
    with db.session() as s:
        run = s.get(TrainingRun, run_id)
        run.status = status
        run.finished_at = datetime.now(timezone.utc)
        for k, v in values.items():
            setattr(run, k, v)
    mark_live(run_id, False)
