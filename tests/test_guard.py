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


def test_an_extended_guard_keeps_the_parents_and_loads_with_more_centres_than_classes(tmp_path):
    """A retrain's guard (trainer.guard.extend_guard): the parent's whitening, centres and
    threshold kept, the new lab's class centres added, each naming its class, so the file holds
    more centres than the model has classes; a lab nobody reviewed stays flagged."""
    from trainer.guard import extend_guard

    rng = np.random.default_rng(3)
    train, y = clusters(rng, 200, [0.0, 5.0])
    parent, info = fit_guard(train, y, clusters(rng, 100, [0.0, 5.0])[0])
    new_lab, new_y = clusters(rng, 30, [20.0, 25.0])  # far from the parent's lab
    other_lab = rng.normal(-20.0, 1.0, (100, 16))  # reviewed by nobody
    assert parent.flags(new_lab)[1].all() and parent.flags(other_lab)[1].all()
    guard, new_info = extend_guard(parent, info, new_lab[::2], new_y[::2])
    assert guard.threshold == parent.threshold and np.array_equal(guard.whitening, parent.whitening)
    assert guard.classes_of_centres() == [0, 1, 0, 1] and new_info["n_centres"] == 4
    assert guard.flags(new_lab[1::2])[1].mean() < 0.2  # the new lab's other cells admitted
    assert guard.flags(other_lab)[1].all()  # the other lab as before
    assert np.array_equal(guard.flags(train)[1], parent.flags(train)[1] & guard.flags(train)[1])
    record = write_guard(tmp_path, guard, new_info)
    loaded = load_guard(tmp_path, record, n_classes=2)  # 4 centres for 2 classes
    assert loaded.classes_of_centres() == [0, 1, 0, 1]
    assert np.allclose(loaded.distances(new_lab), guard.distances(new_lab), rtol=1e-5)
    again, _ = extend_guard(loaded, record, new_lab[:4], np.array([0, 0, 1, 1]))  # a second retrain adds more
    assert again.classes_of_centres() == [0, 1, 0, 1, 0, 1]
    # a centre naming a class the model does not have is refused
    bad = write_guard(tmp_path, guard.__class__(guard.whitening, guard.class_means, guard.threshold, None,
                                                np.array([0, 1, 0, 2])), new_info)
    with pytest.raises(ModelPackageError, match="malformed"):
        load_guard(tmp_path, bad, n_classes=2)
    # an older guard (no centre classes): its rows are the card's classes_fitted
    old = write_guard(tmp_path, parent, info)
    assert load_guard(tmp_path, old, 2).classes_of_centres(info["classes_fitted"]) == [0, 1]


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
    from core.app.sample import smear_image

    rng = np.random.default_rng(3)
    noise = rng.integers(0, 255, (2, s, s, 3), dtype=np.uint8)
    smears = np.stack([card.prep.apply(smear_image(c, rng, 224)) for c in card.classes[:2]])  # synthetic: far out
    x = np.concatenate([noise, smears])
    with torch.inference_mode():
        ref_logits, ref_emb = LogitsAndEmbedding(model.eval())(card.prep.normalise(torch.from_numpy(x)))
    pred = Predictor(pkg, "cpu", engine=engine, precision=precision, cache_dir=tmp_path)
    assert pred.guard is not None
    logits, distance, other, _ = pred.engine.scores(x)
    ref_d = pred.guard.distances(ref_emb.numpy())
    assert other is None and distance.shape == (4,)
    # fp32 vs fp32 (BN folded): equal to float rounding. int8 on these noise images (far from any
    # smear) drifts up to ~15%; on real in-lab images its flagged share matches fp32 (docs/trainer.md)
    tol = 1e-3 if precision == "fp32" else 0.2
    assert np.abs(logits - ref_logits.numpy()).max() < (1e-3 if precision == "fp32" else 1.0)
    assert np.abs(distance - ref_d).max() <= tol * ref_d.max()
    # the verdict agrees wherever the engine's drift cannot carry a distance across the threshold
    # (uniform noise lies near it since the threshold was set on held-out patients: 3,700-4,100
    # against 4,214; it is never a confident call, its top probability is about 0.5)
    clear = np.abs(ref_d - pred.guard.threshold) > tol * ref_d
    assert clear[2:].all() and pred.guard.verdict(ref_d)[2:].all()  # the synthetic smears: flagged
    assert (pred.guard.verdict(distance)[clear] == pred.guard.verdict(ref_d)[clear]).all()
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
    # a random split holds no patient out: the card says so, and what the threshold was set on
    assert card.guard["threshold_from"] == f"{summary['split']['n_val']} validation images (random split: not patient-held-out)"
    assert card.guard["n_threshold"] == summary["split"]["n_val"] and "conformal" in card.guard["threshold_rule"]
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


# ---- the threshold is set on patients the model did not train on (issue 23, item 6) ---------

def _subject_data(rng, subjects: dict[str, tuple[int, int, str]], dim=8):
    """C-NMC-named images: subject -> (class, n images, side); each subject sits at its own
    offset from its class centre (a new patient is further from training than a known one)."""
    from trainer.data import Dataset

    centres = {0: np.zeros(dim), 1: np.full(dim, 6.0)}
    paths, labels, emb, sides = [], [], [], []
    for subj, (cls, n, side) in subjects.items():
        offset = centres[cls] + rng.normal(0, 1.5, dim)
        for i in range(n):
            paths.append(f"UID_{subj}_{i + 1}_1_{'all' if cls == 0 else 'hem'}.png")
            labels.append(cls)
            sides.append(side)
        emb.append(offset + rng.normal(0, 1.0, (n, dim)))
    from pathlib import Path

    ds = Dataset(Path("."), "all_vs_normal", ["ALL", "Normal"], [Path(p) for p in paths], np.array(labels))
    return ds, np.concatenate(emb), np.array(sides)


