"""The desktop app driven for real (pytest-qt, offscreen): real widgets, real SQLite,
the real classify job in the worker pool; waits on signals, never sleeps."""
from __future__ import annotations

import csv
import time

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QItemSelectionModel, QSettings, Qt  # noqa: E402
from sqlalchemy import func, select, update  # noqa: E402

from core.review import gallery as q  # noqa: E402
from core.storage import LabelEvent, Prediction  # noqa: E402

JOB_TIMEOUT = 120_000


def open_window(qtbot, paths, tmp_path):
    """A shown main window on ``paths`` with reviewer "tester" (what the ``window`` fixture
    yields; tests that register models first open theirs with it afterwards)."""
    from desktop.mainwindow import MainWindow

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "tester")
    w = MainWindow(paths, settings=settings, device="cpu")
    qtbot.addWidget(w)
    w.resize(1280, 760)
    w.show()
    qtbot.waitExposed(w)
    w.activateWindow()
    w.view.setFocus()
    return w


def close_window(w) -> None:
    w.cancel_job()
    w.workers.cancel_all()
    w.workers.wait(10000)


@pytest.fixture
def window(qtbot, paths, tmp_path):
    w = open_window(qtbot, paths, tmp_path)
    yield w
    close_window(w)


def events(db):
    with db.session() as s:
        return [(e.image_id, e.previous_label, e.label, e.reviewer, e.source, e.note)
                for e in s.scalars(select(LabelEvent).order_by(LabelEvent.id))]


def settle(qtbot, w, timeout=10_000):
    """The gallery reads off the GUI thread: wait until what a filter, sort or folder change
    asked for is on screen."""
    qtbot.waitUntil(lambda: not w.gallery.busy, timeout=timeout)


def key(qtbot, w, k, mod=Qt.NoModifier):
    qtbot.keyClick(w.view, k, mod)


