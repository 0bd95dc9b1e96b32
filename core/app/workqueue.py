"""Classify workers: a queue of images to predict that every machine using the database shares.

``hemascan submit FOLDER`` scans the folder (a path every worker can read, e.g. a lab share)
and queues one work item per image and model version (``work_items``; unique per image and
version, as a prediction is: submitting twice queues nothing twice). ``hemascan worker`` on
any machine claims items in batches and predicts them with the classify pipeline
(:func:`core.inference.predict.predict_images`); each batch's predictions and the items' new status
commit in one transaction.

Claiming is one statement: ``UPDATE work_items SET status='running', claim_token=..., lease_until=...
WHERE id IN (SELECT id ... WHERE claimable ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED)
RETURNING ...``. On PostgreSQL the row locks let several workers claim at once, each skipping
the rows another is claiming, so no item is claimed twice. SQLite has no row locks (the
``FOR UPDATE`` is not rendered there) but runs the statement under its single write lock from
start to end, so the claim is as exclusive there (one machine: SQLite's file locking does not
reach across a network share).

A claim holds a lease (``lease_until``, database time) that a heartbeat thread renews while
the batch runs. A worker that is killed stops renewing it; once it has expired, the items are
claimable again and another worker (or the same, restarted) predicts them. Predictions are
written with INSERT ... ON CONFLICT DO NOTHING, so a batch finished twice (a lease that
expired under a live but stalled worker) still stores one prediction per image.

A database that goes away (server down, network drop, restart) does not stop a worker: one
sentence per failure, then it waits (1 s, 2 s, 4 s ... at most :data:`RETRY_MAX_S`) and
tries again; what was committed stays, and a batch cut off mid-way is claimed again when its
lease expires.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from core.config import Paths, Settings
from core.storage import Database, Image, ImageFile, Prediction, WorkFolder, WorkItem, utcnow
from core.storage.errors import is_transient, user_error
from core.storage.dbutil import db_now, insert_ignore
from core.imaging.fspath import display
from core.models.registry import VersionRef, version_package, version_ref, version_ref_by_id
from core.jobs import Job, Progress, RateMeter
from core.imaging.scan import ScanSummary, folder_prefix, images_under, scan, under_prefix
from core.config import default_reviewer
from core.storage import ModelVersion
from core.cells.finder import finder_name
from core.inference.cells import classify_cells, complete_image_ids, is_cell_version
from core.inference.predict import ClassifySummary, Predictor, plan_for, predict_images

log = logging.getLogger(__name__)

#: Seconds a claim is held without a heartbeat before another worker may take it over.
#: (defaults; the worker command passes the settings': HEMASCAN_WORKER_LEASE_S, HEMASCAN_WORKER_RETRY_MAX_S)
LEASE_S = Settings.defaults().worker_lease_s
#: Images claimed at a time.
CLAIM_SIZE = 128
#: Seconds between looks at an empty queue (``worker`` without ``--once``).
POLL_S = 5.0
#: ... and for `--once` while other workers still hold batches (it exits as soon as they are done).
ONCE_POLL_S = 0.25
#: First and longest wait before retrying after the database failed.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = Settings.defaults().worker_retry_max_s

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
IN_CHUNK = 500  # ids per IN (...) list

def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---- submit -----------------------------------------------------------------------------------

@dataclass
class SubmitSummary:
    scan: ScanSummary
    folder: str
    model: str = ""
    n_images: int = 0
    n_queued: int = 0
    n_requeued: int = 0  # failed before, queued again
    n_already_queued: int = 0  # queued, running or done already
    n_already_done: int = 0  # predicted by this model already
    cancelled: bool = False


def submit(db: Database, paths: Paths, folder: str | os.PathLike, cancel: threading.Event | None = None,
           version: VersionRef | None = None, submitted_by: str | None = None,
           image_kind: str | None = None) -> Job[SubmitSummary]:
    """Scan ``folder`` (bad files are recorded with their reason, as by ``scan``) and queue
    every usable image ``version`` (None: the one active when the job starts) has not
    predicted yet. Submitting again queues only what is new, and queues again what failed.
    Items queued under another folder with the same images (the folder was moved, renamed or
    re-mounted elsewhere: same content, so the same image ids, at new paths) now belong to
    this one, so the workers read them here. ``image_kind`` (a cell model; IMAGE_KINDS): what
    the lab says the folder's images are, kept with the folder for the workers (as
    ``classify --images``); submitting again with another kind queues again the images whose
    cells were found with another kind (none of their cells labelled). None keeps what the
    folder was submitted with."""

    cancel = cancel or threading.Event()
    if image_kind is not None:
        finder_name(image_kind)  # a bad kind is refused before any work
    if version is None:
        with db.session() as s:
            version = version_ref(s)
    scan_summary = yield from scan(db, folder, cancel)
    summary = SubmitSummary(scan_summary, scan_summary.root, cancelled=scan_summary.cancelled)
    if summary.cancelled:
        return summary
    root = folder_prefix(folder)
    vid = version.id
    with db.session() as s:
        version.row(s)  # still registered
        cell_model = is_cell_version(s, version.id)  # an item is then "find and classify this image's cells"
        insert_ignore(s, WorkFolder.__table__, [dict(root=root, model_version_id=vid, submitted_at=utcnow(),
                                                     submitted_by=(submitted_by or default_reviewer())[:128])],
                      ["root", "model_version_id"])
        folder_id = s.scalar(select(WorkFolder.id).where(WorkFolder.root == root, WorkFolder.model_version_id == vid))
        if image_kind is not None:
            s.execute(update(WorkFolder).where(WorkFolder.id == folder_id).values(image_kind=image_kind))
        kind = s.scalar(select(WorkFolder.image_kind).where(WorkFolder.id == folder_id))
        ids = [i for i, _ in images_under(s, folder)]
    summary.model, summary.n_images = version.name, len(ids)
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start:start + IN_CHUNK]
        with db.session() as s:
            predicted = complete_image_ids(s, vid, chunk, kind) if cell_model else set(s.scalars(
                select(Prediction.image_id).where(Prediction.model_version_id == vid, Prediction.image_id.in_(chunk))))
            existing = dict(s.execute(select(WorkItem.image_id, WorkItem.status).where(
                WorkItem.model_version_id == vid, WorkItem.image_id.in_(chunk))).all())
            new = [i for i in chunk if i not in predicted and i not in existing]
            insert_ignore(s, WorkItem.__table__, [dict(folder_id=folder_id, image_id=i, model_version_id=vid,
                                                       status=QUEUED, attempts=0) for i in new],
                          ["image_id", "model_version_id"])
            # failed, or done but not complete now (cells found with another kind than declared)
            retry = [i for i, st in existing.items() if st in (FAILED, DONE) and i not in predicted]
            if retry:
                s.execute(update(WorkItem).where(WorkItem.model_version_id == vid, WorkItem.image_id.in_(retry),
                                                 WorkItem.status.in_((FAILED, DONE)))
                          .values(status=QUEUED, error=None, claim_token=None, worker=None, lease_until=None,
                                  finished_at=None, folder_id=folder_id))
            waiting = [i for i, st in existing.items() if st != DONE and i not in predicted]
            if waiting:  # the workers find their files under this folder (a running claim finishes as it is)
                s.execute(update(WorkItem).where(WorkItem.model_version_id == vid, WorkItem.image_id.in_(waiting),
                                                 WorkItem.status != DONE, WorkItem.folder_id != folder_id)
                          .values(folder_id=folder_id))
        summary.n_already_done += len(predicted)
        summary.n_queued += len(new)
        summary.n_requeued += len(retry)
        summary.n_already_queued += sum(1 for i, st in existing.items() if st not in (FAILED, DONE) and i not in predicted)
        yield Progress("submit", start + len(chunk), len(ids))
        if cancel.is_set():
            summary.cancelled = True
            break
    return summary


# ---- progress for workstations ------------------------------------------------------------------

@dataclass(frozen=True)
class FolderQueueStatus:
    """Where a submitted folder stands, counted in images present under it now."""

    folder: str  # for display
    model: str
    submitted_at: datetime
    submitted_by: str
    total: int  # usable images under the folder now
    queued: int  # waiting (including batches whose worker's lease expired)
    running: int  # claimed by a live worker
    done: int  # predicted by the folder's model (by a worker or by classify)
    failed: int  # could not be predicted (the reason is in the files table / hemascan export)
    image_kind: str | None = None  # what the lab said the images are (submit --images); None: not said

    @property
    def not_queued(self) -> int:
        """Images added to the folder since it was submitted (submit it again to queue them)."""
        return max(0, self.total - self.queued - self.running - self.done - self.failed)

    @property
    def finished(self) -> bool:
        return self.queued == 0 and self.running == 0

    def describe(self) -> str:
        return (f"{self.queued} queued, {self.running} running, {self.done} done, {self.failed} failed"
                + (f", {self.not_queued} not submitted" if self.not_queued else ""))


def queue_status(db: Database, folder: str | os.PathLike | None = None) -> list[FolderQueueStatus]:
    """Per submitted folder (only ``folder``'s submissions when given; newest first): how many
    of its images are queued, running, done and failed. Qt-free, a few aggregate queries per
    folder: cheap enough for a workstation to refresh every few seconds."""

    with db.session() as s:
        now = db_now(s)
        q = select(WorkFolder, ModelVersion.name).join(ModelVersion, ModelVersion.id == WorkFolder.model_version_id)
        if folder is not None:
            q = q.where(WorkFolder.root == folder_prefix(folder))
        out = []
        for wf, model in s.execute(q.order_by(WorkFolder.submitted_at.desc(), WorkFolder.id.desc())).all():
            images = (select(ImageFile.image_id.label("image_id"))
                      .where(under_prefix(ImageFile.path, wf.root), ImageFile.image_id.is_not(None),
                             ImageFile.missing.is_(False)).distinct().subquery())
            state = case(
                (Prediction.id.is_not(None), DONE),
                (and_(WorkItem.status == RUNNING, WorkItem.lease_until < now), QUEUED),
                else_=func.coalesce(WorkItem.status, "not_queued"),
            )
            counts = dict(s.execute(
                select(state, func.count()).select_from(images)
                .outerjoin(Prediction, and_(Prediction.image_id == images.c.image_id,
                                            Prediction.model_version_id == wf.model_version_id))
                .outerjoin(WorkItem, and_(WorkItem.image_id == images.c.image_id,
                                          WorkItem.model_version_id == wf.model_version_id))
                .group_by(state)).all())
            out.append(FolderQueueStatus(
                folder=display(wf.root.rstrip("/\\") or wf.root), model=model, submitted_at=wf.submitted_at,
                submitted_by=wf.submitted_by, total=sum(counts.values()), queued=counts.get(QUEUED, 0),
                running=counts.get(RUNNING, 0), done=counts.get(DONE, 0), failed=counts.get(FAILED, 0),
                image_kind=wf.image_kind))
    return out


# ---- claiming -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimedItem:
    item_id: int
    image_id: int
    model_version_id: int


def claim(db: Database, worker: str, n: int = CLAIM_SIZE, lease_s: float = LEASE_S) -> tuple[str, list[ClaimedItem]]:
    """Claim up to ``n`` items (queued, or running under a lease that has expired) for
    ``worker``; returns the claim's token and its items (none: nothing to claim now)."""
    token = uuid.uuid4().hex
    with db.session() as s:
        now = db_now(s)
        claimable = or_(WorkItem.status == QUEUED, and_(WorkItem.status == RUNNING, WorkItem.lease_until < now))
        pick = (select(WorkItem.id).where(claimable).order_by(WorkItem.id).limit(n)
                .with_for_update(skip_locked=True))
        rows = s.execute(
            update(WorkItem).where(WorkItem.id.in_(pick.scalar_subquery()))
            .values(status=RUNNING, worker=worker[:128], claim_token=token, claimed_at=now,
                    lease_until=now + timedelta(seconds=lease_s), attempts=WorkItem.attempts + 1)
            .returning(WorkItem.id, WorkItem.image_id, WorkItem.model_version_id),
            execution_options={"synchronize_session": False}).all()
    return token, [ClaimedItem(*r) for r in sorted(rows)]


def renew(db: Database, token: str, lease_s: float = LEASE_S) -> int:
    """Extend the lease of a claim's running items; returns how many it still holds."""
    with db.session() as s:
        now = db_now(s)
        return s.execute(update(WorkItem).where(WorkItem.claim_token == token, WorkItem.status == RUNNING)
                         .values(lease_until=now + timedelta(seconds=lease_s))).rowcount


def release(db: Database, token: str) -> int:
    """Give a claim's unfinished items back to the queue (a worker stopping mid-batch)."""
    with db.session() as s:
        return s.execute(update(WorkItem).where(WorkItem.claim_token == token, WorkItem.status == RUNNING)
                         .values(status=QUEUED, claim_token=None, worker=None, lease_until=None)).rowcount


def work_left(db: Database) -> int:
    """Items queued or running anywhere (a running one may come back if its worker died)."""
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(WorkItem).where(WorkItem.status.in_((QUEUED, RUNNING))))


