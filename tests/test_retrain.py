"""Retrain loop on tiny generated data (core.app.sample): corrections in, new version out,
comparison, promotion / roll-back, cancel, stale runs, fixed validation sides, export /
import of single-file models."""
from __future__ import annotations

import threading
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from core.models.architectures import build
from core.storage import Image, ModelVersion, Setting, TrainingRun
from core.jobs import run_job
from core.review.labels import record_labels
from core.models.package import ModelCard, save_package
from core.models.registry import active_version, register_bundled, register_package
from core.app.sample import generate
from core.imaging.scan import images_under, scan
from core.models.taxonomy import TAXONOMIES

CLASSES = list(TAXONOMIES["all_subtype"].classes)
# the tiny test model trains whole, at the trainer's from-scratch rate, for a fixed two epochs
FAST = dict(epochs=2, min_steps=0, train_last=None, lr=1e-3, batch_size=16, threads=2, augment={"strength": 0.0}, bootstrap=200, decode_workers=1,
            cv_folds=0)  # validation images only; tests/test_retrain_kfold.py compares by k folds


def tiny_package(tmp: Path, name: str = "tiny-v1") -> Path:
    """A small seed_baseline model at 40 px (trains in well under a second per epoch)."""
    torch.manual_seed(0)
    model = build("seed_baseline", 4)
    card = ModelCard(name=name, architecture="seed_baseline", taxonomy="all_subtype", classes=CLASSES,
                     preprocessing={"input_size": 40, "interpolation": "area"}, notes="test model")
    pkg = tmp / name
    save_package(pkg, model.state_dict(), card)
    return pkg


@pytest.fixture
def labelled(tmp_path, db, paths):
    """A database with 12 images per class, a tiny active model and human labels on all."""
    folder = tmp_path / "smears"
    generate(folder, n_per_class=12, seed=5, size=64)
    run_job(scan(db, folder))
    with db.session() as s:
        register_package(s, paths, tiny_package(tmp_path / "pkgs"), activate=True)
        register_bundled(s, paths)  # as every data directory has them (registered on first open)
        rows = images_under(s, folder)
        for image_id, path in rows:
            cls = {"Benign": "Benign", "Early": "Early Pre-B", "Pre": "Pre-B", "Pro": "Pro-B"}[Path(path).parent.name]
            record_labels(s, [image_id], cls, "tester", source="human")
    return folder


@pytest.mark.slow
def test_retrain_end_to_end_promote_and_rollback(labelled, db, paths):
    from trainer.retrain import RetrainConfig, activation_log, lineage, promote, retrain, rollback

    seen = []
    out = run_job(retrain(db, paths, RetrainConfig(**FAST)), seen.append)
    assert out["status"] == "completed"
    # progress carried per-epoch history
    hist = [p.extra["history"] for p in seen if p.stage == "validate"]
    assert len(hist) == 2 and {"train_loss", "train_accuracy", "val_accuracy"} <= set(hist[-1][-1])
    cmp = out["comparison"]
    assert cmp["n"] == out["data"]["n_val"] > 0
    for side in ("new", "old"):
        assert set(cmp[side]["recall"]) == set(CLASSES)
        assert np.asarray(cmp[side]["confusion_matrix"]).sum() == cmp["n"]
    lo, hi = cmp["accuracy_difference"]["ci95"]
    assert lo <= cmp["accuracy_difference"]["difference"] <= hi
    assert cmp["warning"]  # a few dozen validation images cannot tell two models apart
    assert all({"image_id", "old", "new", "label"} <= set(c) for c in cmp["changed"])
    with db.session() as s:
        new = s.scalar(select(ModelVersion).where(ModelVersion.name == out["version"]))
        assert new is not None and not new.is_active
        assert new.card["parent"] == "tiny-v1" and new.parent_id == out["parent_id"]
        assert new.card["training_data"]["n_train"] == out["data"]["n_train"]
        # an int8 CPU model was made and checked (or, too few images to check it on, not made);
        # the card (and registry copy) says so only if accepted
        assert 0.0 <= out["int8"].get("agreement", 0.0) <= 1.0 and out["int8"]["n_checked"] > 0
        assert bool(new.card["int8"].get("files")) == out["int8"]["accepted"]
        assert active_version(s).name == "tiny-v1"
        run = s.get(TrainingRun, out["run_id"])
        assert run.status == "completed" and run.model_version_id == new.id and run.finished_at is not None
    promote(db, out["version"])
    with db.session() as s:
        assert active_version(s).name == out["version"]
    # a second round fine-tunes the promoted version
    out2 = run_job(retrain(db, paths, RetrainConfig(**FAST)))
    assert out2["parent"] == out["version"]
    rollback(db, "tiny-v1")
    with db.session() as s:
        assert active_version(s).name == "tiny-v1"
    log = activation_log(db)[-2:]  # before them: the first start's and the fixture's registration's
    assert [e["action"] for e in log] == ["promote", "rollback"] and log[1]["previous"] == out["version"]
    parents = {v["name"]: v["parent"] for v in lineage(db)}
    assert parents[out2["version"]] == out["version"] and parents[out["version"]] == "tiny-v1"


