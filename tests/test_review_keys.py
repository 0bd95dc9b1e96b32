"""Issue 14 points 1 and 2, for real (pytest-qt, offscreen): the review keys act on the
gallery whatever control has focus, a key that cannot act says why, and the detail panel
always shows the current image or nothing."""
from __future__ import annotations

import shutil
import subprocess

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402
from sqlalchemy import select  # noqa: E402

from core.storage import LabelEvent  # noqa: E402
from core.models.taxonomy import OTHER, OTHER_TITLE  # noqa: E402

from .test_desktop import JOB_TIMEOUT, settle, window  # noqa: E402,F401  (fixture)


def _labels(w) -> list[tuple[int, str]]:
    with w.db.session() as s:
        return [(e.image_id, e.label) for e in s.scalars(select(LabelEvent).order_by(LabelEvent.id))]


def _open(qtbot, w, folder):
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        w.open_folder(folder)


def test_keys_act_on_the_gallery_after_a_filter_was_used(qtbot, window, tmp_path):  # noqa: F811
    from core.app.sample import generate

    w = window
    generate(tmp_path / "a", n_per_class=3, seed=1)
    _open(qtbot, w, tmp_path / "a")
    # touch a filter with the keyboard, as in the walkthrough: it keeps the focus
    w.f_pred.setFocus()
    qtbot.waitUntil(w.f_pred.hasFocus, timeout=2000)
    w.f_pred.setCurrentIndex(1)
    w.f_pred.setCurrentIndex(0)
    settle(qtbot, w)
    before = w.f_pred.currentIndex()
    assert w.view.currentIndex().row() == 0  # the filter change selected the first image
    qtbot.keyClick(w.f_pred, Qt.Key_Down)
    assert w.f_pred.currentIndex() == before  # the filter did not change...
    below = w.view.currentIndex().row()
    assert below > 0  # ...the gallery moved down a row of tiles
    qtbot.keyClick(w.f_pred, Qt.Key_Left)
    assert w.view.currentIndex().row() == below - 1 and w.f_pred.currentIndex() == before
    second = w.model.row_at(below - 1).image_id
    qtbot.keyClick(w.view.window().focusWidget() or w.view, Qt.Key_1)  # a class key, focus wherever it is now
    w.f_rev.setFocus()
    w.view.setCurrentIndex(w.model.index(2))
    third = w.model.row_at(2).image_id
    qtbot.keyClick(w.f_rev, Qt.Key_O)  # "Other" with the Reviewed drop-down focused
    qtbot.waitUntil(lambda: len(_labels(w)) == 2, timeout=5000)
    assert _labels(w) == [(second, "Benign"), (third, OTHER)]


def test_detail_panel_shows_the_current_image_or_nothing_and_refusals_say_why(qtbot, window, tmp_path):  # noqa: F811
    from core.app.sample import generate

    w = window
    generate(tmp_path / "a", n_per_class=2, seed=1)
    generate(tmp_path / "b", n_per_class=2, seed=2)
    _open(qtbot, w, tmp_path / "a")
    w.view.setCurrentIndex(w.model.index(3))
    # a filter with no match: the panel empties and the buttons are off; a key says why
    w.f_rev.setCurrentIndex(w.f_rev.findData(OTHER))
    settle(qtbot, w)
    assert w.model.rowCount() == 0
    assert w.detail.title.full == "No image selected" and w.detail.summary.text() == ""
    assert not any(b.isEnabled() for b in w.class_buttons) and not w.review_buttons["accept"].isEnabled()
    qtbot.keyClick(w.view, Qt.Key_1)
    assert "No image in view" in w.statusBar().currentMessage() and _labels(w) == []
    # back to everything: the first image is selected and shown, not the old one
    w.f_rev.setCurrentIndex(0)
    settle(qtbot, w)
    assert w.view.currentIndex().row() == 0
    assert w.detail.title.full == w.model.row_at(0).name
    # another folder: its first image, never the previous folder's
    _open(qtbot, w, tmp_path / "b")
    current = w.model.row_at(w.view.currentIndex().row())
    assert w.detail.title.full == current.name and current.path.startswith(str(tmp_path / "b"))
    assert w.review_buttons["accept"].isEnabled()
    qtbot.keyClick(w.view, Qt.Key_Z, Qt.ControlModifier)
    assert w.statusBar().currentMessage() == "⚠ Nothing to undo."


