"""Files that change under hemascan's feet, and files too big to read (issue 11, defect 6).

The bytes that are hashed must be the bytes that are classified: a file overwritten between
the scan and the model, or while the scan reads it, must never leave a prediction or a hash
that belongs to other content. Files over the size limit are refused from their stat.
"""
from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from core.imaging import images as images_mod
from core.inference import predict as inference_mod
from core.storage import Image, ImageFile, Prediction
from core.inference.predict import classify
from core.jobs import run_job
from core.app.sample import smear_image
from core.imaging.scan import scan

GiB = 1024**3
PEAK_LIMIT = 200 * 1024**2  # far below the 2 GiB a whole read of the big file costs


def _encode(cls: str, seed: int, ext: str) -> bytes:
    img = smear_image(cls, np.random.default_rng(seed), 224)
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _folder(tmp_path: Path, ext: str) -> list[Path]:
    """Six images of two classes; names sort so that the victim is the first."""
    folder = tmp_path / "smears"
    folder.mkdir()
    files = []
    for i, cls in enumerate(["Benign", "Benign", "Benign", "Pro-B", "Pro-B", "Pro-B"]):
        p = folder / f"{i}-{cls}{ext}"
        p.write_bytes(_encode(cls, 100 + i, ext))
        files.append(p)
    return files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_row(db, path: Path) -> ImageFile:
    with db.session() as s:
        row = s.scalar(select(ImageFile).where(ImageFile.path == str(path)))
        s.expunge(row)
        return row


def _prediction(db, sha: str) -> Prediction | None:
    with db.session() as s:
        pred = s.scalar(select(Prediction).join(Image, Image.id == Prediction.image_id).where(Image.sha256 == sha))
        if pred is not None:
            s.expunge(pred)
        return pred


def _overwrite(path: Path, data: bytes, keep_stat: bool) -> None:
    """Replace the content in place; with ``keep_stat`` also put the old mtime back (same
    size and mtime: only ctime tells, as after a copy that preserves times)."""
    st = path.stat()
    path.write_bytes(data)
    if keep_stat:
        assert path.stat().st_size == st.st_size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _after_scan(monkeypatch, action) -> None:
    """Run ``action`` inside classify, right after its scan and before the model reads files."""
    real_scan = inference_mod.scan

    def scan_then(*args, **kwargs):
        summary = yield from real_scan(*args, **kwargs)
        action()
        return summary

    monkeypatch.setattr(inference_mod, "scan", scan_then)


# (a) overwritten between the scan and the model -------------------------------------------

@pytest.mark.parametrize("ext, keep_stat", [(".jpg", False), (".bmp", True)], ids=["jpg", "bmp-same-size-and-mtime"])
def test_file_replaced_between_scan_and_classify_is_not_predicted_under_the_old_hash(
        db, paths, tmp_path, monkeypatch, ext, keep_stat):
    files = _folder(tmp_path, ext)
    victim = files[0]
    old_bytes = victim.read_bytes()
    new_bytes = _encode("Pro-B", 999, ext)  # another image, in no other file of the folder
    assert _sha(new_bytes) != _sha(old_bytes)
    folder = victim.parent

    _after_scan(monkeypatch, lambda: _overwrite(victim, new_bytes, keep_stat))
    s = run_job(classify(db, paths, folder))
    stale = _prediction(db, _sha(old_bytes))
    assert stale is None, (f"a prediction ({stale.label} {stale.probabilities}) was stored under the old "
                           "content's hash although the model never saw the old content")
    assert s.n_predicted == 5 and s.n_errors == 1
    assert "changed after it was scanned" in s.errors[0][1] and s.errors[0][0] == str(victim)
    row = _file_row(db, victim)
    assert "changed after it was scanned" in row.error and "re-scanned on the next run" in row.error
    with db.session() as ses:  # nothing stored is lost: the old content's image row stays
        assert ses.scalar(select(Image.id).where(Image.sha256 == _sha(old_bytes))) is not None

    monkeypatch.undo()
    s = run_job(classify(db, paths, folder))  # the next run re-scans the file and predicts its new content
    assert s.n_errors == 0 and s.n_predicted == 1
    row = _file_row(db, victim)
    assert row.error is None
    with db.session() as ses:
        assert ses.scalar(select(Image.sha256).where(Image.id == row.image_id)) == _sha(new_bytes)
    assert _prediction(db, _sha(new_bytes)) is not None
    assert _prediction(db, _sha(old_bytes)) is None


