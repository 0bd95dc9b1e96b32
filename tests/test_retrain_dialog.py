"""The Retrain dialog tells what happens in plain words (issue 21.4), driven for real
(pytest-qt, offscreen) on a tiny model that carries a foreign-image guard, so the default
retrain takes the feature-replay path (trainer/replay.py): the bar moves, the curves fill as
they come and stay after the run, the class rows add up to the total (an "Other" row), a
class without validation images has no recall ("n/a"), and re-classifying is offered only
for a folder the new version applies to."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("pyqtgraph")


from core.app.sample import generate  # noqa: E402
from core.imaging.scan import images_under, scan  # noqa: E402
from core.jobs import run_job  # noqa: E402
from core.models.taxonomy import OTHER, TAXONOMIES  # noqa: E402
from core.review.labels import record_labels  # noqa: E402

from .test_desktop import close_window, open_window  # noqa: E402

CLASSES = list(TAXONOMIES["all_subtype"].classes)
TIMEOUT = 120_000


def guarded_tiny_package(tmp: Path, name: str = "tiny-guarded") -> Path:
    """A small seed_baseline model at 40 px whose 48-wide embedding keeps a full-rank guard
    (replay_possible): retrain's default refits its head with feature replay."""
    import torch

    from core.imaging.preprocessing import Preprocessing
    from core.models.architectures import build
    from core.models.package import ModelCard, save_package
    from trainer.guard import add_guard, fit_guard, logits_and_embeddings

    torch.manual_seed(0)
    model = build("seed_baseline", 4, pool=2)
    prep = {"input_size": 40, "interpolation": "area"}
    card = ModelCard(name=name, architecture="seed_baseline", taxonomy="all_subtype", classes=CLASSES,
                     preprocessing=prep, arch_params={"pool": 2}, notes="test model with a guard")
    pkg = tmp / name
    save_package(pkg, model.state_dict(), card)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (160, 40, 40, 3), dtype=np.uint8)
    emb = logits_and_embeddings(model.eval(), x, Preprocessing.from_dict(prep))[1]
    add_guard(pkg, *fit_guard(emb[:120], np.arange(120) % 4, emb[120:]))
    return pkg


@pytest.fixture
def guarded(tmp_path, db, paths):
    """12 reviewed images per class and 8 reviewed "Other" under a guarded tiny active model."""
    from core.models.registry import register_bundled, register_package

    folder = tmp_path / "smears"
    generate(folder, n_per_class=12, seed=5, size=64)
    others = tmp_path / "others"
    generate(others, n_per_class=2, seed=9, size=64)
    run_job(scan(db, folder))
    run_job(scan(db, others))
    with db.session() as s:
        register_package(s, paths, guarded_tiny_package(tmp_path / "pkgs"), activate=True)
        register_bundled(s, paths)
        for image_id, path in images_under(s, folder):
            cls = {"Benign": "Benign", "Early": "Early Pre-B", "Pre": "Pre-B", "Pro": "Pro-B"}[Path(path).parent.name]
            record_labels(s, [image_id], cls, "tester", source="human")
        record_labels(s, [i for i, _ in images_under(s, others)], OTHER, "tester", source="human")
    return folder


@pytest.fixture
def window(qtbot, paths, tmp_path, guarded):
    w = open_window(qtbot, paths, tmp_path)  # after ``guarded`` is active
    yield w
    close_window(w)


def _cells(table, col: int) -> dict[str, str]:
    return {table.item(r, 0).text(): table.item(r, col).text() for r in range(table.rowCount())}


