"""The window's controller, without Qt: the review state (core.review.state.ReviewState),
the version shown, and the one road to the database for every view, the job runner.

Views receive it and never open a database session themselves: ``read(query, on_result)``
runs ``query(session)`` on a pool thread and hands its plain-data answer back on the GUI
thread (desktop.workers.Workers implements ``Runner``), so a slow or absent database server
makes an answer late, never the window frozen. Label writes go through
core.review.labels.LabelWriter, which never blocks a key either.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from core.review.state import ReviewState


class Runner(Protocol):
    """Runs ``fn`` off the GUI thread; ``on_result``/``on_error`` are called on the GUI thread."""

    def submit(self, fn: Callable[[], Any], *, name: str = "task", pool: str = "light", on_result=None,
               on_error=None, on_progress=None, on_finished=None, priority: int = 0) -> Any: ...


def local_time(t: datetime) -> str:
    """A stored time (UTC; SQLite gives it back without a zone) as the reviewer's local time."""
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone().strftime("%Y-%m-%d %H:%M:%S")


# What the views say of the open folder's images, as the lab declared them (File ▸ Images in
# this folder are…; None: never said, the finder judges each image). The Images and Cells views
# both end their line with it.
IMAGE_KIND_WORDS = {"auto": "images: hemascan judges each one", "fields": "images: camera fields (every cell)",
                    "crops": "images: single-cell crops (one cell each)"}


@dataclass
class Controller:
    db: Any  # core.storage.Database
    paths: Any  # core.config.Paths
    state: ReviewState
    runner: Runner
    device: str | None = None
    version: dict | None = None  # the version the window shows (desktop.models_panel.version_info)
    image_kind: str | None = None  # what the open folder's images are, as the lab said (IMAGE_KINDS; None: not said)
    on_error: Callable[[str], None] | None = None  # where a failed read is said (the status bar)

    @property
    def folder(self) -> str | None:
        return self.state.folder

    def image_kind_words(self) -> str:
        """The open folder's declared image kind in the words every view uses (IMAGE_KIND_WORDS)."""
        return IMAGE_KIND_WORDS[self.image_kind or "auto"]

    @property
    def version_id(self) -> int | None:
        return self.version["id"] if self.version else None

    @property
    def taxonomy(self) -> str | None:
        return self.version["taxonomy"] if self.version else None

    @property
    def classes(self) -> list[str]:
        return list(self.version["classes"]) if self.version else []

    def read(self, query: Callable[[Any], Any], on_result: Callable[[Any], None], name: str,
             on_error: Callable[[Any], None] | None = None, priority: int = 0) -> Any:
        """``query(session)`` on a pool thread; its answer (plain data, never ORM rows) to ``on_result``."""
        db = self.db

        def run():
            with db.session() as s:
                return query(s)

        return self.runner.submit(run, name=name, on_result=on_result, on_error=on_error or self._said,
                                  priority=priority)

    def _said(self, err) -> None:
        if self.on_error is not None:
            self.on_error(str(err))
