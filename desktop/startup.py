"""What the app says when it cannot start: the command line's sentence, in a dialog."""
from __future__ import annotations

from PySide6.QtWidgets import QMessageBox

from core.config import Paths
from core.app.cli import report_error
from core.storage.errors import user_error


def show_startup_error(exc: BaseException, paths: Paths, db_url=None, parent=None) -> int | None:
    """At start-up, an error a person can act on (a damaged, read-only or unreachable database,
    a full disk...) is shown in a dialog with the same sentence the command line prints, and
    its exit code (README) is returned; None for anything else (a bug: let it show)."""

    try:
        db_url = paths.db_url(db_url)  # to name the database file in the message
    except Exception:
        pass
    code = report_error(exc, db_url)  # the log file and stderr, as the command line
    if code is None:
        return None
    QMessageBox.critical(parent, "hemascan cannot start", str(user_error(exc, db_url)))
    return code