def test_classify_predicts_the_bytes_it_hashed(db, paths, tmp_path, monkeypatch):
    """A file whose content goes back to what the scan saw is predicted normally: the check
    is on the bytes, not the stat."""
    files = _folder(tmp_path, ".jpg")
    victim = files[0]
    old_bytes = victim.read_bytes()
    _after_scan(monkeypatch, lambda: (victim.write_bytes(b"x"), victim.write_bytes(old_bytes)))
    s = run_job(classify(db, paths, victim.parent))
    assert s.n_predicted == 6 and s.n_errors == 0
    assert _prediction(db, _sha(old_bytes)) is not None


# (b) modified while the scan reads it ----------------------------------------------------

class _ChangesWhileRead:
    """An open file whose content is replaced on disk (same size, mtime put back) as soon as
    it has been read, as a writer racing the scan's read would."""

    def __init__(self, fh, on_read):
        self._fh, self._on_read = fh, on_read

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def read(self, *args):
        data = self._fh.read(*args)
        self._on_read()
        return data


def _rewrite_on_read(monkeypatch, victim: Path, contents: list[bytes]) -> list[int]:
    """The first reads of ``victim`` through core.imaging.images each replace it with the next of
    ``contents``; later reads change nothing. Returns a list that counts the reads."""
    reads: list[int] = []

    def opener(path, *args, **kwargs):
        fh = open(path, *args, **kwargs)
        if os.fsdecode(path) != str(victim):
            return fh

        def on_read():
            reads.append(1)
            if len(reads) <= len(contents):
                _overwrite(victim, contents[len(reads) - 1], keep_stat=True)

        return _ChangesWhileRead(fh, on_read)

    monkeypatch.setattr(images_mod, "open", opener, raising=False)
    return reads


def test_file_modified_while_the_scan_hashes_it(db, tmp_path, monkeypatch):
    files = _folder(tmp_path, ".bmp")
    victim = files[0]
    new_bytes = _encode("Pro-B", 999, ".bmp")
    reads = _rewrite_on_read(monkeypatch, victim, [new_bytes])
    s = run_job(scan(db, victim.parent))
    assert reads and s.n_errors == 0

    def stored_sha() -> str | None:
        row = _file_row(db, victim)
        with db.session() as ses:
            return ses.scalar(select(Image.sha256).where(Image.id == row.image_id))

    # what is stored for the file is the hash of what the file holds, not of what it held mid-read
    assert stored_sha() == _sha(victim.read_bytes()) == _sha(new_bytes)
    monkeypatch.undo()
    s = run_job(scan(db, victim.parent))  # and a re-scan that only stats keeps it right
    assert stored_sha() == _sha(victim.read_bytes())


def test_file_that_keeps_changing_is_recorded_and_read_again_next_scan(db, tmp_path, monkeypatch):
    files = _folder(tmp_path, ".bmp")
    victim = files[0]
    others = [_encode("Pro-B", 900 + i, ".bmp") for i in range(20)]
    reads = _rewrite_on_read(monkeypatch, victim, others)
    s = run_job(scan(db, victim.parent))
    assert s.n_errors == 1 and "changed while it was being read" in s.errors[0][1]
    assert len(reads) < 10  # a few tries, then the reason is recorded and the batch goes on
    row = _file_row(db, victim)
    assert row.image_id is None and "changed while it was being read" in row.error
    with db.session() as ses:
        assert len(ses.scalars(select(ImageFile.image_id).where(ImageFile.image_id.is_not(None))).all()) == 5

    monkeypatch.undo()  # the writer is done: the next scan reads it again (its stat was not trusted)
    s = run_job(scan(db, victim.parent))
    assert s.n_errors == 0 and s.n_changed == 1
    row = _file_row(db, victim)
    with db.session() as ses:
        assert ses.scalar(select(Image.sha256).where(Image.id == row.image_id)) == _sha(victim.read_bytes())


