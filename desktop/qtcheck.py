"""Checks of the Qt the desktop app runs on, made before it can crash the process.

- :func:`none_refcount_drift`: PySide6 6.12.0 (shiboken6 6.12.0) decrements the reference
  count of ``None`` on every call that returns nothing (``QPainter.setPen``, ``fillRect``,
  ``drawImage``, ``save``/``restore``, ``QFont.setBold``...). On CPython 3.11, where None is
  not immortal, the count reaches zero after a few thousand calls and the interpreter aborts
  (``Fatal Python error: none_dealloc: deallocating None``): scrolling a 2,730-image gallery
  did it (issue 11). pyproject.toml and the constraints pin a release without the defect;
  tests/test_qt_refcount.py and the frozen app's ``--self-test`` run this check so that a
  bundle or venv with the bad Qt is caught before a user scrolls.
- :func:`missing_xcb_libraries` / :func:`gui_preflight`: Qt's xcb platform plugin (X11)
  needs system libraries a fresh Debian/Ubuntu lacks (``libxcb-cursor0`` above all); without
  them Qt prints "Could not load the Qt platform plugin xcb" and aborts. The GUI entry points
  check first and say which packages to install (exit code :data:`EXIT_NO_DISPLAY`).
"""
from __future__ import annotations

import gc
import os
import sys

#: ``hemascan gui`` / ``python -m desktop`` exit code when the desktop cannot start on this
#: machine: missing system libraries for Qt's xcb plugin, or no display to connect to.
EXIT_NO_DISPLAY = 4

#: Void calls per painting round in :func:`none_refcount_drift` (each leaks one reference to
#: None with the defective PySide6): setPen, fillRect, drawImage, save, restore, setBold, drawText.
CALLS_PER_ROUND = 7

#: Drop of ``sys.getrefcount(None)`` tolerated as noise (caches, interned objects); the
#: defect drops it by about one per call.
NOISE = 50

# References to None that stand in for the ones a defective Qt dropped, so that None is
# never deallocated after the check (kept for the life of the process).
_COMPENSATION: list[None] = []


def _qt_gui_app():
    """The running Q(Gui)Application, or a headless one (offscreen platform) for the check: a
    QApplication, so that widgets can still be made in this process afterwards."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        # -platform on the command line wins over QT_QPA_PLATFORM: never needs a display
        app = QApplication([sys.argv[0] if sys.argv and sys.argv[0] else "hemascan", "-platform", "offscreen"])
    return app


def none_refcount_drift(n: int = 500) -> int:
    """Paint ``n`` rounds of ordinary tile drawing (QPainter on a QImage: setPen, fillRect,
    drawImage, save/restore, QFont.setBold, drawText) and return how much
    ``sys.getrefcount(None)`` changed: about 0 on a sound Qt, about ``-6 * n`` with the
    PySide6 6.12.0 defect (every call but drawText leaks one).

    Safe to run on a defective Qt: a list of Nones holds enough references while painting, and
    whatever was lost is made up for afterwards, so the check never aborts the interpreter.
    """
    from PySide6.QtCore import QPoint, QRect
    from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen

    _qt_gui_app()
    target = QImage(96, 96, QImage.Format.Format_ARGB32_Premultiplied)
    target.fill(QColor("white"))
    thumb = QImage(16, 16, QImage.Format.Format_ARGB32_Premultiplied)
    thumb.fill(QColor("red"))
    pen, colour, rect, at, font = QPen(QColor("blue")), QColor("green"), QRect(2, 2, 20, 10), QPoint(0, 0), QFont()
    text_at = QPoint(4, 40)

    def paint(p: QPainter, rounds: int) -> None:
        for _ in range(rounds):
            p.setPen(pen)
            p.fillRect(rect, colour)
            p.drawImage(at, thumb)
            p.save()
            p.restore()
            font.setBold(True)
            p.drawText(text_at, "Pre-B 0.97")

    guard = [None] * (CALLS_PER_ROUND * (n + 1) + 1000)  # noqa: F841  (keeps None alive meanwhile)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection mid-loop would drop references to None and look like drift
    p = QPainter(target)
    try:
        paint(p, 1)  # first calls fill Qt's and shiboken's caches
        before = sys.getrefcount(None)
        paint(p, n)
        after = sys.getrefcount(None)
    finally:
        p.end()
        if was_enabled:
            gc.enable()
    drift = after - before
    if drift < 0:
        _COMPENSATION.extend([None] * (-drift + CALLS_PER_ROUND))  # what the paint(p, 1) lost too
    del guard
    return drift


def refcount_problem(n: int = 500) -> str | None:
    """None when Qt leaves None's reference count alone, else a sentence saying what is wrong."""
    import PySide6

    drift = none_refcount_drift(n)
    if drift >= -NOISE:
        return None
    try:
        import shiboken6

        shiboken = shiboken6.__version__
    except Exception:  # noqa: BLE001
        shiboken = "?"
    return (f"PySide6 {PySide6.__version__} (shiboken6 {shiboken}) drops a reference to None on every "
            f"painting call ({drift} after {n * CALLS_PER_ROUND} calls): the desktop app would abort "
            f"with 'none_dealloc' while scrolling; install the pinned release (see constraints.txt)")


