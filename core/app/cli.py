"""The ``hemascan`` command line.

Commands are a registry: core's own below, and more contributed by other packages
through the ``hemascan.commands`` entry-point group (the trainer adds train/evaluate/
compare, the desktop adds gui) without core importing them. Heavy modules (torch) are
imported inside the commands that need them, so ``hemascan --help`` starts at once.
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import signal
import sys
import threading
from importlib.metadata import entry_points

from core.app import options
from core.app.command import COMMANDS, App
from core.config import Paths, SettingsError, load_settings, share_with_group, unknown_config_keys, unknown_variables, resolve_paths
from core.errors import EXIT_INTERRUPTED
from core.distribution import hemascan_version
from core.app import commands  # noqa: F401  (registers core commands)
from core.app import lab  # noqa: F401  (registers hemascan lab)
from core.storage.errors import user_error

log = logging.getLogger("hemascan")


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
    _load_plugins()
    parser = argparse.ArgumentParser(
        prog="hemascan",
        description="Classify blood-smear images and review them. Decision support only: "
        "hemascan does not replace diagnosis by a qualified person.",
        epilog="The installed app also takes --self-test (classify generated images with the bundled "
        "model and run one training step; exit 0 when all went right).",
    )
    parser.add_argument("--version", action="version", version=f"hemascan {hemascan_version()}")
    parser.add_argument("--data-dir", type=options.non_empty_path,
                        help="data directory (database, models, logs); default: $HEMASCAN_DATA_DIR or the user data dir")
    parser.add_argument("--db-url", type=options.db_url,
                        help="database URL (default: SQLite in the data directory; $HEMASCAN_DB_URL)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        # argparse formats help with %: a literal "%" in a command's text would crash --help
        text = cmd.help.replace("%", "%%")
        p = sub.add_parser(cmd.name, help=text, description=text)
        cmd.configure(p)
    return parser


# The log rotates by size and keeps a few old files: a lab's workstation runs for years.
LOG_MAX_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 3
# Libraries whose INFO lines are noise for a lab (every start ran "Context impl SQLiteImpl" etc.):
# only their warnings are logged unless --verbose.
QUIET_LOGGERS = ("alembic", "nncf", "openvino", "PIL", "matplotlib")


class _LogFile(logging.handlers.RotatingFileHandler):
    """The log file; if writing to it fails later (disk full), it says so once on stderr
    and stops, instead of printing logging's traceback for every record."""

    def handleError(self, record) -> None:
        if self.level <= logging.CRITICAL:
            self.setLevel(logging.CRITICAL + 10)
            print(f"hemascan: warning: could not write the log file {self.baseFilename}; carrying on without it",
                  file=sys.stderr, flush=True)


def setup_logging(paths: Paths, verbose: bool) -> str | None:
    """Log to ``logs/hemascan.log`` in the data directory. A log file that cannot be written
    (a read-only or full disk, ``logs`` being a file) is not an error: one warning line on
    stderr, and the command runs. Returns the log file's path, or None."""
    share_with_group(paths.data_dir)  # the log is the first file a start makes in the data directory
    log_file = str(paths.logs / "hemascan.log")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if any(getattr(h, "baseFilename", None) == log_file for h in root.handlers):
        return log_file
    try:
        paths.logs.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if paths.logs.exists() and not paths.logs.is_dir():
            reason = f"{paths.logs} is a file, not a folder"
        print(f"hemascan: warning: cannot write the log file {log_file} ({reason}); carrying on without it",
              file=sys.stderr, flush=True)
        if not root.handlers:  # else logging's last resort prints records (and tracebacks) on stderr
            root.addHandler(logging.NullHandler())
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return log_file


def report_error(exc: BaseException, db_url=None) -> int | None:
    """Print the one-sentence message for an error a person can act on and return its exit
    code (core/errors.py, README); None for anything else (a bug: let its traceback show)."""

    err = user_error(exc, db_url)
    if err is None:
        return None
    log.error("%s", err, exc_info=exc if err is not exc else None)
    print(f"hemascan: error: {err}", file=sys.stderr, flush=True)
    return err.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:  # the environment is read here, once, and checked before any work
        settings = load_settings()
    except SettingsError as exc:  # before the log exists: only the sentence, on stderr
        print(f"hemascan: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    for warning in unknown_variables() + unknown_config_keys():
        print(f"hemascan: warning: {warning}", file=sys.stderr, flush=True)
    app = None
    try:
        paths = resolve_paths(args.data_dir, settings)
        setup_logging(paths, args.verbose)
        app = App(paths, args.db_url, quiet=args.quiet)
        _install_sigint(app)
        return COMMANDS[args.command].run(args, app) or 0
    except KeyboardInterrupt:
        print("hemascan: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = report_error(exc, app.db_url if app is not None else args.db_url)
        if code is None:
            raise
        return code
