"""Issue 20.6, the window's side: models are shared across seats. The window classifies with
the version it shows (never one another seat made active meanwhile), says when another seat
activated another version, and switches only when the reviewer asks. On both engines."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from sqlalchemy import select  # noqa: E402

from core.storage import Prediction  # noqa: E402
from tests.conftest import url_arg  # noqa: E402

from .test_desktop import JOB_TIMEOUT  # noqa: E402


def test_another_seats_activation_is_said_and_the_window_keeps_its_version(qtbot, db_url, paths, sample_folder,
                                                                          tmp_path, monkeypatch):
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QMessageBox

    from core.app.bootstrap import open_database
    from core.config import resolve_paths
    from core.models.registry import activate, list_versions
    from desktop.mainwindow import MainWindow

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "Ana Ruiz")
    w = MainWindow(paths, db_url=url_arg(db_url), settings=settings, device="cpu")
    qtbot.addWidget(w)
    w.activations.timer.setInterval(100)
    shown, shown_id = w.version["name"], w.version["id"]
    seat_b = open_database(resolve_paths(tmp_path / "seat-b").ensure(), db_url)  # another workstation
    try:
        with seat_b.session() as s:
            other = next(v.name for v in list_versions(s) if v.name != shown)
        activate(seat_b, other, "dr.ben")
        notice = w.filters.model_notice
        qtbot.waitUntil(lambda: not notice.isHidden(), timeout=10_000)
        assert f"Model {other} was made active by dr.ben" in notice.text()
        assert f"still shows and classifies with {shown}" in notice.text()
        assert "not in this window" in w.statusBar().currentMessage()
        assert w.version["name"] == shown  # never switched silently mid-review

        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT) as done:  # classify: the version shown
            w.open_folder(sample_folder)
        assert done.args[0].model == shown and done.args[0].n_predicted > 0
        with seat_b.session() as s:
            assert set(s.scalars(select(Prediction.model_version_id))) == {shown_id}
        assert all(w.model.row_at(r).predicted for r in range(w.model.rowCount()))  # no empty tiles

        asked = []  # switching with a folder open asks before re-classifying it (as the model panel does)
        monkeypatch.setattr("desktop.mainwindow.QMessageBox.question",
                            lambda *a, **k: asked.append(a[2]) or QMessageBox.No)
        with qtbot.waitSignal(w.versionShown, timeout=10_000):  # the reviewer asks for it
            notice.linkActivated.emit("use")
        assert asked and other in asked[0]
        assert w.version["name"] == other
        qtbot.waitUntil(lambda: notice.isHidden(), timeout=10_000)
    finally:
        w.close()
        seat_b.dispose()
