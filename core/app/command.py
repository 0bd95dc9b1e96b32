"""The command registry: core's commands (core/app/commands.py) and those other packages
contribute through the ``hemascan.commands`` entry-point group register here with
:func:`command`; :class:`App` is what a command is given. core/app/cli.py builds the parser from
the registry (and imports the modules that fill it), so this module imports none of them."""
from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from core.config import Paths
from core.jobs import run_job
from core.app.bootstrap import open_database


@dataclass
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, "App"], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    def deco(fn):
        COMMANDS[name] = Command(name, help, configure, fn)
        return fn

    return deco


class App:
    """What a command needs: paths, the database (opened and migrated on first use),
    a cancel event wired to Ctrl+C, and progress display."""

    def __init__(self, paths: Paths, db_url: str | None, quiet: bool = False):
        self.paths = paths.ensure()
        self.settings = paths.settings  # read once at start (core/config.py)
        self.db_url = paths.db_url(db_url)
        self.quiet = quiet
        self.cancel = threading.Event()
        self._db = None

    @property
    def db(self):
        if self._db is None:
            # first use sets up a new data directory (migrations, bundled model) under a lock
            self._db = open_database(self.paths, self.db_url)
        return self._db

    def progress(self, job, desc: str):
        """Run a job generator with a tqdm bar per stage; return its summary. Not on a terminal
        (a log, a pipe) a bar's redraws would each be a line: one line per stage as it ends."""
        if not self.quiet and not sys.stderr.isatty():
            return self._progress_lines(job, desc)
        from tqdm import tqdm


        bars: dict[str, tqdm] = {}

        def show(p) -> None:
            if self.quiet:
                return
            bar = bars.get(p.stage)
            if bar is None:
                for other in bars.values():
                    other.close()
                bar = bars[p.stage] = tqdm(total=p.total, desc=f"{desc}: {p.stage}", unit="img",
                                           dynamic_ncols=True, file=sys.stderr)
            if p.total is not None and bar.total != p.total:
                bar.total = p.total
            bar.n = p.done
            if p.message:
                bar.set_postfix_str(p.message, refresh=False)
            bar.refresh()

        try:
            return run_job(job, show)
        finally:
            for bar in bars.values():
                bar.close()

    def _progress_lines(self, job, desc: str):
        last: list = []  # the latest progress of the stage running

        def end_stage() -> None:
            if last:
                p = last.pop()
                print(f"{desc}: {p.stage}: {p.done:,}" + (f" of {p.total:,}" if p.total is not None else "")
                      + " img" + (f" ({p.message})" if p.message else ""), file=sys.stderr, flush=True)

        def show(p) -> None:
            if last and last[0].stage != p.stage:
                end_stage()
            last[:] = [p]

        try:
            return run_job(job, show)
        finally:
            end_stage()

    def echo(self, msg: str = "") -> None:
        print(msg, flush=True)