def test_the_threshold_is_set_on_held_out_patients_not_on_training_patients_validation_images():
    from trainer.data import Split
    from trainer.guard import fit_guard_on_split

    rng = np.random.default_rng(4)
    subjects = {**{str(s): (0, 120, "train") for s in range(1, 5)}, **{f"H{s}": (1, 120, "train") for s in range(1, 5)}}
    ds, emb, side = _subject_data(rng, subjects)
    # later images of training subjects: same subjects, so drawn from their offsets again
    extra_ds, extra_emb, _ = _subject_data(np.random.default_rng(4), subjects)  # same offsets (same seed)
    # the validation block: later images of the training subjects (as C-NMC's two donors are
    # validated) and a few subjects no training image comes from
    held_ds, held_emb, _ = _subject_data(rng, {**{str(s): (0, 20, "val") for s in range(11, 17)},
                                               **{f"H{s}": (1, 20, "val") for s in range(11, 17)}})
    new_ds, new_emb, _ = _subject_data(rng, {f"{s}": (s % 2, 60, "test") for s in range(21, 41)})
    from trainer.data import Dataset

    later = rng.choice(len(extra_emb), 900, replace=False)
    all_paths = ds.paths + [extra_ds.paths[i] for i in later] + held_ds.paths
    all_labels = np.concatenate([ds.labels, extra_ds.labels[later], held_ds.labels])
    all_emb = np.concatenate([emb, extra_emb[later], held_emb])
    full = Dataset(ds.root, ds.taxonomy, ds.classes, all_paths, all_labels)
    n_train = len(ds)
    split = Split("subject", np.arange(n_train), np.arange(n_train, len(full)), np.array([], dtype=np.int64))

    pooled, _ = fit_guard(all_emb[split.train], all_labels[split.train], all_emb[split.val])
    guard, info = fit_guard_on_split(all_emb[split.train], all_labels[split.train], all_emb[split.val], full, split)
    # the training subjects' validation images are closer: the pooled threshold is tighter
    assert guard.threshold > pooled.threshold
    assert info["n_threshold"] == 240 and info["n_threshold_patients"] == 12
    assert "12 subjects not trained on" in info["threshold_from"] and "new patient" in info["threshold_rule"]
    new_flagged = guard.flags(new_emb)[1].mean()
    pooled_flagged = pooled.flags(new_emb)[1].mean()
    assert new_flagged <= 0.05 and pooled_flagged > 0.15, (new_flagged, pooled_flagged)
    assert guard.flags(rng.normal(30.0, 1.0, (50, 8)))[1].all()  # foreign stays flagged


def test_patient_split_validation_leaves_out_the_slides_next_to_training():
    from pathlib import Path

    from trainer.data import Dataset, Split
    from trainer.guard import PSEUDO_PATIENT_RUN, SLIDE_NEIGHBOURS, held_out_validation

    paths = [Path(f"Pre/WBC-Pre-{i:03d}.jpg") for i in range(1, 201)]
    ds = Dataset(Path("."), "all_subtype", ["Benign", "Early Pre-B", "Pre-B", "Pro-B"], paths, np.full(200, 2))
    split = Split("patient", np.arange(0, 120), np.arange(120, 160), np.arange(160, 200))
    keep, groups, described = held_out_validation(ds, split)
    numbers = [int(paths[i].stem[-3:]) for i in split.val[keep]]
    assert min(numbers) == 120 + 1 + SLIDE_NEIGHBOURS and max(numbers) == 160  # file numbers 121..131 left out
    assert len(set(groups)) == -(-len(keep) // PSEUDO_PATIENT_RUN) and "slides not trained on" in described


def test_guard_command_refits_and_says_what_the_threshold_was_set_on(tiny_guarded_model, cli, tmp_path):
    root, summary = tiny_guarded_model
    pkg = tmp_path / "pkg"
    shutil.copytree(summary["package"], pkg)
    rc, out, err = cli("guard", pkg, "--data", root / "data")
    assert rc == 0, err
    card = read_card(pkg)
    assert card.guard["sha256"] == sha256_file(pkg / GUARD_FILE)
    assert f"set on {card.guard['threshold_from']}: split-conformal" in out


def test_threshold_refit_where_no_patient_is_held_out_uses_the_validation_block_and_says_so(
        tiny_guarded_model, tmp_path, monkeypatch):
    # every validation image next to a training slide: no patient held out. Training falls back
    # on the whole validation block; the refit now does the same (it failed on no images)
    import trainer.guard
    from trainer.guard_refit import refit_threshold

    root, summary = tiny_guarded_model
    pkg = tmp_path / "pkg"
    shutil.copytree(summary["package"], pkg)
    nobody = lambda ds, split: (np.zeros(0, np.int64), np.zeros(0, object), "none")  # noqa: E731
    monkeypatch.setattr(trainer.guard, "held_out_validation", nobody)
    monkeypatch.setattr("trainer.guard_refit.held_out_validation", nobody, raising=False)
    out = refit_threshold(pkg, root / "data")
    record = read_card(pkg).guard
    assert record["threshold_from"] == f"{summary['split']['n_val']} validation images (no patient held out)"
    assert record["sha256"] == sha256_file(pkg / GUARD_FILE) and out["after"]["threshold"] > 0
