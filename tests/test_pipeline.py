"""The training pipeline's later stages on an already-fitted model and arrays a caller built
itself (cut-out cells): finish_package writes a complete, verified cell-model package."""
from __future__ import annotations

import numpy as np
import torch

from core.imaging.preprocessing import Preprocessing
from core.models.architectures import build
from core.models.guard import load_guard
from core.models.package import verify_package
from core.models.taxonomy import TAXONOMIES


def test_finish_package_from_cut_out_cell_arrays(tmp_path):
    from trainer.data import Split
    from trainer.pipeline import PackageConfig, TrainingArrays, finish_package

    classes = list(TAXONOMIES["wbc_differential"].classes)
    per_class, size = 8, 32
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(classes)), per_class)
    # each class its own tint, so the (untrained) network's embeddings separate them a little
    images = (rng.integers(0, 60, (len(labels), size, size, 3)) + (labels * 20)[:, None, None, None]).astype(np.uint8)
    torch.manual_seed(0)
    model = build("seed_baseline", len(classes)).eval()
    data = TrainingArrays(images, labels, classes, "wbc_differential", Preprocessing(input_size=size),
                          input_kind="cell", subjects=[f"s{i % 3}" for i in range(len(labels))],
                          sources=["pbc-cells"] * len(labels), cell_side_um=14.0)
    order = np.arange(len(labels))
    split = Split("by hand", train=order[order % 4 != 0], val=order[order % 4 == 0], test=order[:0])
    seen = []
    pkg = finish_package(model, data, split, PackageConfig(name="wbc-test-v1", architecture="seed_baseline",
                                                           metrics={"note": "test"}), tmp_path / "pkg", seen.append)
    card = verify_package(pkg)
    assert pkg == tmp_path / "pkg"
    assert card.input == "cell" and card.cell_side_um == 14.0 and card.taxonomy == "wbc_differential"
    assert card.classes == classes and card.metrics == {"note": "test"}
    assert card.temperature > 0 and 0 <= card.uncertain_threshold <= 1  # calibrated on the validation side
    guard = load_guard(pkg, card.guard, len(classes))
    assert guard is not None and card.guard["n_fit"] == len(split.train) and card.guard["n_threshold"] == len(split.val)
    assert {"guard", "save"} <= {(p.extra or {}).get("step") for p in seen}
    assert not card.int8  # not asked for
