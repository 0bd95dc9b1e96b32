"""What the issue-21 walkthrough (docs/walkthrough.md, "Walkthrough for issue 21") still found in
the Retrain dialog and the Models dialog, driven for real (pytest-qt, offscreen) on tiny models:
after learning the bar is busy and says what happens (never 0% with "0:00 left"); the comparison
speaks plainly; re-classifying a folder mostly outside the model's experience is not ticked; the
Done line gives the whole run's time; at the default size the Total row and every comparison row
are in view; the Models dialog shows what a retrain measured and cuts nothing off; a class
without validation images has no recall (null in the card, "n/a" everywhere)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QRect, Qt  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from .test_retrain_dialog import CLASSES, TIMEOUT, _predict_folder, guarded, window  # noqa: E402,F401


def _comparison(y, new_pred, old_pred, **kw) -> dict:
    from trainer.retrain import compare_predictions

    eye = np.eye(4) * 0.9 + 0.025
    cmp = compare_predictions(np.asarray(y), eye[np.asarray(new_pred)], eye[np.asarray(old_pred)], CLASSES,
                              n_boot=300)
    cmp.update(old_name="parent-v1", new_name="parent-v1-retrain1", **kw)
    return cmp


def _a_comparison() -> dict:
    """12 validation images of all 4 classes: the new version fixes one, breaks none."""
    y = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    return _comparison(y, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 0], [0, 0, 0, 1, 1, 1, 2, 2, 0, 3, 3, 0])


# ---- 1 (and 4). after learning: a busy bar, a plain sentence; the Done line's whole-run time --------

def test_after_learning_the_bar_is_busy_and_says_what_it_does(qtbot, window):  # noqa: F811
    dlg = window.show_retrain()
    qtbot.waitUntil(lambda: dlg.data_table.rowCount() == 6, timeout=TIMEOUT)
    dlg.device.setCurrentIndex(dlg.device.findData("cpu"))
    seen: list[dict] = []
    on_progress = dlg._on_progress

    def record(p):  # the dialog as each Progress left it
        on_progress(p)
        seen.append({"stage": p.stage, "done": p.done, "total": p.total, "step": (p.extra or {}).get("step"),
                     "bar": (dlg.progress.minimum(), dlg.progress.maximum(), dlg.progress.value()),
                     "eta": dlg.eta.text(), "status": dlg.status.text()})

    dlg._on_progress = record
    with qtbot.waitSignal(dlg.runFinished, timeout=TIMEOUT) as done:
        dlg.start()
    out = done.args[0]
    assert out["status"] == "completed"
    after = [r for r in seen if r["stage"] == "package" and not (r["total"] and r["done"] >= r["total"])]
    assert {"save", "guard", "lab", "register"} <= {r["step"] for r in after}, after
    for r in after:  # a busy bar, no stale time left: never a 0% that does not move
        assert r["bar"][:2] == (0, 0) and r["eta"] == "", r
    n_lab = 4 * 12 + 8  # the lab's images: the fixture's 48 smears and its 8 "Other" ones
    lab = next(r for r in after if r["step"] == "lab")
    assert lab["status"] == f"Checking the new version on {n_lab} of your lab's images…", lab
    guard = next(r for r in after if r["step"] == "guard")
    assert guard["status"].startswith("Teaching the new version") and "guard" not in guard["status"]
    # the Done line: the whole run's time, not learning's alone
    from desktop.retrain_dialog import duration

    text = dlg.status.text()
    assert text.startswith(f"Done in {duration(out['seconds'])} ") and "learnt in" not in text, text
    assert f"learning took {duration(out['train_seconds'])}" in text


def test_done_line_says_the_whole_runs_time(qtbot, window):  # noqa: F811
    """The walkthrough's run: about 2 minutes in all, 9 s of it learning."""
    dlg = window.show_retrain()
    out = {"status": "completed", "version": "parent-v1-retrain1", "parent": "parent-v1", "parent_id": 1,
           "train_seconds": 9.2, "seconds": 125.4, "device": "cpu", "comparison": _a_comparison(),
           "data": {"n_train": 42, "n_val": 12, "min_per_class": 10, "too_few": [],
                    "per_class": {c: {"train": 10, "base": 0} for c in CLASSES}}}
    dlg._on_result(out)
    text = dlg.status.text()
    assert text.startswith("Done in 2 min 5 s on this computer's processor (learning took 9 s"), text
    assert "learnt in 9 s" not in text


# ---- 2. the comparison in plain words ---------------------------------------------------------

JARGON = re.compile(r"bootstrap|\bCI\b|macro|\bECE\b|Confidence error", re.IGNORECASE)