def _claimed_files(db: Database, token: str) -> tuple[dict[int, tuple[int, str, str, int, str | None]], list[int]]:
    """item_id -> (image_id, a present file of it under the submitted folder, its sha256,
    model version, the image kind the folder was submitted with); and the items with no such
    file left."""
    with db.session() as s:
        rows = s.execute(
            select(WorkItem.id, WorkItem.image_id, ImageFile.path, Image.sha256, WorkItem.model_version_id,
                   WorkFolder.image_kind)
            .join(WorkFolder, WorkFolder.id == WorkItem.folder_id)
            .join(ImageFile, ImageFile.image_id == WorkItem.image_id)
            .join(Image, Image.id == WorkItem.image_id)
            .where(WorkItem.claim_token == token, WorkItem.status == RUNNING, ImageFile.missing.is_(False),
                   func.substr(ImageFile.path, 1, func.length(WorkFolder.root)) == WorkFolder.root)).all()
        held = set(s.scalars(select(WorkItem.id).where(WorkItem.claim_token == token, WorkItem.status == RUNNING)))
    found: dict[int, tuple[int, str, str, int, str | None]] = {}
    for item_id, image_id, path, sha, vid, kind in rows:
        if item_id not in found or path < found[item_id][1]:
            found[item_id] = (image_id, path, sha, vid, kind)
    return found, sorted(held - set(found))


