"""A retrain that cannot quietly make things worse (issue 21): its int8 model checked as
training checks it, its guard accepting what its parent accepted on the lab's own images,
Promote saying "worse" when it is worse, the parent's test figures kept beside the new
ones, and nothing left in models/ by a run killed while it writes its package."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from core.app.sample import generate
from core.imaging.scan import scan
from core.jobs import run_job
from core.models.package import ModelCard, read_card, save_package
from core.models.registry import register_package
from core.storage import TrainingRun

from .test_retrain import CLASSES, FAST, labelled, registered_names, tiny_package  # noqa: F401  (fixture)

DEFAULT_CARD = Path(__file__).resolve().parents[1] / "resources" / "models" / "default" / "card.json"


def _images(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    from core.app.sample import smear_image
    from core.imaging.preprocessing import Preprocessing

    prep = Preprocessing.from_dict({"input_size": size, "interpolation": "area"})
    rng = np.random.default_rng(seed)
    return np.stack([prep.apply(smear_image(CLASSES[i % 4], rng, 64)) for i in range(n)])


# ---- 1. int8 checked on labels and guard flags, on enough images --------------------------

def test_int8_refused_when_its_guard_flags_differ_from_fp32(tmp_path, monkeypatch):
    """Labels agree, but the guard calls other images outside the model's experience from the
    int8 embeddings than from fp32 ones: no int8 model ships (the CPU then runs fp32)."""
    pytest.importorskip("nncf")
    from core.models.package import load_model
    from trainer import quantize
    from trainer.guard import add_guard, fit_guard, logits_and_embeddings

    pkg = tiny_package(tmp_path)
    model, card = load_model(pkg)
    x = _images(240)
    emb = logits_and_embeddings(model, x, card.prep)[1]
    add_guard(pkg, *fit_guard(emb, np.arange(len(x)) % 4, emb[:40]))
    def int8_moved(compiled, batch):  # int8 arithmetic that moves every 10th embedding far away
        # (fp32's own outputs otherwise: real int8 arithmetic differs between CPUs, with or
        # without VNNI/AMX, and the labels' agreement must not depend on the machine)
        logits, e = logits_and_embeddings(model, batch, card.prep)
        e = e.copy()
        e[::10] *= 50.0
        return logits, e

    monkeypatch.setattr(quantize, "_outputs", int8_moved)
    rec = quantize.quantize_package(pkg, x, x, "test images")
    assert rec["agreement"] >= 0.995 and rec["flag_agreement"] < 0.995
    assert not rec["accepted"] and "outside the model's experience" in rec["reason"]
    assert not (pkg / quantize.INT8_XML).exists() and not read_card(pkg).int8


def test_int8_not_made_on_too_few_check_images(tmp_path, monkeypatch):
    """Too few images to check an int8 model on: it would be refused, so it is not even made
    (quantizing took 25 of the 51 s of a 50-cell retrain, to be thrown away)."""
    pytest.importorskip("nncf")
    import nncf

    from trainer.quantize import INT8_XML, MIN_CHECK_IMAGES, quantize_package

    def no_quantize(*a, **k):
        raise AssertionError("quantized although there are too few images to check it on")

    monkeypatch.setattr(nncf, "quantize", no_quantize)
    pkg = tiny_package(tmp_path)
    x = _images(48)
    rec = quantize_package(pkg, x, x, "test images")
    assert not rec["accepted"] and rec["n_checked"] == 48
    assert f"only 48 images to check it on, at least {MIN_CHECK_IMAGES}" in rec["reason"]
    assert not (pkg / INT8_XML).exists() and not read_card(pkg).int8


@pytest.mark.slow
def test_retrain_checks_int8_on_the_lab_images_and_the_card_says_fp32_when_refused(labelled, db, paths):  # noqa: F811
    from desktop.models_panel import headline_metrics
    from trainer.retrain import RetrainConfig, retrain

    pytest.importorskip("nncf")
    out = run_job(retrain(db, paths, RetrainConfig(**FAST)))  # 48 images in all: too few to check int8 on
    assert not out["int8"]["accepted"] and "images to check it on" in out["int8"]["reason"]
    card = read_card(Path(out["package"]))
    assert not card.int8.get("files") and "images to check it on" in card.int8["reason"]
    assert "runs fp32 on CPUs" in headline_metrics(json.loads(card.to_json()))


def test_gradcam_explains_the_class_shown_not_its_own_top_class(tmp_path):
    from core.app.sample import smear_image
    from core.inference.gradcam import GradCam
    from core.models.registry import bundled_default_package

    from PIL import Image as PILImage

    f = tmp_path / "cell.png"
    PILImage.fromarray(smear_image("Pro-B", np.random.default_rng(0), 224)).save(f)
    cam = GradCam(bundled_default_package())
    _img, _map, own = cam(str(f))
    shown = next(c for i, c in enumerate(cam.card.classes) if i != own)  # e.g. what int8 stored
    _img, heat, k = cam(str(f), shown)
    assert k == cam.card.classes.index(shown) and heat.shape == _img.shape[:2]


# ---- 2. the retrained guard accepts what the parent accepted on the lab's images ----------

def _parent_with_guard(tmp: Path) -> Path:
    """tiny_package with a guard fitted on many images (as a trained model has one)."""
    from core.models.package import load_model
    from trainer.guard import add_guard, fit_guard, logits_and_embeddings

    pkg = tiny_package(tmp)
    model, card = load_model(pkg)
    x = _images(400, seed=3)
    emb = logits_and_embeddings(model, x, card.prep)[1]
    add_guard(pkg, *fit_guard(emb[:320], np.arange(320) % 4, emb[320:]))
    return pkg


@pytest.mark.slow
@pytest.mark.parametrize("replay", ["off", "on"])
def test_retrained_guard_flags_no_more_lab_images_than_the_parent(db, paths, tmp_path, replay):
    from core.imaging.scan import images_under
    from core.models.guard import load_guard
    from core.models.package import load_model
    from core.review.labels import record_labels
    from trainer.guard import logits_and_embeddings
    from trainer.retrain import RetrainConfig, _decode_lab, retrain
    from core.models.labsample import lab_sample

    reviewed, lab = tmp_path / "reviewed", tmp_path / "lab"
    generate(reviewed, n_per_class=6, seed=21, size=64)
    generate(lab, n_per_class=40, seed=22, size=64)
    run_job(scan(db, reviewed))
    run_job(scan(db, lab))
    with db.session() as s:
        parent = register_package(s, paths, _parent_with_guard(tmp_path / "pkgs"), activate=True)
        parent_id, parent_path = parent.id, Path(parent.path)
        for image_id, path in images_under(s, reviewed):
            cls = {"Benign": "Benign", "Early": "Early Pre-B", "Pre": "Pre-B", "Pro": "Pro-B"}[Path(path).parent.name]
            record_labels(s, [image_id], cls, "tester", source="human")
        sample = lab_sample(s, parent_id, 1000)
    out = run_job(retrain(db, paths, RetrainConfig(**{**FAST, "int8": False, "replay": replay})))
    assert out["status"] == "completed"

    def flagged(package: Path) -> int:
        model, card = load_model(package)
        guard = load_guard(package, card.guard, len(card.classes))
        x = _decode_lab(sample, card.prep, None, 1)[1]
        return int(guard.flags(logits_and_embeddings(model, x, card.prep)[1])[1].sum())

    before, after = flagged(parent_path), flagged(Path(out["package"]))
    n = len(sample)
    assert n >= 150 and after <= before + max(2, n // 200), (before, after)
    check = read_card(Path(out["package"])).guard["lab_check"]
    assert check["n"] == n and check["parent_flagged"] == before and check["flagged"] == after


# ---- 3. Promote says "worse" when it is worse, with its basis -----------------------------

def test_promote_says_worse_when_accuracy_falls_and_a_class_is_lost():
    """The run of the issue: validation 0.800 -> 0.700 on 10 images, Pre-B recall 0.667 -> 0."""
    from trainer.retrain import compare_predictions, promotion_advice

    y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    old_pred = np.array([0, 0, 0, 1, 1, 1, 0, 2, 2, 0])  # 8/10; Pre-B 2/3
    new_pred = np.array([0, 0, 0, 1, 1, 1, 1, 0, 1, 0])  # 7/10; Pre-B 0/3
    eye = np.eye(4) * 0.9 + 0.025
    cmp = compare_predictions(y, eye[new_pred], eye[old_pred], CLASSES, n_boot=300)
    verdict, why = promotion_advice(cmp)
    assert verdict == "worse", why
    assert "0.800 -> 0.700" in why and "Pre-B recall 0.667 -> 0.000" in why and "10 validation images" in why
    # the same accuracy fall with no class lost: it cannot tell, and says on what
    new_pred2 = np.array([0, 0, 1, 1, 1, 1, 0, 2, 2, 0])  # 7/10, no class lost
    verdict, why = promotion_advice(compare_predictions(y, eye[new_pred2], eye[old_pred], CLASSES, n_boot=300))
    assert verdict == "undecided" and "cannot tell" in why and "10 validation images" in why


# ---- 4. the parent's test figures stay beside the new ones ---------------------------------

@pytest.mark.slow
def test_retrained_card_keeps_the_parents_test_figures_with_their_basis(labelled, db, paths, tmp_path):  # noqa: F811
    from desktop.models_panel import headline_metrics
    from trainer.retrain import RetrainConfig, retrain

    default = json.loads(DEFAULT_CARD.read_text())
    torch.manual_seed(0)
    from core.models.architectures import build

    card = ModelCard(name="tested-v1", architecture="seed_baseline", taxonomy="all_subtype", classes=CLASSES,
                     preprocessing={"input_size": 40, "interpolation": "area"},
                     metrics={"split": default["metrics"]["split"], "as_is": default["metrics"]["as_is"]},
                     training_data={"source": "all-taleqani", "n_images": 2770})
    save_package(tmp_path / "tested", build("seed_baseline", 4).state_dict(), card)
    with db.session() as s:
        register_package(s, paths, tmp_path / "tested", activate=True)
    out = run_job(retrain(db, paths, RetrainConfig(**FAST, int8=False)))
    new = json.loads(read_card(Path(out["package"])).to_json())
    parent = new["metrics"]["parent"]
    assert parent["name"] == "tested-v1" and parent["n"] == 549 and parent["kind"] == "test"
    assert parent["accuracy"] == pytest.approx(default["metrics"]["as_is"]["accuracy"])
    line = headline_metrics(new)
    n_val = out["data"]["n_val"]
    assert f"on {n_val} reviewed validation images" in line
    assert "parent tested-v1: accuracy 0.962" in line and "on 549 held-out test images of all-taleqani" in line


# ---- 5. a retrain killed while it writes its package leaves nothing -----------------------

@pytest.mark.slow
def test_retrain_failing_while_it_writes_its_package_leaves_nothing_in_models(labelled, db, paths, monkeypatch):  # noqa: F811
    import trainer.guard
    from trainer.retrain import RetrainConfig, retrain

    def broken(*a, **k):
        raise OSError("disk full while writing the guard")

    monkeypatch.setattr(trainer.guard, "add_guard", broken)
    with pytest.raises(OSError):
        run_job(retrain(db, paths, RetrainConfig(**FAST, int8=False)))
    assert sorted(p.name for p in paths.models.iterdir()) == registered_names(db)  # not even a hidden folder
    with db.session() as s:
        assert s.scalar(select(TrainingRun.status).order_by(TrainingRun.id.desc())) == "failed"


WRITER = textwrap.dedent("""
    import sys, time
    from core.config import resolve_paths
    from core.models.registry import package_workdir

    with package_workdir(resolve_paths(sys.argv[1]).ensure()) as folder:
        (folder / "model.safetensors").write_bytes(b"0" * 1_000_000)  # half a package
        print(folder, flush=True)
        time.sleep(600)
""")


def test_killed_package_write_is_removed_at_the_next_start(paths, data_dir):
    from core.app.bootstrap import clean_temporaries

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    try:
        folders = [Path(p.stdout.readline().strip()) for p in procs]
        assert all(f.is_dir() and f.parent == paths.models for f in folders)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
        clean_temporaries(paths)  # what the next start does
        assert not folders[0].exists()  # killed: gone at once, not after hours
        assert folders[1].is_dir()  # a write in progress is left alone
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    clean_temporaries(paths)  # the other writer is gone too now
    assert not any(p.name.startswith(".tmp-write-") for p in paths.models.iterdir())
