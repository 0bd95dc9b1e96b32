"""Database: engine set-up (SQLite WAL + busy timeout), migrations at start-up, sessions.

One Session per thread and one transaction per user action or per batch.

Migrations are atomic: on SQLite the whole upgrade runs in one ``BEGIN IMMEDIATE``
transaction that also covers the DDL (pysqlite's own transaction handling is switched off
for that connection, see :func:`migration_transaction`), so a process killed, or a disk
filling up, in the middle of an upgrade leaves the database at its old revision with all its
data; the next start migrates again. PostgreSQL has transactional DDL of its own.

First-time setup (migrations, then the model registry: core/app/bootstrap.py) is safe when
several processes start at once: it runs under :func:`data_dir_lock` (a file lock in the data
directory) and, on PostgreSQL, :func:`server_setup_lock` (a server-wide advisory lock).
Storage knows nothing of models, reviews or scans.

Database URLs are :class:`sqlalchemy.engine.URL` objects built with ``URL.create``, never
strings put together by formatting, and Alembic gets the connection, not the URL (its
config parser would read ``%`` in a password or a path as interpolation).
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings, resources_dir
from core.errors import DatabaseBusyError, DatabaseUnavailableError
from core.storage.errors import check_sqlite_location, describe_url, missing_driver, user_error
from core.storage.fileidentity import DatabaseFileIdentity, check_not_lost
from core.storage import audit  # noqa: F401  (its before_flush hook chains every audit row)
from core.storage.orm import (  # noqa: F401  (re-exported)
    AuditChainHead,
    Base,
    Case,
    Cell,
    CellLabelEvent,
    CellPrediction,
    CellSearch,
    Image,
    ImageFile,
    LabelEvent,
    Login,
    ModelActivation,
    ModelBlob,
    ModelFile,
    ModelVersion,
    Prediction,
    ReleaseEvent,
    Scan,
    Setting,
    TrainingRun,
    WorkFolder,
    WorkItem,
    utcnow,
)

if TYPE_CHECKING:
    from core.config import Paths

log = logging.getLogger(__name__)

# How long a writer waits for another process's lock before giving up with a clear message, and
# how long a start waits for another process's first-time setup (a long migration) to finish:
# the defaults; a Database uses its settings' (HEMASCAN_BUSY_TIMEOUT_MS, HEMASCAN_SETUP_LOCK_TIMEOUT_S).
BUSY_TIMEOUT_MS = Settings.defaults().busy_timeout_ms
SETUP_LOCK_TIMEOUT_S = Settings.defaults().setup_lock_timeout_s
# pg_advisory_lock key of hemascan's first-time setup ("hemascan" in ASCII, as a bigint).
PG_SETUP_LOCK_KEY = int.from_bytes(b"hemascan", "big") & 0x7FFF_FFFF_FFFF_FFFF
SETUP_LOCK_FILE = ".setup.lock"


def to_url(url: str | URL) -> URL:
    """A URL object from a URL given by a person (``--db-url``) or built by ``URL.create``."""
    return url if isinstance(url, URL) else make_url(str(url))


def _sqlite_pragmas(dbapi_conn, _record, busy_timeout_ms: int) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def make_engine(url: str | URL, busy_timeout_ms: int | None = None, default_busy_timeout_ms: int = BUSY_TIMEOUT_MS,
                file_identity: DatabaseFileIdentity | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout (``busy_timeout_ms``, default
    ``default_busy_timeout_ms``: the settings') and foreign keys. A SQLite file's folder must
    exist, and the file is watched (core/storage/fileidentity.py: deleted or replaced, nothing
    more is committed; ``file_identity`` shares another engine's record of it). On
    PostgreSQL an explicit ``busy_timeout_ms`` becomes the lock timeout (and bounds a statement
    and the connect), so the review keys' first attempt never waits on a lock held elsewhere."""
    url = to_url(url)
    busy = default_busy_timeout_ms if busy_timeout_ms is None else int(busy_timeout_ms)
    if url.get_backend_name() == "sqlite":
        check_sqlite_location(url)
        engine = create_engine(url, connect_args={"timeout": busy / 1000, "check_same_thread": False})
        event.listen(engine, "connect", partial(_sqlite_pragmas, busy_timeout_ms=busy))
        identity = file_identity or DatabaseFileIdentity.for_url(url)
        if identity is not None:
            identity.watch(engine)
        return engine
    kwargs: dict = {"pool_pre_ping": True}
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2"):
        connect: dict = {}
        if "connect_timeout" not in url.query:
            # a server that is down: a message, not a hang; an engine with a short busy timeout
            # (the review keys' first write attempt) gives up as early as libpq allows (2 s)
            connect["connect_timeout"] = 10 if busy_timeout_ms is None else max(2, -(-busy // 1000))
        if busy_timeout_ms is not None:  # as SQLite's busy timeout: a lock held elsewhere is not waited out
            connect["options"] = f"-c lock_timeout={busy} -c statement_timeout={max(busy, 1000)}"
        kwargs["connect_args"] = connect
    try:
        return create_engine(url, **kwargs)
    except ImportError as exc:  # e.g. postgresql:// without psycopg installed
        raise missing_driver(exc) from exc


@contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One connection in one transaction that covers DDL too.

    pysqlite (Python < 3.12) commits on its own before DDL and begins only before DML, so an
    Alembic upgrade ran as many small transactions: a kill in between left half a schema
    ("table images already exists"). Here its transaction handling is switched off for this
    connection (``isolation_level = None``) and the transaction is begun explicitly with
    ``BEGIN IMMEDIATE`` (the write lock at once: two processes migrating queue up), as the
    SQLAlchemy docs' pysqlite "Serializable isolation / Savepoints / Transactional DDL" recipe
    does. Commit and rollback go through the DBAPI as usual."""
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            with conn.begin():
                yield conn
            return
        dbapi_conn = conn.connection.driver_connection
        legacy = dbapi_conn.isolation_level
        dbapi_conn.isolation_level = None
        try:
            # SQLite's procedure for schema changes that rebuild tables (Alembic's batch mode):
            # foreign keys off outside the transaction, checked before the commit.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
            with conn.begin():
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield conn
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise DatabaseUnavailableError(f"the schema upgrade would break {len(broken)} reference(s) "
                                                   f"between tables (first: {tuple(broken[0])}); nothing was changed")
        finally:
            try:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
                dbapi_conn.isolation_level = legacy
            except Exception:  # a broken connection is not given back to the pool
                conn.invalidate()


@contextmanager
def server_setup_lock(engine: Engine, timeout_s: float | None = None) -> Iterator[None]:
    """PostgreSQL: a server-wide advisory lock around first-time setup, so that hemascan
    processes on several machines migrate (and register the bundled model) one at a time.
    Other databases: nothing (SQLite is covered by the data directory's file lock and by
    ``BEGIN IMMEDIATE``)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    timeout_s = SETUP_LOCK_TIMEOUT_S if timeout_s is None else timeout_s
    with engine.connect() as conn:
        deadline = time.monotonic() + timeout_s
        while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_SETUP_LOCK_KEY}).scalar():
            conn.rollback()
            if time.monotonic() > deadline:
                raise DatabaseBusyError("another hemascan has been setting up the database for "
                                        f"{timeout_s:.0f} s (a migration?); try again when it has finished")
            time.sleep(0.2)
        conn.commit()
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_SETUP_LOCK_KEY})
                conn.commit()
            except SQLAlchemyError:  # the session is gone, and its lock with it
                conn.invalidate()


