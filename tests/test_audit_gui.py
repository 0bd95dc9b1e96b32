"""Issue 24, item 2: Help ▸ About shows the audit record's check, read on the workers (the
autouse fixture fails the test if the check ran on the GUI thread)."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from sqlalchemy import select, text  # noqa: E402

from core.storage import ModelActivation  # noqa: E402
from core.storage.audit import protect_table, unprotect_table  # noqa: E402
from tests.test_desktop import close_window, open_window  # noqa: E402


def _about(qtbot, w) -> str:
    with qtbot.waitSignal(w.help_menu.audit_checked, timeout=20_000) as blocker:
        w.help_menu.show_about()
    assert w.help_menu.about_box.text().count(blocker.args[0].replace("'", "&#x27;")) == 1
    text_shown = w.help_menu.about_box.text()
    w.help_menu.about_box.close()
    return text_shown


def test_about_shows_whether_the_audit_record_verifies(qtbot, paths, tmp_path):
    w = open_window(qtbot, paths, tmp_path)
    try:
        assert "the audit record is whole" in _about(qtbot, w)
        with w.db.session() as s:  # the set-up's activation of the bundled models
            first = s.scalar(select(ModelActivation.id).order_by(ModelActivation.id))
        with w.db.engine.begin() as c:  # an edit around the triggers (anyone holding the SQLite file can)
            unprotect_table(c, "model_activations")
            c.execute(text("UPDATE model_activations SET activated_by = 'someone else' WHERE id = :i"), {"i": first})
            protect_table(c, "model_activations")
        shown = _about(qtbot, w)
        assert f"does not verify at model_activations #{first}" in shown and "changed after it was written" in shown
    finally:
        close_window(w)
