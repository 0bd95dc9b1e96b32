"""What went wrong with the database or the disk, in one sentence for people.

:func:`user_error` turns the exceptions that a broken environment raises (SQLAlchemy and
DBAPI errors, a missing driver, OSError) into a :class:`~core.errors.HemascanError` whose
message says what happened and what to do, and whose ``exit_code`` the CLI returns. The
command line and the desktop app both use it, so they say the same thing. Passwords never
appear in a message.
"""
from __future__ import annotations

import errno
import os
import sqlite3
import sys
from enum import Enum

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from core.errors import DatabaseBusyError, DatabaseUnavailableError, HemascanError, NotPermittedError, StorageError

# Known drivers: the package to install for each (the dialect's default driver first).
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "pymysql": "PyMySQL",
    "mysqldb": "mysqlclient",
}


class Fault(Enum):
    """What a database error means, decided from the error's code and the connection's state
    (PostgreSQL's SQLSTATE, SQLite's result code, SQLAlchemy's ``connection_invalidated``),
    not from its message: a server translates its messages (``lc_messages``), and so does
    libpq on a workstation set to another language."""

    BUSY = "busy"  # locked by another writer, a lock timeout, a deadlock or serialization failure
    UNREACHABLE = "unreachable"  # the server is down, restarting, or not reachable over the network
    CONNECTION_LOST = "connection lost"  # a connection it had was cut (network drop, server restart)
    NO_FREE_CONNECTION = "no free connection"  # the server has no connection slot left now
    LOGIN_REFUSED = "login refused"  # wrong user name or password, a role that may not log in
    NO_DATABASE = "no database"  # the database named in the URL does not exist
    REFUSED = "refused"  # the server refused the login or the database (which of the two: see _refusal)
    PERMISSION = "permission"  # the login may not do this
    DISK_FULL = "disk full"
    DAMAGED = "damaged"  # not a database, or a damaged one
    READ_ONLY = "read-only"
    CANNOT_OPEN = "cannot open"
    DISK_IO = "disk i/o"
    OTHER = "other"


#: Faults that go away by themselves: a long-running process waits and retries.
TRANSIENT = frozenset({Fault.BUSY, Fault.UNREACHABLE, Fault.CONNECTION_LOST, Fault.NO_FREE_CONNECTION})

# PostgreSQL error codes (SQLSTATE, https://www.postgresql.org/docs/current/errcodes-appendix.html):
# the exact codes first, then the two-character classes.
_SQLSTATES = {
    "55P03": Fault.BUSY,  # lock_not_available (lock_timeout)
    "40001": Fault.BUSY,  # serialization_failure
    "40P01": Fault.BUSY,  # deadlock_detected
    "57P01": Fault.CONNECTION_LOST,  # admin_shutdown (server stopping, pg_terminate_backend)
    "57P02": Fault.CONNECTION_LOST,  # crash_shutdown
    "57P03": Fault.UNREACHABLE,  # cannot_connect_now (starting up, shutting down, in recovery)
    "57P05": Fault.CONNECTION_LOST,  # idle_session_timeout
    "53300": Fault.NO_FREE_CONNECTION,  # too_many_connections
    "53100": Fault.DISK_FULL,  # disk_full
    "3D000": Fault.NO_DATABASE,  # invalid_catalog_name
    "42501": Fault.PERMISSION,  # insufficient_privilege
    "25006": Fault.READ_ONLY,  # read_only_sql_transaction (a standby)
    "58030": Fault.DISK_IO,  # io_error
    "XX001": Fault.DAMAGED,  # data_corrupted
    "XX002": Fault.DAMAGED,  # index_corrupted
}
_SQLSTATE_CLASSES = {
    "08": Fault.CONNECTION_LOST,  # connection_exception
    "28": Fault.LOGIN_REFUSED,  # invalid_authorization_specification, invalid_password
}

