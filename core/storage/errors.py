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

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from core.errors import DatabaseBusyError, DatabaseUnavailableError, HemascanError, StorageError

# Known drivers: the package to install for each (the dialect's default driver first).
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "pymysql": "PyMySQL",
    "mysqldb": "mysqlclient",
}


# What a driver says when the server cannot be reached (down, restarting, a network gone).
UNREACHABLE = ("connection refused", "could not connect", "connection failed", "timeout expired",
               "could not translate host name", "name or service", "server closed the connection",
               "no route to host")
# ... or when a connection it had was cut (network drop, server restart) mid-transaction.
CONNECTION_LOST = ("terminating connection", "connection reset", "broken pipe", "ssl syscall",
                   "the database system is starting up", "the database system is shutting down",
                   "the database system is in recovery mode", "connection timed out", "network is unreachable",
                   "connection is closed", "consuming input failed", "lost synchronization", "connection is lost",
                   "server conn crashed", "the connection is closed")
# Problems that waiting does not cure, although the message may also say "connection failed".
NOT_TRANSIENT = ("authentication failed", "no password supplied", "does not exist", "permission denied",
                 "newer version of hemascan")


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
        low = msg.lower()
        code = getattr(getattr(exc, "orig", None), "sqlite_errorname", "") or ""
        if "locked" in low or "busy" in low or code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            return DatabaseBusyError("the database is locked by another process (another hemascan still "
                                     "writing?); nothing was lost, try again when it has finished")
        if "full" in low or code == "SQLITE_FULL" or "no space left" in low:
            return StorageError(f"the disk is full: could not write to {where}; free some space and run the "
                                "command again (everything saved before is kept)")
        if "file is not a database" in low or "malformed" in low or code in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            return DatabaseUnavailableError(f"{where} is damaged or is not a hemascan database ({msg}); it was "
                                            "left untouched: restore it from a backup, or move it away to start "
                                            "a new one")
        if "readonly" in low or "read-only" in low or code.startswith("SQLITE_READONLY"):
            return DatabaseUnavailableError(f"{where} is read-only, so nothing can be saved; ask for write access "
                                            "or point hemascan at a writable copy (--data-dir, --db-url)")
        if "unable to open database file" in low or code.startswith("SQLITE_CANTOPEN"):
            return DatabaseUnavailableError(f"could not open {where}: {_why_cannot_open(url)}")
        if "disk i/o error" in low or code.startswith("SQLITE_IOERR"):
            return StorageError(f"the disk reported an error while using {where} ({msg}); check the drive, "
                                "then run the command again (everything committed before is kept)")
        if ("password authentication failed" in low or "authentication failed" in low or "no password supplied" in low
                or "not permitted to log in" in low):
            return DatabaseUnavailableError(f"{where} refused the login (wrong user name or password); check "
                                            "--db-url / HEMASCAN_DB_URL")
        if "does not exist" in low and "database" in low:
            return DatabaseUnavailableError(f"{where} does not exist on the server; create it first")
        if any(phrase in low for phrase in UNREACHABLE):
            return DatabaseUnavailableError(f"could not reach {where}: the server is down or unreachable; "
                                            "start it or check the host and port in the database URL")
        if isinstance(exc, sa_exc.OperationalError):
            return DatabaseUnavailableError(f"{where} could not be used: {msg}")
        return None
    if isinstance(exc, OSError):
        return _os_error(exc)
    return None


def is_transient(exc: BaseException) -> bool:
    """True for a database problem that goes away by itself, so that a long-running process
    (``hemascan worker``) waits and retries instead of exiting: the server down or restarting,
    the network gone, a connection cut, the database locked by another writer. False for what
    a person must fix (a wrong password, a missing database, a newer schema, a damaged file)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        low = _first_line(e).lower() if isinstance(e, (sa_exc.DBAPIError, HemascanError)) else ""
        if any(phrase in low for phrase in NOT_TRANSIENT):
            return False
        if isinstance(e, DatabaseBusyError):
            return True
        if isinstance(e, sa_exc.DBAPIError):
            if e.connection_invalidated or any(p in low for p in UNREACHABLE + CONNECTION_LOST):
                return True
            if "locked" in low or "busy" in low:
                return True
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