# ---------------------------------------------------------------------------------------------
# Qt's xcb (X11) plugin and the system libraries it needs

#: soname -> Debian/Ubuntu package, from ``ldd`` of PySide6's plugins/platforms/libqxcb.so and
#: lib/libQt6XcbQpa.so.6 (PySide6 6.11.3). libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1 and
#: libxkbcommon-x11-0 are the ones usually missing.
XCB_LIBRARIES: dict[str, str] = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
}


def can_load(soname: str) -> bool:
    """Whether the dynamic linker finds ``soname`` (the way Qt's plugin will look for it)."""
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_xcb_libraries(load=None) -> list[str]:
    """Sonames from :data:`XCB_LIBRARIES` that cannot be loaded (``load`` defaults to :func:`can_load`)."""
    load = load or can_load
    return [name for name in XCB_LIBRARIES if not load(name)]


def uses_xcb(environ=None, platform: str | None = None) -> bool:
    """Whether a QApplication started now would use Qt's xcb plugin (Linux, not offscreen)."""
    environ = os.environ if environ is None else environ
    if not (platform or sys.platform).startswith("linux"):
        return False
    chosen = environ.get("QT_QPA_PLATFORM", "").strip()
    if chosen:
        return chosen.split(";")[0].split(":")[0].strip() == "xcb"
    # no choice made: Qt 6 tries wayland first in a Wayland session, xcb otherwise
    return not (environ.get("XDG_SESSION_TYPE") == "wayland" and environ.get("WAYLAND_DISPLAY"))


def gui_preflight(environ=None, load=None, platform: str | None = None) -> str | None:
    """None when the GUI can start, else the one sentence to print instead of Qt's abort."""
    environ = os.environ if environ is None else environ
    if not uses_xcb(environ, platform):
        return None
    missing = missing_xcb_libraries(load)
    if missing:
        packages = " ".join(dict.fromkeys(XCB_LIBRARIES[m] for m in missing))
        return (f"hemascan: error: the desktop app needs system libraries that are not installed "
                f"({', '.join(missing)}); install them with: sudo apt-get install {packages} "
                f"(Debian/Ubuntu; other distributions: the packages providing these files)")
    if not environ.get("DISPLAY"):
        return ("hemascan: error: no display to open the desktop app on (DISPLAY is not set); "
                "start it from a desktop session, or use the command line (hemascan classify ...)")
    return None


def exit_unless_gui_can_start() -> None:
    """Print :func:`gui_preflight`'s sentence and exit with :data:`EXIT_NO_DISPLAY` when the GUI
    cannot start; return otherwise. Call before the QApplication is created."""
    problem = gui_preflight()
    if problem:
        print(problem, file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NO_DISPLAY)