def test_replay_retrain_moves_the_bar_fills_the_curves_and_speaks_plainly(qtbot, window):
    dlg = window.show_retrain()
    qtbot.waitUntil(lambda: dlg.data_table.rowCount() == 6, timeout=TIMEOUT)  # 4 classes, Other, Total
    rows = _cells(dlg.data_table, 1)
    assert rows["Total"] == "56" and int(rows[next(k for k in rows if k.startswith("Other"))]) == 8
    assert sum(int(v) for k, v in rows.items() if k != "Total") == 56  # the rows add up to the total
    dlg.device.setCurrentIndex(dlg.device.findData("cpu"))

    texts: list[str] = []
    set_text = dlg.status.setText
    dlg.status.setText = lambda t: (texts.append(t), set_text(t))
    bar: list[tuple[int, int]] = []  # (value, maximum) as the bar moved
    curve_points_during: list[int] = []

    def moved(value: int) -> None:
        bar.append((value, dlg.progress.maximum()))
        xs = dlg.curve_train_loss.getData()[0]
        curve_points_during.append(0 if xs is None else len(xs))

    dlg.progress.valueChanged.connect(moved)
    with qtbot.waitSignal(dlg.runFinished, timeout=TIMEOUT) as done:
        dlg.start()
    out = done.args[0]
    assert out["status"] == "completed" and out["history"][-1].get("unit") == "step"  # the replay path
    assert any(0 < v < m for v, m in bar)  # the bar moved through the run, not 0% to done
    assert max(curve_points_during) >= 2  # the curves filled while it ran
    for curve in (dlg.curve_train_loss, dlg.curve_train_acc, dlg.curve_val_loss, dlg.curve_val_acc):
        xs = curve.getData()[0]
        assert xs is not None and len(xs) >= 2  # and stay after the run
    n = out["data"]["n_train_reviewed"]
    assert any(re.fullmatch(rf"Learning from your {n} reviewed images \(step \d+ of \d+\)", t) for t in texts)
    jargon = re.compile(r"^(data|load|train|validate|compare|package):|epoch|loss|logit|embedding|int8|guard",
                        re.IGNORECASE)
    assert not [t for t in texts if jargon.search(t)], texts
    assert dlg.promote_btn.isEnabled()


def test_recall_of_a_class_without_validation_images_is_not_applicable(qtbot):
    from desktop.retrain_compare import ComparisonView

    view = ComparisonView()
    qtbot.addWidget(view.tabs)

    def side(acc):
        return {"accuracy": acc, "macro_f1": acc, "ece": 0.1, "nll": 1.0,
                "recall": {"Benign": 1.0, "Early Pre-B": 0.5, "Pre-B": 1.0, "Pro-B": 0.0},
                "support": {"Benign": 2, "Early Pre-B": 2, "Pre-B": 1, "Pro-B": 0},
                "confusion_matrix": [[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]}

    cmp = {"classes": CLASSES, "n": 5, "old": side(0.8), "new": side(0.8), "changed": [], "n_changed": 0,
           "accuracy_difference": {"difference": 0.0, "ci95": [-0.2, 0.2], "n": 5}, "warning": "too few"}
    view.show(cmp, "old-v", "new-v")
    t = view.metrics_table
    cells = {t.item(r, 0).text(): (t.item(r, 1).text(), t.item(r, 2).text()) for r in range(t.rowCount())}
    assert cells["Recall Pro-B"] == ("n/a", "n/a")  # no Pro-B validation image: not measured, not 0
    assert cells["Recall Early Pre-B"] == ("0.500", "0.500")
    assert not any("ECE" in k for k in cells)  # plain words


def _predict_folder(db, folder: Path, version_name: str) -> None:
    """Predictions of ``version_name`` for every image under ``folder`` (as a classification leaves them)."""
    from sqlalchemy import select

    from core.storage import ModelVersion
    from core.storage.orm import Prediction

    with db.session() as s:
        v = s.scalar(select(ModelVersion).where(ModelVersion.name == version_name))
        n = len(v.card["classes"])
        for image_id, _ in images_under(s, folder):
            s.add(Prediction(image_id=image_id, model_version_id=v.id, label=v.card["classes"][0], confidence=0.9,
                             entropy=0.1, probabilities=[1.0 / n] * n))


def test_reclassify_is_offered_only_for_a_folder_the_new_version_applies_to(qtbot, window, db, tmp_path, guarded):
    from sqlalchemy import select

    from core.storage import ModelVersion

    with db.session() as s:
        binary = s.scalar(select(ModelVersion.name).where(ModelVersion.taxonomy == "all_vs_normal"))
    if binary is None:
        pytest.skip("no ALL-vs-normal package under resources/models")
    cells = tmp_path / "single-cells"
    generate(cells, n_per_class=2, seed=11, size=64, taxonomy="all_vs_normal")
    run_job(scan(db, cells))
    _predict_folder(db, cells, binary)  # classified by a model of another taxonomy
    window.open_folder(cells, classify=False)
    dlg = window.show_retrain()
    qtbot.waitUntil(lambda: "another kind of model" in dlg.reclassify.text(), timeout=TIMEOUT)
    assert not dlg.reclassify.isChecked() and not dlg.reclassify.isEnabled()
    dlg.close()
    qtbot.waitUntil(lambda: window.retrain_dialog is None, timeout=TIMEOUT)

    _predict_folder(db, guarded, "tiny-guarded")  # classified by the parent: it applies
    window.open_folder(guarded, classify=False)
    dlg = window.show_retrain()
    qtbot.waitUntil(lambda: dlg.reclassify.isEnabled(), timeout=TIMEOUT)
    assert dlg.reclassify.isChecked() and "smears" in dlg.reclassify.text()
