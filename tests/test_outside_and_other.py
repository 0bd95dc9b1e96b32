"""The desktop shows the third state (outside the model's experience) and takes the reserved
"Other / not assessable" label, for real (pytest-qt, offscreen, the bundled model, which has a
foreign-image guard; the synthetic sample images are foreign to it)."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QColor  # noqa: E402
from sqlalchemy import select  # noqa: E402

from core.storage import LabelEvent  # noqa: E402
from core.models.taxonomy import OTHER  # noqa: E402

from .test_desktop import JOB_TIMEOUT, key, settle, window  # noqa: E402,F401  (fixture)


def _outside_band_pixels(w) -> int:
    from desktop.gallery import OUTSIDE_BAND

    img = w.view.viewport().grab().toImage()
    target = QColor(OUTSIDE_BAND).rgb()
    return sum(1 for y in range(0, img.height(), 2) for x in range(0, img.width(), 2) if img.pixel(x, y) == target)


def test_outside_images_are_marked_filtered_counted_and_can_be_called_other(qtbot, window, tmp_path, monkeypatch):  # noqa: F811
    from core.app.sample import generate

    w = window
    folder = tmp_path / "synthetic"
    generate(folder, n_per_class=2, seed=3)
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        w.open_folder(folder)
    rows = [w.model.row_at(r) for r in range(w.model.rowCount())]
    assert len(rows) == 8 and all(r.outside for r in rows)  # drawn, not smears: foreign to the model
    qtbot.waitUntil(lambda: _outside_band_pixels(w) > 200, timeout=5000)  # the tiles carry the outside mark
    qtbot.waitUntil(lambda: ">8<" in w.counts.text().replace("</td>", "<").replace("'right'>", ">"), timeout=5000)
    counts = w.counts.text()
    assert "Outside experience" in counts and ">8<" in counts.replace("</td>", "<").replace("'right'>", ">")
    # the detail view says why the class is not reliable and where the model's images came from
    w.view.setCurrentIndex(w.model.index(0))
    text = w.detail.summary.text()
    assert "Outside this model's experience" in text and "all-taleqani" in text and "not reliable" in text
    assert "not meaningful" in w.detail.summary.text()

    # "Other": key O, then Shift+O with a note; stored as label events like any other
    key(qtbot, w, Qt.Key_O)
    monkeypatch.setattr("PySide6.QtWidgets.QInputDialog.getText", lambda *a, **k: ("smudge cell", True))
    w.view.setCurrentIndex(w.model.index(1))
    key(qtbot, w, Qt.Key_O, Qt.ShiftModifier)
    assert w.label_writer.flush(10)  # written by the writer's thread
    with w.db.session() as s:
        evs = [(e.label, e.note) for e in s.scalars(select(LabelEvent).order_by(LabelEvent.id))]
    assert evs == [(OTHER, None), (OTHER, "smudge cell")]
    w._update_counts()
    qtbot.waitUntil(lambda: "Other / not assessable" in w.counts.text(), timeout=5000)

    # filters: outside only keeps all 8; reviewed "Other" keeps the two
    w.f_outside.setChecked(True)
    settle(qtbot, w)
    assert w.model.rowCount() == 8
    w.f_outside.setChecked(False)
    w.f_rev.setCurrentIndex(w.f_rev.findData(OTHER))
    settle(qtbot, w)
    assert w.model.rowCount() == 2
