"""Issue 20.6, the window's side: models are shared across seats. The window classifies with
the version it shows (never one another seat made active meanwhile), says when another seat
activated another version, and switches only when the reviewer asks. On both engines."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from sqlalchemy import select  # noqa: E402

from core.storage import ModelVersion, Prediction  # noqa: E402
from tests.conftest import url_arg  # noqa: E402

from .test_desktop import JOB_TIMEOUT  # noqa: E402


def _register_field_copy(db, tmp_path) -> str:
    import json
    import shutil

    from core.models.registry import bundled_default_package, register_package

    dest = tmp_path / "another-field-model"
    shutil.copytree(bundled_default_package(), dest)
    card = json.loads((dest / "card.json").read_text())
    card["name"] = "another-field-model-v1"
    (dest / "card.json").write_text(json.dumps(card))
    with db.session() as s:
        return register_package(s, db.paths, dest).name


def test_another_seats_cell_model_activation_is_no_news_to_the_gallery(qtbot, db_url, paths, tmp_path):
    from PySide6.QtCore import QSettings

    from core.app.bootstrap import open_database
    from core.config import resolve_paths
    from core.models.registry import activate, register_package
    from desktop.mainwindow import MainWindow

    from .test_model_kinds import CELL_PACKAGE, _renamed_copy

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "Ana Ruiz")
    w = MainWindow(paths, db_url=url_arg(db_url), settings=settings, device="cpu")
    qtbot.addWidget(w)
    w.activations.timer.setInterval(100)
    shown = w.version["name"]
    seat_b = open_database(resolve_paths(tmp_path / "seat-b").ensure(), db_url)
    try:
        with seat_b.session() as s:
            cell = register_package(s, seat_b.paths, _renamed_copy(CELL_PACKAGE, tmp_path / "c2", "cell-two-v1"))
            cell_id = cell.id
        activate(seat_b, "cell-two-v1", "dr.cell")
        qtbot.waitUntil(lambda: w.activations.latest is not None, timeout=10_000)
        n_polls = []
        w.activations.poller.result.connect(n_polls.append)
        qtbot.waitUntil(lambda: len(n_polls) >= 3, timeout=10_000)  # polls that have read the cell activation
        assert w.activations.latest.version_id != cell_id  # the watch follows the field model only
        assert w.filters.model_notice.isHidden() and w.version["name"] == shown
    finally:
        w.close()
        seat_b.dispose()


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
            cell = next(v.name for v in list_versions(s) if v.input_kind == "cell")
        activate(seat_b, cell, "dr.cell")  # the other seat's cell model: no news to this window's gallery
        other = _register_field_copy(seat_b, tmp_path)
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
            # the field models' predictions (the active cell model also classifies the single-cell crops)
            assert set(s.scalars(select(Prediction.model_version_id)
                                 .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                                 .where(ModelVersion.input_kind == "field"))) == {shown_id}
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