# SQLite primary result codes (https://sqlite.org/rescode.html; Python 3.11's sqlite3 errors carry them).
_SQLITE_CODES = {
    sqlite3.SQLITE_BUSY: Fault.BUSY,
    sqlite3.SQLITE_LOCKED: Fault.BUSY,
    sqlite3.SQLITE_FULL: Fault.DISK_FULL,
    sqlite3.SQLITE_NOTADB: Fault.DAMAGED,
    sqlite3.SQLITE_CORRUPT: Fault.DAMAGED,
    sqlite3.SQLITE_READONLY: Fault.READ_ONLY,
    sqlite3.SQLITE_CANTOPEN: Fault.CANNOT_OPEN,
    sqlite3.SQLITE_IOERR: Fault.DISK_IO,
}

# Only words exist for these: libpq reports a failed connection attempt as text alone (no
# SQLSTATE, no result), so when the server refused before asking for a password (pg_hba.conf
# rejects the host, or the database is missing under "trust" authentication) nothing but the
# message tells it from a server that is not there. They are checked only in that case, and only
# to avoid waiting for what a person must fix: in another language such a refusal is retried
# (with growing pauses, each retry saying the server's own sentence), never a wrong password.
_PRE_AUTH_REFUSALS = ("no pg_hba.conf entry", "does not exist", "not permitted to log in",
                      "authentication failed", "no password supplied")
# ... and these only choose the wording of a refusal's sentence (which of login or database).
_SAYS_NO_DATABASE = ("does not exist",)
_SAYS_LOGIN_REFUSED = ("authentication failed", "no password supplied", "not permitted to log in", "password")


def describe_url(url) -> str:
    """Where the database is, for a message: the file of a SQLite URL, else the URL without
    its password."""
    if url is None:
        return "the database"
    try:
        u = url if isinstance(url, URL) else make_url(str(url))
    except Exception:
        return "the database"
    if u.get_backend_name() == "sqlite":
        return f"the database file {u.database}" if u.database and u.database != ":memory:" else "the database"
    host = f"{u.host or 'localhost'}" + (f":{u.port}" if u.port else "")
    return f"the {u.get_backend_name()} database {u.database or ''} on {host}".replace("  ", " ")


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0].strip() if text else type(orig).__name__


def missing_driver(exc: ImportError) -> DatabaseUnavailableError:
    """The URL's dialect is known but its DBAPI module is not installed."""
    module = (exc.name or "").split(".")[0]
    package = DRIVER_PACKAGES.get(module, module or "the driver")
    return DatabaseUnavailableError(f"the database driver {module or '?'} is not installed; install it "
                                    f"(pip install {package}) or use another database URL")


def _os_error(exc: OSError) -> HemascanError:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageError(f"the disk is full: could not write{where}; free some space and run the command "
                            "again (everything saved before is kept)")
    if exc.errno == errno.EROFS:
        return StorageError(f"could not write{where}: the file system is read-only")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"could not write{where}: permission denied")
    if exc.errno == errno.ENOTDIR:
        return StorageError(f"could not use{where}: part of that path is a file, not a folder")
    if exc.errno == errno.ENOENT:
        return StorageError(f"could not use{where}: no such folder (is the drive or share mounted?)")
    if exc.errno == errno.EEXIST:
        return StorageError(f"could not create{where}: a file of that name is in the way")
    return StorageError(f"could not read or write{where}: {exc.strerror or exc}")


def _why_cannot_open(url) -> str:
    try:
        u = url if isinstance(url, URL) else make_url(str(url))
        folder = os.path.dirname(os.path.abspath(u.database)) if u.get_backend_name() == "sqlite" else None
    except Exception:
        folder = None
    if folder and not os.path.isdir(folder):
        return f"its folder {folder} does not exist"
    if folder and not os.access(folder, os.W_OK):
        return (f"its folder {folder} is read-only (SQLite needs to write beside the file), so nothing can be "
                "read or saved there; ask for write access or use a writable copy (--data-dir, --db-url)")
    return "the file or its folder cannot be opened (permissions?)"



