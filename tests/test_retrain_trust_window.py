"""Issue 21.3 ("a retrain can quietly make things worse") on the window's side, driven for
real (pytest-qt, offscreen): the Models dialog and the PDF report keep the parent's test
figures beside a retrained version's own, each with its basis, and say when a version runs
fp32 and why; Promote on a worse version says "worse" and names the class lost; Grad-CAM
explains the class the image shows, not the fp32 model's own top class.

The retrained version here is registered with the card trainer/retrain.py writes (its own
figures on a few reviewed validation images, ``metrics.parent`` with the parent's test
figures, ``int8`` with the reason it has no int8 model): the trainer's side is
tests/test_retrain_trust.py; these tests need no training, so they take seconds."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from core.app.sample import generate  # noqa: E402
from core.imaging.scan import images_under, scan  # noqa: E402
from core.jobs import run_job  # noqa: E402
from core.models.package import ModelCard, save_package, verify_package  # noqa: E402
from core.models.registry import active_version, register_package  # noqa: E402
from trainer.quantize import _write_card  # noqa: E402

from .test_desktop import close_window, open_window  # noqa: E402
from .test_retrain import CLASSES, tiny_package  # noqa: E402

DEFAULT_CARD = Path(__file__).resolve().parents[1] / "resources" / "models" / "default" / "card.json"
PARENT, CHILD = "tested-v1", "tested-v1-retrain1"
INT8_REASON = "only 48 images to check it on, at least 200 needed"
TIMEOUT = 30_000


def _tiny_weights():
    import torch

    from core.models.architectures import build

    torch.manual_seed(0)
    return build("seed_baseline", 4).state_dict()


def _cards() -> tuple[ModelCard, ModelCard]:
    """A trained parent (the shipped model's test figures on 549 held-out images) and the
    version retrained from it, with the card a retrain writes."""
    default = json.loads(DEFAULT_CARD.read_text())
    prep = {"input_size": 40, "interpolation": "area"}
    as_is = default["metrics"]["as_is"]
    parent = ModelCard(name=PARENT, architecture="seed_baseline", taxonomy="all_subtype", classes=CLASSES,
                       preprocessing=prep, metrics={"split": default["metrics"]["split"], "as_is": as_is},
                       training_data={"source": "all-taleqani", "n_images": 2770,
                                      "split": default["metrics"]["split"]})
    validation = {"accuracy": 4 / 7, "macro_f1": 0.5,
                  "recall": {"Benign": 1.0, "Early Pre-B": 0.5, "Pre-B": 0.5, "Pro-B": 0.0},
                  "support": {"Benign": 2, "Early Pre-B": 2, "Pre-B": 2, "Pro-B": 1}}
    child = ModelCard(
        name=CHILD, architecture="seed_baseline", taxonomy="all_subtype", classes=CLASSES, preprocessing=prep,
        parent=PARENT,
        metrics={"split": "reviewed labels, fixed train/val by content hash",
                 "val_accuracy": validation["accuracy"], "val_macro_f1": validation["macro_f1"],
                 "validation": validation, "comparison": {"n": 7},
                 # core.models.figures.parent_record of the parent's card, as retrain keeps it
                 "parent": {"name": PARENT, "kind": "test", "accuracy": as_is["accuracy"],
                            "macro_f1": as_is["macro_f1"], "n": 549,
                            "recall": {c: v["recall"] for c, v in as_is["per_class"].items()},
                            "basis": "on 549 held-out test images of all-taleqani (held-out patients)"}},
        training_data={"source": "hemascan database: reviewed labels (latest event per image, sources human)"},
        # no int8 model shipped: the CPU runs fp32 (trainer/retrain.py _note_fp32)
        int8={"accepted": False, "reason": INT8_REASON, "agreement": 1.0, "n_checked": 48})
    return parent, child


def register_retrained(db, paths, tmp: Path, active: str) -> dict[str, int]:
    """Register the parent and its retrained version; ``active`` names the one made active."""
    ids = {}
    with db.session() as s:
        for card in _cards():
            int8 = card.int8
            save_package(tmp / card.name, _tiny_weights(), card)  # (writes no int8 record: none made yet)
            if int8:  # then the trainer notes in the card why there is no int8 model (retrain._note_fp32)
                saved = verify_package(tmp / card.name)
                saved.int8 = int8
                _write_card(tmp / card.name, saved)
            ids[card.name] = register_package(s, paths, tmp / card.name, activate=card.name == active).id
    return ids


def store_predictions(db, folder: Path, version_id: int, label_of) -> dict[int, str]:
    """A prediction of ``version_id`` for every image under ``folder``, with the class
    ``label_of(path)`` (as an int8 classification would have stored it): image id -> class."""
    from core.storage.orm import Prediction

    out = {}
    with db.session() as s:
        for image_id, path in images_under(s, folder):
            label = label_of(path)
            probs = [0.9 if c == label else 0.1 / 3 for c in CLASSES]
            s.add(Prediction(image_id=image_id, model_version_id=version_id, label=label, confidence=0.9,
                             entropy=0.4, probabilities=probs, uncertain=False, runtime="openvino int8 cpu"))
            out[image_id] = label
    return out


make_window = open_window  # opened after the test registered its versions


@pytest.fixture
def close_windows():
    windows = []
    yield windows.append
    for w in windows:
        close_window(w)


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


# ---- a. the Models dialog: the parent's test figures beside the new ones; fp32 and why -----

def test_models_dialog_shows_the_parents_test_figures_and_why_a_version_runs_fp32(qtbot, db, paths, tmp_path,
                                                                                   close_windows):
    register_retrained(db, paths, tmp_path / "pkgs", active=PARENT)
    w = make_window(qtbot, paths, tmp_path)
    close_windows(w)
    dlg = w.model_menu.models_dialog()  # as Model versions… opens it (there with exec())
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.waitUntil(lambda: dlg.table.rowCount() > 0, timeout=TIMEOUT)  # read in a worker
    names = [dlg.table.item(r, 1).text() for r in range(dlg.table.rowCount())]
    own = next(c for c in range(dlg.table.columnCount())
               if dlg.table.horizontalHeaderItem(c).text().startswith("Card's own"))
    child = _flat(dlg.table.item(names.index(CHILD), own).text())
    # its own figures with their basis...
    assert "accuracy 0.571" in child and "on 7 reviewed validation images" in child, child
    # ...and the parent's test figures with theirs: not lost behind 7 validation images
    assert f"parent {PARENT}: accuracy 0.962, macro F1 0.951 on 549 held-out test images of all-taleqani" in child
    assert child.index("on 7 reviewed validation images") < child.index(f"parent {PARENT}")
    # no accepted int8 model: it says it runs fp32 on CPUs, and why
    assert "runs fp32 on CPUs" in child and INT8_REASON in child, child
    parent = _flat(dlg.table.item(names.index(PARENT), own).text())
    assert "on 549 held-out test images of all-taleqani" in parent and "parent" not in parent
    dlg.close()


# ---- b. Promote on a worse version says "worse" and names the class lost -------------------

def _worse_comparison() -> dict:
    """The run of the issue: validation 0.800 -> 0.700 on 10 images, Pre-B recall 0.667 -> 0."""
    from trainer.retrain import compare_predictions

    y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    old_pred = np.array([0, 0, 0, 1, 1, 1, 0, 2, 2, 0])  # 8/10; Pre-B 2/3
    new_pred = np.array([0, 0, 0, 1, 1, 1, 1, 0, 1, 0])  # 7/10; Pre-B 0/3
    eye = np.eye(4) * 0.9 + 0.025
    cmp = compare_predictions(y, eye[new_pred], eye[old_pred], CLASSES, n_boot=300)
    cmp.update(old_name=PARENT, new_name=CHILD)  # as retrain names the two sides
    return cmp


def test_promote_on_a_worse_version_says_worse_names_the_class_and_keep_current_keeps(qtbot, db, paths, tmp_path,
                                                                                      close_windows, monkeypatch):
    ids = register_retrained(db, paths, tmp_path / "pkgs", active=PARENT)
    w = make_window(qtbot, paths, tmp_path)
    close_windows(w)
    dlg = w.show_retrain()
    cmp = _worse_comparison()
    out = {"status": "completed", "version": CHILD, "parent": PARENT, "parent_id": ids[PARENT],
           "train_seconds": 1.0, "device": "cpu", "comparison": cmp,
           "data": {"n_train": 38, "n_val": 10, "min_per_class": 5, "too_few": [],
                    "per_class": {c: {"train": 10, "base": 0} for c in CLASSES}}}
    dlg._on_result(out)  # what the dialog's worker delivers when a retrain ends
    assert dlg.promote_btn.isEnabled() and dlg.keep_btn.isEnabled()

    asked: list[tuple[str, object]] = []
    monkeypatch.setattr("desktop.retrain_dialog.QMessageBox.exec",
                        lambda box: asked.append((box.text(), box.icon())) or QMessageBox.No)
    with qtbot.assertNotEmitted(dlg.promoted):
        qtbot.mouseClick(dlg.promote_btn, Qt.LeftButton)
    assert asked, "Promote asked nothing"
    text, icon = asked[0]
    assert "worse" in text and "cannot tell" not in text, text
    assert "Pre-B recall 0.667 -> 0.000" in text and "0.800 -> 0.700" in text, text  # the class lost, named
    assert icon == QMessageBox.Warning
    assert dlg.status.text().startswith("Not promoted") and "worse" in dlg.status.text()
    qtbot.mouseClick(dlg.keep_btn, Qt.LeftButton)
    assert dlg.status.text().startswith("Kept the active model")
    assert not dlg.promote_btn.isEnabled()
    with db.session() as s:
        assert active_version(s).name == PARENT
    assert w.version["name"] == PARENT
    dlg.close()


# ---- c. Grad-CAM explains the class shown ---------------------------------------------------

def test_gradcam_explains_the_stored_class_not_the_fp32_top_class(qtbot, db, paths, tmp_path, close_windows,
                                                                  monkeypatch):
    from core.inference.gradcam import GradCam

    with db.session() as s:
        vid = register_package(s, paths, tiny_package(tmp_path / "pkgs"), activate=True).id
        package = Path(active_version(s).path)
    folder = tmp_path / "smears"
    generate(folder, n_per_class=1, seed=5, size=64)
    run_job(scan(db, folder))
    fp32 = GradCam(package)
    top = {}

    def another_class(path: str) -> str:  # what int8 stored: not the fp32 model's own top class
        top[path] = fp32.card.classes[fp32(path)[2]]
        return next(c for c in CLASSES if c != top[path])

    stored = store_predictions(db, folder, vid, another_class)
    calls: list[tuple] = []

    class RecordingGradCam(GradCam):
        def __call__(self, path, *args, **kw):
            calls.append((path, *args, *kw.values()))
            return super().__call__(path, *args, **kw)

    monkeypatch.setattr("desktop.detail_view.GradCam", RecordingGradCam)
    w = make_window(qtbot, paths, tmp_path)
    close_windows(w)
    w.open_folder(folder, classify=False)
    image_id = next(iter(stored))
    qtbot.waitUntil(lambda: w.select_image(image_id), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: w.detail_pane.full_image is not None, timeout=TIMEOUT)
    shown = stored[image_id]
    assert f"Predicted <b>{shown}</b>" in w.detail.summary.text()
    with qtbot.waitSignal(w.gradcamReady, timeout=TIMEOUT):
        w.detail.gradcam.setChecked(True)
    summary = w.detail.summary.text()
    path = w.detail.title.toolTip()  # the path of the image shown
    assert f"Grad-CAM of class <b>{shown}</b>" in summary, (summary, top[path])  # not the fp32 top class
    assert calls and calls[-1][0] == path and shown in calls[-1][1:], calls  # the map was made for it
    assert w.detail.view.has_overlay()


# ---- d. the PDF report lists the parent's figures beside the retrained version's ----------

def test_report_lists_the_parents_figures_beside_the_retrained_versions(qtbot, db, paths, tmp_path, close_windows):
    from desktop.report import build_report
    from desktop.workers import setup_on_main_thread

    ids = register_retrained(db, paths, tmp_path / "pkgs", active=CHILD)
    folder = tmp_path / "smears"
    generate(folder, n_per_class=1, seed=5, size=64)
    run_job(scan(db, folder))
    store_predictions(db, folder, ids[CHILD], lambda path: "Benign")
    w = make_window(qtbot, paths, tmp_path)
    close_windows(w)
    qtbot.waitUntil(lambda: (w.version or {}).get("name") == CHILD, timeout=TIMEOUT)
    w.open_folder(folder, classify=False)
    with qtbot.waitSignal(w.reportWritten, timeout=TIMEOUT):  # its data read in a worker
        pdf = w.export_pdf(path=str(tmp_path / "case.pdf"), case="Case 21")
    assert open(pdf, "rb").read().startswith(b"%PDF")
    with setup_on_main_thread():  # the test reads the report's data itself, on its own thread
        texts = [build_report(w.db, w.folder, w.version, w.reviewer, "Case 21").toPlainText()]
    if shutil.which("pdftotext"):  # poppler-utils: what the PDF itself says
        texts.append(subprocess.run(["pdftotext", pdf, "-"], capture_output=True, text=True).stdout)
    for text in map(_flat, texts):
        assert "accuracy 0.571" in text and "on 7 reviewed validation images" in text, text
        assert f"parent {PARENT}: accuracy 0.962" in text and "on 549 held-out test images of all-taleqani" in text
        assert "runs fp32 on CPUs" in text


# ---- the window's own Promote is one activation, the reviewer's, and not another seat's ----

def test_promote_in_this_window_is_one_activation_by_the_reviewer_and_not_announced_as_elsewhere(
        qtbot, db, paths, tmp_path, close_windows, monkeypatch):
    """The walkthrough saw a promote logged twice (the OS user, then the reviewer) and, while the
    re-classify question was open, the notice "made active on another workstation"."""
    from sqlalchemy import select

    from core.storage.orm import ModelActivation

    ids = register_retrained(db, paths, tmp_path / "pkgs", active=PARENT)
    w = make_window(qtbot, paths, tmp_path)
    close_windows(w)
    w.activations.timer.setInterval(50)  # the poll ticks often, also while a question is open
    with db.session() as s:
        before = s.scalar(select(ModelActivation.id).order_by(ModelActivation.id.desc()).limit(1))
    dlg = w.show_retrain()
    cmp = _worse_comparison()
    dlg._on_result({"status": "completed", "version": CHILD, "version_id": ids[CHILD], "parent": PARENT,
                    "parent_id": ids[PARENT], "train_seconds": 1.0, "device": "cpu", "comparison": cmp,
                    "data": {"n_train": 38, "n_val": 10, "min_per_class": 5, "too_few": [],
                             "per_class": {c: {"train": 10, "base": 0} for c in CLASSES}}})
    monkeypatch.setattr("desktop.retrain_dialog.QMessageBox.exec", lambda box: QMessageBox.Yes)  # promote anyway
    said = []
    w.activations.elsewhere.connect(said.append)
    with qtbot.waitSignal(w.versionShown, timeout=TIMEOUT):
        qtbot.mouseClick(dlg.promote_btn, Qt.LeftButton)
    qtbot.wait(300)  # several polls after the switch
    assert w.version["name"] == CHILD
    assert not said, said  # its own promote is not another seat's news
    assert w.filters.model_notice.isHidden()
    with db.session() as s:
        rows = s.execute(select(ModelActivation.action, ModelActivation.activated_by)
                         .where(ModelActivation.id > before)).all()
    assert rows == [("promote", "tester")], rows  # one row, the reviewer's
    dlg.close()
