"""Labels: an append-only audit of label events. The current label of an image is its
latest event; nothing is ever updated or deleted (an undo is a new event)."""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from core.config import default_reviewer
from core.errors import CaseReleasedError, DatabaseUnavailableError, NotPermittedError
from core.storage import Database, ImageFile, LabelEvent, Prediction, utcnow
from core.storage.identity import reviewer_for
from core.models.registry import FIELD
from core.review.released import check_amendment, releases_of_images  # noqa: E402
from core.imaging.fspath import to_fs
from core.jobs import Job, Progress
from core.imaging.scan import ScanSummary, scan, under_folder
from core.models.taxonomy import OTHER, resolve_alias, review_labels, shared_taxonomy
from core.review.cell_labels import record_cell_labels
from core.review.rules import NOT_REVIEWER_NAMES, SOURCES, latest_label_events, reviewer_problem, shown_classes  # noqa: F401  (re-exported)
from core.storage.errors import Fault, classify, user_error


log = logging.getLogger(__name__)




def shown_predictions(session: Session, image_ids: list[int]) -> tuple[int | None, dict[int, str]]:
    """(the active field model's id, image_id -> the class it showed): only sure predictions
    inside its experience show a class, as the gallery's "corrected" rule has it."""
    return shown_classes(session, FIELD, Prediction, Prediction.image_id, image_ids)


def latest_events(session: Session, image_ids: Iterable[int] | None = None) -> dict[int, LabelEvent]:
    """image_id -> its latest label event (the current label)."""
    return latest_label_events(session, LabelEvent, LabelEvent.image_id, image_ids)


def record_labels(
    session: Session,
    image_ids: Iterable[int],
    label: str | None,
    reviewer: str,
    source: str = "human",
    taxonomy: str = "all_subtype",
    note: str | None = None,
    amend_reason: str | None = None,
) -> list[LabelEvent]:
    """Append one event per image (``label=None`` clears). Caller's transaction commits.

    Each event records the login (core.storage.identity; on PostgreSQL the stored reviewer is
    the login's display name, whatever ``reviewer`` says) and the prediction the reviewer was
    shown (the active model's, when it was sure and inside its experience). An image of a
    released case takes only an amendment: ``amend_reason`` given, by a supervisor."""
    if source not in SOURCES:
        raise ValueError(f"unknown label source {source!r}")
    if label is not None and label not in review_labels(taxonomy):
        raise ValueError(f"{label!r} is not a class of taxonomy {taxonomy!r} (nor {OTHER!r})")
    ids = list(dict.fromkeys(image_ids))
    reason = check_amendment(session, releases_of_images(session, ids), amend_reason)
    login, reviewer = reviewer_for(session, None, reviewer)
    shown_version, shown = shown_predictions(session, ids)
    current = latest_events(session, ids)
    now = utcnow()
    events = [
        LabelEvent(image_id=i, taxonomy=taxonomy, label=label,
                   previous_label=current[i].label if i in current else None,
                   reviewer=reviewer, source=source, created_at=now, note=note, login=login,
                   shown_label=shown.get(i), shown_model_version_id=shown_version, amend_reason=reason)
        for i in ids
    ]
    session.add_all(events)
    session.flush()
    return events


# ---- other seats' labels: what changed since the last look ------------------------------------

#: How often a review window asks for other seats' labels (desktop/peers.py).
PEER_REFRESH_MS = 5000
#: Events created this recently are returned again on every poll: on PostgreSQL an event id
#: is taken when the row is inserted, so a write that commits late can be seen after a higher
#: id already was. A label write is one short transaction; a minute covers it with room.
PEER_LOOKBACK_S = 60.0
#: ... and at most this many events back, so every poll is a short range scan of the primary key.
PEER_LOOKBACK_EVENTS = 1000


@dataclass(frozen=True)
class LabelChanges:
    """Label events stored since a poll: pass ``last_event_id`` to the next one."""

    last_event_id: int
    image_ids: tuple[int, ...] = ()  # images (under the folder asked about) whose label changed
    reviewers: tuple[str, ...] = ()  # who gave those labels, in order of first appearance

    def __bool__(self) -> bool:
        return bool(self.image_ids)


def last_event_id(session: Session) -> int:
    """The newest label event's id (0 when there is none): where a window starts polling."""
    return session.scalar(select(func.max(LabelEvent.id))) or 0


