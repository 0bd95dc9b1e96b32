""""Other / not assessable": a review label of every taxonomy, never a training target; after
a retrain the images reviewed as Other, and images like them, are flagged outside the
model's experience."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from core.storage import ModelVersion
from core.jobs import run_job
from core.review.labels import record_labels
from core.imaging.scan import images_under, scan
from core.models.taxonomy import OTHER, review_labels

from .test_retrain import FAST, labelled  # noqa: F401  (fixture)


def test_other_is_a_review_label_of_every_taxonomy(db):
    from core.models.taxonomy import TAXONOMIES

    for name, tax in TAXONOMIES.items():
        assert review_labels(name) == (*tax.classes, OTHER) and OTHER not in tax.classes
    with db.session() as s, pytest.raises(ValueError, match="not a class"):
        record_labels(s, [1], "Smudge", "tester")


def _foreign_folder(root: Path) -> Path:
    """Smear-like images the lab never trained on: the sample generator's cells, greyed and blurred."""
    from core.app.sample import generate

    folder = root / "foreign"
    for p in generate(root / "src", n_per_class=6, seed=9, size=64):
        img = cv2.imread(str(p))
        grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        out = folder / p.parent.name / (p.stem + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), cv2.GaussianBlur(grey, (0, 0), 1.5))
    return folder


def _flagged(db, version_name: str, paths_: list[str]) -> np.ndarray:
    from core.imaging.images import decode_rgb, read_file
    from core.inference.predict import Predictor

    with db.session() as s:
        pkg = s.scalar(select(ModelVersion.path).where(ModelVersion.name == version_name))
    pred = Predictor(pkg, "cpu", engine="torch", precision="fp32")
    x = np.stack([pred.prep.apply(decode_rgb(read_file(p))) for p in paths_])
    return pred.assess(x).outside


@pytest.mark.slow
def test_images_reviewed_as_other_and_similar_ones_are_flagged_after_retrain(labelled, db, paths, tmp_path):  # noqa: F811
    from trainer.retrain import RetrainConfig, retrain

    foreign = _foreign_folder(tmp_path)
    run_job(scan(db, foreign))
    with db.session() as s:
        rows = sorted(images_under(s, foreign), key=lambda r: r[1])
    reviewed, similar = rows[::2], rows[1::2]  # half reviewed as Other, half never seen by anyone

    before = run_job(retrain(db, paths, RetrainConfig(**FAST, name="without-other")))
    with db.session() as s:
        record_labels(s, [i for i, _ in reviewed], OTHER, "tester", note="not a blast: grey, out of focus")
    after = run_job(retrain(db, paths, RetrainConfig(**FAST, name="with-other")))
    # "Other" is never a class to learn: the same class images were used
    assert after["data"]["n_train"] + after["data"]["n_val"] == before["data"]["n_train"] + before["data"]["n_val"]
    with db.session() as s:
        card = s.scalar(select(ModelVersion.card).where(ModelVersion.name == "with-other"))
    assert card["guard"]["n_other"] == len(reviewed) and card["classes"] == before["data"]["classes"]

    flagged_reviewed = _flagged(db, "with-other", [p for _, p in reviewed])
    flagged_similar = _flagged(db, "with-other", [p for _, p in similar])
    baseline_similar = _flagged(db, "without-other", [p for _, p in similar])
    assert flagged_reviewed.all()
    assert flagged_similar.mean() >= 0.9 and flagged_similar.mean() >= baseline_similar.mean()
    lab = [p for _, p in images_under_labelled(db, labelled)]
    assert _flagged(db, "with-other", lab).mean() <= 0.25  # the lab's own kind of images stay in
    print(f"similar foreign flagged: {baseline_similar.mean():.2f} without Other reviews, "
          f"{flagged_similar.mean():.2f} with")


def images_under_labelled(db, folder):
    with db.session() as s:
        return images_under(s, folder)
