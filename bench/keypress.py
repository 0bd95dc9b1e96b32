"""What a review key costs on the GUI thread, at a small and a large folder, in one run.

    QT_QPA_PLATFORM=offscreen python -m bench.keypress                 # 1,000 vs 100,000 images
    QT_QPA_PLATFORM=offscreen python -m bench.keypress --sizes 1000,20000 --presses 100

For each size it writes that many images (rows only: scans, files, predictions of the
active model; no image files, so thumbnails show "unreadable", which costs nothing here)
into a fresh data directory, opens the folder in the real window and times, on the GUI
thread, the handling of: a class key (label + move on), an arrow (move), and Ctrl+Z. The
goal is under 16 ms per key (one frame at 60 Hz). Prints median and 95th percentile per
key and size, and the ratio large / small.
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path


def populate(paths, folder: Path, n: int) -> None:
    from sqlalchemy import insert

    from core.storage import Database, Image, ImageFile, Prediction, Scan, utcnow
    from core.imaging.fspath import to_db
    from core.app.bootstrap import setup_models

    db = Database(paths.db_url())
    classes = ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]
    with db.session() as s:
        vid = setup_models(s, paths).id
        scan = Scan(root=to_db(str(folder)), started_at=utcnow(), status="completed")
        s.add(scan)
        s.flush()
        scan_id = scan.id
    chunk = 5000
    for start in range(0, n, chunk):
        ids = range(start, min(n, start + chunk))
        with db.session() as s:
            s.execute(insert(Image), [dict(sha256=hashlib.sha256(str(i).encode()).hexdigest(), width=224, height=224,
                                           phash=f"{i * 2654435761 % 2**64:016x}", format="JPEG",
                                           first_seen=utcnow()) for i in ids])
        with db.session() as s:
            from sqlalchemy import select

            by_sha = dict(s.execute(select(Image.sha256, Image.id).where(Image.id > start)).all())
            rows_f, rows_p = [], []
            for i in ids:
                image_id = by_sha[hashlib.sha256(str(i).encode()).hexdigest()]
                rows_f.append(dict(path=to_db(str(folder / f"img{i:06d}.jpg")), size=1000, mtime_ns=i, image_id=image_id,
                                   last_scan_id=scan_id, missing=False))
                conf = 0.4 + 0.6 * ((i * 7919) % 1000) / 1000
                probs = [(1 - conf) / 3] * 4
                probs[i % 4] = conf
                rows_p.append(dict(image_id=image_id, model_version_id=vid, label=classes[i % 4], confidence=conf,
                                   entropy=0.5, probabilities=probs, uncertain=conf < 0.6, created_at=utcnow(),
                                   runtime="bench", out_of_distribution=False, guard_distance=1.0))
            s.execute(insert(ImageFile), rows_f)
            s.execute(insert(Prediction), rows_p)
    db.dispose()


def measure(n: int, presses: int) -> dict[str, list[float]]:
    from PySide6.QtCore import QSettings, Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from core.config import resolve_paths
    from desktop.mainwindow import MainWindow

    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp(prefix="hemascan-keys-"))
    folder = tmp / "folder"
    folder.mkdir()
    paths = resolve_paths(tmp / "data").ensure()
    t0 = time.perf_counter()
    populate(paths, folder, n)
    print(f"{n:,} images written in {time.perf_counter() - t0:.1f} s", flush=True)
    settings = QSettings(str(tmp / "s.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "bench")
    w = MainWindow(paths, settings=settings, device="cpu")
    w.resize(1400, 900)
    w.show()
    w.open_folder(folder, classify=False)
    for _ in range(50):
        app.processEvents()
    while getattr(w, "gallery", None) is not None and w.gallery.busy:  # the gallery reads in a worker
        app.processEvents()
        time.sleep(0.01)
    w.view.setFocus()
    out: dict[str, list[float]] = {"class key (label, move on)": [], "arrow (move)": [], "Ctrl+Z (undo)": []}
    keys = {"class key (label, move on)": (Qt.Key_1, Qt.NoModifier), "arrow (move)": (Qt.Key_Right, Qt.NoModifier),
            "Ctrl+Z (undo)": (Qt.Key_Z, Qt.ControlModifier)}
    for name, (key, mod) in keys.items():
        for _ in range(presses):
            start = time.perf_counter()
            QTest.keyClick(w.view, key, mod)
            out[name].append((time.perf_counter() - start) * 1000)
            app.processEvents()  # what the key queued (label write, counts) runs between presses
        w.label_writer.flush(5)
    w.close()
    w.workers.wait(10000)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--presses", type=int, default=100)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    results = {n: measure(n, args.presses) for n in sizes}
    print(f"\n{'key':30s}" + "".join(f"{n:>12,} median / p95 ms" for n in sizes))
    for name in results[sizes[0]]:
        cells = []
        for n in sizes:
            v = sorted(results[n][name])
            cells.append(f"{statistics.median(v):>12.1f} / {v[int(0.95 * (len(v) - 1))]:.1f}")
        print(f"{name:30s}" + "   ".join(cells))
    small, large = sizes[0], sizes[-1]
    for name in results[small]:
        ratio = statistics.median(results[large][name]) / max(statistics.median(results[small][name]), 1e-6)
        print(f"ratio {name}: {ratio:.2f} ({large:,} / {small:,} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
