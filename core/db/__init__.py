"""Database: engine set-up (SQLite WAL + busy timeout), migrations at start-up, sessions.

One Session per thread and one transaction per user action or per batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..config import resources_dir
from ..errors import DatabaseBusyError
from .models import (  # noqa: F401  (re-exported)
    Base,
    Image,
    ImageFile,
    LabelEvent,
    ModelVersion,
    Prediction,
    Scan,
    Setting,
    TrainingRun,
    utcnow,
)

import os

# How long a writer waits for another process's lock before giving up with a clear message.
BUSY_TIMEOUT_MS = int(os.environ.get("HEMASCAN_BUSY_TIMEOUT_MS", "15000"))


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    is_sqlite = url.startswith("sqlite")
    kwargs = {}
    if is_sqlite:
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources_dir() / "migrations"))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` in place (run at every start-up)."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Database:
    """Engine + session factory for one database URL, migrated on open."""

    def __init__(self, url: str, migrate: bool = True):
        self.url = url
        self.engine = make_engine(url)
        if migrate:
            try:
                upgrade(self.engine)
            except OperationalError as exc:
                if "locked" in str(exc).lower():
                    raise DatabaseBusyError(
                        "the database is locked by another hemascan process; try again when it has finished"
                    ) from None
                raise
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self.Session() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    def dispose(self) -> None:
        self.engine.dispose()