def test_open_classify_review_undo_filter_export(qtbot, window, tmp_path):
    from core.app.sample import generate

    w = window
    folder = tmp_path / "smears"
    generate(folder, n_per_class=3, seed=5)
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT) as blocker:
        w.open_folder(folder)
    summary = blocker.args[0]
    assert summary is not None and summary.n_predicted == 12 and not summary.cancelled
    assert w.model.rowCount() == 12 and w.model.total == 12
    assert "CPU" in w.device_label.text()
    assert w.recent_folders()[0] == str(folder)
    rows = [w.model.row_at(r) for r in range(12)]
    assert all(r.predicted is not None for r in rows)
    # least confident first
    assert [r.confidence for r in rows] == sorted(r.confidence for r in rows)

    # synthetic images are outside the model's experience, and Accept never stores a class the
    # tile does not show: here they are taken as inside it, to accept one
    with w.db.session() as s:
        s.execute(update(Prediction).values(out_of_distribution=False, uncertain=False))
    w.reload_gallery(keep_current=True)
    settle(qtbot, w)
    w.view.setCurrentIndex(w.model.index(0))
    key(qtbot, w, Qt.Key_2)  # label Early Pre-B, moves on
    assert w.view.currentIndex().row() == 1
    key(qtbot, w, Qt.Key_A)  # accept the prediction of row 1
    assert w.view.currentIndex().row() == 2
    key(qtbot, w, Qt.Key_Z, Qt.ControlModifier)  # undo: a new event restoring "no label"
    key(qtbot, w, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)  # redo
    sel = w.view.selectionModel()
    sel.clearSelection()
    for r in (3, 4, 5):
        sel.select(w.model.index(r), QItemSelectionModel.Select)
    key(qtbot, w, Qt.Key_4)  # one label for the three selected
    assert w.view.currentIndex().row() == 6
    assert w.statusBar().currentMessage() == "3 image(s) labelled Pro-B (Ctrl+Z undoes them all)"

    ids = [r.image_id for r in rows]
    p1 = rows[1].predicted
    assert w.label_writer.flush(10)  # every label is written by the writer's thread, never the GUI's
    got = events(w.db)
    assert [(i, prev, lab) for i, prev, lab, *_ in got] == [
        (ids[0], None, "Early Pre-B"),
        (ids[1], None, p1),
        (ids[1], p1, None),
        (ids[1], None, p1),
        (ids[3], None, "Pro-B"), (ids[4], None, "Pro-B"), (ids[5], None, "Pro-B"),
    ]
    assert {e[3] for e in got} == {"tester"} and {e[4] for e in got} == {"human"}
    assert got[2][5].startswith("undo") and got[3][5].startswith("redo")
    # the tiles show the new labels; counts are visible
    assert w.model.row_at(0).reviewed == "Early Pre-B" and w.model.row_at(4).reviewed == "Pro-B"
    qtbot.waitUntil(lambda: "Pro-B" in w.counts.text() and "3 (" in w.counts.text(), timeout=5000)

    # filters
    w.f_rev.setCurrentIndex(w.f_rev.findData("Pro-B"))
    settle(qtbot, w)
    assert w.model.total == 3 and {w.model.row_at(r).image_id for r in range(3)} == set(ids[3:6])
    w.f_rev.setCurrentIndex(w.f_rev.findData(q.UNREVIEWED))
    settle(qtbot, w)
    assert w.model.total == 12 - 5
    w.f_rev.setCurrentIndex(0)
    w.f_disagree.setChecked(True)
    settle(qtbot, w)
    expected = {i for i, r in zip(ids, rows) if (i == ids[0] and r.predicted != "Early Pre-B")
                or (i in ids[3:6] and r.predicted != "Pro-B")}
    assert {w.model.row_at(r).image_id for r in range(w.model.rowCount())} == expected
    w.f_disagree.setChecked(False)
    w.sort.setCurrentIndex(w.sort.findData("name"))
    settle(qtbot, w)
    names = [w.model.row_at(r).path for r in range(12)]
    assert names == sorted(names)

    # exports
    with qtbot.waitSignal(w.reportWritten, timeout=10_000):  # written in a worker
        out_csv = w.export_csv(path=str(tmp_path / "out.csv"))
    with open(out_csv, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 12
    assert sorted(r["reviewed_label"] for r in table if r["reviewed_label"]) == sorted(
        ["Early Pre-B", p1, "Pro-B", "Pro-B", "Pro-B"])
    with qtbot.waitSignal(w.reportWritten, timeout=30_000):  # its data read in a worker
        out_pdf = w.export_pdf(path=str(tmp_path / "report.pdf"))
    data = open(out_pdf, "rb").read()
    assert data.startswith(b"%PDF") and len(data) > 5000

    # detail view with Grad-CAM
    w.select_image(ids[0])
    with qtbot.waitSignal(w.gradcamReady, timeout=30000):
        w.detail.gradcam.setChecked(True)
    assert w.detail.view.has_overlay()
    qtbot.waitUntil(lambda: w.detail.history.rowCount() == 1, timeout=5000)  # read in a worker
    assert len(events(w.db)) == 7  # looking, filtering and exporting wrote nothing


def test_cancel_stops_quickly_and_keeps_work(qtbot, window, tmp_path):
    from core.app.sample import generate

    w = window
    folder = tmp_path / "many"
    generate(folder, n_per_class=60, seed=1)
    seen = []

    def on_progress(p):
        if p.stage == "classify" and p.done > 0 and not seen:
            seen.append(time.monotonic())
            w.cancel_job()

    w.open_folder(folder, classify=False)
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT) as blocker:
        w.classify()
        w.job.signals.progress.connect(on_progress)
    stopped = time.monotonic()
    summary = blocker.args[0]
    print(f"\ncancel honoured {1000 * (stopped - seen[0]):.0f} ms after the request")
    assert seen and stopped - seen[0] < 2.0  # one batch of 32 at most (~1 s on a busy 2-core CPU)
    assert summary.cancelled and 0 < summary.n_predicted < 240
    with w.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == summary.n_predicted
    assert not w.progress.isVisible() and w.job is None
    # the next run finishes the rest
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT) as blocker:
        w.classify()
    assert blocker.args[0].n_predicted == 240 - summary.n_predicted