def alembic_config(engine: Engine | None = None):
    """Alembic's config: the migrations' location only. The connection is handed over in
    ``config.attributes`` (see :func:`upgrade`), never the URL: Alembic's config parser
    reads ``%`` as interpolation, so a password or a folder name with ``%`` broke it."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources_dir() / "migrations").replace("%", "%%"))
    return cfg


@lru_cache(maxsize=1)
def _script_revisions() -> tuple[str, frozenset[str]]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(resources_dir() / "migrations"))
    return script.get_current_head(), frozenset(r.revision for r in script.walk_revisions())


def head_revision() -> str:
    return _script_revisions()[0]


def upgrade(engine: Engine, revision: str = "head", lock_timeout_s: float | None = None) -> None:
    """Bring the schema to ``revision`` in place, all of it in one transaction (every start
    runs it; an interrupted upgrade leaves the old revision and is done again)."""
    from alembic import command

    cfg = alembic_config(engine)
    with server_setup_lock(engine, lock_timeout_s), migration_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Database:
    """Engine + session factory for one database URL, migrated on open.

    Opening a database that cannot be used (damaged, read-only, unreachable, no driver)
    raises a :class:`~core.errors.HemascanError` with one sentence that says so."""

    def __init__(self, url: str | URL, migrate: bool = True, busy_timeout_ms: int | None = None,
                 settings: Settings | None = None, same_file_as: "Database | None" = None):
        """``settings``: read once at start and passed down (default: the defaults).
        ``same_file_as``: another Database on this URL whose record of the SQLite file's
        identity this one shares (one opened later must not take a replaced file for it)."""
        self.engine = None
        self.settings = settings if settings is not None else Settings.defaults()
        self.file_identity: DatabaseFileIdentity | None = None
        try:
            self.url = to_url(url)
            if same_file_as is None:  # else the shared file identity says it, knowing more
                check_not_lost(self.url)  # a database deleted since the last run is not silently made anew
            self.file_identity = (same_file_as.file_identity if same_file_as is not None
                                  else DatabaseFileIdentity.for_url(self.url))
            self.engine = make_engine(self.url, busy_timeout_ms, self.settings.busy_timeout_ms, self.file_identity)
            if migrate:
                self.migrate()
        except Exception as exc:
            if self.engine is not None:
                self.engine.dispose()
            err = user_error(exc, getattr(self, "url", None))
            if err is None or err is exc:
                raise
            raise err from exc
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self.paths: "Paths | None" = None  # the data directory it serves (open_database)

    def describe(self) -> str:
        return describe_url(self.url)

    def revision(self) -> str | None:
        return current_revision(self.engine)

    def migrate(self) -> None:
        """Upgrade to head unless already there (a database at head is only read, so a
        read-only database at head still opens)."""
        head, known = _script_revisions()
        rev = self.revision()
        if rev == head:
            return
        if rev is not None and rev not in known:
            raise DatabaseUnavailableError(
                f"{self.describe()} was written by a newer version of hemascan (schema {rev}); "
                "update hemascan to use it")
        upgrade(self.engine, lock_timeout_s=self.settings.setup_lock_timeout_s)

    def at_head(self) -> bool:
        """True when the schema is at this hemascan's head revision."""
        return self.revision() == head_revision()

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


@contextmanager
def data_dir_lock(paths: "Paths", timeout_s: float | None = None) -> Iterator[None]:
    """A cross-process lock in the data directory (filelock: released by the OS if its holder
    is killed) around first-time setup of that directory."""
    from filelock import FileLock, Timeout

    timeout_s = paths.settings.setup_lock_timeout_s if timeout_s is None else timeout_s
    # mode: the next user of a shared data directory opens the same lock (core.config.share_with_group)
    lock = FileLock(str(paths.data_dir / SETUP_LOCK_FILE), timeout=timeout_s, mode=0o664)
    try:
        lock.acquire()
    except Timeout:
        raise DatabaseBusyError(f"another hemascan has been setting up {paths.data_dir} for {timeout_s:.0f} s "
                                "(migrating the database or installing the bundled model); try again when "
                                "it has finished") from None
    try:
        yield
    finally:
        lock.release()
