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
# A SQLite database deleted (or moved) while no hemascan ran would simply be created again,
# empty, at the next start: every later command "works" and the lab's record is silently gone.
# So a small marker file beside the database says hemascan created one there; a start that
# finds the marker but not the database stops with one sentence instead.

MARKER_SUFFIX = ".created"


def created_marker(url: URL) -> "os.PathLike | None":
    """The marker beside a SQLite file database (None for any other database)."""
    from pathlib import Path

    identity = DatabaseFileIdentity.for_url(url)
    return None if identity is None else Path(identity.path + MARKER_SUFFIX)


def check_not_lost(url: URL) -> None:
    """Raise a DatabaseUnavailableError when hemascan created a database at ``url`` before and
    the file is gone now."""
    marker = created_marker(url)
    if marker is None or not marker.is_file() or os.path.exists(str(marker)[: -len(MARKER_SUFFIX)]):
        return
    try:
        since = marker.read_text(encoding="utf-8").strip().splitlines()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        since = "earlier"
    database = str(marker)[: -len(MARKER_SUFFIX)]
    raise DatabaseUnavailableError(
        f"the database file {database} is missing, although hemascan created it there ({since}): it was deleted "
        f"or moved, with every label and prediction in it; put it back or restore it from a backup (to start "
        f"an empty database there instead, delete {marker})")


def mark_created(url: URL) -> None:
    """Write the marker beside a SQLite database that exists now (once; a read-only folder is
    no error: the marker is a safeguard, not a requirement)."""
    from datetime import datetime, timezone

    marker = created_marker(url)
    if marker is None or marker.exists() or not os.path.exists(str(marker)[: -len(MARKER_SUFFIX)]):
        return
    try:
        marker.write_text(f"first opened by hemascan on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
                          "This file says a hemascan database lives beside it: if the database goes missing, "
                          "hemascan stops instead of starting an empty one.\n", encoding="utf-8")
    except OSError:
        pass