def test_the_comparison_speaks_plainly(qtbot, window):  # noqa: F811
    dlg = window.show_retrain()
    dlg.show_comparison(_a_comparison(), "parent-v1", "parent-v1-retrain1")
    view, t = dlg.comparison, dlg.comparison.metrics_table
    shown = [t.item(r, 0).text() for r in range(t.rowCount())]
    shown += [view.diff_label.text(), view.warning.text()]
    shown += [view.tabs.tabText(i) for i in range(view.tabs.count())]
    assert not [s for s in shown if JARGON.search(s)], shown
    diff = view.diff_label.text()
    assert "95% range of the difference: could be from " in diff and " points" in diff, diff
    assert "95% range of the difference" in view.warning.text()  # too few images: says so, plainly
    from trainer.retrain import promotion_advice

    why = promotion_advice(_a_comparison())[1]
    assert "95% range of the difference: could be from" in why and not JARGON.search(why), why


# ---- 3. re-classify is ticked only for a folder mostly inside the model's experience --------

def _flag_outside(db, folder: Path, version_name: str, n_outside: int) -> None:
    from sqlalchemy import select

    from core.imaging.scan import images_under
    from core.storage import ModelVersion
    from core.storage.orm import Prediction

    with db.session() as s:
        vid = s.scalar(select(ModelVersion.id).where(ModelVersion.name == version_name))
        ids = sorted(i for i, _ in images_under(s, folder))
        for k, image_id in enumerate(ids):
            p = s.scalar(select(Prediction).where(Prediction.image_id == image_id,
                                                  Prediction.model_version_id == vid))
            p.out_of_distribution = k < n_outside


def test_reclassify_is_not_ticked_for_a_folder_mostly_outside_the_models_experience(qtbot, window, db, guarded):  # noqa: F811
    _predict_folder(db, guarded, "tiny-guarded")  # classified by the parent (same taxonomy)...
    _flag_outside(db, guarded, "tiny-guarded", 40)  # ...but 40 of its 48 images are outside its experience
    window.open_folder(guarded, classify=False)
    dlg = window.show_retrain()
    qtbot.waitUntil(lambda: "outside what this model knows" in dlg.reclassify.text(), timeout=30_000)
    assert dlg.reclassify.isEnabled() and not dlg.reclassify.isChecked()  # offered, not ticked
    assert "most of its images, 40 of 48, are outside what this model knows" in dlg.reclassify.text()
    dlg.close()
    qtbot.waitUntil(lambda: window.retrain_dialog is None, timeout=TIMEOUT)

    _flag_outside(db, guarded, "tiny-guarded", 3)  # mostly inside: ticked
    dlg = window.show_retrain()
    qtbot.waitUntil(lambda: dlg.reclassify.isChecked(), timeout=TIMEOUT)
    assert dlg.reclassify.text() == "Re-classify smears with it"


# ---- 5. at the default size the Total row and every comparison row are in view ---------------

def _rows_in_view(t) -> list[int]:
    """The rows of table ``t`` shown whole in its viewport."""
    view = t.viewport().rect()
    return [r for r in range(t.rowCount()) if view.contains(t.visualItemRect(t.item(r, 0)))]


def test_default_size_shows_the_total_row_and_every_comparison_row(qtbot, window):  # noqa: F811
    dlg = window.show_retrain()
    qtbot.waitUntil(lambda: dlg.data_table.rowCount() == 6, timeout=TIMEOUT)
    dlg.show_comparison(_a_comparison(), "parent-v1", "parent-v1-retrain1")
    dlg.show()
    qtbot.waitExposed(dlg)
    QApplication.processEvents()
    assert dlg.width() <= 1360 and dlg.height() <= 860 - 30  # fits the window's size, title bar included
    t = dlg.data_table
    assert _rows_in_view(t) == list(range(t.rowCount())), "the Total row (or a class) is behind a scroll bar"
    assert t.item(t.rowCount() - 1, 0).text() == "Total"
    m = dlg.comparison.metrics_table
    assert m.rowCount() == 3 + 4 + 1
    assert _rows_in_view(m) == list(range(m.rowCount())), "comparison rows are behind a scroll bar"
    def on_dialog(w) -> QRect:
        return QRect(w.mapTo(dlg, w.rect().topLeft()), w.size())

    for table in (t, m):  # and the tables themselves are within the dialog
        assert dlg.rect().contains(on_dialog(table)), table
    for label in (dlg.comparison.diff_label, dlg.comparison.warning):  # its sentences whole, not over the table
        assert not on_dialog(label).intersects(on_dialog(m)), label.text()
        assert label.height() >= label.heightForWidth(label.width()), label.text()


