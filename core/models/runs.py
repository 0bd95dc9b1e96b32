"""Training runs (the ``training_runs`` table) and their leases.

Seats on several machines share one database, so a run's process id says nothing to another
seat. A running run holds a lease instead, as the work queue's claims do
(core/app/workqueue.py): who holds it (host and pid) and until when, by the database's clock
(PostgreSQL: the server's, the same for every seat). A heartbeat thread renews it every third
of its length while the run goes on. A run is stale only when its lease has expired (its
process was killed, crashed or lost the database): then any seat marks it ``failed``; a live
run on another machine is never touched, and an exclusive run (retrain) never starts beside it.

The lease lives in the ``settings`` key/value table, one row per running run
(``training-run-lease:<id>``, JSON), because the schema must stay as it is (no migration):
``training_runs`` has no column for it, and the run's ``config`` is what was trained, which a
lease renewed every few seconds does not belong to. The row goes when the run finishes.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session

from core.errors import HemascanError
from core.storage import Database, Setting, TrainingRun
from core.storage.dbutil import db_now

log = logging.getLogger(__name__)

#: Seconds a run's lease holds without a heartbeat: a killed run is failed this long after it died.
LEASE_S = 60.0
LEASE_KEY = "training-run-lease:{}"
# pg_advisory_xact_lock key serialising run starts across seats ("hemarun " in ASCII), so two
# exclusive runs never start at once.
PG_RUN_LOCK_KEY = int.from_bytes(b"hemarun ", "big") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class RunLease:
    holder: str  # host:pid of the process training
    until: datetime  # database time

    def to_json(self) -> str:
        return json.dumps({"holder": self.holder, "until": self.until.isoformat()})

    @classmethod
    def from_json(cls, value: str | None) -> "RunLease | None":
        try:
            d = json.loads(value or "")
            until = datetime.fromisoformat(d["until"])
            return cls(str(d["holder"]), until if until.tzinfo else until.replace(tzinfo=timezone.utc))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: as if there were none (the run is stale)


def lease_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _key(run_id: int) -> str:
    return LEASE_KEY.format(run_id)


def _lease(session: Session, run_id: int) -> RunLease | None:
    return RunLease.from_json(session.scalar(select(Setting.value).where(Setting.key == _key(run_id))))


def _write_lock(session: Session) -> None:
    """Serialise run starts and stale-run checks across processes and seats: PostgreSQL's
    advisory transaction lock; on SQLite a first statement that writes, so the transaction
    holds the database's write lock from here (pysqlite begins only before a write)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_RUN_LOCK_KEY})
    else:
        session.execute(update(Setting).where(Setting.key == _key(0)).values(value=Setting.value))


def _fail_stale(session: Session) -> int:
    now = db_now(session)
    n = 0
    for run in session.scalars(select(TrainingRun).where(TrainingRun.status == "running")):
        lease = _lease(session, run.id)
        if lease is not None and lease.until >= now:
            continue  # alive somewhere (its heartbeat renews it), whatever its pid says here
        run.status = "failed"
        run.finished_at = datetime.now(timezone.utc)
        held = f" (held by {lease.holder})" if lease else ""
        run.error = (run.error or "") + f"interrupted: its process stopped renewing the run's lease{held} " \
                                        "before the run finished"
        session.execute(delete(Setting).where(Setting.key == _key(run.id)))
        n += 1
    return n


def fail_stale_runs(db: Database) -> int:
    """Mark ``running`` rows whose lease has expired (killed, crashed) as ``failed``; a run
    left by a hemascan from before leases has none and is stale too. Returns how many."""
    with db.session() as s:
        _write_lock(s)
        return _fail_stale(s)


class _Heartbeat:
    """Renews a run's lease every third of it, in a thread of its own (its own sessions)."""

    def __init__(self, db: Database, run_id: int, holder: str, lease_s: float):
        self.db, self.run_id, self.holder, self.lease_s = db, run_id, holder, lease_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"hemascan-run-{run_id}-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.lease_s / 3):
            try:
                with self.db.session() as s:
                    lease = RunLease(self.holder, db_now(s) + timedelta(seconds=self.lease_s))
                    held = s.execute(update(Setting).where(Setting.key == _key(self.run_id))
                                     .values(value=lease.to_json())).rowcount
                if not held:  # another seat found it expired (this machine stalled or lost the database)
                    log.warning("training run %d lost its lease: another seat marked it failed", self.run_id)
                    return
            except Exception as exc:  # the run's own writes will say so; the lease may lapse
                log.warning("could not renew training run %d's lease: %s", self.run_id, exc)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=10)


_HEARTBEATS: dict[int, _Heartbeat] = {}  # runs this process trains
_HEARTBEATS_LOCK = threading.Lock()


def start_run(db: Database, architecture: str, config: dict, parent_version_id: int | None = None,
              exclusive: bool = False, lease_s: float = LEASE_S) -> int:
    """A ``running`` training_runs row for this process (train, retrain, experiments alike),
    holding a lease of ``lease_s`` seconds that a heartbeat renews until :func:`finish_run`.
    ``exclusive``: refuse while another run is still going on any seat (stale ones are failed
    first)."""
    holder = lease_holder()
    with db.session() as s:
        _write_lock(s)
        _fail_stale(s)
        if exclusive:
            other = s.scalar(select(TrainingRun).where(TrainingRun.status == "running").order_by(TrainingRun.id))
            if other is not None:
                lease = _lease(s, other.id)
                where = f" on {lease.holder}" if lease else ""
                raise HemascanError(f"training run {other.id} is still running{where}; "
                                    "cancel it or wait until it finishes")
        run = TrainingRun(status="running", architecture=architecture, config=config,
                          parent_version_id=parent_version_id, pid=os.getpid())
        s.add(run)
        s.flush()
        run_id = run.id
        s.add(Setting(key=_key(run_id), value=RunLease(holder, db_now(s) + timedelta(seconds=lease_s)).to_json()))
    with _HEARTBEATS_LOCK:
        _HEARTBEATS[run_id] = _Heartbeat(db, run_id, holder, lease_s)
    return run_id


def finish_run(db: Database, run_id: int, status: str, **values) -> None:
    """Close a run: completed / cancelled / failed, with any of its columns (metrics,
    error, model_version_id); its lease ends."""
    with _HEARTBEATS_LOCK:
        heartbeat = _HEARTBEATS.pop(run_id, None)
    if heartbeat is not None:
        heartbeat.close()
    with db.session() as s:
        run = s.get(TrainingRun, run_id)
        run.status = status
        run.finished_at = datetime.now(timezone.utc)
        for k, v in values.items():
            setattr(run, k, v)
        s.execute(delete(Setting).where(Setting.key == _key(run_id)))