def test_gallery_pages_100k_rows(qtbot, window, tmp_path):
    from core.models.registry import active_version
    from PySide6.QtWidgets import QApplication

    from desktop.gallery import PAGE

    w = window
    folder = tmp_path / "huge"
    folder.mkdir()
    n = 100_000
    prefix = str(folder) + "/"
    t0 = time.perf_counter()
    now = "2026-11-23 00:00:00.000000"
    with w.db.session() as s:
        vid = active_version(s).id
        raw = s.connection().exec_driver_sql  # plain executemany: 300,000 rows in a few seconds
        raw("INSERT INTO images (id, sha256, width, height, phash, first_seen) VALUES (?, ?, 224, 224, ?, ?)",
            [(i, f"{i:064x}", "0" * 16, now) for i in range(1, n + 1)])
        raw("INSERT INTO files (path, size, mtime_ns, image_id, missing) VALUES (?, 1000, ?, ?, 0)",
            [(f"{prefix}img{i:06d}.jpg", i, i) for i in range(1, n + 1)])
        raw("INSERT INTO predictions (image_id, model_version_id, label, confidence, entropy, probabilities, "
            "uncertain, created_at) VALUES (?, ?, 'Benign', ?, 0.5, '[0.25, 0.25, 0.25, 0.25]', 0, ?)",
            [(i, vid, (i % 997) / 997, now) for i in range(1, n + 1)])
    insert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    w.open_folder(folder, classify=False)
    settle(qtbot, w, timeout=20_000)
    open_s = time.perf_counter() - t0
    assert w.model.total == n
    assert w.model.rowCount() == PAGE
    qtbot.waitUntil(lambda: len(w.loader.requested) > 0, timeout=5000)
    vp = w.view.viewport().size()
    per_screen = (vp.width() // 100 + 1) * (vp.height() // 100 + 2)
    bar = w.view.verticalScrollBar()
    steps = 6
    for _ in range(steps):  # scroll to the end of what is loaded: the view fetches the next page
        bar.setValue(bar.maximum())
        settle(qtbot, w)  # the page the view asked for is read in a worker, then laid out
        qtbot.waitUntil(lambda: w.model.rowCount() % PAGE == 0, timeout=5000)
        QApplication.processEvents()
        w.view.viewport().repaint()
    rows = w.model.rowCount()
    assert rows % PAGE == 0 and PAGE < rows <= PAGE * (steps + 2)
    asked = set(w.loader.requested)
    assert 0 < len(asked) <= per_screen * (steps + 2)
    assert len(asked) < rows
    print(f"\n100k rows: insert {insert_s:.1f}s, open {open_s * 1000:.0f} ms, "
          f"{rows} rows loaded, {len(asked)} thumbnails asked")


@pytest.mark.slow
def test_switch_model_reclassifies_and_about(qtbot, window, tmp_path):
    import dataclasses

    from core.models.architectures import build
    from core.models.package import read_card, save_package
    from core.models.registry import bundled_default_package, register_package
    from core.app.sample import generate

    w = window
    folder = tmp_path / "few"
    generate(folder, n_per_class=1, seed=2)
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        w.open_folder(folder)
    card = read_card(bundled_default_package())
    card = dataclasses.replace(card, name="second-test-model", placeholder=False,
                               metrics={"as_is": {"accuracy": 0.5, "macro_f1": 0.4}})
    model = build(card.architecture, num_classes=len(card.classes), **card.arch_params)
    save_package(tmp_path / "second", model.state_dict(), card)
    with w.db.session() as s:
        vid = register_package(s, w.paths, tmp_path / "second").id
    from desktop.models_panel import ModelsDialog

    dlg = ModelsDialog(w.db, w)
    from core.models.registry import bundled_packages

    row = len(bundled_packages())  # the bundled packages, then the new one
    qtbot.waitUntil(lambda: dlg.table.rowCount() == row + 1, timeout=5000)  # read in a worker
    assert dlg.table.rowCount() == row + 1 and "accuracy 0.500" in dlg.table.item(row, dlg.FIGURES).text()
    assert dlg.retrain.isEnabled()  # opens the Retrain dialog (tests/test_retrain_gui.py)
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT) as blocker:
        w.activate_version(vid, ask=False, reclassify=True)
    assert blocker.args[0].model == "second-test-model" and blocker.args[0].n_predicted == 4
    assert w.version["name"] == "second-test-model" and w.model.total == 4
    from trainer.retrain import activation_log

    last = activation_log(w.db)[-1]  # the model panel's switch is in the activation log
    assert (last["action"], last["name"], last["by"]) == ("activate", "second-test-model", w.reviewer)
    assert "not a diagnostic device" in w.about_text() and "second-test-model" in w.about_text()


