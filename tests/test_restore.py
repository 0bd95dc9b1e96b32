"""Issue 14 points 6 and 9 (pytest-qt, offscreen): the reviewer is asked once, at first
launch, and a computer account is not a name; the last folder reopens as it was left
(filters, sort, selected image), with the settings in the data directory."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from sqlalchemy import select  # noqa: E402

from core.storage import LabelEvent  # noqa: E402
from core.review.gallery import UNREVIEWED  # noqa: E402

from .test_desktop import JOB_TIMEOUT  # noqa: E402


def _window(qtbot, paths):
    from desktop.mainwindow import MainWindow

    w = MainWindow(paths, device="cpu")  # default settings: the data directory's desktop.ini
    qtbot.addWidget(w)
    w.resize(1200, 760)
    w.show()
    qtbot.waitExposed(w)
    return w


def _close(w):
    w.close()
    w.workers.wait(10000)


def test_reviewer_is_asked_once_and_root_is_not_a_name(qtbot, paths, tmp_path, monkeypatch):
    from core.app.sample import generate

    answers, prompts = [("root", True), ("  Ana Ruiz ", True)], []

    def get_text(parent, title, prompt, **kw):
        prompts.append(prompt)
        return answers.pop(0)

    monkeypatch.setattr("PySide6.QtWidgets.QInputDialog.getText", get_text)
    w = _window(qtbot, paths)
    qtbot.waitUntil(lambda: w.reviewer == "Ana Ruiz", timeout=5000)
    assert len(prompts) == 2 and "computer account" in prompts[1]
    assert w.reviewer_label.text() == "reviewer: Ana Ruiz"
    generate(tmp_path / "a", n_per_class=1, seed=1)
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        w.open_folder(tmp_path / "a")
    w.label_selected("Benign")
    qtbot.waitUntil(lambda: bool(_reviewers(w)), timeout=5000)
    assert _reviewers(w) == ["Ana Ruiz"]
    _close(w)
    w2 = _window(qtbot, paths)  # the second launch does not ask again
    qtbot.wait(100)
    assert len(prompts) == 2 and w2.reviewer == "Ana Ruiz"
    assert (paths.data_dir / "desktop.ini").is_file()
    _close(w2)


def _reviewers(w):
    with w.db.session() as s:
        return list(s.scalars(select(LabelEvent.reviewer)))


def test_last_folder_reopens_with_its_filters_sort_and_image(qtbot, paths, tmp_path, monkeypatch):
    from core.app.sample import generate

    monkeypatch.setattr("PySide6.QtWidgets.QInputDialog.getText", lambda *a, **k: ("Ana Ruiz", True))
    generate(tmp_path / "a", n_per_class=6, seed=1)
    generate(tmp_path / "b", n_per_class=1, seed=2)
    w = _window(qtbot, paths)
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        w.open_folder(tmp_path / "b")
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        w.open_folder(tmp_path / "a")
    w.sort.setCurrentIndex(w.sort.findData("name"))
    w.f_rev.setCurrentIndex(w.f_rev.findData(UNREVIEWED))
    w.view.setCurrentIndex(w.model.index(17))
    chosen = w.model.row_at(17).image_id
    _close(w)

    w2 = _window(qtbot, paths)
    assert w2.folder is None
    with qtbot.waitSignal(w2.jobFinished, timeout=JOB_TIMEOUT):
        assert w2.reopen_last_folder()
    assert w2.folder == str(tmp_path / "a")
    assert w2.sort.currentData() == "name" and w2.f_rev.currentData() == UNREVIEWED
    assert w2.model.row_at(w2.view.currentIndex().row()).image_id == chosen
    assert w2.detail.title.full == w2.model.row_at(w2.view.currentIndex().row()).name
    # the other folder kept its own view
    with qtbot.waitSignal(w2.jobFinished, timeout=JOB_TIMEOUT):
        w2.open_folder(tmp_path / "b")
    assert w2.f_rev.currentData() is None and w2.sort.currentData() != "name"
    _close(w2)
