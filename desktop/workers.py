"""The one worker mechanism of the desktop app: functions and job generators run on a
QThreadPool; results come back to the GUI thread as Qt signals carrying plain data
(dataclasses, ids, numpy arrays, QImage), never ORM objects.

A job generator (core.jobs style) yields Progress and returns a summary; it is cancelled
by setting its threading.Event, which core jobs check after every batch.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal
from core.storage.errors import user_error

log = logging.getLogger(__name__)


_setup = threading.local()


@contextlib.contextmanager
def setup_on_main_thread():
    """Marks the window's set-up before its event loop runs (opening the database, the model it
    shows first): the only database work the GUI thread may do. The main-thread SQL check of
    the tests (tests/conftest.py) lets it pass; anything after ``show()`` goes through the pool."""
    depth = getattr(_setup, "depth", 0)
    _setup.depth = depth + 1
    try:
        yield
    finally:
        _setup.depth = depth


def in_setup() -> bool:
    return getattr(_setup, "depth", 0) > 0


class JobError(Exception):
    """What a failed task reports to the GUI: one sentence for the user (``str``), the
    original exception as ``__cause__`` (its traceback is in the log)."""


class TaskSignals(QObject):
    progress = Signal(object)  # core.jobs.Progress
    result = Signal(object)
    error = Signal(object)  # JobError
    finished = Signal()


class Task(QRunnable):
    """Runs ``fn()`` (or drives the generator it returns) on a pool thread."""

    def __init__(self, fn: Callable[[], Any], name: str = "task"):
        super().__init__()
        self.setAutoDelete(False)  # Python owns it (kept in Workers._live until finished)
        self.fn = fn
        self.name = name
        self.signals = TaskSignals()
        self.cancel = threading.Event()

    cooperative = False  # the job itself watches ``cancel`` (JobSlot jobs): drive it to its summary

    def run(self) -> None:  # pool thread
        try:
            if self.cancel.is_set():  # cancelled before it started: nothing to report
                if self.cooperative:
                    self.signals.result.emit(None)  # a job's owner learns it ended
                return
            out = self.fn()
            if hasattr(out, "__next__") and hasattr(out, "send"):  # a job generator
                while True:
                    try:
                        p = next(out)
                    except StopIteration as stop:
                        out = stop.value
                        break
                    if self.cancel.is_set():  # checked between steps
                        if not self.cooperative:
                            out.close()
                            return  # nobody waits for a cancelled light task's result
                        continue  # it stops at its next step and returns what it did
                    self.signals.progress.emit(p)
            self.signals.result.emit(out)
        except Exception as exc:  # reported to the GUI and the log file, never a raw dialog
            log.error("%s failed: %s\n%s", self.name, exc, traceback.format_exc())
            known = user_error(exc)  # a database, disk or input problem in one sentence; else the bug's text
            err = JobError(f"{self.name} failed: {known if known is not None else exc}")
            err.__cause__ = exc
            self.signals.error.emit(err)
        finally:
            self.signals.finished.emit()


class JobSlot(QObject):
    """The one place long jobs (scan + classify) start: one at a time, and a new one
    supersedes the running one cleanly: the old is cancelled (it stops after its current
    batch, keeping what it wrote) and its late signals are dropped, so a result can never
    be taken for the new job's (the pattern of Orange's ConcurrentMixin)."""

    progress = Signal(object)
    result = Signal(object)
    failed = Signal(object)  # JobError

    def __init__(self, workers: "Workers"):
        super().__init__(workers)
        self.workers = workers
        self.task: Task | None = None
        self._generation = 0

    @property
    def running(self) -> bool:
        return self.task is not None

    def start(self, make_job: Callable[[threading.Event], Any], name: str) -> Task:
        """Run ``make_job(cancel)`` (a job generator that watches ``cancel``)."""
        self.cancel()
        self._generation += 1
        gen = self._generation
        cancel = threading.Event()
        task = Task(lambda: make_job(cancel), name)
        task.cancel = cancel
        task.cooperative = True
        task.signals.progress.connect(lambda p: gen == self._generation and self.progress.emit(p))
        task.signals.result.connect(lambda out: self._done(gen, self.result, out))
        task.signals.error.connect(lambda err: self._done(gen, self.failed, err))
        task.signals.finished.connect(lambda t=task: self.workers._live.discard(t))
        self.workers._live.add(task)
        self.task = task
        self.workers.jobs.start(task)
        return task

    def cancel(self) -> bool:
        """Ask the running job to stop after its current step; its result still arrives
        (as cancelled). False when nothing runs."""
        if self.task is None or self.task.cancel.is_set():
            return False
        self.task.cancel.set()
        return True

    def supersede(self) -> None:
        """Cancel the running job and drop whatever it still reports."""
        self.cancel()
        self._generation += 1
        self.task = None

    def _done(self, gen: int, signal, value) -> None:
        if gen != self._generation:
            return  # a superseded job's late result
        self.task = None
        signal.emit(value)


class Workers(QObject):
    """Two pools of the same mechanism: ``jobs`` (one long job at a time: scan/classify)
    and ``light`` (thumbnails, Grad-CAM, small queries)."""

    def __init__(self, parent=None, light_threads: int = 2):
        super().__init__(parent)
        self.jobs = QThreadPool(self)
        self.jobs.setMaxThreadCount(1)
        self.light = QThreadPool(self)
        self.light.setMaxThreadCount(light_threads)
        self._live: set[Task] = set()

    def submit(self, fn: Callable[[], Any], *, name: str = "task", pool: str = "light",
               on_result=None, on_error=None, on_progress=None, on_finished=None, priority: int = 0) -> Task:
        task = Task(fn, name)
        if on_result is not None:
            task.signals.result.connect(on_result)
        if on_error is not None:
            task.signals.error.connect(on_error)
        if on_progress is not None:
            task.signals.progress.connect(on_progress)
        if on_finished is not None:
            task.signals.finished.connect(on_finished)
        task.signals.finished.connect(lambda t=task: self._live.discard(t))
        self._live.add(task)
        (self.jobs if pool == "jobs" else self.light).start(task, priority)
        return task

    def cancel_all(self) -> None:
        for t in list(self._live):
            t.cancel.set()
        self.light.clear()

    def wait(self, ms: int = 5000) -> bool:
        a = self.jobs.waitForDone(ms)
        b = self.light.waitForDone(ms)
        return a and b


class Poller(QObject):
    """Every ``interval_ms``, one query at a time on the light pool (a tick while the last is
    still out is skipped): ``make_query()`` runs on the GUI thread and returns the function to
    run on a pool thread (plain values captured), or None to skip this tick. ``result`` brings
    its plain-data answer back; ``failed`` a JobError (a server away: the next tick asks again)."""

    result = Signal(object)
    failed = Signal(object)

    def __init__(self, workers: Workers, make_query: Callable[[], Callable[[], Any] | None], interval_ms: int,
                 name: str, parent=None):
        super().__init__(parent)
        self.workers, self.make_query, self.name = workers, make_query, name
        self._busy = False
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.poll)

    def start(self, now: bool = True) -> None:
        self.timer.start()
        if now:
            self.poll()

    def stop(self) -> None:
        self.timer.stop()

    def poll(self) -> None:
        if self._busy:
            return
        query = self.make_query()
        if query is None:
            return
        self._busy = True
        self.workers.submit(query, name=self.name, on_result=self.result.emit, on_error=self.failed.emit,
                            on_finished=self._finished, priority=2)

    def _finished(self) -> None:
        self._busy = False
