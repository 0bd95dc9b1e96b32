"""Dialect-aware bulk upserts (SQLite now, PostgreSQL later): a registry, not if/elif."""
from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.config import Settings

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def insert_ignore(session: Session, table, rows: Sequence[dict[str, Any]], conflict: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT (conflict) DO NOTHING, so a re-run after a crash never duplicates."""
    if not rows:
        return
    insert = _INSERTS[session.get_bind().dialect.name]
    session.execute(insert(table).on_conflict_do_nothing(index_elements=list(conflict)), list(rows))


def upsert(session: Session, table, rows: Sequence[dict[str, Any]], conflict: Sequence[str], update: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT (conflict) DO UPDATE SET update-columns."""
    if not rows:
        return
    insert = _INSERTS[session.get_bind().dialect.name]
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=list(conflict), set_={c: stmt.excluded[c] for c in update})
    session.execute(stmt, list(rows))


# ---- a connection lost mid-job (a network drop, a server restart) ----------------------------

#: Attempts of one batch's write when the connection to the server was lost, and the first pause
#: between them (doubling, at most RECONNECT_MAX_PAUSE_S): about 30 s of outage is ridden out.
#: The settings' (HEMASCAN_RECONNECT_ATTEMPTS, HEMASCAN_RECONNECT_PAUSE_S) when given.
RECONNECT_ATTEMPTS = Settings.defaults().reconnect_attempts
RECONNECT_FIRST_PAUSE_S = Settings.defaults().reconnect_pause_s
RECONNECT_MAX_PAUSE_S = 8.0


def with_reconnect(fn, what: str = "the batch", settings: Settings | None = None, *, attempts: int | None = None,
                   first_pause_s: float | None = None):
    """Run ``fn()`` (one whole transaction: it opens its own session) again on a new connection
    when the database connection was lost while it ran; the transaction was rolled back by the
    server, so doing it again stores it once. Any other error, or the last attempt's, is raised
    (the command then says in one sentence that the server cannot be reached; what was committed
    before stays)."""
    import logging
    import time

    from sqlalchemy.exc import DBAPIError

    log = logging.getLogger(__name__)
    settings = settings if settings is not None else Settings.defaults()
    attempts = settings.reconnect_attempts if attempts is None else attempts
    pause = settings.reconnect_pause_s if first_pause_s is None else first_pause_s
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except DBAPIError as exc:
            if not exc.connection_invalidated or attempt == attempts:
                raise
            first = str(getattr(exc, "orig", exc)).strip().splitlines()[:1]
            log.warning("lost the database connection while writing %s (%s); reconnecting in %.1f s (attempt %d of %d)",
                        what, first[0] if first else type(exc).__name__, pause, attempt + 1, attempts)
            time.sleep(pause)
            pause = min(pause * 2, RECONNECT_MAX_PAUSE_S)


# ---- the clock leases are measured on ------------------------------------------------------

def _server_now(session):
    from sqlalchemy import func, select

    return session.scalar(select(func.now()))


# The database server's clock where several machines share it (PostgreSQL); SQLite serves one machine.
_DB_NOW = {"postgresql": _server_now}


def db_now(session: Session):
    """Now (timezone-aware), by the database server's clock on PostgreSQL (every seat uses the
    same clock, whatever its own says) or by this machine's (SQLite: one machine). Work-queue
    claims and training-run leases are measured on it."""
    from datetime import datetime, timezone

    read = _DB_NOW.get(session.get_bind().dialect.name)
    now = read(session) if read is not None else datetime.now(timezone.utc)
    return now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)