# What a person is told for each fault (a table, not a chain): the error (its exit code) and one
# sentence; {where} is the database, {msg} the driver's first line, {why} why a file cannot open.
_CONNECT_HELP = "start it or check the host and port in the database URL"
FAULT_SENTENCES: dict[Fault, tuple[type[HemascanError], str]] = {
    Fault.BUSY: (DatabaseBusyError, "the database is locked by another process (another hemascan still writing?); "
                                    "nothing was lost, try again when it has finished"),
    Fault.DISK_FULL: (StorageError, "the disk is full: could not write to {where}; free some space and run the "
                                    "command again (everything saved before is kept)"),
    Fault.DAMAGED: (DatabaseUnavailableError, "{where} is damaged or is not a hemascan database ({msg}); it was left "
                                              "untouched: restore it from a backup, or move it away to start a new one"),
    Fault.READ_ONLY: (DatabaseUnavailableError, "{where} is read-only, so nothing can be saved; ask for write access or "
                                                "point hemascan at a writable copy (--data-dir, --db-url)"),
    Fault.CANNOT_OPEN: (DatabaseUnavailableError, "could not open {where}: {why}"),
    Fault.DISK_IO: (StorageError, "the disk reported an error while using {where} ({msg}); check the drive, then run "
                                  "the command again (everything committed before is kept)"),
    Fault.LOGIN_REFUSED: (DatabaseUnavailableError, "{where} refused the login (wrong user name or password); check "
                                                    "--db-url / HEMASCAN_DB_URL"),
    Fault.NO_DATABASE: (DatabaseUnavailableError, "{where} does not exist on the server; create it first"),
    Fault.PERMISSION: (NotPermittedError, "{where} refused: this login may not do that ({msg}); activating, "
                                          "promoting or rolling back a model and releasing or amending a case need "
                                          "the role hemascan_supervisor: ask the lab's administrator"),
    Fault.NO_FREE_CONNECTION: (DatabaseUnavailableError, "{where} has no free connection now (too many clients); try "
                                                         "again shortly, or ask for a higher max_connections"),
    Fault.UNREACHABLE: (DatabaseUnavailableError, "could not reach {where}: the server is down or unreachable; "
                                                  + _CONNECT_HELP),
    Fault.CONNECTION_LOST: (DatabaseUnavailableError, "could not reach {where}: the server is down or unreachable; "
                                                      + _CONNECT_HELP),
}


def user_error(exc: BaseException, url=None) -> HemascanError | None:
    """The HemascanError to show for ``exc``, or None if it is not a database or disk problem
    (a bug: let it be seen)."""
    if isinstance(exc, HemascanError):
        return exc
    where = describe_url(url)
    if isinstance(exc, sa_exc.NoSuchModuleError):  # postgresql+nosuchdriver://
        name = str(exc).rsplit(":", 1)[-1].strip()
        return DatabaseUnavailableError(f"the database URL asks for a driver that is not available ({name}); "
                                        "check the URL (e.g. postgresql+psycopg://user@host/db)")
    if isinstance(exc, sa_exc.ArgumentError):
        return DatabaseUnavailableError(f"not a usable database URL: {_first_line(exc)}")
    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] in DRIVER_PACKAGES:
        return missing_driver(exc)
    if isinstance(exc, sa_exc.DBAPIError):
        msg = _first_line(exc)
        fault = classify(exc)
        if fault is Fault.REFUSED:  # which of the two only the (English) words tell; else a sentence for both
            low = msg.lower()
            if any(w in low for w in _SAYS_NO_DATABASE):
                fault = Fault.NO_DATABASE
            elif any(w in low for w in _SAYS_LOGIN_REFUSED):
                fault = Fault.LOGIN_REFUSED
            else:
                return DatabaseUnavailableError(f"{where} refused the connection ({msg}): check the user name, "
                                                "password and database name in --db-url / HEMASCAN_DB_URL")
        sentence = FAULT_SENTENCES.get(fault)
        if sentence is not None:
            error, text = sentence
            why = _why_cannot_open(url) if fault is Fault.CANNOT_OPEN else ""
            return error(text.format(where=where, msg=msg, why=why))
        if isinstance(exc, sa_exc.OperationalError):
            return DatabaseUnavailableError(f"{where} could not be used: {msg}")
        return None
    if isinstance(exc, OSError):
        return _os_error(exc)
    return None


