"""``hemascan gui [FOLDER]``: the desktop app as a command of the hemascan CLI."""
from __future__ import annotations

import sys

from core.app.command import command
from core.app.options import non_empty_path
from desktop.qtcheck import EXIT_NO_DISPLAY, gui_preflight
from desktop.app import run_gui


def _configure(p) -> None:
    p.add_argument("folder", nargs="?", type=non_empty_path, help="folder of smear images to open and classify")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")


@command("gui", "open the desktop app (optionally on FOLDER)", _configure)
def run(args, app) -> int:
    # before any QApplication: Qt aborts the process when its xcb plugin cannot load
    problem = gui_preflight()
    if problem:
        print(problem, file=sys.stderr, flush=True)
        return EXIT_NO_DISPLAY

    return run_gui(app.paths, app.db_url, args.folder, args.device)


def _release_args(p) -> None:
    p.add_argument("folder", type=non_empty_path, help="the case's folder (one sample)")
    p.add_argument("--report", required=True, type=non_empty_path, help="the PDF report to write (the released document)")
    p.add_argument("--model", help="whose predictions the report shows (default: the active model)")


@command("release", "release a case (a supervisor's act): write its signed PDF report and record the release "
                    "with the PDF's SHA-256; the case is read-only afterwards (a change is an amendment with a "
                    "reason)", _release_args)
def run_release(args, app) -> int:
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # a PDF needs no display
    from PySide6.QtWidgets import QApplication  # heavy: imports Qt

    from desktop.release import release_case  # heavy: imports Qt
    from desktop.workers import setup_on_main_thread  # heavy: imports Qt

    # fonts for the PDF; a QApplication (not only a QGuiApplication), so that a window can follow in one process
    _qt = QApplication.instance() or QApplication(["hemascan"])  # noqa: F841
    with setup_on_main_thread():  # a command, not a window: no event loop for the database work to block
        event = release_case(app.db, args.folder, args.report, model=args.model)
    app.echo(f"released {event.case_name} by {event.display_name} (login {event.login}) at "
             f"{event.created_at:%Y-%m-%d %H:%M}; report {args.report} (SHA-256 {event.pdf_sha256}); "
             f"labels SHA-256 {event.labels_sha256}")
    return 0