# (c) files over the size limit -----------------------------------------------------------

def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)  # no blocks on disk, but reading it would cost `size` bytes of memory


def _peak_python_memory(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_scan_refuses_a_huge_file_from_its_stat(db, tmp_path):
    files = _folder(tmp_path, ".jpg")
    big = files[0].parent / "huge.jpg"
    _sparse(big, 2 * GiB)
    s, peak = _peak_python_memory(lambda: run_job(scan(db, big.parent)))
    assert peak < PEAK_LIMIT, f"scanning allocated {peak / 1024**2:.0f} MB: the big file was read"
    assert s.n_errors == 1 and s.errors[0][0] == str(big)
    assert "2.0 GiB" in s.errors[0][1] and "over the 256 MiB limit" in s.errors[0][1]
    assert _file_row(db, big).error == s.errors[0][1]
    with db.session() as ses:
        assert len(ses.scalars(select(ImageFile.image_id).where(ImageFile.image_id.is_not(None))).all()) == 6


def test_classify_refuses_a_huge_file_and_classifies_the_rest(db, paths, tmp_path):
    files = _folder(tmp_path, ".jpg")
    big = files[0].parent / "huge.bmp"
    _sparse(big, 2 * GiB)
    s, peak = _peak_python_memory(lambda: run_job(classify(db, paths, big.parent)))
    assert peak < PEAK_LIMIT, f"classify allocated {peak / 1024**2:.0f} MB: the big file was read"
    assert s.n_predicted == 6 and s.scan.n_errors == 1
    assert s.scan.errors[0][0] == str(big) and "over the 256 MiB limit" in s.scan.errors[0][1]
    assert "over the 256 MiB limit" in _file_row(db, big).error


def test_file_grown_huge_after_the_scan_is_refused_by_classify(db, paths, tmp_path, monkeypatch):
    files = _folder(tmp_path, ".jpg")
    victim = files[0]
    _after_scan(monkeypatch, lambda: _sparse(victim, 2 * GiB))
    s, peak = _peak_python_memory(lambda: run_job(classify(db, paths, victim.parent)))
    assert peak < PEAK_LIMIT, f"classify allocated {peak / 1024**2:.0f} MB: the big file was read"
    assert s.n_predicted == 5 and s.n_errors == 1
    assert s.errors[0][0] == str(victim) and "2.0 GiB, over the 256 MiB limit" in s.errors[0][1]
    assert "over the 256 MiB limit" in _file_row(db, victim).error


def test_size_limit_is_configurable(db, tmp_path, monkeypatch):
    files = _folder(tmp_path, ".bmp")  # each about 147 KiB
    from core.config import Settings

    monkeypatch.setattr(db, "settings", Settings(max_file_mb=0.125))  # HEMASCAN_MAX_FILE_MB=0.125 at start
    s = run_job(scan(db, files[0].parent))
    assert s.n_errors == 6 and all("file is 147 KiB, over the 128 KiB limit" in e for _, e in s.errors)
    assert all("HEMASCAN_MAX_FILE_MB" in e for _, e in s.errors)  # the reason says how to change it
    s = run_job(scan(db, files[0].parent))  # same limit: reported again, not read again
    assert s.n_errors == 6 and s.n_unchanged == 6
    monkeypatch.setattr(db, "settings", Settings(max_file_mb=1))  # limit raised: the refused files are read now
    s = run_job(scan(db, files[0].parent))
    assert s.n_errors == 0 and s.n_changed == 6
    with db.session() as ses:
        assert len(ses.scalars(select(ImageFile.image_id).where(ImageFile.image_id.is_not(None))).all()) == 6
