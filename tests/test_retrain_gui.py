"""The Retrain dialog driven for real (pytest-qt, offscreen): opened from the main
window's menu, trained in its worker, compared, promoted; cancel. Waits on signals."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from .test_retrain import registered_names, labelled, tiny_package  # noqa: E402,F401  (fixtures)

TIMEOUT = 60_000


@pytest.fixture
def window(qtbot, paths, tmp_path, labelled):  # noqa: F811
    from desktop.mainwindow import MainWindow

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "tester")
    w = MainWindow(paths, settings=settings, device="cpu")
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.cancel_job()
    w.workers.cancel_all()
    w.workers.wait(10000)


def _fast(dlg):
    dlg.epochs.setValue(2)
    dlg.device.setCurrentIndex(dlg.device.findData("cpu"))


def test_retrain_dialog_through_to_promotion(qtbot, window, db):
    from core.registry import active_version

    w = window
    assert w.a_retrain.isEnabled()
    w.a_retrain.trigger()
    dlg = w.retrain_dialog
    assert dlg is not None and not dlg.isModal()
    qtbot.waitUntil(lambda: dlg.data_table.rowCount() == 5, timeout=TIMEOUT)  # 4 classes + total
    assert dlg.data_table.item(4, 1).text() == "48"
    _fast(dlg)
    with qtbot.waitSignal(dlg.runFinished, timeout=TIMEOUT) as done:
        qtbot.mouseClick(dlg.start_btn, Qt.LeftButton)
        assert w.a_open.isEnabled()  # the main window stays usable while it trains
    out = done.args[0]
    assert out["status"] == "completed"
    assert len(dlg.curve_train_loss.getData()[0]) == 2 and len(dlg.curve_val_acc.getData()[0]) == 2
    assert dlg.results.isEnabled() and dlg.metrics_table.rowCount() >= 7
    assert dlg.metrics_table.item(0, 0).text() == "Accuracy"
    assert dlg.cm_new.rowCount() == 4 and dlg.cm_old.columnCount() == 4
    assert dlg.changed.rowCount() == out["comparison"]["n_changed"]
    assert dlg.warning.text()  # tiny validation set: says it cannot tell
    with db.session() as s:
        assert active_version(s).name == "tiny-v1"
    with qtbot.waitSignal(dlg.promoted, timeout=TIMEOUT):
        qtbot.mouseClick(dlg.promote_btn, Qt.LeftButton)
    with db.session() as s:
        assert active_version(s).name == out["version"]
    assert w.version["name"] == out["version"]


def test_retrain_dialog_cancel(qtbot, window, db, paths):
    w = window
    dlg = w.show_retrain()
    qtbot.waitUntil(lambda: dlg.data_table.rowCount() == 5, timeout=TIMEOUT)
    _fast(dlg)
    dlg.epochs.setValue(50)
    dlg.runStarted.connect(dlg.cancel)  # cancel as soon as it starts
    with qtbot.waitSignal(dlg.runFinished, timeout=TIMEOUT) as done:
        dlg.start()
    assert done.args[0]["status"] == "cancelled"
    assert not dlg.promote_btn.isEnabled()
    assert sorted(p.name for p in paths.models.iterdir()) == registered_names(db)  # no new package


def test_retrain_works_without_torchvision(qtbot, paths, tmp_path, monkeypatch):
    """The CPU-only installer has no torchvision (issue 13.3): Retrain… is enabled and opens
    its dialog with ``import torchvision`` failing, as it does there."""
    import sys

    from PySide6.QtCore import QSettings

    import desktop.mainwindow as mw

    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` raises ImportError
    settings = QSettings(str(tmp_path / "no-torchvision.ini"), QSettings.IniFormat)
    w = mw.MainWindow(paths, settings=settings, device="cpu")
    qtbot.addWidget(w)
    assert w.a_retrain.isEnabled()
    dlg = w.show_retrain()
    assert dlg is not None and dlg.isVisible()
    dlg.close()
    w.workers.cancel_all()
    w.workers.wait(10000)
