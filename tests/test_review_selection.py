"""Issue 21 (pytest-qt, offscreen, real widgets): the selection changes only by the
reviewer's action or a rule they see, Accept stores only a class the reviewer saw, and the
smaller defects of the review loop (End beyond the first page, Home after Ctrl+A, a new
folder's filters, redo, a class key the model lacks, Esc during a classification)."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QItemSelectionModel, Qt  # noqa: E402
from sqlalchemy import select, update  # noqa: E402

from core.review.gallery import UNREVIEWED  # noqa: E402
from core.storage import LabelEvent, Prediction  # noqa: E402

from .test_desktop import JOB_TIMEOUT, settle, window  # noqa: E402,F401  (fixture)


def _labels(w) -> list[tuple[int, str | None]]:
    with w.db.session() as s:
        return [(e.image_id, e.label) for e in s.scalars(select(LabelEvent).order_by(LabelEvent.id))]


def _current_id(w) -> int | None:
    cur = w.view.currentIndex()
    return w.model.row_at(cur.row()).image_id if cur.isValid() else None


def _said(w) -> str:
    return w.statusBar().currentMessage()


def _stored_folder(w, folder, n: int, first_id: int) -> list[int]:
    """``n`` images under ``folder`` with a prediction inside the model's experience, straight in
    the database (no files: a classification is not what these tests are about). Ids, names
    and confidences rise together, so every sort gives the same order."""
    import io

    from PIL import Image

    folder.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 160)).save(buf, "JPEG")  # the detail pane shows it
    now = "2026-11-23 00:00:00.000000"
    ids = list(range(first_id, first_id + n))
    classes = w.version["classes"]
    with w.db.session() as s:
        raw = s.connection().exec_driver_sql
        raw("INSERT INTO images (id, sha256, width, height, phash, first_seen) VALUES (?, ?, 224, 224, ?, ?)",
            [(i, f"{i:064x}", "0" * 16, now) for i in ids])
        raw("INSERT INTO files (path, size, mtime_ns, image_id, missing) VALUES (?, 1000, ?, ?, 0)",
            [(f"{folder}/img{i:06d}.jpg", i, i) for i in ids])
        raw("INSERT INTO predictions (image_id, model_version_id, label, confidence, entropy, probabilities, "
            "uncertain, out_of_distribution, created_at) VALUES (?, ?, ?, ?, 0.5, '[0.25, 0.25, 0.25, 0.25]', "
            "0, 0, ?)",
            [(i, w.ctl.version_id, classes[i % len(classes)], 0.3 + 0.6 * k / n, now) for k, i in enumerate(ids)])
    for i in ids:
        (folder / f"img{i:06d}.jpg").write_bytes(buf.getvalue())
    return ids


def _open_stored(qtbot, w, folder):
    w.open_folder(folder, classify=False)
    settle(qtbot, w)


# ---------------------------------------------------------------- 1. the selection moves by itself
def test_selection_holds_under_unreviewed_only_while_a_classification_runs(qtbot, window, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    """The walkthrough: under "Unreviewed only", a label key on image 5 during a classification,
    and 1.2 s later another image was selected (the grace period's re-read put the reviewer's
    image beyond the first page: the first image was taken instead); it moved again when the
    classification ended, and when Esc cancelled it. Only the labelled image may leave."""
    import time

    from core.app.sample import generate
    from core.inference import predict
    from desktop.gallery import PAGE
    from desktop.review_actions import UNREVIEWED_GRACE_MS

    load = predict.Predictor.load_image

    def slow_load(self, *a, **k):  # the lab's 2,730 fields take minutes: this folder takes seconds
        time.sleep(0.08)
        return load(self, *a, **k)

    monkeypatch.setattr(predict.Predictor, "load_image", slow_load)
    w = window
    folder = tmp_path / "many"
    generate(folder, n_per_class=70, seed=4)  # 280 images: more than a page
    stages = []
    w.open_folder(folder)
    w.job.signals.progress.connect(lambda p: stages.append((p.stage, p.done)))
    qtbot.waitUntil(lambda: any(st == "classify" for st, _ in stages), timeout=JOB_TIMEOUT)
    w.sort.setCurrentIndex(w.sort.findData("name"))
    w.f_rev.setCurrentIndex(w.f_rev.findData(UNREVIEWED))
    settle(qtbot, w)
    assert w.model.total == 280
    qtbot.keyClick(w.view, Qt.Key_End)  # beyond the first page of rows
    qtbot.waitUntil(lambda: w.model.rowCount() > PAGE + 40, timeout=10_000)
    w.view.setCurrentIndex(w.model.index(PAGE + 30))  # the reviewer clicks an image there
    labelled, target = w.model.row_at(PAGE + 30).image_id, w.model.row_at(PAGE + 31).image_id
    qtbot.keyClick(w.view, Qt.Key_1)
    assert _current_id(w) == target  # moved on at once
    qtbot.waitUntil(lambda: w.model.row_of(labelled) is None, timeout=UNREVIEWED_GRACE_MS + 5000)
    qtbot.wait(300)  # anything the grace period or the job's refresh still sends arrives now
    assert w.job is not None, "the classification ended too early to test the selection during it"
    assert _current_id(w) == target and w.detail_pane.shown_id == target
    assert w.model.total == 279
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        qtbot.keyClick(w.view, Qt.Key_Escape)  # cancel: the gallery is read again, the selection holds
    assert _current_id(w) == target and w.detail_pane.shown_id == target
    assert _labels(w) == [(labelled, "Benign")]


def test_the_grace_period_takes_out_only_the_labelled_image_and_keeps_the_order(qtbot, window, tmp_path):  # noqa: F811
    """Under "Unreviewed only" the labelled image leaves after the grace; the rows around it
    stay where they were (no re-sort by a refresh)."""
    from desktop.review_actions import UNREVIEWED_GRACE_MS

    w = window
    ids = _stored_folder(w, tmp_path / "a", 30, 1)
    _open_stored(qtbot, w, tmp_path / "a")
    w.f_rev.setCurrentIndex(w.f_rev.findData(UNREVIEWED))
    settle(qtbot, w)
    w.select_image(ids[4])
    with w.db.session() as s:  # the job re-predicts meanwhile: the next read would sort differently
        s.execute(update(Prediction).where(Prediction.image_id == ids[20]).values(confidence=0.01))
    qtbot.keyClick(w.view, Qt.Key_2)
    qtbot.waitUntil(lambda: w.model.row_of(ids[4]) is None, timeout=UNREVIEWED_GRACE_MS + 5000)
    assert _current_id(w) == ids[5] and w.gallery_info.text().startswith("Image 5 of 29 in this view · ")
    assert [w.model.row_at(r).image_id for r in range(29)] == ids[:4] + ids[5:]


# ---------------------------------------------------------------- 2. accept stores only a class seen
def test_accept_refuses_a_class_the_tile_does_not_show(qtbot, window, tmp_path):  # noqa: F811
    w = window
    ids = _stored_folder(w, tmp_path / "a", 8, 1)
    with w.db.session() as s:  # image 0: outside the model's experience; image 1: uncertain
        s.execute(update(Prediction).where(Prediction.image_id == ids[0]).values(out_of_distribution=True))
        s.execute(update(Prediction).where(Prediction.image_id == ids[1]).values(uncertain=True))
    _open_stored(qtbot, w, tmp_path / "a")
    assert w.model.row_at(0).outside and w.model.row_at(1).uncertain
    w.select_image(ids[0])
    qtbot.keyClick(w.view, Qt.Key_A)
    assert "outside its experience" in _said(w) and "1–4" in _said(w)
    assert _current_id(w) == ids[0]  # refused: it stays, for the reviewer's class key
    w.select_image(ids[1])
    qtbot.keyClick(w.view, Qt.Key_Return)
    assert "not sure" in _said(w) and "1–4" in _said(w)
    # a selection: only the images whose class was shown are accepted, the others are counted
    sel = w.view.selectionModel()
    sel.clearSelection()
    for r in (0, 1, 2, 3):
        sel.select(w.model.index(r), QItemSelectionModel.Select)
    qtbot.keyClick(w.view, Qt.Key_A)
    assert _said(w).startswith("2 prediction(s) accepted") and "2 skipped" in _said(w)
    assert w.label_writer.flush(10)
    assert _labels(w) == [(ids[2], w.model.row_at(2).predicted), (ids[3], w.model.row_at(3).predicted)]


# ---------------------------------------------------------------- 3. the smaller ones
def test_end_page_down_and_a_restored_position_reach_beyond_the_first_page(qtbot, window, tmp_path):  # noqa: F811
    from desktop.gallery import PAGE
    from desktop.viewstate import FolderView, save_folder_view

    w = window
    n = 2 * PAGE + 50
    ids = _stored_folder(w, tmp_path / "a", n, 1)
    _open_stored(qtbot, w, tmp_path / "a")
    assert w.model.rowCount() == PAGE
    qtbot.keyClick(w.view, Qt.Key_End)
    qtbot.waitUntil(lambda: w.gallery_info.text().startswith(f"Image {n} of {n} in this view · "), timeout=10_000)
    assert _current_id(w) == ids[-1]
    qtbot.keyClick(w.view, Qt.Key_Home)
    w.select_image(ids[PAGE - 5])
    qtbot.keyClick(w.view, Qt.Key_PageDown)
    qtbot.waitUntil(lambda: w.view.currentIndex().row() > PAGE - 1, timeout=10_000)
    # the position kept from the last visit, far down the folder
    _stored_folder(w, tmp_path / "b", 5, 10_000)
    _open_stored(qtbot, w, tmp_path / "b")
    save_folder_view(w.settings, str(tmp_path / "a"), FolderView(image_id=ids[PAGE + 100], sort="confidence"))
    _open_stored(qtbot, w, tmp_path / "a")
    qtbot.waitUntil(lambda: _current_id(w) == ids[PAGE + 100], timeout=10_000)


def test_home_after_select_all_selects_only_the_first_image(qtbot, window, tmp_path):  # noqa: F811
    w = window
    _stored_folder(w, tmp_path / "a", 12, 1)
    _open_stored(qtbot, w, tmp_path / "a")
    qtbot.keyClick(w.view, Qt.Key_A, Qt.ControlModifier)
    assert len(w.state.targets()) == 12
    qtbot.keyClick(w.view, Qt.Key_Home)
    assert w.view.currentIndex().row() == 0 and w.state.targets() == [w.model.row_at(0).image_id]
    assert w.gallery_info.text().startswith("Image 1 of 12 in this view · ")


def test_a_new_folder_opens_with_the_default_filters(qtbot, window, tmp_path):  # noqa: F811
    w = window
    _stored_folder(w, tmp_path / "a", 6, 1)
    _stored_folder(w, tmp_path / "b", 6, 100)
    _open_stored(qtbot, w, tmp_path / "a")
    w.f_pred.setCurrentIndex(w.f_pred.findData(w.version["classes"][1]))
    w.sort.setCurrentIndex(w.sort.findData("name"))
    settle(qtbot, w)
    assert w.model.total < 6
    _open_stored(qtbot, w, tmp_path / "b")  # never opened before: nothing hidden
    assert w.f_pred.currentData() is None and w.sort.currentData() == "confidence"
    assert w.model.total == 6 and w.gallery_info.text().startswith("Image 1 of 6 in this view · ")
    _open_stored(qtbot, w, tmp_path / "a")  # its own view comes back
    assert w.f_pred.currentData() == w.version["classes"][1] and w.sort.currentData() == "name"


def test_redo_moves_on_like_the_label_and_undo_says_what_it_did(qtbot, window, tmp_path):  # noqa: F811
    w = window
    ids = _stored_folder(w, tmp_path / "a", 6, 1)
    _open_stored(qtbot, w, tmp_path / "a")
    qtbot.keyClick(w.view, Qt.Key_1)
    assert _current_id(w) == ids[1]
    qtbot.keyClick(w.view, Qt.Key_Z, Qt.ControlModifier)
    assert _current_id(w) == ids[0]
    assert _said(w) == "Undone: removed the label Benign from img000001.jpg"
    qtbot.keyClick(w.view, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    assert _current_id(w) == ids[1]  # on to the next image, as the label key did
    assert _said(w) == "Redone: img000001.jpg labelled Benign"
    # 0 clears the label and stays: the image is there to be given its class
    w.select_image(ids[0])
    qtbot.keyClick(w.view, Qt.Key_0)
    assert _current_id(w) == ids[0] and _said(w) == "Label removed from 1 image(s)"
    assert w.label_writer.flush(10)
    assert _labels(w) == [(ids[0], "Benign"), (ids[0], None), (ids[0], "Benign"), (ids[0], None)]


def test_a_key_the_model_has_no_class_for_says_so_and_moves_nothing(qtbot, window, tmp_path):  # noqa: F811
    w = window
    ids = _stored_folder(w, tmp_path / "a", 6, 1)
    _open_stored(qtbot, w, tmp_path / "a")
    assert len(w.version["classes"]) == 4
    w.select_image(ids[2])
    qtbot.keyClick(w.view, Qt.Key_5)
    assert _said(w) == "⚠ No class for key 5: this model has 4 classes (keys 1–4; O for Other)."
    w.f_pred.setFocus()  # the key is said whatever has the focus
    qtbot.keyClick(w.f_pred, Qt.Key_9)
    assert "No class for key 9" in _said(w)
    qtbot.keyClick(w.view, Qt.Key_I)  # a letter without an action: no jump to a file named "i…"
    assert _current_id(w) == ids[2] and _labels(w) == []


# ---------------------------------------------------------------- the walkthrough's view-state findings (N1, N2, N5, N6)
def test_a_filter_picked_during_the_scan_stays_until_the_reviewer_changes_it(qtbot, window, tmp_path,  # noqa: F811
                                                                            monkeypatch):
    """N1: "Unreviewed only", picked at 60 % of the scan, was "Any" at 92 % with no key the
    reviewer meant for it: the drop-down kept the focus after the click, and Shift+A (Shift
    still held, an accept nothing took) picked its entry "Any" by name, as a letter typed on a
    drop-down does. The filter stays through the scan, the classification and its end."""
    import time

    from core.app.sample import generate
    from core.imaging import scan

    hash_file = scan.hash_file

    def slow_hash(*a, **k):  # the lab's 2,770 files take seconds to scan: this folder as long
        time.sleep(0.01)
        return hash_file(*a, **k)

    monkeypatch.setattr(scan, "hash_file", slow_hash)
    w = window
    folder = tmp_path / "many"
    generate(folder, n_per_class=40, seed=3)
    seen = []
    w.open_folder(folder)
    w.job.signals.progress.connect(lambda p: seen.append(p.stage))
    qtbot.waitUntil(lambda: "scan" in seen, timeout=JOB_TIMEOUT)
    qtbot.mouseClick(w.f_rev, Qt.LeftButton)  # the reviewer's click: the drop-down has the focus now
    w.f_rev.hidePopup()
    w.f_rev.setFocus()
    w.f_rev.setCurrentIndex(w.f_rev.findData(UNREVIEWED))
    assert w.job is not None and "classify" not in seen, "the scan ended too early to pick a filter during it"
    for k, mod in ((Qt.Key_A, Qt.ShiftModifier), (Qt.Key_B, Qt.NoModifier), (Qt.Key_U, Qt.ShiftModifier)):
        qtbot.keyClick(w.f_rev, k, mod)  # keys meant for the images, on the drop-down
        assert w.f_rev.currentData() == UNREVIEWED
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        pass
    settle(qtbot, w)
    assert w.f_rev.currentData() == UNREVIEWED and w.state.filter.reviewed == UNREVIEWED
    assert w.model.total == 160 and _labels(w) == []


def _second_version(w, tmp_path, name: str) -> int:
    """A version of the shown model's taxonomy (the bundled one's card under another name)."""
    import dataclasses

    from core.models.architectures import build
    from core.models.package import read_card, save_package
    from core.models.registry import bundled_default_package, register_package

    card = dataclasses.replace(read_card(bundled_default_package()), name=name, placeholder=False)
    model = build(card.architecture, num_classes=len(card.classes), **card.arch_params)
    save_package(tmp_path / name, model.state_dict(), card)
    with w.db.session() as s:
        return register_package(s, w.paths, tmp_path / name).id


def test_a_model_switch_keeps_the_filters_and_the_image_shown(qtbot, window, tmp_path):  # noqa: F811
    """N2: after Promote with re-classify, and after "Make active…", the window went back to
    "Any" and image 1 with no message. The folder's filters and the image shown stay; a
    filter naming a class the new version lacks shows Any, and the status bar says so."""
    from core.app.sample import generate
    from core.models.registry import bundled_packages, list_versions
    from core.models.package import read_card

    w = window
    folder = tmp_path / "few"
    generate(folder, n_per_class=3, seed=2)
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        w.open_folder(folder)
    w.f_rev.setCurrentIndex(w.f_rev.findData(UNREVIEWED))
    w.sort.setCurrentIndex(w.sort.findData("name"))
    settle(qtbot, w)
    w.select_image(w.model.row_at(5).image_id)  # the reviewer's image, not the first
    chosen = _current_id(w)
    # Promote with re-classify (the Retrain dialog's road): the new version classifies the folder
    vid = _second_version(w, tmp_path, "promoted-test-model")
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT) as blocker:
        w.activate_version(vid, ask=False, reclassify=True)
    assert blocker.args[0].model == "promoted-test-model"
    settle(qtbot, w)
    assert w.f_rev.currentData() == UNREVIEWED and w.sort.currentData() == "name"
    assert w.state.filter.reviewed == UNREVIEWED and w.state.filter.sort == "name"
    assert _current_id(w) == chosen and w.detail_pane.shown_id == chosen
    # "Make active…" of a version without the class the Predicted filter names
    cls = w.model.row_at(w.view.currentIndex().row()).predicted
    w.f_pred.setCurrentIndex(w.f_pred.findData(cls))
    settle(qtbot, w)
    w.select_image(chosen)
    binary = next(read_card(p).name for p in bundled_packages() if cls not in read_card(p).classes)
    with w.db.session() as s:
        bid = next(v.id for v in list_versions(s) if v.name == binary)
    with qtbot.waitSignal(w.versionShown, timeout=10_000):  # a cell model: shown in the gallery explicitly
        w.model_menu.use_version(bid, reclassify=False)
    settle(qtbot, w)
    assert w.f_pred.currentData() is None and w.state.filter.predicted is None  # that one filter only
    assert w.f_rev.currentData() == UNREVIEWED and w.sort.currentData() == "name"
    assert _said(w) == f"Active model: {binary}. {binary} has no class {cls}: the Predicted filter shows Any now."
    assert _current_id(w) == chosen


def test_shift_a_and_shift_return_accept_like_a(qtbot, window, tmp_path):  # noqa: F811
    """N5: Shift still held after a Shift+arrow selection made A do nothing and say nothing."""
    w = window
    ids = _stored_folder(w, tmp_path / "a", 6, 1)
    _open_stored(qtbot, w, tmp_path / "a")
    w.select_image(ids[0])
    qtbot.keyClick(w.view, Qt.Key_A, Qt.ShiftModifier)
    assert _said(w) == "1 prediction(s) accepted" and _current_id(w) == ids[1]
    qtbot.keyClick(w.view, Qt.Key_Return, Qt.ShiftModifier)
    assert _said(w) == "1 prediction(s) accepted" and _current_id(w) == ids[2]
    # Shift+Down then Shift+A: one accept for both images
    qtbot.keyClick(w.view, Qt.Key_Right, Qt.ShiftModifier)
    assert len(w.state.targets()) == 2
    qtbot.keyClick(w.view, Qt.Key_A, Qt.ShiftModifier)
    assert _said(w).startswith("2 prediction(s) accepted")
    assert w.label_writer.flush(10)
    assert [i for i, _ in _labels(w)] == ids[:4]


def test_the_refusal_of_accept_says_what_the_screen_shows(qtbot, window, tmp_path):  # noqa: F811
    """N6: the refusal said "no class is shown" while the detail pane showed the class and its bars."""
    w = window
    ids = _stored_folder(w, tmp_path / "a", 4, 1)
    with w.db.session() as s:
        s.execute(update(Prediction).where(Prediction.image_id == ids[0]).values(out_of_distribution=True))
        s.execute(update(Prediction).where(Prediction.image_id == ids[1]).values(uncertain=True))
    _open_stored(qtbot, w, tmp_path / "a")
    w.select_image(ids[0])
    qtbot.waitUntil(lambda: w.detail_pane.shown_id == ids[0], timeout=5000)
    # the pane shows the model's guess (its hyphen unbreakable there: U+2011)
    assert w.model.row_at(0).predicted in w.detail.summary.text().replace("\u2011", "-")
    qtbot.keyClick(w.view, Qt.Key_A)
    assert _said(w) == ("⚠ Not accepted: the model is outside its experience here (its guess is not reliable). "
                        "Press the class you see (1–4), or O for Other.")
    w.select_image(ids[1])
    qtbot.keyClick(w.view, Qt.Key_Return)
    assert _said(w) == ("⚠ Not accepted: the model is not sure of this image (its guess is not reliable). "
                        "Press the class you see (1–4), or O for Other.")
    assert _labels(w) == []