class _Heartbeat:
    """Renews a claim's lease every third of it, in a thread of its own (its own session)."""

    def __init__(self, db: Database, token: str, lease_s: float):
        self.db, self.token, self.lease_s = db, token, lease_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hemascan-worker-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.lease_s / 3):
            try:
                renew(self.db, self.token, self.lease_s)
            except Exception as exc:  # the batch's own writes will say so; the lease may lapse
                log.warning("could not renew the worker's lease: %s", user_error(exc, self.db.url) or exc)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


# ---- the worker -------------------------------------------------------------------------------

@dataclass
class WorkerSummary:
    worker: str
    n_claims: int = 0
    n_claimed: int = 0
    n_predicted: int = 0
    n_failed: int = 0
    n_retries: int = 0
    seconds: float = 0.0
    db_seconds: float = 0.0  # claiming, reading the claim, writing predictions and status
    cancelled: bool = False
    models: set[str] = field(default_factory=set)
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n_predicted / self.seconds if self.seconds > 0 else 0.0


class Backoff:
    """Waits that double from :data:`RETRY_FIRST_S` to ``max_s``; ``wait`` returns False if
    cancelled meanwhile."""

    def __init__(self, first_s: float = RETRY_FIRST_S, max_s: float | None = None):
        self.first_s, self.max_s = first_s, RETRY_MAX_S if max_s is None else max_s
        self.next_s = first_s

    def wait(self, cancel: threading.Event) -> bool:
        delay, self.next_s = self.next_s, min(self.next_s * 2, self.max_s)
        return not cancel.wait(delay)

    def reset(self) -> None:
        self.next_s = self.first_s


