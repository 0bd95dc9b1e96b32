"""Window defects of issue 21.5, driven for real (pytest-qt, offscreen): the first Grad-CAM
says it is computing, the status bar names the precision the classification will use before
the first run as after it, the class buttons are rebuilt before the re-classify question is
asked, and save dialogs never open inside the image folder."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from .test_desktop import JOB_TIMEOUT, window  # noqa: E402,F401  (fixture)




@pytest.fixture
def classified(qtbot, window, tmp_path):  # noqa: F811
    from core.app.sample import generate

    folder = tmp_path / "smears"
    generate(folder, n_per_class=1, seed=5)
    with qtbot.waitSignal(window.jobFinished, timeout=JOB_TIMEOUT):
        window.open_folder(folder)
    return folder


def test_grad_cam_says_it_is_computing_while_it_runs(qtbot, window, classified, monkeypatch):  # noqa: F811
    release = threading.Event()

    class SlowGradCam:  # the first map of a model: the explainer takes seconds to build
        def __init__(self, package):
            pass

        def __call__(self, path, *_shown):  # (path, the class shown) once Grad-CAM is told the class
            release.wait(30)
            return None, np.full((7, 7), 0.5, np.float32), 0

    monkeypatch.setattr("desktop.detail_view.GradCam", SlowGradCam)
    w = window
    w.view.setCurrentIndex(w.model.index(0))
    qtbot.waitUntil(lambda: w.detail_pane.full_image is not None, timeout=10_000)
    w.detail.gradcam.setChecked(True)
    try:
        assert w.detail.gradcam_busy.isVisible() and "heat map" in w.detail.gradcam_busy.text()
    finally:
        release.set()
    qtbot.waitUntil(lambda: w.detail.view.has_overlay(), timeout=30_000)
    assert not w.detail.gradcam_busy.isVisible()


def _precision(text: str) -> str | None:
    found = re.search(r"\b(fp32|int8|bf16|fp16)\b", text)
    return found.group(1) if found else None


def test_status_bar_names_the_precision_the_classification_uses_before_and_after(qtbot, window, tmp_path):  # noqa: F811
    from core.app.sample import generate

    w = window
    qtbot.waitUntil(lambda: _precision(w.device_label.text()) is not None, timeout=30_000)
    before = w.device_label.text()
    folder = tmp_path / "smears"
    generate(folder, n_per_class=1, seed=5)
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        w.open_folder(folder)
    after = w.device_label.text()
    assert _precision(before) == _precision(after), (before, after)


def test_class_buttons_are_rebuilt_before_the_reclassify_question(qtbot, window, classified, monkeypatch):  # noqa: F811
    """Switching to a model of another taxonomy asks whether to re-classify the open folder;
    while the question is open, the button bar shows the new model's classes only (the old
    buttons used to stay drawn under and over the new ones until the question closed)."""
    from PySide6.QtWidgets import QAbstractButton, QMessageBox
    from sqlalchemy import select

    from core.storage import ModelVersion

    w = window
    with w.db.session() as s:
        binary = s.scalar(select(ModelVersion).where(ModelVersion.taxonomy == "all_vs_normal"))
        if binary is None:
            pytest.skip("no ALL-vs-normal package under resources/models")
        vid, new_classes = binary.id, list(binary.card["classes"])
    old_only = [c for c in w.ctl.classes if c not in new_classes]
    bar_widget = w.review_bar.parentWidget()
    seen: list[list[str]] = []

    def question(*_args, **_kw):
        seen.append([b.text() for b in bar_widget.findChildren(QAbstractButton) if b.isVisible()])
        return QMessageBox.No

    monkeypatch.setattr("desktop.mainwindow.QMessageBox.question", question)
    with qtbot.waitSignal(w.versionShown, timeout=30_000):  # a cell model: shown in the gallery explicitly
        w.model_menu.use_version(vid)
    qtbot.waitUntil(lambda: bool(seen), timeout=10_000)
    shown = seen[0]
    assert any(c in t for t in shown for c in new_classes), shown
    assert not [t for t in shown if any(c in t for c in old_only)], shown  # no old class button drawn


def test_save_dialogs_open_outside_the_image_folder_then_where_the_last_file_went(qtbot, window, classified,  # noqa: F811
                                                                                  tmp_path, monkeypatch):
    from pathlib import Path

    from PySide6.QtWidgets import QFileDialog, QInputDialog

    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    reports = tmp_path / "reports"
    reports.mkdir()
    offered: list[Path] = []

    def save_dialog(_parent, _title, start, _filter):
        offered.append(Path(start))
        return str(reports / Path(start).name), _filter

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(save_dialog))
    monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *_a, **_k: ("case 1", True)))
    w = window
    images = Path(classified).resolve()
    with qtbot.waitSignal(w.reportWritten, timeout=30_000):
        w.exports.export_csv()
    first = offered[0].parent.resolve()
    assert first != images and images not in first.parents, first  # never inside the image folder
    assert first == (home / "Documents").resolve()
    with qtbot.waitSignal(w.reportWritten, timeout=30_000):
        w.exports.export_pdf()
    assert offered[1].parent == reports  # the folder the reviewer saved to last
