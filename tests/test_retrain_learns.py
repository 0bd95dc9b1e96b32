"""A retrain on a few corrections moves the model: the corrected images come out as
corrected, and similar images of that "lab" too (the real bundled model, fine-tuned with
retrain's defaults; the synthetic images are a new lab to it: it calls them at chance)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.imaging.images import decode_rgb, read_file
from core.jobs import run_job
from core.review.labels import record_labels
from core.models.package import load_model, read_card
from core.app.bootstrap import setup_models
from core.app.sample import generate
from core.imaging.scan import images_under, scan

FOLDER_CLASS = {"Benign": "Benign", "Early": "Early Pre-B", "Pre": "Pre-B", "Pro": "Pro-B"}


def _accuracy(package: Path, files: list[Path]) -> float:
    model, card = load_model(package)
    model.eval()
    x = np.stack([card.prep.apply(decode_rgb(read_file(f))) for f in files])
    y = np.array([card.classes.index(FOLDER_CLASS[f.parent.name]) for f in files])
    with torch.no_grad():
        pred = model(card.prep.normalise(torch.from_numpy(x))).argmax(1).numpy()
    return float((pred == y).mean())


@pytest.mark.slow
@pytest.mark.parametrize("replay", ["auto", "off"])  # auto: few images -> head refit with replay; off: fine-tune
def test_corrected_images_are_predicted_as_corrected_after_a_small_retrain(db, paths, tmp_path, replay):
    from trainer.retrain import RetrainConfig, retrain

    corrected, similar = tmp_path / "corrected", tmp_path / "similar"
    generate(corrected, n_per_class=10, seed=11)
    generate(similar, n_per_class=10, seed=12)
    run_job(scan(db, corrected))
    with db.session() as s:
        parent = Path(setup_models(s, paths).path)
        for image_id, path in images_under(s, corrected):
            record_labels(s, [image_id], FOLDER_CLASS[Path(path).parent.name], "tester", source="human")
    out = run_job(retrain(db, paths, RetrainConfig(int8=False, threads=2, bootstrap=200, replay=replay,
                                                   cv_folds=0)))  # learning, not the k-fold comparison
    assert out["status"] == "completed" and out["data"]["n_train"] + out["data"]["n_val"] == 40
    card = read_card(Path(out["package"]))
    if replay == "auto":  # 34 reviewed training images: the backbone stays, the guard keeps the parent's classes
        assert "replayed" in card.metrics["method"] and len(card.guard["classes_fitted"]) == 4
    else:
        assert sum(h["epoch"] > 0 for h in out["history"]) * -(-out["data"]["n_train"] // 32) >= 60  # enough steps
    trained = sorted(Path(it) for it in out["trained_paths"])
    similar_files = sorted(similar.rglob("*.jpg"))
    before = (_accuracy(parent, trained), _accuracy(parent, similar_files))
    after = (_accuracy(Path(out["package"]), trained), _accuracy(Path(out["package"]), similar_files))
    assert before[0] <= 0.5 and before[1] <= 0.5  # the parent does not know these images
    assert after[0] >= 0.9, (before, after)  # the corrections themselves are learnt
    assert after[1] >= before[1] + 0.3, (before, after)  # and carry over to similar images
    assert after[0] >= 0.9 and out["seconds"] > 0
