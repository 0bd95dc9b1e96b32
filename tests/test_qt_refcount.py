"""Issue 11: the desktop app must survive ordinary review.

PySide6 6.12.0 dropped a reference to None on every Qt call returning nothing (QPainter.setPen,
fillRect, drawImage, ...); on CPython 3.11 scrolling a 2,730-image gallery then aborted the
process ("Fatal Python error: none_dealloc"). These tests paint and scroll with the installed
Qt and fail if ``sys.getrefcount(None)`` drifts down; the check itself
(desktop.qtcheck.none_refcount_drift) never aborts the interpreter, even on a defective Qt.

Also: the GUI entry points say which system packages to install when Qt's xcb plugin
cannot load, instead of Qt's abort.
"""
from __future__ import annotations

import gc
import sys

import pytest

pytest.importorskip("PySide6")

from desktop import qtcheck  # noqa: E402


def test_painting_keeps_none_refcount(qapp):
    rounds = 500  # 3,500 void calls; PySide6 6.12.0 gives about -3,500
    drift = qtcheck.none_refcount_drift(rounds)
    import PySide6

    print(f"\nPySide6 {PySide6.__version__}: None refcount drift {drift} after "
          f"{rounds * qtcheck.CALLS_PER_ROUND} painting calls")
    assert drift >= -qtcheck.NOISE, (
        f"PySide6 {PySide6.__version__} leaks references to None ({drift} after "
        f"{rounds * qtcheck.CALLS_PER_ROUND} calls): the GUI will abort with none_dealloc; "
        f"install the release pinned in constraints.txt")
    assert qtcheck.refcount_problem(200) is None


def test_refcount_problem_names_the_defect(monkeypatch):
    monkeypatch.setattr(qtcheck, "none_refcount_drift", lambda n: -n * qtcheck.CALLS_PER_ROUND)
    msg = qtcheck.refcount_problem(100)
    assert msg and "PySide6" in msg and "none_dealloc" in msg and "constraints.txt" in msg


def test_gallery_scroll_to_end_and_back_keeps_none_refcount(qtbot, paths, tmp_path):
    """A few hundred real thumbnails in the real main window, scrolled a page at a time to
    the end and back, twice; the second pass (everything loaded and cached) is measured."""
    pytest.importorskip("pytestqt")
    import random

    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QAbstractSlider

    from core.review.labels import record_labels
    from core.models.registry import active_version
    from core.app.sample import generate
    from core.imaging.scan import scan
    from desktop.mainwindow import MainWindow

    # a defective Qt must not abort the test run: hold references to None meanwhile, and make
    # up for the lost ones afterwards (generously: extra references to None are harmless)
    guard = [None] * 1_000_000  # noqa: F841
    start = sys.getrefcount(None)
    drift = 0
    folder = tmp_path / "smears"
    generate(folder, n_per_class=90, seed=11, size=64)  # 360 images
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "tester")
    w = MainWindow(paths, settings=settings, device="cpu")
    qtbot.addWidget(w)
    w.resize(1280, 760)
    w.show()
    qtbot.waitExposed(w)
    try:
        job = scan(w.db, folder)
        for _ in job:
            pass
        rng = random.Random(5)
        with w.db.session() as s:
            version = active_version(s)
            classes = list(version.card["classes"])
            ids = [i for (i,) in s.connection().exec_driver_sql("SELECT id FROM images ORDER BY id")]
            rows = []
            for i in ids:
                probs = [rng.random() for _ in classes]
                total = sum(probs)
                probs = [p / total for p in probs]
                k = max(range(len(classes)), key=probs.__getitem__)
                rows.append((i, version.id, classes[k], probs[k], str(probs), int(probs[k] < 0.4)))
            s.connection().exec_driver_sql(
                "INSERT INTO predictions (image_id, model_version_id, label, confidence, entropy, probabilities, "
                "uncertain, created_at) VALUES (?, ?, ?, ?, 0.5, ?, ?, '2026-11-23 00:00:00.000000')", rows)
            for n, cls in enumerate(classes):  # reviewed badges (agreeing and disagreeing)
                record_labels(s, ids[n::7], cls, "tester")
        assert len(ids) == 360

        w.open_folder(folder, classify=False)
        qtbot.waitUntil(lambda: not w.model.busy, timeout=10000)  # read in a worker
        assert w.model.total == 360
        view, bar = w.view, w.view.verticalScrollBar()

        def one_pass() -> int:
            pages = 0
            while True:  # page down to the end (the model fetches its next page on the way)
                before = (bar.value(), w.model.rowCount())
                bar.triggerAction(QAbstractSlider.SliderPageStepAdd)
                view.viewport().repaint()
                qtbot.wait(5)
                pages += 1
                if (bar.value(), w.model.rowCount()) == before and bar.value() == bar.maximum() and not w.model.busy:
                    break
            while bar.value() > bar.minimum():  # and back up
                bar.triggerAction(QAbstractSlider.SliderPageStepSub)
                view.viewport().repaint()
                qtbot.wait(5)
                pages += 1
            return pages

        one_pass()
        assert w.model.rowCount() == 360
        qtbot.waitUntil(lambda: len(w.loader) >= 300 and not w.loader._pending, timeout=15000)
        gc.collect()
        before = sys.getrefcount(None)
        pages = one_pass()
        gc.collect()
        drift = sys.getrefcount(None) - before
        print(f"\ngallery of 360: {pages} page scrolls, None refcount drift {drift}")
        assert pages >= 6
        assert drift >= -qtcheck.NOISE, f"scrolling the gallery dropped {-drift} references to None"
    finally:
        w.cancel_job()
        w.workers.cancel_all()
        w.workers.wait(10000)
        lost = max(0, start - sys.getrefcount(None)) + 2 * max(0, -drift)
        if lost:
            qtcheck._COMPENSATION.extend([None] * (lost + 10_000))


