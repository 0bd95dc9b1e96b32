"""Start the desktop app: ``hemascan gui [FOLDER]`` or ``python -m desktop [FOLDER]``."""
from __future__ import annotations

import logging
import sys
from core.app.cli import setup_logging
from core.app import options
from core.config import SettingsError, load_settings, unknown_config_keys, unknown_variables, resolve_paths
from desktop.instance import AnotherWindowError, claim_window

log = logging.getLogger("hemascan.desktop")


def _install_excepthook(window) -> None:
    """Unexpected errors go to the log file and the status bar, never a raw traceback dialog."""

    def hook(exc_type, exc, tb):
        log.error("unexpected error", exc_info=(exc_type, exc, tb))
        try:
            window.show_error(f"Unexpected error: {exc} (details in the log)")
        except Exception:
            pass

    sys.excepthook = hook


def run_gui(paths, db_url=None, folder=None, device=None, argv=None) -> int:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication


    setup_logging(paths, False)
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication(argv or [sys.argv[0]])
    app.setOrganizationName("hemascan")
    app.setApplicationName("hemascan")
    app.setApplicationDisplayName("hemascan")
    from .mainwindow import MainWindow  # heavy: imports Qt
    from .startup import show_startup_error  # heavy: imports Qt

    try:  # one window per data directory (desktop/instance.py says why)
        paths.data_dir.mkdir(parents=True, exist_ok=True)
        window_lock = claim_window(paths.data_dir)
    except AnotherWindowError as exc:
        from PySide6.QtWidgets import QMessageBox  # heavy: imports Qt

        log.warning("%s", exc)
        QMessageBox.warning(None, "hemascan is already open", f"{exc}.")
        print(f"hemascan: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    app.aboutToQuit.connect(window_lock.release)
    try:
        window = MainWindow(paths, db_url, device=device)
    except Exception as exc:  # a damaged, read-only or unreachable database...: a dialog, not a traceback
        window_lock.release()
        code = show_startup_error(exc, paths, db_url)
        if code is None:
            raise
        return code
    _install_excepthook(window)
    window.show()
    if folder:
        window.open_folder(folder)
    else:
        window.reopen_last_folder()  # where the reviewer left off: filters, image, scroll
    return app.exec()


def main(argv: list[str] | None = None) -> int:
    import argparse


    p = argparse.ArgumentParser(prog="python -m desktop", description="hemascan desktop app")
    p.add_argument("folder", nargs="?", help="folder of smear images to open and classify")
    p.add_argument("--data-dir", type=options.non_empty_path)
    p.add_argument("--db-url", type=options.db_url)
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    args = p.parse_args(argv)
    try:  # the environment is read here, once, and checked before the window opens
        settings = load_settings()
    except SettingsError as exc:
        print(f"hemascan: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    for warning in unknown_variables() + unknown_config_keys():
        print(f"hemascan: warning: {warning}", file=sys.stderr, flush=True)
    return run_gui(resolve_paths(args.data_dir, settings), args.db_url, args.folder, args.device)
