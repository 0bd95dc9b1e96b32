"""Trainer tests on tiny generated data (core.app.sample): seconds each."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from core.models.architectures import ARCHITECTURES, build
from core.jobs import run_job
from core.models.package import load_model
from core.app.sample import generate
from trainer.data import compute_hashes, file_number, patient_split, random_split, scan_class_folders
from trainer.engine import TrainConfig, run
from trainer.metrics import ece, fit_temperature, softmax

SHARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "all-taleqani"

FAST = dict(arch="seed_baseline", pretrained=False, input_size=48, batch_size=16, lr=3e-3, threads=2,
            augment={"strength": 0.0}, eval_robustness=False, eval_ood=False, colour_baseline=False,
            corner_mask=None, warmup_epochs=0.0)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    generate(root, n_per_class=20, seed=1, size=96)
    return root


# ---- registry ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("size", [64, 128])
def test_every_architecture_builds_and_has_right_output_shape(name, size):
    model = build(name, num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 4)
    assert torch.isfinite(out).all()


def test_lite0_loads_imagenet_weights_and_stays_small():
    model = build("effnet_lite0", num_classes=4, pretrained=True)
    # stem weights differ from a fresh init: the ImageNet state_dict was loaded
    fresh = build("effnet_lite0", num_classes=4)
    assert not torch.equal(model._conv_stem.weight, fresh._conv_stem.weight)
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert n_bytes < 25 * 2**20


# ---- data / splits ------------------------------------------------------------------

def test_patient_split_keeps_blocks_contiguous_and_duplicates_together(tmp_path, sample_dir):
    root = tmp_path / "data"
    shutil.copytree(sample_dir, root)
    # an exact duplicate of a late (test-side) Pro image, numbered early (train side)
    src = sorted((root / "Pro").iterdir(), key=file_number)[-1]
    shutil.copy(src, root / "Pro" / "sample-Pro-0000.jpg")
    ds = compute_hashes(scan_class_folders(root))
    assert ds.taxonomy == "all_subtype" and len(ds) == 81
    sp = patient_split(ds, fold=4, phash_distance=0)
    sides = np.zeros(len(ds), int)
    sides[sp.val], sides[sp.test] = 1, 2
    assert len(set(sp.train) | set(sp.val) | set(sp.test)) == len(ds)
    dup = [i for i, p in enumerate(ds.paths) if p.name in (src.name, "sample-Pro-0000.jpg")]
    assert sides[dup[0]] == sides[dup[1]]
    assert sp.info["moved_for_duplicates"] >= 1
    for ci in range(4):  # without the moved copy, each class's test block is one contiguous run
        nums = sorted(file_number(ds.paths[i]) for i in sp.test if ds.labels[i] == ci and ds.paths[i].name != "sample-Pro-0000.jpg")
        allnums = sorted(file_number(ds.paths[i]) for i in range(len(ds)) if ds.labels[i] == ci)
        start = allnums.index(nums[0])
        assert allnums[start : start + len(nums)] == nums


def test_random_split_is_stratified_and_disjoint(sample_dir):
    ds = scan_class_folders(sample_dir)
    sp = random_split(ds, seed=0)
    assert not set(sp.train) & set(sp.test) and not set(sp.val) & set(sp.test)
    assert set(np.unique(ds.labels[sp.test])) == {0, 1, 2, 3}


# ---- calibration ------------------------------------------------------------------

def test_temperature_scaling_reduces_ece_on_overconfident_logits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 2000)
    logits = rng.normal(0, 1, (2000, 4))
    logits[np.arange(2000), y] += 1.5  # ~70% accurate
    logits *= 6.0  # overconfident
    before = ece(softmax(logits), y)
    t = fit_temperature(logits, y)
    after = ece(softmax(logits, t), y)
    assert t > 2.0
    assert after < before / 3 and after < 0.05


# ---- training loop ------------------------------------------------------------------

def test_training_learns_on_tiny_data_and_packages(tmp_path, sample_dir):
    cfg = TrainConfig(data=str(sample_dir), epochs=12, patience=99, split="random", out_dir=str(tmp_path / "r"), **FAST)
    events = []
    summary = run_job(run(cfg), events.append)
    assert summary["status"] == "completed"
    hist = summary["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert max(h["train_accuracy"] for h in hist) >= 0.6
    assert any("history" in e.extra and e.stage == "validate" for e in events)
    model, card = load_model(Path(summary["package"]))
    assert card.architecture == "seed_baseline" and card.temperature > 0
    assert card.metrics["as_is"]["n"] == summary["split"]["n_test"]


def test_checkpoint_resume_continues_identically(tmp_path, sample_dir):
    common = dict(data=str(sample_dir), epochs=3, patience=99, split="random", package=False, **FAST)
    straight = run_job(run(TrainConfig(out_dir=str(tmp_path / "a"), **common)))
    first = run_job(run(TrainConfig(out_dir=str(tmp_path / "b"), max_epochs_this_call=1, **common)))
    assert first["status"] == "paused" and len(first["history"]) == 1
    resumed = run_job(run(TrainConfig(out_dir=str(tmp_path / "b"), resume=True, **common)))
    assert resumed["status"] == "completed"
    for h1, h2 in zip(straight["history"], resumed["history"]):
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-5)
        assert h1["val_loss"] == pytest.approx(h2["val_loss"], rel=1e-5)
    from safetensors.torch import load_file

    wa, wb = load_file(str(tmp_path / "a" / "last.safetensors")), load_file(str(tmp_path / "b" / "last.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_cancel_stops_cleanly_and_leaves_a_resumable_state(tmp_path, sample_dir):
    cancel = threading.Event()
    cfg = TrainConfig(data=str(sample_dir), epochs=50, patience=99, split="random", out_dir=str(tmp_path / "c"), **FAST)

    def on_progress(p):
        if p.stage == "validate" and p.done >= 1:
            cancel.set()

    summary = run_job(run(cfg, cancel=cancel), on_progress)
    assert summary["status"] == "cancelled"
    assert 1 <= len(summary["history"]) < 50
    assert "package" not in summary
    assert (tmp_path / "c" / "last.json").is_file()


@pytest.mark.dataset
@pytest.mark.skipif(not SHARE.is_dir(), reason="needs ../shared/datasets/all-taleqani (public ALL dataset) next to the repo")
def test_patient_split_on_the_share_has_no_duplicate_across_sides():
    from trainer.data import duplicate_pairs

    ds = compute_hashes(scan_class_folders(SHARE))
    assert len(ds) == 2770
    sp = patient_split(ds)
    side = np.zeros(len(ds), int)
    side[sp.val], side[sp.test] = 1, 2
    pairs = duplicate_pairs(ds, 4)
    assert pairs, "the share is known to hold duplicates"
    assert all(side[a] == side[b] for a, b in pairs)
    assert 0.15 < len(sp.test) / len(ds) < 0.25
