"""The ``hemascan`` command line.

Commands are a registry: core's own below, and more contributed by other packages
through the ``hemascan.commands`` entry-point group (the trainer adds train/evaluate/
compare, the desktop adds gui) without core importing them. Heavy modules (torch) are
imported inside the commands that need them, so ``hemascan --help`` starts at once.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from .config import Paths, resolve_paths
from .errors import HemascanError

log = logging.getLogger("hemascan")


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
        self.db_url = paths.db_url(db_url)
        self.quiet = quiet
        self.cancel = threading.Event()
        self._db = None

    @property
    def db(self):
        if self._db is None:
            from .db import Database

            self._db = Database(self.db_url)
        return self._db

    def progress(self, job, desc: str):
        """Run a job generator with a tqdm bar per stage; return its summary."""
        from tqdm import tqdm

        from .jobs import run_job

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

    def echo(self, msg: str = "") -> None:
        print(msg, flush=True)


def _install_sigint(app: App) -> None:
    """First Ctrl+C asks the job to stop cleanly (work so far is kept); a second one aborts."""

    def handler(signum, frame):
        if app.cancel.is_set():
            raise KeyboardInterrupt
        app.cancel.set()
        print("\nstopping after the current batch (Ctrl+C again to abort)...", file=sys.stderr, flush=True)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)


def _load_plugins() -> None:
    for ep in entry_points(group="hemascan.commands"):
        try:
            ep.load()  # importing the module registers its commands
        except Exception as exc:  # a broken plugin must not take the core CLI down
            log.warning("could not load command plugin %s: %s", ep.name, exc)


def build_parser() -> argparse.ArgumentParser:
    from . import commands  # noqa: F401  (registers core commands)

    _load_plugins()
    parser = argparse.ArgumentParser(
        prog="hemascan",
        description="Classify blood-smear images and review them. Decision support only: "
        "hemascan does not replace diagnosis by a qualified person.",
    )
    parser.add_argument("--data-dir", help="data directory (database, models, logs); default: $HEMASCAN_DATA_DIR or the user data dir")
    parser.add_argument("--db-url", help="database URL (default: SQLite in the data directory; $HEMASCAN_DB_URL)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
    return parser


def setup_logging(paths: Paths, verbose: bool) -> None:
    paths.logs.mkdir(parents=True, exist_ok=True)
    log_file = str(paths.logs / "hemascan.log")
    root = logging.getLogger()
    if not any(getattr(h, "baseFilename", None) == log_file for h in root.handlers):
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from sqlalchemy.exc import OperationalError

    try:
        paths = resolve_paths(args.data_dir)
        app = App(paths, args.db_url, quiet=args.quiet)
        setup_logging(paths, args.verbose)
        _install_sigint(app)
        return COMMANDS[args.command].run(args, app) or 0
    except HemascanError as exc:
        log.error("%s", exc)
        print(f"hemascan: error: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        if "locked" not in str(exc).lower():
            raise
        print("hemascan: error: the database is locked by another process (another hemascan "
              "still writing?); nothing was lost, try again when it has finished", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("hemascan: aborted", file=sys.stderr)
        return 130


