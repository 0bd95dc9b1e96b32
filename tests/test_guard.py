"""The foreign-image guard: fitting, saving, loading with its hash, the engines' embeddings,
and the third state (outside the model's experience) through classify -> database -> CSV."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from sqlalchemy import select

from core.errors import ModelPackageError
from core.models.guard import GUARD_FILE, load_guard
from core.models.package import read_card, sha256_file
from core.models.registry import bundled_default_package
from trainer.guard import fit_guard, write_guard


def clusters(rng, n_per, centres, dim=16, spread=1.0):
    x = np.concatenate([rng.normal(c, spread, (n_per, dim)) for c in centres])
    return x, np.repeat(np.arange(len(centres)), n_per)


def test_fit_flags_about_five_percent_in_lab_and_all_foreign():
    rng = np.random.default_rng(0)
    centres = [0.0, 4.0, 8.0]
    train, y = clusters(rng, 300, centres)
    val, _ = clusters(rng, 200, centres)
    test, _ = clusters(rng, 500, centres)
    guard, info = fit_guard(train, y, val)
    in_lab = guard.flags(test)[1].mean()
    assert 0.02 <= in_lab <= 0.09, in_lab
    assert guard.flags(rng.normal(20.0, 1.0, (200, 16)))[1].all()  # far from every class
    assert info["n_fit"] == 900 and info["n_threshold"] == 600 and info["threshold"] > 0
    # a mean shift along the direction the classes never vary in is foreign too (Mahalanobis, not Euclid)
    wide = train.copy()
    wide[:, 0] *= 10  # one direction varies a lot in the lab
    g2, _ = fit_guard(wide, y, val * np.r_[10.0, np.ones(15)])
    near_but_odd = test[:200].copy()
    near_but_odd[:, 1] += 6.0  # a small Euclidean step along a direction that never varies
    assert g2.flags(near_but_odd)[1].mean() > 0.9


def test_wide_embeddings_are_projected_and_stay_small():
    rng = np.random.default_rng(1)
    train, y = clusters(rng, 150, [0.0, 3.0], dim=2000)
    guard, info = fit_guard(train, y, train[:50])
    assert guard.whitening.shape == (2000, 299) and info["dim"] == 2000


def test_guard_file_round_trip_and_hash_check(tmp_path):
    rng = np.random.default_rng(2)
    train, y = clusters(rng, 100, [0.0, 5.0])
    guard, info = fit_guard(train, y, train[:40])
    record = write_guard(tmp_path, guard, info)
    assert record["sha256"] == sha256_file(tmp_path / GUARD_FILE)
    loaded = load_guard(tmp_path, record, n_classes=2)
    x = rng.normal(0, 3, (20, 16))
    assert np.allclose(loaded.distances(x), guard.distances(x), rtol=1e-5)
    assert loaded.threshold == pytest.approx(guard.threshold)
    assert load_guard(tmp_path, {}, 2) is None  # no guard in the card: none used
    with pytest.raises(ModelPackageError, match="outside its package"):
        load_guard(tmp_path, {**record, "file": "../guard.safetensors"}, 2)
    data = bytearray((tmp_path / GUARD_FILE).read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / GUARD_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="does not match its card"):
        load_guard(tmp_path, record, 2)
    (tmp_path / GUARD_FILE).unlink()
    with pytest.raises(ModelPackageError, match="missing"):
        load_guard(tmp_path, record, 2)
    # right hash, wrong shape for this model (3 classes' means for a 1-class model)
    guard3, info3 = fit_guard(*clusters(rng, 60, [0.0, 4.0, 8.0]), train[:10])
    record3 = write_guard(tmp_path, guard3, info3)
    with pytest.raises(ModelPackageError, match="malformed"):
        load_guard(tmp_path, record3, n_classes=2)


@pytest.mark.parametrize("engine,precision", [("torch", "fp32"), ("openvino", "fp32"), ("openvino", "int8")])
def test_engines_compute_the_guard_distance_of_the_penultimate_embedding(tmp_path, engine, precision):
    """torch returns the embedding and the guard runs in numpy; OpenVINO computes the distances
    inside its graph. Both against the plain fp32 model's embedding through the numpy guard."""
    import torch

    from core.models.architectures import LogitsAndEmbedding
    from core.inference.predict import Predictor
    from core.models.package import load_model

    pkg = bundled_default_package()
    model, card = load_model(pkg)
    s = card.prep.input_size
    x = np.random.default_rng(3).integers(0, 255, (4, s, s, 3), dtype=np.uint8)
    with torch.inference_mode():
        ref_logits, ref_emb = LogitsAndEmbedding(model.eval())(card.prep.normalise(torch.from_numpy(x)))
    pred = Predictor(pkg, "cpu", engine=engine, precision=precision, cache_dir=tmp_path)
    assert pred.guard is not None
    logits, distance, other = pred.engine.scores(x)
    ref_d = pred.guard.distances(ref_emb.numpy())
    assert other is None and distance.shape == (4,)
    # fp32 vs fp32 (BN folded): equal to float rounding. int8 on these noise images (far from any
    # smear) drifts up to ~15%; on real in-lab images its flagged share matches fp32 (docs/trainer.md)
    tol = 1e-3 if precision == "fp32" else 0.2
    assert np.abs(logits - ref_logits.numpy()).max() < (1e-3 if precision == "fp32" else 1.0)
    assert np.abs(distance - ref_d).max() <= tol * ref_d.max()
    assert (pred.guard.verdict(distance) == pred.guard.verdict(ref_d)).all()
    if engine == "torch":
        assert pred.engine.infer(x)[1].shape == (4, 1280)


