"""One window per data directory.

A second window on the same data directory is refused, with a sentence naming the first.
Why refuse rather than open read-only: the two windows are the same person at the same seat
(the data directory is one account's), so a read-only second window has nothing to show that
the first does not, and two writing windows interleave one reviewer's labels and undo history
in ways neither window shows. Other seats (other data directories, other machines) are not
affected: they share the database and see each other's labels (desktop/peers.py).
A lock file held while the window is open (filelock: the operating system frees it when the
process dies, so a crash never leaves the directory locked)."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout

from core.errors import DatabaseBusyError

WINDOW_LOCK_FILE = ".window.lock"
WINDOW_OWNER_FILE = ".window.owner"


class AnotherWindowError(DatabaseBusyError):
    """A hemascan window is already open on this data directory."""


def claim_window(data_dir: str | os.PathLike) -> FileLock:
    """The data directory's window lock, held (release it when the window closes); refused with
    one sentence when another process holds it."""
    data_dir = Path(data_dir)
    lock = FileLock(str(data_dir / WINDOW_LOCK_FILE), timeout=0, is_singleton=False)
    owner = data_dir / WINDOW_OWNER_FILE
    try:
        lock.acquire()
    except Timeout:
        try:
            who = owner.read_text(encoding="utf-8").strip()
        except OSError:
            who = ""
        raise AnotherWindowError(
            f"hemascan is already open on the data directory {data_dir}" + (f" ({who})" if who else "")
            + ": use that window (a second one on the same data would mix one reviewer's labels and undo steps)"
        ) from None
    try:
        owner.write_text(f"process {os.getpid()}, since {datetime.now():%Y-%m-%d %H:%M}", encoding="utf-8")
    except OSError:  # only the sentence above loses its detail
        pass
    return lock