def test_validation_sides_fixed_and_duplicates_together(labelled, db, paths, tmp_path):
    from trainer.retrain import RetrainConfig, assign_splits, collect_training_data

    cfg = RetrainConfig()
    d1 = collect_training_data(db, "all_subtype", CLASSES, cfg)
    with db.session() as s:
        first = dict(s.execute(select(Image.id, Image.split)).all())
    assert set(first.values()) == {"train", "val"}
    # a second collection (and a changed fraction) leaves existing sides alone
    d2 = collect_training_data(db, "all_subtype", CLASSES, RetrainConfig(val_fraction=0.9))
    with db.session() as s:
        assert dict(s.execute(select(Image.id, Image.split)).all()) == first
    assert [i.sha256 for i in d1.val] == [i.sha256 for i in d2.val]
    assert not {i.sha256 for i in d1.val} & {i.sha256 for i in d1.train}
    # a near duplicate added later follows its twin's side, whatever its own hash says
    with db.session() as s:
        img = s.scalar(select(Image).where(Image.split == "val").limit(1))
        for k in range(40):  # some of these would hash to "train" on their own
            twin_phash = format(int(img.phash, 16) ^ (1 << (k % 3)), "016x")
            s.add(Image(sha256=f"{k:064x}", width=1, height=1, phash=twin_phash))
        s.flush()
        ids = [i.id for i in s.scalars(select(Image).where(Image.width == 1))]
        sides = assign_splits(s, ids)
    assert set(sides.values()) == {"val"}
    # new near-duplicate groups are decided once, together
    with db.session() as s:
        for k in range(20):
            s.add(Image(sha256=f"{k + 100:064x}", width=2, height=2, phash="f0f0f0f0f0f0f0f0" if k % 2 else "f0f0f0f0f0f0f0f1"))
        s.flush()
        ids = [i.id for i in s.scalars(select(Image).where(Image.width == 2))]
        assert len(set(assign_splits(s, ids).values())) == 1


def test_cancel_mid_epoch_leaves_nothing_broken(labelled, db, paths):
    from trainer.retrain import RetrainConfig, retrain

    cancel = threading.Event()
    n_models = len(list(paths.models.iterdir()))
    versions_before = registered_names(db)
    job = retrain(db, paths, RetrainConfig(**{**FAST, "epochs": 3, "batch_size": 4}), cancel=cancel)
    for p in job_iter(job):
        if p.stage == "train" and p.extra.get("batch") == 2:
            cancel.set()
    out = job_result
    assert out["status"] == "cancelled"
    assert len(list(paths.models.iterdir())) == n_models  # no package, no temp dir
    with db.session() as s:
        run = s.get(TrainingRun, out["run_id"])
        assert run.status == "cancelled" and run.model_version_id is None
    assert registered_names(db) == versions_before  # no new version