def _sqlstate(orig: BaseException) -> str | None:
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)  # psycopg 3, psycopg2
    if not code:
        code = getattr(getattr(orig, "diag", None), "sqlstate", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def _connect_failure(exc: sa_exc.DBAPIError, orig: BaseException) -> Fault | None:
    """A PostgreSQL connection attempt that failed (no SQLSTATE: libpq reports it as text), told
    apart by the attempt's state: psycopg keeps the failed connection (``pgconn``), which says
    whether the server asked for a password. None when ``exc`` is not such a failure."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(orig, psycopg.OperationalError) or exc.statement is not None:
        return None
    if isinstance(orig, psycopg.errors.ConnectionTimeout):
        return Fault.UNREACHABLE
    pgconn = orig.pgconn
    if pgconn is None:  # psycopg did not get as far as libpq: the host name did not resolve
        return Fault.UNREACHABLE
    if pgconn.status != psycopg.pq.ConnStatus.BAD:
        return None
    if pgconn.used_password or pgconn.needs_password:
        # the server answered and asked for a password: what failed is the login or the
        # database it names (both are checked by then), never the network
        return Fault.REFUSED
    if any(w in _first_line(orig).lower() for w in _PRE_AUTH_REFUSALS):  # only words: see above
        return Fault.REFUSED
    return Fault.UNREACHABLE  # refused, timed out or closed before any answer; or starting up


def classify(exc: BaseException) -> Fault:
    """What the database error ``exc`` (a SQLAlchemy DBAPIError) means; never from its words
    except where a driver gives nothing else (see :data:`_PRE_AUTH_REFUSALS`)."""
    if not isinstance(exc, sa_exc.DBAPIError):
        return Fault.OTHER
    orig = getattr(exc, "orig", None)
    code = _sqlstate(orig)
    if code is not None:
        fault = _SQLSTATES.get(code) or _SQLSTATE_CLASSES.get(code[:2])
        if fault is not None:
            return fault
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        fault = _SQLITE_CODES.get(sqlite_code & 0xFF)  # the primary code of an extended one
        if fault is not None:
            return fault
    if exc.connection_invalidated:  # SQLAlchemy found the connection unusable (dialect's is_disconnect)
        return Fault.CONNECTION_LOST
    if code is None and orig is not None:
        fault = _connect_failure(exc, orig)
        if fault is not None:
            return fault
    return Fault.OTHER


def is_transient(exc: BaseException) -> bool:
    """True for a database problem that goes away by itself, so that a long-running process
    (``hemascan worker``) waits and retries instead of exiting: the server down or restarting,
    the network gone, a connection cut, the database locked by another writer. False for what
    a person must fix (a wrong password, a missing database, a newer schema, a damaged file).
    Decided by :func:`classify` (codes and connection state), along the chain of causes: a
    HemascanError raised from a database error is as transient as that error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DatabaseBusyError):
            return True
        if isinstance(e, sa_exc.DBAPIError):
            return classify(e) in TRANSIENT
        e = e.__cause__ or e.__context__
    return False


def check_sqlite_location(url: URL) -> None:
    """A SQLite file's folder must exist: never create a new, empty database somewhere else
    because a share is not mounted or a path has a typo."""
    if url.get_backend_name() != "sqlite" or url.query.get("uri") or not url.database:
        return
    if url.database == ":memory:" or url.database.startswith("file:"):
        return
    parent = os.path.dirname(os.path.abspath(url.database))
    if not os.path.isdir(parent):
        raise StorageError(f"the folder of the database file {url.database} does not exist (is the drive "
                           "or share mounted? is the path right?)")
    if os.path.isdir(url.database):
        raise DatabaseUnavailableError(f"the database path {url.database} is a folder, not a database file")
