"""One perceptual hash and one duplicate finder (core/imaging/duplicates.py): `scan` and the
trainer's splits hash the same bytes to the same value (they differed on 11% of real
smears when each had its own), and near duplicates are grouped the same way everywhere."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from core.storage import Image
from core.imaging.duplicates import duplicate_groups, hamming, hash_int, perceptual_hash
from core.jobs import run_job
from core.app.sample import generate
from core.imaging.scan import scan
from trainer.data import compute_hashes, scan_class_folders

SHARE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "all-taleqani"


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    if SHARE.is_dir():  # real smears where the share is there (where the two hashes differed)
        for cls in ("Benign", "Pro"):
            (folder / cls).mkdir(parents=True)
            for f in sorted((SHARE / cls).iterdir())[:40]:
                shutil.copy(f, folder / cls / f.name)
    else:
        generate(folder, n_per_class=10, seed=1)
    return folder


def test_scan_and_trainer_store_the_same_perceptual_hash(tmp_path, db):
    folder = _folder(tmp_path)
    run_job(scan(db, folder))
    with db.session() as s:
        stored = dict(s.execute(select(Image.sha256, Image.phash)).all())
    ds = compute_hashes(scan_class_folders(folder))
    assert len(ds.sha256) == sum(1 for p in folder.rglob("*") if p.is_file())
    for sha, ph in zip(ds.sha256, ds.phash):
        assert hash_int(stored[sha]) == int(ph)


def test_near_duplicates_grouped_exact_ones_too(tmp_path):
    generate(tmp_path, n_per_class=3, seed=2)
    files = sorted(tmp_path.rglob("*.jpg"))
    data = [f.read_bytes() for f in files]
    img = cv2.imdecode(np.frombuffer(data[0], np.uint8), cv2.IMREAD_COLOR)
    ok, recompressed = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])  # same picture, other bytes
    data += [recompressed.tobytes(), data[5]]  # a near and an exact duplicate
    import hashlib

    shas = [hashlib.sha256(d).hexdigest() for d in data]
    ph = np.array([hash_int(perceptual_hash(d)) for d in data], dtype=np.uint64)
    assert shas[-2] != shas[0] and hamming(ph[-2:-1], ph[0])[0] <= 4
    groups = duplicate_groups(shas, ph)
    assert groups[-2] == groups[0] and groups[-1] == groups[5]
    assert len(set(groups)) == len(files)  # the generated images are all distinct
    with pytest.raises(Exception):
        perceptual_hash(b"not an image")