job_result = None


def job_iter(job):
    global job_result
    while True:
        try:
            yield next(job)
        except StopIteration as stop:
            job_result = stop.value
            return


def test_killed_run_marked_failed_and_failure_recorded(labelled, db, paths):
    from trainer.retrain import RetrainConfig, RetrainError, fail_stale_runs, retrain

    with db.session() as s:  # a run whose process died (pid that does not exist)
        s.add(TrainingRun(status="running", architecture="x", config={}, pid=2**22 + 12345))
    assert fail_stale_runs(db) == 1
    with db.session() as s:
        assert {r.status for r in s.scalars(select(TrainingRun))} == {"failed"}
    with pytest.raises(RetrainError):
        run_job(retrain(db, paths, RetrainConfig(**{**FAST, "arch": "se_cnn"})))  # fine-tune cannot change arch
    with db.session() as s:
        last = s.scalars(select(TrainingRun).order_by(TrainingRun.id.desc())).first()
        assert last.status == "failed" and "architecture" in last.error


def test_export_import_round_trip_and_tampering(labelled, db, paths, tmp_path):
    from core.errors import ModelPackageError
    from core.models.archive import export_model, import_model

    f = tmp_path / "tiny.hsmodel"
    export_model(db, "tiny-v1", f)
    other = tmp_path / "other"
    from core.config import resolve_paths
    from core.storage import Database

    p2 = resolve_paths(other).ensure()
    db2 = Database(p2.db_url())
    try:
        name = import_model(db2, p2, f)
        assert name == "tiny-v1"
        with db2.session() as s:
            v = s.scalar(select(ModelVersion).where(ModelVersion.name == name))
            with db.session() as s1:
                assert v.weights_sha256 == s1.scalar(select(ModelVersion.weights_sha256).where(ModelVersion.name == name))
        # tampered weights: refused, nothing registered
        bad = tmp_path / "bad.hsmodel"
        with zipfile.ZipFile(f) as zin, zipfile.ZipFile(bad, "w") as zout:
            for info in zin.infolist():
                data = zin.read(info)
                if info.filename.endswith(".safetensors"):
                    data = data[:-4] + bytes(4)
                zout.writestr(info, data)
        with pytest.raises(ModelPackageError):
            import_model(db2, resolve_paths(tmp_path / "third").ensure(), bad)
        junk = tmp_path / "junk.hsmodel"
        junk.write_bytes(b"not a zip")
        with pytest.raises(ModelPackageError):
            import_model(db2, p2, junk)
    finally:
        db2.dispose()


@pytest.mark.slow
def test_cli_retrain_and_models_export_import(labelled, cli, tmp_path, db):
    rc, out, err = cli("retrain", "--epochs", 1, "--min-steps", 0, "--threads", 2, "--no-augment", "--promote",
                       "--folds", 0)
    assert rc == 0, err
    # 12 validation images cannot show the new version is better (a tiny run may even lose a
    # class: then it says "worse"): Promote says why and does not
    assert "accuracy" in out and "macro-F1" in out
    assert "not promoted: the comparison cannot tell" in out or "not promoted: the new version is worse" in out
    with db.session() as s:
        assert active_version(s).name == "tiny-v1"
    rc, out, err = cli("retrain", "--epochs", 1, "--min-steps", 0, "--threads", 2, "--no-augment", "--promote", "--force",
                       "--folds", 0)
    assert rc == 0 and ("promoted although the comparison cannot tell" in out
                        or "promoted although the new version is worse" in out), err
    f = tmp_path / "m.hsmodel"
    rc, out, err = cli("models", "export", "tiny-v1", str(f))
    assert rc == 0 and f.is_file(), err
    rc, out, err = cli("models", "import", str(f))
    assert rc == 0, err
    rc, out, err = cli("models", "rollback", "tiny-v1")
    assert rc == 0 and "* tiny-v1" in out, err
    rc, out, err = cli("models", "lineage")
    assert rc == 0 and "<- tiny-v1" in out
    new = next(ln.lstrip("* ").split()[0] for ln in out.splitlines() if "<- tiny-v1" in ln)
    rc, out, err = cli("models", "activate", new)
    assert rc == 0 and f"* {new}" in out
    rc, out, err = cli("models", "runs")
    assert rc == 0 and "completed" in out
    from trainer.retrain import activation_log

    assert [e["action"] for e in activation_log(db)][-3:] == ["promote", "rollback", "activate"]
    assert cli("models", "activate", "no-such-model")[0] == 2