def test_tile_says_the_reviewers_class_in_words_and_the_models_when_they_differ(qtbot, window, tmp_path):  # noqa: F811
    from PySide6.QtCore import Qt as _Qt

    from core.review.gallery import GalleryRow, tile_caption
    from core.app.sample import generate

    row = GalleryRow(1, "/x.jpg", "x.jpg", "Pro-B", 0.87, 0.3, False, (0, 0, 0.13, 0.87), None, None)
    assert tile_caption(row) == "Pro-B 87%"
    assert tile_caption(row.__class__(**{**row.__dict__, "reviewed": "Pro-B", "reviewer": "ana"})) == "\u2713 Pro-B by ana"
    differs = tile_caption(row.__class__(**{**row.__dict__, "reviewed": "Pre-B", "reviewer": "ana"}))
    assert differs == "\u270e Pre-B \u00b7 model: Pro-B 87% \u00b7 by ana"  # the classes first: a tile cuts the end
    assert tile_caption(row.__class__(**{**row.__dict__, "reviewed": "Pro-B", "reviewer": None})) == "\u2713 Pro-B"
    other = tile_caption(row.__class__(**{**row.__dict__, "reviewed": OTHER, "outside": True}))
    assert "Other / not assessable" in other and "model: \u2298" in other

    w = window
    generate(tmp_path / "a", n_per_class=2, seed=1)
    _open(qtbot, w, tmp_path / "a")
    w.view.setCurrentIndex(w.model.index(0))
    predicted = w.model.row_at(0).predicted
    model_says = "\u2298" if w.model.row_at(0).outside else predicted  # synthetic: outside
    label = next(c for c in w.version["classes"] if c != predicted)
    w.label_selected(label)
    qtbot.waitUntil(lambda: bool(_labels(w)), timeout=5000)  # written by the writer's thread
    qtbot.waitUntil(lambda: w.model.row_at(w.model.row_of(_labels(w)[0][0])).reviewed == label, timeout=5000)
    caption = w.model.index(w.model.row_of(_labels(w)[0][0])).data(_Qt.AccessibleTextRole)
    assert caption == f"\u270e {label} \u00b7 model: {model_says} \u00b7 by {w.reviewer}"


def test_where_am_i_end_of_queue_unreviewed_queue_and_impossible_filters(qtbot, window, tmp_path):  # noqa: F811
    from core.review.gallery import UNREVIEWED
    from core.app.sample import generate
    from desktop.mainwindow import UNREVIEWED_GRACE_MS

    w = window
    generate(tmp_path / "a", n_per_class=2, seed=1)
    _open(qtbot, w, tmp_path / "a")
    # a folder just classified starts at the top of the new order (least confident first)
    assert w.view.currentIndex().row() == 0 and w.gallery_info.text().startswith("Image 1 of 8 in this view · ")
    assert w.detail.title.full == w.model.row_at(0).name
    qtbot.keyClick(w.view, Qt.Key_Home)
    assert w.gallery_info.text().startswith("Image 1 of 8 in this view · ")
    qtbot.keyClick(w.view, Qt.Key_Right)
    assert w.gallery_info.text().startswith("Image 2 of 8 in this view · ")
    # impossible combinations cannot be chosen
    w.f_disagree.setChecked(True)
    w.f_rev.setCurrentIndex(w.f_rev.findData(UNREVIEWED))
    settle(qtbot, w)
    assert not w.f_disagree.isEnabled() and not w.f_disagree.isChecked() and w.model.rowCount() == 8
    # Unreviewed only: a reviewed image leaves the view after a grace; the next key lands on the image shown
    assert w.view.currentIndex().row() == 0
    first, second = w.model.row_at(0).image_id, w.model.row_at(1).image_id
    qtbot.keyClick(w.view, Qt.Key_1)
    assert w.model.row_at(w.view.currentIndex().row()).image_id == second  # moved on at once
    qtbot.keyClick(w.view, Qt.Key_2)  # within the grace: labels the image it shows
    qtbot.waitUntil(lambda: w.model.rowCount() == 6, timeout=UNREVIEWED_GRACE_MS + 5000)
    assert [(i, lab) for i, lab in _labels(w)] == [(first, "Benign"), (second, "Early Pre-B")]
    assert w.gallery_info.text().startswith("Image 1 of 6 in this view · ")
    # the end of the queue is said
    qtbot.keyClick(w.view, Qt.Key_End)
    w.move_current(1)
    assert "End of the queue" in w.statusBar().currentMessage()
    w.f_rev.setCurrentIndex(0)
    assert w.f_disagree.isEnabled()


