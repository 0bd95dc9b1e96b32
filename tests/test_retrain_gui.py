"""The Retrain dialog driven for real (pytest-qt, offscreen): opened from the main
window's menu, trained in its worker, compared, promoted; cancel. Waits on signals."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

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
    dlg.min_steps.setValue(0)
    dlg.device.setCurrentIndex(dlg.device.findData("cpu"))


def test_retrain_dialog_through_to_promotion(qtbot, window, db, monkeypatch):
    from core.models.registry import active_version

    w = window
    assert w.a_retrain.isEnabled()
    w.a_retrain.trigger()
    dlg = w.retrain_dialog
    assert dlg is not None and not dlg.isModal()
    qtbot.waitUntil(lambda: dlg.data_table.rowCount() == 6, timeout=TIMEOUT)  # 4 classes, Other, total
    assert dlg.data_table.item(5, 1).text() == "48"
    _fast(dlg)
    with qtbot.waitSignal(dlg.runFinished, timeout=TIMEOUT) as done:
        qtbot.mouseClick(dlg.start_btn, Qt.LeftButton)
        assert w.a_open.isEnabled()  # the main window stays usable while it trains
    out = done.args[0]
    assert out["status"] == "completed"
    assert len(dlg.curve_train_loss.getData()[0]) == 2 and len(dlg.curve_val_acc.getData()[0]) == 2
    assert dlg.results.isEnabled() and dlg.comparison.metrics_table.rowCount() >= 7
    assert dlg.comparison.metrics_table.item(0, 0).text() == "Accuracy"
    assert dlg.comparison.cm_new.rowCount() == 4 and dlg.comparison.cm_old.columnCount() == 4
    assert dlg.comparison.changed.rowCount() == out["comparison"]["n_changed"]
    assert dlg.warning.text()  # tiny validation set: says it cannot tell
    with db.session() as s:
        assert active_version(s).name == "tiny-v1"
    # 12 validation images cannot show it is better: Promote asks, says why; No keeps the active one
    asked = []
    monkeypatch.setattr("desktop.retrain_dialog.QMessageBox.exec",
                        lambda box: asked.append(box.text()) or QMessageBox.No)
    qtbot.mouseClick(dlg.promote_btn, Qt.LeftButton)
    assert asked and ("cannot tell the new version from tiny-v1" in asked[0]  # or, a class lost, "worse"
                      or "is worse than tiny-v1" in asked[0]) and "Promote" in asked[0]
    assert dlg.status.text().startswith("Not promoted")
    with db.session() as s:
        assert active_version(s).name == "tiny-v1"
    monkeypatch.setattr("desktop.retrain_dialog.QMessageBox.exec", lambda box: QMessageBox.Yes)
    with qtbot.waitSignal(dlg.promoted, timeout=TIMEOUT):
        qtbot.mouseClick(dlg.promote_btn, Qt.LeftButton)
    with db.session() as s:
        assert active_version(s).name == out["version"]
    qtbot.waitUntil(lambda: w.version["name"] == out["version"], timeout=10_000)  # switched in a worker


def test_retrain_dialog_cancel(qtbot, window, db, paths):
    w = window
    dlg = w.show_retrain()
    qtbot.waitUntil(lambda: dlg.data_table.rowCount() == 6, timeout=TIMEOUT)
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
    settings.setValue("reviewer", "tester")
    w = mw.MainWindow(paths, settings=settings, device="cpu")
    qtbot.addWidget(w)
    assert w.a_retrain.isEnabled()
    dlg = w.show_retrain()
    assert dlg is not None and dlg.isVisible()
    dlg.close()
    w.workers.cancel_all()
    w.workers.wait(10000)


def test_model_panel_measures_every_version_on_the_same_images(qtbot, window, db, paths):
    """The cards' own figures come from different sets (a public test set, a few reviewed
    images) and say so; the panel's comparable column runs every version on the same fixed
    validation images."""
    from core.jobs import run_job
    from desktop.models_panel import ModelsDialog
    from trainer.retrain import RetrainConfig, retrain

    from .test_retrain import FAST

    out = run_job(retrain(db, paths, RetrainConfig(**FAST, int8=False)))
    dlg = ModelsDialog(db, window)
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: dlg.table.rowCount() > 0, timeout=10_000)  # read in a worker
    names = [dlg.table.item(r, 1).text() for r in range(dlg.table.rowCount())]
    col = {dlg.table.horizontalHeaderItem(c).text(): c for c in range(dlg.table.columnCount())}
    same, own = col["On your validation images"], next(c for h, c in col.items() if h.startswith("Card's own"))
    row_new = names.index(out["version"])
    assert f"on {out['data']['n_val']} reviewed validation images" in dlg.table.item(row_new, own).text()
    default = next(r for r, n in enumerate(names) if n.startswith("all-subtype"))
    assert "held-out test images of all-taleqani" in dlg.table.item(default, own).text()
    with qtbot.waitSignal(dlg.measured, timeout=TIMEOUT) as got:
        qtbot.mouseClick(dlg.measure, Qt.LeftButton)
    result = got.args[0]
    n_val = out["data"]["n_val"]
    for name in ("tiny-v1", out["version"], names[default]):  # same taxonomy: the same images
        assert result[name]["n"] == n_val and f"(n={n_val})" in dlg.table.item(names.index(name), same).text()
    binary = next(n for n in names if n.startswith("all-vs-normal"))
    assert result[binary]["n"] == 0  # no reviewed images of its taxonomy
    assert out["comparison"]["new"]["accuracy"] == pytest.approx(result[out["version"]]["accuracy"], abs=0.09)
