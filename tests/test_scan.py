import os
import shutil

from sqlalchemy import func, select

from core.imaging import scan as scan_mod
from core.storage import Image, ImageFile, Scan
from core.jobs import run_job
from core.review.labels import latest_events, record_labels
from core.imaging.scan import images_under, scan


def test_scan_records_images_recursively(db, sample_folder):
    (sample_folder / "deep" / "er").mkdir(parents=True)
    shutil.copy(next(sample_folder.rglob("*.jpg")), sample_folder / "deep" / "er" / "COPY.JPG")
    (sample_folder / "readme.md").write_text("x")
    s = run_job(scan(db, sample_folder))
    assert s.n_files == 17 and s.n_new == 17 and s.n_skipped == 1 and s.n_errors == 0
    with db.session() as ses:
        assert ses.scalar(select(func.count(ImageFile.id))) == 17
        # the copy has the same content: one image, two files
        assert ses.scalar(select(func.count(Image.id))) == 16
        img = ses.scalars(select(Image)).first()
        assert len(img.sha256) == 64 and len(img.phash) == 16 and img.width == 224 and img.height == 224
        assert ses.get(Scan, s.scan_id).status == "completed"


def test_rescan_of_unchanged_folder_reads_no_file(db, sample_folder, monkeypatch):
    run_job(scan(db, sample_folder))
    reads = []
    real = scan_mod.read_and_hash
    monkeypatch.setattr(scan_mod, "read_and_hash", lambda p, *a: reads.append(p) or real(p, *a))
    s = run_job(scan(db, sample_folder))
    assert reads == [] and s.n_unchanged == 16 and s.n_new == 0
    # touch one file: only that one is read again
    victim = next(sample_folder.rglob("*.jpg"))
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    s = run_job(scan(db, sample_folder))
    assert len(reads) == 1 and s.n_changed == 1 and s.n_unchanged == 15


def test_moved_file_keeps_its_labels(db, sample_folder):
    run_job(scan(db, sample_folder))
    src = sorted(sample_folder.rglob("*.jpg"))[0]
    with db.session() as s:
        image_id = s.scalar(select(ImageFile.image_id).where(ImageFile.path == str(src)))
        record_labels(s, [image_id], "Pro-B", "dr.a")
    dest = sample_folder / "renamed" / "moved here.jpg"
    dest.parent.mkdir()
    src.rename(dest)
    summary = run_job(scan(db, sample_folder))
    assert summary.n_missing == 1
    with db.session() as s:
        moved = s.scalar(select(ImageFile).where(ImageFile.path == str(dest)))
        assert moved.image_id == image_id
        assert latest_events(s, [image_id])[image_id].label == "Pro-B"
        assert image_id in [i for i, _ in images_under(s, sample_folder)]


def test_cancel_keeps_what_was_written(db, tmp_path):
    import threading

    from core.app.sample import generate

    generate(tmp_path / "many", n_per_class=150, seed=1, size=64)
    cancel = threading.Event()
    job = scan(db, tmp_path / "many", cancel)
    for p in job:
        if p.stage == "scan" and p.done > 0:
            cancel.set()
    with db.session() as s:
        n = s.scalar(select(func.count(ImageFile.id)))
        status = s.scalar(select(Scan.status).order_by(Scan.id.desc()))
    assert 0 < n < 600 and status == "cancelled"
    summary = run_job(scan(db, tmp_path / "many"))  # the next scan finishes the job
    assert summary.n_unchanged == n and summary.n_new == 600 - n
