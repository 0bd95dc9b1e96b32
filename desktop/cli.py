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