@pytest.fixture(scope="module")
def tiny_guarded_model(tmp_path_factory):
    """A tiny model trained by the real trainer on synthetic smears, with its guard."""
    from core.jobs import run_job
    from core.app.sample import generate
    from trainer.engine import TrainConfig, run

    root = tmp_path_factory.mktemp("guarded")
    generate(root / "data", n_per_class=20, seed=11, size=64)
    cfg = TrainConfig(data=str(root / "data"), arch="seed_cnn3", pretrained=False, epochs=3, input_size=48,
                      split="random", name="tiny-guarded-v1", out_dir=str(root / "run"), threads=2,
                      augment={"strength": 0.0}, eval_robustness=False, colour_baseline=False)
    summary = run_job(run(cfg))
    return root, summary


def test_training_fits_the_guard_into_the_package(tiny_guarded_model):
    _root, summary = tiny_guarded_model
    pkg = summary["package"]
    card = read_card(pkg)
    assert card.guard["file"] == GUARD_FILE and card.guard["sha256"] == sha256_file(f"{pkg}/{GUARD_FILE}")
    assert card.guard["n_fit"] == summary["split"]["n_train"]  # the training side only
    assert card.guard["threshold_from"] == "validation side"
    assert 0.0 <= summary["guard"]["in_lab_test_flagged"] <= 1.0
    assert {"synthetic_sample_images", "blurred_sigma3"} <= set(summary["guard"]["foreign"])


def test_outside_state_goes_from_classify_to_the_database_and_the_csv(tiny_guarded_model, cli, db, tmp_path):
    import cv2

    from core.storage import ImageFile, Prediction

    root, summary = tiny_guarded_model
    rc, _, err = cli("models", "register", summary["package"], "--activate")
    assert rc == 0, err
    folder = tmp_path / "case"
    shutil.copytree(root / "data", folder / "lab")  # images like the training ones
    rng = np.random.default_rng(5)
    (folder / "foreign").mkdir()
    for i in range(6):  # nothing like a smear: coloured noise and flat grey fields
        img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) if i % 2 else np.full((64, 64, 3), 40 * i, np.uint8)
        cv2.imwrite(str(folder / "foreign" / f"odd-{i}.png"), img)
    rc, out, err = cli("classify", folder)
    assert rc == 0, err
    with db.session() as s:
        rows = s.execute(select(ImageFile.path, Prediction.out_of_distribution, Prediction.guard_distance)
                         .join(Prediction, Prediction.image_id == ImageFile.image_id)).all()
    assert rows and all(o is not None and d is not None for _, o, d in rows)
    foreign = [o for p, o, _ in rows if "foreign" in p]
    lab = [o for p, o, _ in rows if "foreign" not in p]
    assert len(foreign) == 6 and all(foreign)  # every foreign image is outside the model's experience
    assert np.mean(lab) < 0.5  # most of the lab's own kind of images are not
    csv_path = tmp_path / "out.csv"
    rc, _, err = cli("export", "--format", "csv", "--output", csv_path, "--folder", folder)
    assert rc == 0, err
    with open(csv_path, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    header = list(table[0])
    assert header.index("out_of_distribution") == header.index("uncertain") + 1
    assert {r["out_of_distribution"] for r in table if "foreign" in r["path"]} == {"1"}
    assert json.loads(json.dumps(table[0]))["out_of_distribution"] in ("0", "1")