def label_changes_since(session: Session, after_event_id: int, folder: str | os.PathLike | None = None,
                        lookback_s: float = PEER_LOOKBACK_S) -> LabelChanges:
    """The images whose label changed since event ``after_event_id`` (from any seat), under
    ``folder`` when given: one indexed query, Qt-free, cheap enough for a timer. Events of the
    last ``lookback_s`` seconds are included again (see :data:`PEER_LOOKBACK_S`), so an image
    may come back on the next poll; re-reading it is harmless."""
    from datetime import timedelta

    recent = utcnow() - timedelta(seconds=lookback_s)
    q = (select(LabelEvent.id, LabelEvent.image_id, LabelEvent.reviewer)
         .where(LabelEvent.id > after_event_id - PEER_LOOKBACK_EVENTS,
                (LabelEvent.id > after_event_id) | (LabelEvent.created_at >= recent))
         .order_by(LabelEvent.id))
    if folder is not None:
        q = q.where(LabelEvent.image_id.in_(
            select(ImageFile.image_id).where(under_folder(ImageFile.path, folder), ImageFile.image_id.is_not(None))))
    last = after_event_id
    ids: dict[int, None] = {}
    who: dict[str, None] = {}
    for event_id, image_id, reviewer in session.execute(q):
        last = max(last, event_id)
        ids[image_id] = None
        who[reviewer] = None
    # the newest id overall, also when it was under another folder: the next poll starts there
    last = max(last, last_event_id(session) if folder is not None else last)
    return LabelChanges(last, tuple(ids), tuple(who))


def history(session: Session, image_id: int) -> list[LabelEvent]:
    return list(session.scalars(select(LabelEvent).where(LabelEvent.image_id == image_id).order_by(LabelEvent.id)))


@dataclass
class ImportSummary:
    scan: ScanSummary
    n_labelled: int = 0
    n_already: int = 0
    n_unknown_folder: int = 0
    per_class: Counter = field(default_factory=Counter)
    unknown_folders: set[str] = field(default_factory=set)


def class_folder_labels(session: Session, folder: str | os.PathLike, taxonomy: str | None = None
                        ) -> tuple[dict[tuple[str, str], list[int]], Counter]:
    """The images under ``folder`` by the (taxonomy, class) their class folder's name maps to
    (the alias table), and how many files sit in folders that map to no class, by folder name."""
    rows = session.execute(
        select(ImageFile.image_id, ImageFile.path)
        .where(under_folder(ImageFile.path, folder), ImageFile.image_id.is_not(None), ImageFile.missing.is_(False))
        .order_by(ImageFile.path)
    ).all()
    by_label: dict[tuple[str, str], list[int]] = {}
    unknown: Counter = Counter()
    folder_names = [Path(to_fs(path)).parent.name for _, path in rows]
    # read every folder in the one taxonomy they all share (all/ + lymphocyte/: Blast and
    # Lymphocyte of wbc_differential), as training does; where they share none, each its own
    taxonomy = shared_taxonomy(folder_names, taxonomy) or taxonomy
    for (image_id, _path), folder_name in zip(rows, folder_names):
        hit = resolve_alias(folder_name, taxonomy)
        if hit is None:
            unknown[folder_name] += 1
            continue
        by_label.setdefault(hit, []).append(image_id)
    return by_label, unknown