def test_unusable_files_are_listed_with_reasons_and_copies_are_said(qtbot, window, tmp_path):  # noqa: F811
    import errno
    import shutil

    from core.errors import os_reason
    from core.app.sample import generate

    w = window
    folder = tmp_path / "a"
    files = generate(folder, n_per_class=2, seed=1)
    shutil.copy(files[0], folder / "Benign" / "copy-of-first.jpg")  # the same image twice
    (folder / "Pro" / "truncated.jpg").write_bytes(files[1].read_bytes()[:300])
    (folder / "Pro" / "not-an-image.jpg").write_bytes(b"hello")
    _open(qtbot, w, folder)
    qtbot.waitUntil(lambda: "could not be used" in w.counts.text(), timeout=5000)
    text = w.counts.text()
    assert "11 file(s), 8 image(s)" in text and "1 file(s) are copies of an image already listed" in text
    assert "Show the 2 file(s) that could not be used" in text
    assert "could not be used" in w.statusBar().currentMessage() and "log" not in w.statusBar().currentMessage()
    dlg = w.show_problem_files()
    qtbot.addWidget(dlg)
    listed = {dlg.table.item(r, 0).text(): dlg.table.item(r, 1).text() for r in range(dlg.table.rowCount())}
    assert {p.split("/")[-1] for p in listed} == {"truncated.jpg", "not-an-image.jpg"}
    assert all(reason and "Traceback" not in reason and "Errno" not in reason for reason in listed.values())
    assert "input/output error" in os_reason(OSError(errno.EIO, "Input/output error"))
    assert "Errno" not in os_reason(OSError(errno.ELOOP, "Too many levels of symbolic links"))


def test_case_report_lists_corrected_and_flagged_images_with_sign_off(qtbot, window, tmp_path):  # noqa: F811
    from desktop.report import STATEMENT, build_report
    from core.app.sample import generate

    w = window
    generate(tmp_path / "a", n_per_class=2, seed=1)
    _open(qtbot, w, tmp_path / "a")
    row = w.model.row_at(0)
    corrected = next(c for c in w.version["classes"] if c != row.predicted)
    w.label_selected(corrected)  # differs from the model's class, which was not shown (outside its experience)
    w.view.setCurrentIndex(w.model.index(w.model.row_of(w.model.row_at(1).image_id)))
    w.label_selected(OTHER)
    qtbot.waitUntil(lambda: len(_labels(w)) == 2, timeout=5000)
    from desktop.workers import setup_on_main_thread

    with setup_on_main_thread():  # the test reads the report's data itself, on its own thread
        doc = build_report(w.db, w.folder, w.version, w.reviewer, "Case 2026-117")
    text = doc.toPlainText().replace("\u2068", "").replace("\u2069", "")  # the case's name is isolated (bidi)
    assert "hemascan case report: Case 2026-117" in text and "local time" in text
    # every synthetic image is outside the model's experience: no class was shown, so a label is a first
    # answer, not a correction (tests/test_gallery_corrected.py has one that is)
    assert "Corrected by the reviewer: 0" in text and f"{OTHER_TITLE}: 1" in text
    assert "Outside the model's experience: 8" in text  # synthetic images: all flagged
    assert "Sign-off" in text and "Signature" in text and "tester" in text
    assert STATEMENT in text and "|" not in text  # real tables, no Markdown
    assert "held-out test images of all-taleqani" in text  # the model in one line, with the basis
    assert "computed with openvino int8 cpu" in text and "agrees with fp32 on 99.8%" in text  # how, and how checked
    with qtbot.waitSignal(w.reportWritten, timeout=30_000):  # its data read in a worker
        pdf = w.export_pdf(path=str(tmp_path / "case.pdf"), case="Case 2026-117")
    assert open(pdf, "rb").read().startswith(b"%PDF")


