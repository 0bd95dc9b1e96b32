"""The k-fold comparison (issue 23 item 5): the new version is compared with the active one on
every reviewed training image, each predicted by a version fitted without it, plus the
validation images, with McNemar's exact test; a clearly better version is promoted without
--force however few the images, one that cannot be told apart is not, with one sentence why."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.app.sample import generate
from core.imaging.scan import images_under, scan
from core.jobs import run_job
from core.models.registry import active_version
from core.review.labels import record_labels

from .test_retrain import CLASSES


def test_paired_test_decides_on_50_images_where_validation_alone_cannot():
    from trainer.retrain import SMALL_VAL, compare_predictions, mcnemar_exact, promotion_advice

    n = 50
    assert n < SMALL_VAL
    y = np.arange(n) % 4
    right, wrong = np.eye(4)[y] * 0.9 + 0.025, np.eye(4)[(y + 1) % 4] * 0.9 + 0.025

    def probs(correct):
        return np.where(np.asarray(correct)[:, None], right, wrong)

    old = np.arange(n) < 25  # the active version: half right
    clearly = old | (np.arange(n) < 40)  # fixes 15, breaks none
    basis = {"k": 5, "n_cross_validated": 41, "n_validation": 9}
    assert mcnemar_exact(clearly, old) == {"test": "McNemar exact (two-sided)", "n_fixed": 15, "n_broken": 0,
                                           "p": pytest.approx(2 / 2 ** 15)}
    cmp = compare_predictions(y, probs(clearly), probs(old), CLASSES, n_boot=300, basis=basis)
    assert cmp["verdict"] == "better" and promotion_advice(cmp) == ("better", None)
    # the same images as validation images only: too few to decide, as before
    assert promotion_advice(compare_predictions(y, probs(clearly), probs(old), CLASSES, n_boot=300))[0] == "undecided"
    # 5 fixed, 3 broken: could be chance
    maybe = old.copy()
    maybe[25:30], maybe[:3] = True, False
    verdict, why = promotion_advice(compare_predictions(y, probs(maybe), probs(old), CLASSES, n_boot=300, basis=basis))
    assert verdict == "undecided" and "5 fixed and 3 broken could be chance" in why and "\n" not in why
    assert "50 reviewed images (41 predicted by versions trained without them, 9 validation)" in why
    # clearly worse
    verdict, why = promotion_advice(compare_predictions(y, probs(old), probs(clearly), CLASSES, n_boot=300, basis=basis))
    assert verdict == "worse" and why.startswith("the new version is worse")


FOLDER_CLASS = {"Benign": "Benign", "Early": "Early Pre-B", "Pre": "Pre-B", "Pro": "Pro-B"}


def reviewed_lab(tmp_path, db, paths, noise: bool) -> None:
    """40 images of a new "lab" (the synthetic smears the bundled model calls at chance), each
    reviewed: with its true class, or (noise) with a class drawn at random, which nothing can learn."""
    from core.app.bootstrap import setup_models

    folder = tmp_path / "lab"
    generate(folder, n_per_class=10, seed=11)
    run_job(scan(db, folder))
    rng = np.random.default_rng(3)
    with db.session() as s:
        setup_models(s, paths)
        for image_id, path in images_under(s, folder):
            label = CLASSES[int(rng.integers(0, 4))] if noise else FOLDER_CLASS[Path(path).parent.name]
            record_labels(s, [image_id], label, "tester", source="human")
        return active_version(s).name


@pytest.mark.slow
def test_retrain_promote_without_force_when_kfold_shows_better(tmp_path, db, paths, cli):
    # the bundled model at chance on a new lab; 40 reviews (32 training, 8 validation): the head
    # refit with replay (retrain's default for so few images) learns them
    parent = reviewed_lab(tmp_path, db, paths, noise=False)
    rc, out, err = cli("retrain", "--threads", 2, "--promote")
    assert rc == 0, err
    assert "compared on: 40 reviewed images" in out and "predicted by versions trained without them" in out, out
    assert "promoted: " in out and "not promoted" not in out and "although" not in out, out
    with db.session() as s:
        assert active_version(s).name != parent


@pytest.mark.slow
def test_retrain_not_promoted_when_kfold_cannot_tell(tmp_path, db, paths, cli):
    parent = reviewed_lab(tmp_path, db, paths, noise=True)
    rc, out, err = cli("retrain", "--threads", 2, "--promote")
    assert rc == 0, err
    assert "predicted by versions trained without them" in out, out
    line = next(ln for ln in out.splitlines() if ln.startswith("not promoted: "))
    assert f"cannot tell the new version from {parent}" in line or f"is worse than {parent}" in line, line
    with db.session() as s:
        assert active_version(s).name == parent


def test_kfold_predicts_each_reviewed_image_by_a_version_without_it():
    from trainer.data import Split
    from trainer.pipeline import TrainingArrays
    from trainer.retrain import RetrainConfig, _cross_validated
    from trainer.sources import Item, TrainingData

    from core.imaging.preprocessing import Preprocessing

    n_train, n_val = 10, 3
    items = TrainingData("all_subtype", CLASSES, [Item(f"t{i}", i % 4, f"{i}", i) for i in range(n_train - 2)]
                         + [Item(f"b{i}", 0, f"b{i}", None, "base") for i in range(2)],
                         [Item(f"v{i}", 0, f"v{i}", 100 + i) for i in range(n_val)])
    data = TrainingArrays(np.zeros((n_train + n_val, 8, 8, 3), np.uint8), np.zeros(n_train + n_val, np.int64),
                          CLASSES, "all_subtype", Preprocessing(input_size=8))
    split = Split("reviewed", np.arange(n_train), np.arange(n_train, n_train + n_val), np.zeros(0, int))
    seen = []

    def refit(fold, f):  # records each fold's training side; a model that always says class f % 4
        import torch

        seen.append(set(fold.train.tolist()))
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 3, 4))
        with torch.no_grad():
            model[1].weight.zero_()
            model[1].bias.copy_(torch.eye(4)[f % 4] * 10)
        return {"status": "completed", "model": model}

    k, idx, logits = run_job(_cross_validated(data, split, items, RetrainConfig(cv_folds=4), refit, None))
    assert k == 4 and sorted(idx.tolist()) == list(range(n_train - 2))  # base images are never held out
    held = [set(range(n_train)) - s for s in seen]
    assert sorted(i for h in held for i in h) == list(range(n_train - 2))  # each reviewed image held out once
    for f, h in enumerate(held):
        for i in h:
            assert logits[list(idx).index(i)].argmax() == f % 4  # predicted by the fold that left it out