# ---------------------------------------------------------------------------------------------
# the xcb preflight of `hemascan gui` / `python -m desktop`

X11 = {"DISPLAY": ":0"}


def test_preflight_names_the_packages_to_install():
    missing = {"libxcb-cursor.so.0", "libxcb-icccm.so.4"}
    msg = qtcheck.gui_preflight(X11, load=lambda name: name not in missing, platform="linux")
    assert msg is not None and "\n" not in msg
    assert "sudo apt-get install libxcb-cursor0 libxcb-icccm4" in msg
    assert "libxcb-cursor.so.0" in msg


def test_preflight_passes_when_qt_can_start():
    def ok(name):
        return True

    assert qtcheck.gui_preflight(X11, load=ok, platform="linux") is None
    assert qtcheck.gui_preflight({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, load=ok, platform="linux") is None
    missing = {"libxcb-cursor.so.0"}.__contains__  # not xcb: nothing to check

    def absent(name):
        return not missing(name)

    assert qtcheck.gui_preflight({"QT_QPA_PLATFORM": "offscreen"}, load=absent, platform="linux") is None
    assert qtcheck.gui_preflight({"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0"},
                                 load=absent, platform="linux") is None
    assert qtcheck.gui_preflight(X11, load=absent, platform="win32") is None
    assert "DISPLAY" in qtcheck.gui_preflight({}, load=ok, platform="linux")


def test_gui_command_exits_with_the_message(cli, monkeypatch):
    import desktop.app

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(qtcheck, "can_load", lambda name: name != "libxcb-cursor.so.0")

    def no_qt(*a, **k):
        raise AssertionError("the QApplication must not be started")

    monkeypatch.setattr(desktop.app, "run_gui", no_qt)
    rc, out, err = cli("gui")
    assert rc == qtcheck.EXIT_NO_DISPLAY == 4
    assert "sudo apt-get install libxcb-cursor0" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_python_m_desktop_exits_with_the_message(monkeypatch, capsys):
    import runpy

    import desktop.app

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(qtcheck, "can_load", lambda name: name != "libxcb-keysyms.so.1")
    monkeypatch.setattr(desktop.app, "main", lambda *a: pytest.fail("the QApplication must not be started"))
    monkeypatch.setattr(sys, "argv", ["python -m desktop"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("desktop", run_name="__main__")
    assert exc.value.code == qtcheck.EXIT_NO_DISPLAY
    assert "sudo apt-get install libxcb-keysyms1" in capsys.readouterr().err