def test_report_pages_never_cut_a_thumbnail_from_its_caption(qtbot, tmp_path):
    """Every table shorter than a page (a row of thumbnails with their captions, the sign-off
    block) lies on one page, and each page has its footer with the page count."""
    from PySide6.QtGui import QPageSize, QPdfWriter, QTextDocument

    from desktop.report import paint_pages

    doc = QTextDocument()
    row = ("<table cellpadding='4' width='100%'><tr>" + "<td>" + "caption line<br>" * 9 + "</td>" * 4
           + "</tr></table>")
    doc.setHtml("<h3>Corrected</h3>" + "<p>text</p>".join([row] * 30))
    writer = QPdfWriter(str(tmp_path / "t.pdf"))
    writer.setPageSize(QPageSize(QPageSize.A4))
    writer.setResolution(150)
    pages = paint_pages(doc, writer, "Case 1")
    del writer
    height = doc.pageSize().height()
    frames = [doc.documentLayout().frameBoundingRect(f) for f in doc.rootFrame().childFrames()]
    assert pages == doc.pageCount() > 2 and len(frames) == 30
    cut = [r for r in frames if int(r.top() // height) != int((r.bottom() - 1) // height)]
    assert cut == []
    if shutil.which("pdftotext"):  # poppler-utils: the footer is real text on every page
        text = subprocess.run(["pdftotext", str(tmp_path / "t.pdf"), "-"], capture_output=True, text=True).stdout
        from core.distribution import hemascan_version

        assert all(f"Case 1 · hemascan {hemascan_version()} · page {k} of {pages}" in text for k in range(1, pages + 1))


def test_the_window_never_widens_itself_and_the_current_tile_is_framed(qtbot, window, tmp_path):  # noqa: F811
    """A long file name does not widen the window (it widened past the screen on a walkthrough),
    and the image the keys act on is selected (framed) after a reload, not only current."""
    import shutil

    from core.app.sample import generate

    w = window
    generate(tmp_path / "a", n_per_class=2, seed=3)
    first = sorted((tmp_path / "a").rglob("*.jpg"))[0]
    shutil.move(first, first.with_name("WBC-" + "Malignant-Early-Pre-B-slide-2026-117-field" * 5 + ".jpg"))
    w.resize(1000, 700)
    w.show()
    qtbot.waitExposed(w)
    width = w.width()
    _open(qtbot, w, tmp_path / "a")
    long_row = next(r for r in range(w.model.rowCount()) if w.model.row_at(r).name.startswith("WBC-"))
    w.select_image(w.model.row_at(long_row).image_id)
    for _ in range(3):  # and on, and back: the panel shows it and the next ones
        qtbot.keyClick(w.view, Qt.Key_Right)
        qtbot.keyClick(w.view, Qt.Key_Left)
        QApplication.processEvents()
    assert w.detail.title.full.startswith("WBC-Malignant") and w.detail.title.shown() != w.detail.title.full
    assert w.width() == width
    w.sort.setCurrentIndex(w.sort.findData("name"))  # a reload: the first image is current and framed
    settle(qtbot, w)
    assert w.view.selectionModel().isSelected(w.view.currentIndex()) and w.view.currentIndex().row() == 0


def test_a_class_has_one_colour_in_every_view():
    """The counts, bars, buttons and report colour a class the same whether or not they were
    given the model's class list (the walkthrough saw Pre-B change colour between views)."""
    from core.models.taxonomy import TAXONOMIES
    from desktop.gallery import class_color

    for tax in TAXONOMIES.values():
        classes = list(tax.classes)
        assert [class_color(c).name() for c in classes] == [class_color(c, classes).name() for c in classes]
        assert len({class_color(c).name() for c in classes}) == len(classes)