def retry_sentence(exc: BaseException, url, delay_s: float) -> str:
    err = user_error(exc, url)
    what = str(err) if err is not None else f"{type(exc).__name__}: {exc}"
    return f"{what}; retrying in {delay_s:.0f} s (everything already stored is kept)"


def run_worker(db: Database, paths: Paths, cancel: threading.Event | None = None, once: bool = False,
               name: str | None = None, claim_size: int = CLAIM_SIZE, lease_s: float = LEASE_S,
               poll_s: float = POLL_S, device: str | None = None, engine: str | None = None,
               precision: str = "auto", batch_size: int | None = None, workers: int | None = None,
               notice: Callable[[str], None] | None = None) -> Job[WorkerSummary]:
    """Claim and predict queued images until cancelled; with ``once``, until nothing is queued
    or running (it waits for batches other workers hold, and takes them over if their lease
    expires). ``notice`` gets one sentence per failed file and per database failure."""

    cancel = cancel or threading.Event()
    name = name or default_worker_name()
    summary = WorkerSummary(name)
    meter = RateMeter()
    backoff = Backoff(max_s=paths.settings.worker_retry_max_s)
    predictors: dict[int, tuple] = {}  # model version id -> (Predictor, VersionRef, compile marker, cell model?)

    def say(msg: str) -> None:
        log.warning("worker %s: %s", name, msg)
        if notice is not None:
            notice(msg)

    def timed(fn, *a):
        t0 = time.perf_counter()
        try:
            return fn(*a)
        finally:
            summary.db_seconds += time.perf_counter() - t0

    def predictor_for(vid: int):
        if vid not in predictors:
            with db.session() as s:
                version = version_ref_by_id(s, vid)
                package = version_package(s, version, paths)
                cell_model = is_cell_version(s, vid)
            plan, marker = plan_for(paths, version, package, device, engine, precision, claim_size)
            predictors[vid] = (Predictor(package, plan=plan, cache_dir=paths.cache), version, marker, cell_model)
            summary.models.add(version.name)
            log.info("worker %s: model %s on %s", name, version.name, predictors[vid][0].describe())
        return predictors[vid]

    def work(token: str, items: list[ClaimedItem]) -> Job[None]:
        found, orphans = timed(_claimed_files, db, token)
        if orphans:
            def mark_orphans(s: Session) -> None:
                s.execute(update(WorkItem).where(WorkItem.id.in_(orphans), WorkItem.claim_token == token)
                          .values(status=FAILED, error="no file of this image is left under the submitted folder",
                                  finished_at=utcnow(), lease_until=None))
            timed(lambda: _in_session(db, mark_orphans))
            summary.n_failed += len(orphans)
            say(f"{len(orphans)} queued image(s) have no file left under their folder; marked failed")
        by_version: dict[tuple[int, str | None], list[tuple[int, str, str]]] = {}
        for image_id, path, sha, vid, kind in found.values():
            by_version.setdefault((vid, kind), []).append((image_id, path, sha))
        for (vid, kind), todo in by_version.items():
            predictor, version, marker, cell_model = predictor_for(vid)

            def on_batch(s: Session, ids: list[int], failed: list[tuple[int, str, str]], vid=vid) -> None:
                now = utcnow()
                if ids:
                    s.execute(update(WorkItem).where(WorkItem.claim_token == token, WorkItem.model_version_id == vid,
                                                     WorkItem.image_id.in_(ids))
                              .values(status=DONE, finished_at=now, lease_until=None, error=None))
                for image_id, _path, err in failed:
                    s.execute(update(WorkItem).where(WorkItem.claim_token == token, WorkItem.model_version_id == vid,
                                                     WorkItem.image_id == image_id)
                              .values(status=FAILED, finished_at=now, lease_until=None, error=err))

            part = ClassifySummary(None, version.name, predictor.describe(), n_todo=len(todo), version=version)
            base = summary.n_predicted + summary.n_failed
            if cell_model:  # the item's image: its cells found (once) and each classified
                job = classify_cells(db, predictor, vid, [(i, p) for i, p, _ in todo], {i: sha for i, _, sha in todo},
                                     part, cancel, workers=workers, on_batch=on_batch, image_kind=kind)
            else:
                job = predict_images(db, predictor, vid, [(i, p) for i, p, _ in todo], {i: sha for i, _, sha in todo},
                                     part, cancel, batch_size=batch_size, workers=workers, marker=marker,
                                     on_batch=on_batch)
            try:
                for p in job:
                    yield Progress("worker", base + part.n_predicted + part.n_errors, None,
                                   f"{meter.rate(base + part.n_predicted + part.n_errors):.0f} img/s",
                                   extra=dict(p.extra, worker=name))
            finally:
                summary.n_predicted += part.n_predicted
                summary.n_failed += part.n_errors
                summary.db_seconds += part.db_seconds
                for path, err in part.errors:
                    say(f"{path}: {err}")
                summary.errors.extend(part.errors[: max(0, 200 - len(summary.errors))])

    while not cancel.is_set():
        token = None
        heartbeat = None
        try:
            token, items = timed(claim, db, name, claim_size, lease_s)
            if not items:
                backoff.reset()
                if once and timed(work_left, db) == 0:
                    break
                yield Progress("worker", summary.n_predicted + summary.n_failed, None, "waiting for work")
                cancel.wait(min(poll_s, ONCE_POLL_S) if once else poll_s)
                continue
            summary.n_claims += 1
            summary.n_claimed += len(items)
            heartbeat = _Heartbeat(db, token, lease_s)
            yield from work(token, items)
            backoff.reset()
        except Exception as exc:
            if not is_transient(exc):
                if token is not None:
                    _quietly(release, db, token)
                raise
            summary.n_retries += 1
            say(retry_sentence(exc, db.url, backoff.next_s))
            if heartbeat is not None:
                heartbeat.close()
                heartbeat = None
            # the claim's unfinished items come back when its lease expires (or now, if the
            # database is reachable again by then)
            if not backoff.wait(cancel):
                break
            if token is not None:
                _quietly(release, db, token)
        finally:
            if heartbeat is not None:
                heartbeat.close()
        if cancel.is_set() and token is not None:
            _quietly(release, db, token)  # a stop mid-claim: what was not written goes back to the queue
    summary.cancelled = cancel.is_set()
    summary.seconds = meter.elapsed()
    return summary


def _in_session(db: Database, fn: Callable[[Session], None]) -> None:
    with db.session() as s:
        fn(s)


def _quietly(fn, *a) -> None:
    try:
        fn(*a)
    except Exception as exc:
        log.info("could not %s now (%s); the lease will expire instead", fn.__name__, exc)
