"""hemascan train / evaluate / compare end to end on tiny synthetic data."""
from __future__ import annotations

import json

import pytest

from sqlalchemy import select

from core.storage import ModelVersion, TrainingRun


@pytest.mark.slow
def test_train_evaluate_compare(cli, tmp_path, db):
    from core.app.sample import generate

    data = tmp_path / "smears"
    generate(data, n_per_class=16, seed=5, size=96)
    rc, out, err = cli("train", "--data", data, "--arch", "seed_baseline", "--epochs", 2, "--input-size", 40,
                       "--split", "random", "--name", "tiny-v1", "--threads", 2, "--no-augment", "--activate")
    assert rc == 0, err
    assert "held-out test" in out and "colour-histogram MLP, grayscale" in out
    with db.session() as s:
        run = s.scalars(select(TrainingRun)).one()
        assert run.status == "completed" and run.architecture == "seed_baseline"
        as_is = run.metrics["as_is"]
        cm = as_is["confusion_matrix"]
        # the run's test figure is the held-out side's confusion matrix, not a number from elsewhere
        assert sum(map(sum, cm)) == as_is["n"] > 0 and 0 < as_is["n"] < 64
        assert as_is["accuracy"] == sum(cm[i][i] for i in range(len(cm))) / as_is["n"]
        assert run.model_version_id is not None
        version = s.get(ModelVersion, run.model_version_id)
        assert version.name == "tiny-v1" and version.is_active
        card_acc = version.card["metrics"]["as_is"]["accuracy"]
        assert card_acc == as_is["accuracy"]  # the card states what the run measured
        # the int8 CPU model is made and checked before registering only when there are enough images to
        # check it (200): this tiny run has too few, so it says so and runs in fp32 (no time spent quantizing)
        assert "no int8 model: only" in out and "at least 200 needed" in out
        assert bool(version.card["int8"].get("files")) == ("labels: added" in out)

    js = tmp_path / "m.json"
    rc, out, err = cli("evaluate", "--data", data, "--split", "random", "--json", js)  # active model by default
    assert rc == 0, err
    metrics = json.loads(js.read_text())
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "ece"):
        assert key in metrics
    assert metrics["accuracy"] == card_acc  # reproduces the card on the same split
    rc, out, err = cli("evaluate", "--data", data, "--split", "random", "--runtime", "classify", "--json", js)
    assert rc == 0, err
    as_run = json.loads(js.read_text())  # as `classify` runs it: OpenVINO (int8 if it was accepted)
    assert as_run["runtime"].startswith("openvino") and as_run["n"] == metrics["n"]
    assert abs(as_run["accuracy"] - metrics["accuracy"]) <= 0.1

    md = tmp_path / "cmp.md"
    rc, out, err = cli("compare", "--data", data, "--split", "random", "--epochs", 1, "--input-size", 32,
                       "--only", "svm,rf", "--out", md)
    assert rc == 0, err
    table = md.read_text()
    assert "SVM (scaling + PCA + SMOTE + grid search)" in table and "Random forest" in table