def test_gui_command_registered():
    from core.app.cli import COMMANDS, build_parser

    build_parser()
    assert "gui" in COMMANDS


def test_opening_a_folder_while_another_classifies_classifies_the_new_one(qtbot, window, tmp_path):
    """The old job is superseded: it stops after its batch (what it wrote is kept), its late
    result is not taken for the new job's, and the new folder is classified."""
    from core.app.sample import generate

    w = window
    first, second = tmp_path / "first", tmp_path / "second"
    generate(first, n_per_class=60, seed=1)
    generate(second, n_per_class=2, seed=2)
    started = []
    w.open_folder(first)
    w.job.signals.progress.connect(lambda p: started.append(p.stage))
    qtbot.waitUntil(lambda: bool(started), timeout=JOB_TIMEOUT)
    finished = []
    w.jobFinished.connect(finished.append)
    w.open_folder(second)
    qtbot.waitUntil(lambda: bool(finished), timeout=JOB_TIMEOUT)
    qtbot.wait(300)  # anything the superseded job still sends arrives now
    assert len(finished) == 1 and finished[0] is not None and not finished[0].cancelled
    assert finished[0].scan.root == str(second) and finished[0].n_predicted == 8
    assert w.folder == str(second) and w.model.rowCount() == 8
    assert all(w.model.row_at(r).predicted for r in range(8))  # the new folder was classified
    assert w.job is None and not w.progress.isVisible()


def test_make_active_in_the_models_dialog_moves_the_mark_once_it_has_landed(qtbot, window, monkeypatch):
    """The activation runs in a worker: the dialog used to read the table again at once and
    kept the mark on the old version (a second click then logged a second activation)."""
    from PySide6.QtWidgets import QMessageBox

    from core.models.registry import activation_log

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.No)  # no re-classify question
    monkeypatch.setattr(QMessageBox, "exec", lambda *a, **k: QMessageBox.No)
    from .test_seat_activation import _register_field_copy

    _register_field_copy(window.ctl.db, window.paths.data_dir)  # the bundled models are both active (field, cell)
    dlg = window.model_menu.models_dialog()
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: len(dlg.versions) >= 3, timeout=10_000)
    other = next(r for r, v in enumerate(dlg.versions) if not v["is_active"])
    n_before = len(activation_log(window.ctl.db))
    dlg.table.selectRow(other)
    with qtbot.waitSignal(dlg.listed, timeout=30_000):
        dlg.activate.click()
        assert not dlg.activate.isEnabled()  # no second activation while the first is on its way
    assert dlg.versions[other]["is_active"] and dlg.table.item(other, 0).text() == "●"
    assert len(activation_log(window.ctl.db)) == n_before + 1
    dlg.close()
