"""The one worker mechanism of the desktop app: functions and job generators run on a
QThreadPool; results come back to the GUI thread as Qt signals carrying plain data
(dataclasses, ids, numpy arrays, QImage), never ORM objects.

A job generator (core.jobs style) yields Progress and returns a summary; it is cancelled
by setting its threading.Event, which core jobs check after every batch.
"""
from __future__ import annotations

import logging
import threading
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)


class TaskSignals(QObject):
    progress = Signal(object)  # core.jobs.Progress
    result = Signal(object)
    error = Signal(str)
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

    def run(self) -> None:  # pool thread
        try:
            out = self.fn()
            if hasattr(out, "__next__") and hasattr(out, "send"):  # a job generator
                while True:
                    try:
                        p = next(out)
                    except StopIteration as stop:
                        out = stop.value
                        break
                    self.signals.progress.emit(p)
            self.signals.result.emit(out)
        except Exception as exc:  # reported to the GUI and the log file, never a raw dialog
            log.error("%s failed: %s\n%s", self.name, exc, traceback.format_exc())
            self.signals.error.emit(f"{self.name} failed: {exc}")
        finally:
            self.signals.finished.emit()


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
