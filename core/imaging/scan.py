"""Scanning folders: walk, stat, hash only what is new or changed, record every image.

An image's identity is the SHA-256 of its content. A re-scan of an unchanged folder
only stats files (size + mtime), never re-reads them. Every unusable file gets a
recorded reason; nothing stops the batch.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.storage import Database, Image, ImageFile, Scan, utcnow
from core.storage.dbutil import insert_ignore, upsert, with_reconnect
from core.imaging.duplicates import perceptual_hash
from core.errors import HemascanError, ImageError, os_reason
from core.imaging.fspath import display, to_db, to_fs
from core.imaging.images import OVER_SIZE_LIMIT, SUPPORTED_EXTENSIONS, FileChanged, probe, read_and_hash
from core.jobs import Job, Progress, RateMeter

log = logging.getLogger(__name__)

WRITE_BATCH = 128
MAX_REPORTED_ERRORS = 200
# Stored as size and mtime of a file whose content is not known: no real stat matches it,
# so the next scan reads the file again.
UNTRUSTED_STAT = -1


@dataclass
class ScanSummary:
    scan_id: int
    root: str
    n_files: int = 0
    n_new: int = 0
    n_changed: int = 0
    n_unchanged: int = 0
    n_skipped: int = 0
    n_errors: int = 0
    n_missing: int = 0
    cancelled: bool = False
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), first few

    def add_error(self, path: str, reason: str) -> None:
        self.n_errors += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append((display(path), reason))


@dataclass(frozen=True)
class _Entry:
    path: str  # file-system path (may hold surrogates)
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class _Hashed:
    entry: _Entry
    sha256: str | None = None
    width: int = 0
    height: int = 0
    fmt: str | None = None
    phash: str | None = None
    error: str | None = None


def folder_prefix(root: str | os.PathLike) -> str:
    """The stored-path prefix for everything under ``root`` (absolute, trailing separator)."""
    return to_db(os.path.join(os.path.abspath(os.fspath(root)), ""))


def under_folder(column, root: str | os.PathLike):
    """SQL condition: stored path lies under ``root`` (no LIKE, so % and _ in names are safe)."""
    return under_prefix(column, folder_prefix(root))


def under_prefix(column, prefix: str):
    """SQL condition: stored path starts with ``prefix``, a :func:`folder_prefix` as stored."""
    return func.substr(column, 1, len(prefix)) == prefix


def _inside(path: str, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def walk(root: str, summary: ScanSummary) -> Iterator[_Entry]:
    """Yield supported image files under ``root`` recursively. Follows directory symlinks
    that stay inside ``root``, never one that leads out of it (``/proc/self/root`` is the
    whole file system: to include a linked folder, scan it itself), and never enters a
    directory twice (symlink loops). Unreadable or vanished directories are recorded and
    skipped."""
    real_root = os.path.realpath(root)
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                continue
            seen_dirs.add(key)
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            summary.add_error(d, "folder disappeared during the scan")
            continue
        except PermissionError:
            summary.add_error(d, "permission denied (folder)")
            continue
        except OSError as exc:
            summary.add_error(d, f"cannot list folder: {os_reason(exc)}")
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=True):
                    if e.is_symlink() and not _inside(e.path, real_root):
                        summary.add_error(e.path, "a link to a folder outside the scanned folder: not followed "
                                                  "(scan that folder itself to include it)")
                    else:
                        subdirs.append(e.path)
                    continue
                if not e.is_file(follow_symlinks=True):
                    continue
                if os.path.splitext(e.name)[1].lower() not in SUPPORTED_EXTENSIONS:
                    summary.n_skipped += 1
                    continue
                st = e.stat(follow_symlinks=True)
            except FileNotFoundError:
                summary.add_error(e.path, "file disappeared during the scan")
                continue
            except OSError as exc:  # ELOOP on a self-referencing file link, EACCES, ...
                summary.add_error(e.path, f"cannot access: {os_reason(exc)}")
                continue
            yield _Entry(e.path, st.st_size, st.st_mtime_ns)
        stack.extend(reversed(subdirs))


def hash_file(entry: _Entry, max_bytes: int | None = None) -> _Hashed:
    """Read once: SHA-256, header checks (size limit, truncation), perceptual hash.

    The size and mtime recorded are those of the bytes hashed: stat taken before the read
    and found unchanged after it (core.imaging.images.read_and_hash), so a later scan that finds
    the same stat may trust the hash. A file that kept changing is recorded with an
    impossible stat, so the next scan reads it again."""
    try:
        content = read_and_hash(entry.path, max_bytes)
        entry = _Entry(entry.path, content.size, content.mtime_ns)
        info = probe(content.data)
        ph = perceptual_hash(content.data, info)
        return _Hashed(entry, content.sha256, info.width, info.height, info.format, ph)
    except FileChanged as exc:
        return _Hashed(_Entry(entry.path, UNTRUSTED_STAT, UNTRUSTED_STAT), error=str(exc))
    except ImageError as exc:
        return _Hashed(entry, error=str(exc))
    except Exception as exc:  # never let one file stop the batch
        log.exception("unexpected error reading %s", display(entry.path))
        return _Hashed(entry, error=f"unexpected error: {exc}")


def _write_batch(session: Session, scan_id: int, results: list[_Hashed]) -> None:
    ok = [r for r in results if r.error is None]
    insert_ignore(
        session,
        Image.__table__,
        [dict(sha256=r.sha256, width=r.width, height=r.height, phash=r.phash, format=r.fmt, first_seen=utcnow())
         for r in ok],
        ["sha256"],
    )
    ids = dict(session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_({r.sha256 for r in ok}))).all()) if ok else {}
    upsert(
        session,
        ImageFile.__table__,
        [dict(path=to_db(r.entry.path), size=r.entry.size, mtime_ns=r.entry.mtime_ns,
              image_id=ids.get(r.sha256) if r.error is None else None,
              error=r.error, last_scan_id=scan_id, missing=False)
         for r in results],
        ["path"],
        ["size", "mtime_ns", "image_id", "error", "last_scan_id", "missing"],
    )


def scan(db: Database, root: str | os.PathLike, cancel: threading.Event | None = None,
         workers: int | None = None) -> Job[ScanSummary]:
    """Scan ``root``; yields Progress, returns ScanSummary. Cancel keeps what was written."""
    root_str = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_str):
        raise HemascanError(f"not a folder: {display(root_str)}")
    cancel = cancel or threading.Event()
    with db.session() as s:
        scan_row = Scan(root=to_db(root_str))
        s.add(scan_row)
        s.flush()
        summary = ScanSummary(scan_row.id, display(root_str))
        known = {
            path: (size, mtime, error)
            for path, size, mtime, error in s.execute(
                select(ImageFile.path, ImageFile.size, ImageFile.mtime_ns, ImageFile.error)
                .where(under_folder(ImageFile.path, root_str))
            )
        }

    # Stage 1: list and stat (cheap); decide what must be read.
    todo: list[_Entry] = []
    seen: set[str] = set()
    size_limit = db.settings.max_file_bytes
    for entry in walk(root_str, summary):
        summary.n_files += 1
        dbp = to_db(entry.path)
        seen.add(dbp)
        old = known.get(dbp)
        if old is None:
            summary.n_new += 1
            todo.append(entry)
        elif old[0] == entry.size and old[1] == entry.mtime_ns and not (
                old[2] is not None and OVER_SIZE_LIMIT in old[2] and entry.size <= size_limit):  # limit raised since
            summary.n_unchanged += 1
            if old[2] is not None:  # unchanged and still unusable: report, do not re-read
                summary.add_error(entry.path, old[2])
        else:
            summary.n_changed += 1
            todo.append(entry)
        if summary.n_files % 2000 == 0:
            yield Progress("list", summary.n_files, None, f"{summary.n_files} files")
            if cancel.is_set():
                break

    # Stage 2: read + hash new/changed files in a small thread pool; write per batch.
    meter = RateMeter()
    total = len(todo)
    done = 0
    workers = workers or min(4, os.cpu_count() or 2)
    yield Progress("scan", 0, total)
    with ThreadPoolExecutor(workers, thread_name_prefix="hemascan-hash") as pool:
        pending: deque[Future] = deque()
        it = iter(todo)
        batch: list[_Hashed] = []
        exhausted = False
        while True:
            while not exhausted and len(pending) < WRITE_BATCH * 2:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                pending.append(pool.submit(hash_file, nxt, size_limit))
            if not pending:
                break
            r = pending.popleft().result()
            batch.append(r)
            if r.error:
                summary.add_error(r.entry.path, r.error)
            if len(batch) >= WRITE_BATCH or not pending:
                def write(batch=batch) -> None:
                    with db.session() as s:
                        _write_batch(s, summary.scan_id, batch)

                with_reconnect(write, "a batch of scanned files", db.settings)  # a network drop: the batch again
                done += len(batch)
                batch = []
                yield Progress("scan", done, total, f"{meter.rate(done):.0f} img/s")
                if cancel.is_set():  # stop at a batch boundary; what is written stays
                    for f in pending:
                        f.cancel()
                    break

    summary.cancelled = cancel.is_set()
    with db.session() as s:
        if not summary.cancelled:
            vanished = [p for p in known if p not in seen]
            for i in range(0, len(vanished), 500):
                s.execute(update(ImageFile).where(ImageFile.path.in_(vanished[i : i + 500])).values(missing=True))
            summary.n_missing = len(vanished)
        s.execute(
            update(Scan).where(Scan.id == summary.scan_id).values(
                finished_at=utcnow(), status="cancelled" if summary.cancelled else "completed",
                n_files=summary.n_files, n_new=summary.n_new, n_changed=summary.n_changed,
                n_unchanged=summary.n_unchanged, n_skipped=summary.n_skipped, n_errors=summary.n_errors,
            )
        )
    return summary


def images_under(session: Session, root: str | os.PathLike) -> list[tuple[int, str]]:
    """(image_id, one file path) for every usable, present image under ``root``."""
    rows = session.execute(
        select(ImageFile.image_id, func.min(ImageFile.path))
        .where(under_folder(ImageFile.path, root), ImageFile.image_id.is_not(None), ImageFile.missing.is_(False))
        .group_by(ImageFile.image_id)
        .order_by(ImageFile.image_id)
    ).all()
    return [(i, p) for i, p in rows]


def images_to_read(session: Session, root: str | os.PathLike) -> list[tuple[int, str, str]]:
    """images_under with the SHA-256 the scan recorded: (image_id, one file path, sha256).
    Whoever reads the file again checks its bytes still have that hash."""
    rows = session.execute(
        select(ImageFile.image_id, func.min(ImageFile.path), Image.sha256)
        .join(Image, Image.id == ImageFile.image_id)
        .where(under_folder(ImageFile.path, root), ImageFile.missing.is_(False))
        .group_by(ImageFile.image_id, Image.sha256)
        .order_by(ImageFile.image_id)
    ).all()
    return [(i, p, sha) for i, p, sha in rows]


__all__ = ["scan", "ScanSummary", "images_under", "images_to_read", "under_folder", "under_prefix", "folder_prefix", "to_fs",
           "UNTRUSTED_STAT"]