# ---- 6. the Models dialog: what the retrain measured; nothing cut off -----------------------

def test_models_dialog_shows_the_retrains_figures_and_cuts_nothing_off(qtbot, db, paths, tmp_path):
    from core.models.package import save_package
    from core.models.registry import register_package
    from desktop.models_panel import ModelsDialog

    from .test_retrain_trust_window import CHILD, PARENT, _cards, _tiny_weights

    cmp = _comparison([0, 0, 1, 1, 2, 2, 3], [0, 0, 1, 0, 2, 3, 3], [0, 0, 1, 1, 2, 3, 3])
    with db.session() as s:
        for card in _cards():
            if card.name == CHILD:  # what a retrain keeps of its comparison (retrain._comparison_brief)
                card.metrics["comparison"] = {k: v for k, v in cmp.items() if k != "changed"}
                card.metrics["comparison"].update(old_name=PARENT, new_name=CHILD)
            save_package(tmp_path / card.name, _tiny_weights(), card)
            register_package(s, paths, tmp_path / card.name, activate=card.name == PARENT)
    dlg = ModelsDialog(db)
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.waitExposed(dlg)
    qtbot.waitUntil(lambda: dlg.table.rowCount() >= 2, timeout=TIMEOUT)
    QApplication.processEvents()
    t = dlg.table
    names = [t.item(r, 1).text() for r in range(t.rowCount())]
    same = dlg.SAME_BASIS
    child, parent = t.item(names.index(CHILD), same).text(), t.item(names.index(PARENT), same).text()
    assert "not measured" not in child and "not measured" not in parent
    assert child.startswith(f"accuracy {cmp['new']['accuracy']:.3f}") and "7 validation images" in child, child
    assert parent.startswith(f"accuracy {cmp['old']['accuracy']:.3f}") and "same 7 validation images" in parent
    # every figure shown whole at the default size: within the table's width, rows tall enough
    fm = t.fontMetrics()
    for c in (dlg.SAME_BASIS, dlg.FIGURES):
        assert t.columnViewportPosition(c) + t.columnWidth(c) <= t.viewport().width(), c
        for r in range(t.rowCount()):
            text = t.item(r, c).text()
            need = fm.boundingRect(QRect(0, 0, t.columnWidth(c) - 8, 10_000), Qt.TextWordWrap, text).height()
            assert need <= t.rowHeight(r), (r, c, text, need, t.rowHeight(r))
    dlg.close()


# ---- 7. a class without validation images: no recall (null), "n/a" everywhere --------------

def test_a_class_without_validation_images_has_no_recall_anywhere(qtbot, window):  # noqa: F811
    from core.models.figures import own_figures
    from trainer.retrain import _comparison_brief, comparison_table, promotion_advice, recall_losses

    # no validation image of Pro-B; the new version loses Pre-B
    cmp = _comparison([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 2, 2])
    assert cmp["new"]["recall"]["Pro-B"] is None and cmp["old"]["recall"]["Pro-B"] is None
    stored = json.loads(json.dumps(_comparison_brief(cmp)))  # as the card and the run keep it
    assert stored["new"]["recall"]["Pro-B"] is None and stored["new"]["recall"]["Pre-B"] == 0.0
    # the CLI's table
    line = next(x for x in comparison_table(stored).splitlines() if x.startswith("recall Pro-B"))
    assert line.split()[-2:] == ["n/a", "n/a"], line
    # promotion: Pre-B is lost, Pro-B (no images) is not
    assert recall_losses(stored) == ["Pre-B recall 1.000 -> 0.000 (2 images)"]
    assert "Pro-B" not in promotion_advice(stored)[1]
    # a card written before null (0.0 with no image) reads the same
    old_style = json.loads(json.dumps(stored))
    old_style["new"]["recall"]["Pro-B"] = old_style["old"]["recall"]["Pro-B"] = 0.0
    assert recall_losses(old_style) == recall_losses(stored)
    assert "Pro-B" not in own_figures({"metrics": {"val_accuracy": 0.5, "validation": old_style["new"]}})["recall"]
    # the dialog: n/a, even where the support is not stored
    del stored["new"]["support"], stored["old"]["support"]
    dlg = window.show_retrain()
    dlg.show_comparison(stored, "parent-v1", "parent-v1-retrain1")
    t = dlg.comparison.metrics_table
    cells = {t.item(r, 0).text(): (t.item(r, 1).text(), t.item(r, 2).text()) for r in range(t.rowCount())}
    assert cells["Recall Pro-B"] == ("n/a", "n/a") and cells["Recall Pre-B"] == ("1.000", "0.000")
