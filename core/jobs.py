"""Long jobs as plain Python generators (napari style): they ``yield Progress`` between
steps, check a cancel ``threading.Event``, and ``return`` a summary. The CLI drives them
with a tqdm bar; the GUI drives the same generators in a worker thread."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, TypeVar

T = TypeVar("T")
Job = Generator["Progress", None, T]


@dataclass
class Progress:
    stage: str  # e.g. "scan", "classify", "train"
    done: int
    total: int | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class RateMeter:
    """Items/s and time left from a job's start, for progress displays."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def rate(self, done: int) -> float:
        dt = self.elapsed()
        return done / dt if dt > 0 else 0.0

    def eta(self, done: int, total: int | None) -> float | None:
        r = self.rate(done)
        if not total or r <= 0:
            return None
        return max(0.0, (total - done) / r)


def run_job(job: Job[T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Drive a job generator to the end and return its summary."""
    while True:
        try:
            p = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)


def new_cancel_event() -> threading.Event:
    return threading.Event()