def import_labels(db: Database, folder: str | os.PathLike, reviewer: str | None = None,
                  taxonomy: str | None = None, cancel: threading.Event | None = None,
                  amend_reason: str | None = None) -> Job[ImportSummary]:
    """Record class-folder names as labels (source=dataset), mapped through the alias table.
    Re-importing the same folder adds nothing."""
    cancel = cancel or threading.Event()
    scan_summary = yield from scan(db, folder, cancel)
    summary = ImportSummary(scan_summary)
    reviewer = reviewer or default_reviewer()
    with db.session() as s:
        by_label, unknown = class_folder_labels(s, folder, taxonomy)
    for folder_name, n in unknown.items():
        summary.n_unknown_folder += n
        summary.unknown_folders.add(folder_name)
    total = sum(len(v) for v in by_label.values())
    done = 0
    for (tax, label), ids in by_label.items():
        ids = list(dict.fromkeys(ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            with db.session() as s:
                current = latest_events(s, chunk)
                new = [i for i in chunk if not (i in current and current[i].label == label and current[i].taxonomy == tax)]
                summary.n_already += len(chunk) - len(new)
                if new:
                    record_labels(s, new, label, reviewer, source="dataset", taxonomy=tax,
                                  note=f"imported from folder names under {Path(folder).name}",
                                  amend_reason=amend_reason)
                summary.n_labelled += len(new)
                summary.per_class[label] += len(new)
            done += len(chunk)
            yield Progress("import", done, total)
            if cancel.is_set():
                return summary
    return summary


# ---- label writes that never block the caller (the desktop's review keys) ------------------

#: How long the caller's own attempt waits for a lock held by another process: less than a
#: frame, so a key press never freezes the window; a write that cannot get the lock by then
#: is queued and written by the writer's thread.
FAST_WRITE_BUSY_MS = 10
#: The writer thread's busy timeout per attempt, and the longest pause between attempts.
RETRY_BUSY_MS = 1000
RETRY_MAX_PAUSE_S = 5.0


#: What a label write labels: whole images (label_events) or cells (cell_label_events).
IMAGE, CELL = "image", "cell"


@dataclass
class LabelWrite:
    """One user action's label events: image_id (or cell_id, ``kind`` CELL) -> new label (None clears)."""

    seq: int
    targets: dict[int, str | None]
    reviewer: str
    taxonomy: str
    note: str | None
    source: str = "human"
    kind: str = IMAGE
    amend_reason: str | None = None  # a change to a released case (core/review/released.py)

    def apply(self, session: Session) -> None:
        by_label: dict[str | None, list[int]] = {}
        for target_id, label in self.targets.items():
            by_label.setdefault(label, []).append(target_id)
        for label, ids in by_label.items():
            if self.kind == CELL:
                record_cell_labels(session, ids, label, self.reviewer, taxonomy=self.taxonomy, source=self.source,
                                   note=self.note, amend_reason=self.amend_reason)
            else:
                record_labels(session, ids, label, self.reviewer, source=self.source, taxonomy=self.taxonomy,
                              note=self.note, amend_reason=self.amend_reason)


class LabelWriter:
    """Writes label actions in order, one transaction each, without ever blocking the caller
    on the database for longer than :data:`FAST_WRITE_BUSY_MS`.

    :meth:`write` first tries on the calling thread with a busy timeout shorter than a frame
    (the usual case: written at once, in order). If the database is locked by another process
    (or the write fails for any other reason: disk full, server down), or earlier writes are
    still waiting, the write is queued; a thread of its own, with its own engine and one
    session per attempt, writes the queue in order and retries until it succeeds, so no
    label is ever dropped. ``on_saved(image_ids, n_pending)`` and ``on_waiting(message,
    n_pending)`` are called from that thread (the desktop turns them into Qt signals);
    ``on_cells_saved(cell_ids, n_pending)`` after a cell label write (:meth:`write_cells`: the
    same queue, in the same order, under the same rules).
    ``off_caller_thread``: never touch the database on the calling thread, queue every write
    (the desktop's GUI thread: a server gone away could hold even a short write for the
    connect timeout)."""

    def __init__(self, db: Database, on_saved=None, on_waiting=None,
                 fast_busy_ms: int = FAST_WRITE_BUSY_MS, retry_busy_ms: int = RETRY_BUSY_MS,
                 off_caller_thread: bool = False, on_cells_saved=None):
        self.url = db.url
        self.off_caller_thread = off_caller_thread
        self._db = db  # its engines check that the SQLite file is still the one ``db`` opened
        self._fast = Database(db.url, migrate=False, busy_timeout_ms=fast_busy_ms, settings=db.settings,
                              same_file_as=db)
        self._slow: Database | None = None
        self._retry_busy_ms = retry_busy_ms
        self.on_saved = on_saved or (lambda ids, n: None)
        self.on_waiting = on_waiting or (lambda message, n: None)
        self.on_cells_saved = on_cells_saved or (lambda ids, n: None)
        # (message, the LabelWrite, amendable): a write refused for good (a released case: amendable
        # with a reason; a right the login lacks); it is not retried, and the caller is told
        self.on_refused = lambda message, item, amendable: None
        self._queue: list[LabelWrite] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- caller's side
    def write(self, targets: dict[int, str | None], reviewer: str, taxonomy: str = "all_subtype",
              note: str | None = None, source: str = "human", kind: str = IMAGE,
              amend_reason: str | None = None) -> bool:
        """Record one action. True: written now; False: queued (it will be written later).
        A label that is not valid raises ValueError here (it is never queued)."""
        if kind not in (IMAGE, CELL):
            raise ValueError(f"unknown label target {kind!r}")
        if source not in SOURCES:
            raise ValueError(f"unknown label source {source!r}")
        for label in set(targets.values()):
            if label is not None and label not in review_labels(taxonomy):
                raise ValueError(f"{label!r} is not a class of taxonomy {taxonomy!r} (nor {OTHER!r})")
        with self._cond:
            self._seq += 1
            item = LabelWrite(self._seq, dict(targets), reviewer, taxonomy, note, source, kind, amend_reason)
            if self._queue or self._closing or self.off_caller_thread:
                self._enqueue(item)
                return False
        try:
            with self._fast.session() as s:
                item.apply(s)
            return True
        # locked, disk full, server down, the database file deleted or replaced: retried until written
        except (OperationalError, InterfaceError, OSError, DatabaseUnavailableError) as exc:
            log.warning("label write deferred (%s); it will be retried", _sentence(exc, self.url))
            with self._cond:
                self._enqueue(item)
            return False

    def write_cells(self, targets: dict[int, str | None], reviewer: str, taxonomy: str,
                    note: str | None = None, source: str = "human", amend_reason: str | None = None) -> bool:
        """Record one action on cells (cell_id -> label): as :meth:`write`, in the same queue."""
        return self.write(targets, reviewer, taxonomy, note, source, kind=CELL, amend_reason=amend_reason)

    def pending(self) -> list[LabelWrite]:
        with self._cond:
            return list(self._queue)

    def pending_labels(self, taxonomy: str | None = None, kind: str = IMAGE) -> dict[int, str | None]:
        """image_id (cell_id for ``kind`` CELL) -> the label it will have once the queue is
        written (latest write wins)."""
        out: dict[int, str | None] = {}
        for w in self.pending():
            if w.kind == kind and (taxonomy is None or w.taxonomy == taxonomy):
                out.update(w.targets)
        return out

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queue to be written; True if it is empty."""
        import time

        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def close(self, timeout: float = 5.0) -> list[LabelWrite]:
        """Write what is queued (up to ``timeout`` s), stop the thread; returns what is left."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            left = list(self._queue)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=RETRY_BUSY_MS / 1000 + 1)
        self._fast.dispose()
        if self._slow is not None:
            self._slow.dispose()
        for w in left:  # the last resort: what was not saved is in the log, in full
            log.error("label action NOT saved (database unavailable at exit): %s", w)
        return left

    # -- writer thread
    def _enqueue(self, item: LabelWrite) -> None:  # holding self._cond
        self._queue.append(item)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="hemascan-label-writer", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _run(self) -> None:
        import time

        pause = 0.2
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or self._closing:
                    return
                item = self._queue[0]
            try:
                if self._slow is None:
                    self._slow = Database(self.url, migrate=False, busy_timeout_ms=self._retry_busy_ms,
                                          settings=self._db.settings, same_file_as=self._db)
                with self._slow.session() as s:
                    item.apply(s)
            except Exception as exc:
                message = _sentence(exc, self.url)
                if is_refusal(exc):  # the case is released, or this login may not: waiting cures nothing
                    log.warning("label write refused: %s", message)
                    with self._cond:
                        self._queue.pop(0)
                        n = len(self._queue)
                        self._cond.notify_all()
                    self.on_refused(message, item, isinstance(exc, CaseReleasedError))
                    continue
                log.warning("label write waiting: %s", message)
                self.on_waiting(message, len(self.pending()))
                with self._cond:
                    if self._closing:
                        return
                    self._cond.wait(pause)
                pause = min(pause * 2, RETRY_MAX_PAUSE_S)
                continue
            pause = 0.2
            with self._cond:
                self._queue.pop(0)
                n = len(self._queue)
                self._cond.notify_all()
            (self.on_cells_saved if item.kind == CELL else self.on_saved)(list(item.targets), n)
            time.sleep(0)  # let the caller's thread run between writes


def is_refusal(exc: BaseException) -> bool:
    """A write refused for good (a released case, a right the login lacks), not a passing fault."""
    if isinstance(exc, (CaseReleasedError, NotPermittedError)):
        return True
    return isinstance(exc, DBAPIError) and classify(exc) is Fault.PERMISSION


def _sentence(exc: BaseException, url) -> str:
    err = user_error(exc, url)
    return str(err) if err is not None else f"{type(exc).__name__}: {exc}"


# Computer accounts, not people: a label must say who decided it.
