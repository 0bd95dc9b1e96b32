"""A retrain on corrections of one class only does not forget the others: with a class under
MIN_PER_CLASS reviewed images, retrain refits the head on the reviewed images plus
embeddings replayed from the parent's guard, and leaves the backbone as it was."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.jobs import run_job
from core.review.labels import record_labels
from core.models.package import load_model, read_card
from core.models.registry import bundled_packages
from core.app.bootstrap import setup_models
from core.app.sample import generate
from core.imaging.scan import images_under, scan

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
BINARY = next((p for p in bundled_packages() if read_card(p).taxonomy == "all_vs_normal"), None)
pytestmark = pytest.mark.skipif(BINARY is None, reason="no ALL-vs-normal package under resources/models")


def _called_all(package: Path, files: list[Path]) -> float:
    from core.imaging.images import decode_rgb, read_file

    model, card = load_model(package)
    model.eval()
    x = np.stack([card.prep.apply(decode_rgb(read_file(str(f)))) for f in files])
    with torch.no_grad():
        pred = model(card.prep.normalise(torch.from_numpy(x))).argmax(1).numpy()
    return float((pred == card.classes.index("ALL")).mean())


def test_reviewing_only_normal_cells_keeps_the_all_class(db, paths, tmp_path):
    from trainer.retrain import RetrainConfig, activate, retrain

    folder = tmp_path / "normal-only"
    generate(folder, n_per_class=18, seed=6, taxonomy="all_vs_normal")
    run_job(scan(db, folder / "hem"))
    with db.session() as s:
        setup_models(s, paths)
    activate(db, read_card(BINARY).name)
    with db.session() as s:
        for image_id, _ in images_under(s, folder / "hem"):
            record_labels(s, [image_id], "Normal", "tester", taxonomy="all_vs_normal")
    out = run_job(retrain(db, paths, RetrainConfig(int8=False, threads=2, bootstrap=200)))
    assert out["status"] == "completed" and out["data"]["too_few"] == ["ALL"]
    new, _ = load_model(Path(out["package"]))
    old, _ = load_model(BINARY)
    changed = [k for k, v in new.state_dict().items() if not torch.equal(v, old.state_dict()[k])]
    assert changed and all(k.startswith("classifier.") for k in changed)  # the backbone is the parent's
    card = read_card(Path(out["package"]))
    assert "replayed" in card.metrics["method"] and card.guard["classes_fitted"] == [0, 1]
    assert _called_all(Path(out["package"]), sorted((folder / "hem").glob("*.jpg"))) <= 0.1  # corrections learnt
    cnmc = SHARED / "cnmc-train" / "all"
    if cnmc.is_dir():  # real blasts of held-out patients are still called ALL
        blasts = sorted(cnmc.glob("UID_33_*"))[:20] + sorted(cnmc.glob("UID_38_*"))[:20]
        assert _called_all(Path(out["package"]), blasts) >= 0.85 * _called_all(BINARY, blasts)
