"""A SQLite database file deleted or replaced under a running process.

SQLite keeps writing to the file it opened: after the file was deleted (or another put in its
place) every commit "succeeds" into a file nobody will ever open again, and a new connection
would create a new, empty database at the path. So the file's identity (device and inode) is
recorded when the engine first connects, and checked before every commit and before every new
connection: a different or missing file is a :class:`~core.errors.DatabaseUnavailableError`,
raised before the commit, so nothing is acknowledged that was not stored. Putting the same file
back (e.g. from the recycle bin: the same inode) makes it usable again.

The cost is one ``os.stat`` per commit (a few microseconds; a commit is hundreds of them).
A file overwritten in place (``cp backup.sqlite3 hemascan.sqlite3``) keeps its inode and is
not noticed here.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from core.errors import DatabaseUnavailableError


class DatabaseFileIdentity:
    """The (st_dev, st_ino) of one SQLite database file as this process first opened it.
    Several engines on the same file (a label writer's own engines) share one instance, so
    an engine that connects for the first time after a replacement does not take the new
    file for the database."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_url(cls, url: URL) -> "DatabaseFileIdentity | None":
        """One for a SQLite file URL; None for a server, an in-memory or a ``file:`` URI database."""
        if url.get_backend_name() != "sqlite" or url.query.get("uri") or not url.database:
            return None
        if url.database == ":memory:" or url.database.startswith("file:"):
            return None
        return cls(url.database)

    def _current(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError:  # cannot tell (a share gone): SQLite's own error says what is wrong
            return self.identity
        return st.st_dev, st.st_ino

    def record(self) -> None:
        """After a connection opened the file: the first one names the database."""
        with self._lock:
            if self.identity is None:
                self.identity = self._current()
                return
        self.check()

    def check(self) -> None:
        """Raise DatabaseUnavailableError when the file at the path is no longer the one opened."""
        if self.identity is not None and self._current() != self.identity:
            raise DatabaseUnavailableError(
                f"the database file {self.path} was deleted or replaced while hemascan was running; nothing after "
                "that was stored (what was saved before is in the file that was there): put that file back, or "
                "restore it from a backup and start hemascan again")

    def watch(self, engine: Engine) -> None:
        """Check before each new connection (so no new, empty database is created at the path)
        and before each commit; record on the first connection."""
        event.listen(engine, "do_connect", lambda *_: self.check())
        event.listen(engine, "connect", lambda *_: self.record())
        event.listen(engine, "commit", lambda _conn: self.check())


# ---- a database file gone between two runs -------------------------------------------------
# A SQLite database deleted (or moved, or emptied) while no hemascan ran would simply be created
# again, empty, at the next start: every later command "works" and the lab's record is silently
# gone. So a hidden marker file beside the database (".hemascan.sqlite3.created": hidden, so
# that `rm hemascan.sqlite3*` does not take it along) says hemascan created one there, and which
# file it was; a start that finds the marker but no database (or an empty file) stops with one
# sentence instead. A database put back from a backup while the old one's write-ahead log is
# still beside it is refused too: SQLite would apply that log to the restored file and damage it.

MARKER_SUFFIX = ".created"


def created_marker(url: URL) -> "Path | None":
    """The marker beside a SQLite file database (None for any other database)."""
    identity = DatabaseFileIdentity.for_url(url)
    if identity is None:
        return None
    path = Path(identity.path)
    return path.with_name(f".{path.name}{MARKER_SUFFIX}")


def _marker_facts(marker: Path) -> tuple[str, tuple[int, int] | None]:
    """(when it was first opened, the (st_dev, st_ino) recorded last) from a marker."""
    try:
        lines = marker.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return "earlier", None
    since = lines[0].strip() if lines else "earlier"
    recorded = None
    for line in lines[1:]:
        if line.startswith("file identity:"):
            try:
                dev, ino = line.split(":", 1)[1].split()
                recorded = (int(dev), int(ino))
            except ValueError:
                recorded = None
    return since, recorded


def check_not_lost(url: URL) -> None:
    """Raise a DatabaseUnavailableError when hemascan created a database at ``url`` before and
    the file is gone or empty now, or is another file with the old one's write-ahead log."""
    marker = created_marker(url)
    if marker is None or not marker.is_file():
        return
    database = marker.with_name(marker.name[1: -len(MARKER_SUFFIX)])
    since, recorded = _marker_facts(marker)
    try:
        st = os.stat(database)
    except FileNotFoundError:
        st = None
    if st is None or st.st_size == 0:
        state = "missing" if st is None else "empty"
        raise DatabaseUnavailableError(
            f"the database file {database} is {state}, although hemascan created it there ({since}): it was "
            f"deleted, moved or overwritten, with every label and prediction in it; put it back or restore it from "
            f"a backup (to start an empty database there instead, delete {marker})")
    wal = database.with_name(database.name + "-wal")
    if recorded is not None and (st.st_dev, st.st_ino) != recorded and wal.is_file() and wal.stat().st_size > 0:
        raise DatabaseUnavailableError(
            f"the database file {database} is not the one hemascan last used (restored or replaced), and the "
            f"write-ahead log beside it ({wal.name}) belongs to the old one: SQLite would apply it to this file and "
            f"damage it; move {wal.name} and {database.name}-shm out of {database.parent}, then start again")


def mark_created(url: URL) -> None:
    """Write (or bring up to date) the marker beside a SQLite database that exists now. A
    read-only folder is no error: the marker is a safeguard, not a requirement."""
    from datetime import datetime, timezone

    marker = created_marker(url)
    if marker is None:
        return
    database = marker.with_name(marker.name[1: -len(MARKER_SUFFIX)])
    try:
        st = os.stat(database)
    except OSError:
        return
    since, recorded = _marker_facts(marker) if marker.is_file() else (None, None)
    if recorded == (st.st_dev, st.st_ino):
        return
    since = since or f"first opened by hemascan on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    try:
        marker.write_text(f"{since}\nfile identity: {st.st_dev} {st.st_ino}\n"
                          "This file says a hemascan database lives beside it: if the database goes missing, "
                          "hemascan stops instead of starting an empty one.\n", encoding="utf-8")
    except OSError:
        pass
