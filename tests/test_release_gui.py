"""Issue 24 in the window (pytest-qt, real widgets, offscreen): Release case records the release
with the PDF's SHA-256; a key on the released case asks for the amendment's reason and records
it; on a lab server a reviewer login's window has Release disabled, saying why."""
from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QInputDialog  # noqa: E402
from sqlalchemy import select  # noqa: E402

from core.storage import LabelEvent, ReleaseEvent  # noqa: E402
from tests.test_desktop import JOB_TIMEOUT, close_window, key, open_window, settle  # noqa: E402
from tests.test_roles_pg import lab  # noqa: E402,F401  (fixture)


def test_release_from_the_window_then_a_key_asks_for_the_amendment_reason(qtbot, paths, tmp_path, monkeypatch):
    from core.app.sample import generate

    w = open_window(qtbot, paths, tmp_path)
    try:
        folder = tmp_path / "smears"
        generate(folder, n_per_class=2, seed=5)
        with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
            w.open_folder(folder)
        settle(qtbot, w)
        qtbot.waitUntil(lambda: w.identity is not None, timeout=10_000)
        assert w.a_release.isEnabled()  # one user on SQLite: every right
        pdf = tmp_path / "released.pdf"
        with qtbot.waitSignal(w.exports.released, timeout=60_000):
            w.release_case(str(pdf))
        with w.db.session() as s:
            (event,) = s.scalars(select(ReleaseEvent)).all()
            assert event.pdf_sha256 == hashlib.sha256(pdf.read_bytes()).hexdigest()
            assert event.display_name == "tester"
        asked: list[str] = []
        monkeypatch.setattr(QInputDialog, "getText",
                            lambda parent, title, text, *a, **k: (asked.append(text), ("a wrong key at first", True))[1])
        settle(qtbot, w)
        w.view.setCurrentIndex(w.model.index(0))
        key(qtbot, w, Qt.Key_2)

        def amended():
            with w.db.session() as s:
                return s.scalars(select(LabelEvent).where(LabelEvent.amend_reason.is_not(None))).all()

        qtbot.waitUntil(lambda: bool(amended()), timeout=20_000)
        assert "released" in asked[0] and "Reason for the amendment" in asked[0]
        (ev,) = amended()
        assert (ev.label, ev.amend_reason, ev.reviewer) == ("Early Pre-B", "a wrong key at first", "tester")
    finally:
        close_window(w)


def test_a_reviewer_logins_window_cannot_release_and_says_why(qtbot, lab, tmp_path):  # noqa: F811
    from core.config import resolve_paths
    from desktop.mainwindow import MainWindow

    urls, alice, _bob = lab
    settings = QSettings(str(tmp_path / "alice.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "tester")
    w = MainWindow(resolve_paths(tmp_path / "alice-data").ensure(), db_url=urls["alice"], settings=settings,
                   device="cpu")
    qtbot.addWidget(w)
    try:
        w.state.folder = str(tmp_path)  # any folder open: the action waits only on the right
        w._update_actions()
        qtbot.waitUntil(lambda: w.identity is not None, timeout=10_000)
        assert w.identity.login == alice and not w.a_release.isEnabled()
        assert "hemascan_supervisor" in w.a_release.toolTip()
        assert f"login {alice}" in w.reviewer_label.text()
    finally:
        close_window(w)
