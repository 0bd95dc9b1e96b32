"""Regenerate docs/screenshots/*.png: the window's main states on real smear images.

    xvfb-run -s "-screen 0 1366x768x24" .venv/bin/python -m desktop.screenshots [--dataset DIR]

Copies a few images per class from the dataset (never committed) into a temporary
folder, classifies them in a temporary data directory, and grabs the window with Qt.
The report page needs pdftoppm (poppler-utils).
"""
from __future__ import annotations

import argparse
import io
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from core.config import resolve_paths
from core.storage import Database
from core.models.registry import register_package

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "all-taleqani"))
    ap.add_argument("--foreign", default=str(ROOT.parent / "shared" / "datasets" / "pbc-dev"),
                    help="images from another lab for the 'outside the model's experience' screenshot")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--model", help="a model package to register and activate (default: the bundled one)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hemascan-shots-"))
    folder = tmp / "smears-2026-11-23"
    rng = random.Random(7)
    for cls_dir in sorted(Path(args.dataset).iterdir()):
        if cls_dir.is_dir():
            files = sorted(cls_dir.glob("*.jpg"))
            (folder / cls_dir.name).mkdir(parents=True)
            for f in rng.sample(files, min(args.per_class, len(files))):
                shutil.copy(f, folder / cls_dir.name / f.name)

    from PySide6.QtCore import QEventLoop, QSettings, Qt, QTimer
    from PIL import Image as PILImage
    from PySide6.QtCore import QBuffer
    from PySide6.QtWidgets import QApplication


    app = QApplication.instance() or QApplication(["hemascan"])
    from .mainwindow import MainWindow  # heavy: imports Qt

    settings = QSettings(str(tmp / "settings.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "Dr. A. Pathologist")
    paths = resolve_paths(tmp / "data").ensure()
    if args.model:
        db = Database(paths.db_url())
        with db.session() as s:
            register_package(s, paths, Path(args.model), activate=True)
        db.dispose()
    w = MainWindow(paths, settings=settings)
    w.resize(1366, 740)
    w.show()

    def wait(signal=None, ms=60000, until=None):
        loop = QEventLoop()
        if signal is not None:
            signal.connect(lambda *a: loop.quit())
        timer = QTimer()
        timer.setInterval(50)
        if until is not None:
            timer.timeout.connect(lambda: until() and loop.quit())
        timer.start()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def shot(name):
        app.processEvents()
        path = out / f"{name}.png"
        buf = QBuffer()
        buf.open(QBuffer.ReadWrite)
        w.grab().toImage().save(buf, "PNG")
        # 256 median-cut colours, no dithering: each PNG stays small (< 300 KB) and reads well
        im = PILImage.open(io.BytesIO(bytes(buf.data()))).convert("RGB")
        im.quantize(256, method=PILImage.Quantize.MEDIANCUT, dither=PILImage.Dither.NONE).save(path, optimize=True)
        print(f"{path} {path.stat().st_size // 1024} KB")

    w.activateWindow()
    w.raise_()
    wait(ms=30000, until=lambda: "…" not in w.device_label.text() and QApplication.activeWindow() is w)
    shot("01-empty")

    grabbed = []

    def on_progress(p):
        if p.stage == "classify" and p.done > 0 and not grabbed:
            grabbed.append(1)
            shot("02-classifying")

    w.open_folder(folder, classify=False)
    w.classify()
    w.job.signals.progress.connect(on_progress)
    wait(w.jobFinished, 300000)

    w.view.setFocus()
    w.view.setCurrentIndex(w.model.index(0))
    from PySide6.QtTest import QTest

    for k in (Qt.Key_2, Qt.Key_A, Qt.Key_4, Qt.Key_3, Qt.Key_1, Qt.Key_A):
        QTest.keyClick(w.view, k)
    if not w.review.can_undo:  # no window manager gave the window focus: use the actions
        for a in (w.label_actions[1], w.a_accept, w.label_actions[3], w.label_actions[2]):
            a.trigger()
    w.view.setCurrentIndex(w.model.index(5))
    wait(w.imageShown, 5000)
    wait(ms=8000, until=lambda: not w.loader._pending)
    shot("03-gallery")

    w.detail.gradcam.setChecked(True)
    wait(w.gradcamReady, 30000)
    wait(ms=300)
    shot("04-detail-gradcam")

    pdf = tmp / "report.pdf"
    w.export_pdf(path=str(pdf))
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-png", "-r", "70", "-f", "1", "-l", "1", "-singlefile", str(pdf),
                        str(out / "05-report")], check=True)
        print(out / "05-report.png")

    # another lab's normal white cells (pbc-dev) next to a few of this lab's fields: the guard
    # marks the foreign ones, and one is reviewed as "Other / not assessable"
    foreign = sorted(Path(args.foreign).rglob("*.jpg"))
    if foreign:
        case = tmp / "case-with-other-lab-cells"
        (case / "other-lab").mkdir(parents=True)
        (case / "this-lab").mkdir(parents=True)
        for f in rng.sample(foreign, min(24, len(foreign))):
            shutil.copy(f, case / "other-lab" / f.name)
        for f in rng.sample(sorted(folder.rglob("*.jpg")), 12):
            shutil.copy(f, case / "this-lab" / f.name)
        w.detail.gradcam.setChecked(False)
        w.open_folder(case, classify=False)
        w.classify()
        wait(w.jobFinished, 300000)
        w.sort.setCurrentIndex(w.sort.findData("name"))
        w.view.setFocus()
        outside = [r for r in range(w.model.rowCount()) if (w.model.row_at(r) or None) and w.model.row_at(r).outside]
        if outside:
            w.view.setCurrentIndex(w.model.index(outside[0]))
            w.a_other.trigger()  # reviewed as "Other"; moves on
            w.view.setCurrentIndex(w.model.index(outside[1] if len(outside) > 1 else outside[0]))
        wait(w.imageShown, 5000)
        wait(ms=8000, until=lambda: not w.loader._pending)
        shot("06-outside-other-lab")
    w.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