@pytest.mark.slow
def test_sigkill_mid_run_leaves_failed_row_and_no_model(labelled, db, paths, data_dir):
    import signal
    import subprocess
    import time

    from tests.conftest import hemascan_cmd, subprocess_env
    from trainer.retrain import RetrainConfig, retrain

    proc = subprocess.Popen([*hemascan_cmd(), "-q", "retrain", "--epochs", "500", "--batch-size", "2", "--no-augment",
                             "--threads", "1"], env=subprocess_env(data_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while True:
        with db.session() as s:
            if s.scalar(select(TrainingRun).where(TrainingRun.status == "running")) is not None:
                break
        assert proc.poll() is None, f"retrain ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no training run appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert sorted(p.name for p in paths.models.iterdir()) == registered_names(db)  # no (half-written) package
    with db.session() as s:  # as a minute later: the dead run's lease (core/models/runs.py) has expired
        from core.models.runs import LEASE_KEY, RunLease

        key = LEASE_KEY.format(s.scalar(select(TrainingRun.id).where(TrainingRun.status == "running")))
        lease = RunLease.from_json(s.get(Setting, key).value)
        s.get(Setting, key).value = RunLease(lease.holder, lease.until - timedelta(hours=1)).to_json()
    # the next run marks the dead one failed and goes ahead
    out = run_job(retrain(db, paths, RetrainConfig(**{**FAST, "epochs": 1})))
    assert out["status"] == "completed"
    with db.session() as s:
        runs = s.scalars(select(TrainingRun).order_by(TrainingRun.id)).all()
        assert [r.status for r in runs] == ["failed", "completed"] and "interrupted" in runs[0].error


def registered_names(db) -> list[str]:
    with db.session() as s:
        return sorted(s.scalars(select(ModelVersion.name)))


def test_promotion_advice_says_worse_undecided_or_better():
    from trainer.retrain import SMALL_VAL, compare_predictions, promotion_advice

    rng = np.random.default_rng(0)
    n = 4 * SMALL_VAL
    y = rng.integers(0, 4, n)
    right, wrong = np.eye(4)[y] * 0.9 + 0.025, np.eye(4)[(y + 1) % 4] * 0.9 + 0.025
    half = np.where((np.arange(n) % 2 == 0)[:, None], right, wrong)
    cases = {"better": (right, half), "worse": (half, right), "undecided": (half, half)}
    for expected, (new, old) in cases.items():
        cmp = compare_predictions(y, new, old, CLASSES, n_boot=300)
        verdict, why = promotion_advice(cmp)
        assert verdict == expected and (why is None) == (expected == "better"), (expected, verdict, why)
        if why:
            assert expected.replace("undecided", "cannot tell") in why and "\n" not in why
    # a few validation images can never show "better", however the two compare
    cmp = compare_predictions(y[:12], right[:12], half[:12], CLASSES, n_boot=300)
    assert promotion_advice(cmp)[0] == "undecided" and "fewer than" in promotion_advice(cmp)[1]
    assert promotion_advice(None)[0] == "undecided"
