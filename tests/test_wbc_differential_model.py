"""The bundled white-cell differential (resources/models/wbc-differential): it loads and verifies,
is the cell model a first start makes active, classify writes its 9-class predictions for the
cells of a synthetic field and cuts a pre-cut crop's cell out as its card says (``cell_crops``),
and on real cells of labs it never trained on, few cut-outs are flagged as outside its experience."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sqlalchemy import select

from core.jobs import run_job
from core.models.package import CARD_FILE, ModelPackageError, bundled_packages, read_card, verify_package
from core.models.taxonomy import TAXONOMIES
from core.storage import CellPrediction, ModelVersion, Prediction

PACKAGE_NAME = "wbc-differential-effnet-lite0-v2"
MAX_FILE_BYTES = 25 * 1024 * 1024


def _package():
    return next(p for p in bundled_packages() if p.name == "wbc-differential")


def test_the_package_verifies_and_is_a_cell_model_of_the_differential():
    pkg = _package()
    card = verify_package(pkg)
    assert card.name == PACKAGE_NAME and card.architecture == "effnet_lite0"
    assert card.taxonomy == "wbc_differential" and tuple(card.classes) == TAXONOMIES["wbc_differential"].classes
    assert card.input == "cell" and card.cell_crops == "cut_out" and card.prep.cell_background == "black"
    assert card.guard and card.guard["file"] and card.uncertain_threshold is not None
    for f in pkg.iterdir():
        assert f.stat().st_size <= MAX_FILE_BYTES, f


def test_a_bad_cell_crops_value_is_refused_with_the_field_named(tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(_package(), pkg)
    card = json.loads((pkg / CARD_FILE).read_text(encoding="utf-8"))
    card["cell_crops"] = "stretch"
    (pkg / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelPackageError, match="cell_crops"):
        verify_package(pkg)


def test_a_card_without_cell_crops_gives_crops_whole_as_before(tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(_package(), pkg)
    card = json.loads((pkg / CARD_FILE).read_text(encoding="utf-8"))
    del card["cell_crops"]
    (pkg / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    assert read_card(pkg).cell_crops == "whole"


def test_a_first_start_makes_the_differential_the_active_cell_model(db):
    with db.session() as s:
        active = s.scalars(select(ModelVersion.name).where(ModelVersion.is_active.is_(True),
                                                           ModelVersion.input_kind == "cell")).all()
        bundled = set(s.scalars(select(ModelVersion.name)))
    assert active == [PACKAGE_NAME]
    assert "all-vs-normal-seed-cnn3-v1" in bundled  # still bundled and registered, not active


def test_classify_writes_differential_predictions_for_the_cells_of_a_field(db, paths, tmp_path):
    from core.inference.predict import classify
    from tests.cellfields import write_fields

    write_fields(tmp_path / "case1", 2, white_per_field=3)
    summary = run_job(classify(db, paths, tmp_path / "case1", workers=1))
    assert summary.n_cells_classified == 6
    with db.session() as s:
        rows = s.scalars(select(CellPrediction)).all()
        names = {v.id: v.name for v in s.scalars(select(ModelVersion))}
    assert len(rows) == 6
    for p in rows:
        assert names[p.model_version_id] == PACKAGE_NAME
        assert p.label in TAXONOMIES["wbc_differential"].classes and len(p.probabilities) == 9


def test_a_pre_cut_crop_is_cut_out_like_a_fields_cells(db, paths, tmp_path, monkeypatch):
    """cell_crops "cut_out": the crop's cell reaches the model as cut_out_for_model makes it (black
    outside the outline), not the whole crop resized; its prediction is also the image's."""
    from core.cells.cutout import cut_out_for_model
    from core.cells.finder import find_cells
    from core.inference.predict import Predictor, classify
    from tests.cellfields import single_cell_crop, write

    seen: list[np.ndarray] = []
    real_assess = Predictor.assess

    def spy(self, batch, *rest):
        if self.card.input == "cell":
            seen.append(np.array(batch))
        return real_assess(self, batch, *rest)

    monkeypatch.setattr(Predictor, "assess", spy)
    crop = single_cell_crop()
    write(tmp_path / "crops" / "cell.png", crop)
    run_job(classify(db, paths, tmp_path / "crops", workers=1))
    card = read_card(_package())
    found = find_cells(crop)
    assert found.single_cell_crop
    expected = card.prep.apply(cut_out_for_model(crop, found.cells[0], found.um_per_px, side_um=card.cut_out_side_um,
                                                 out_px=card.prep.input_size, prep=card.prep))
    assert len(seen) == 1 and np.array_equal(seen[0][0], expected)
    assert not np.array_equal(seen[0][0], card.prep.apply(crop))
    with db.session() as s:
        vid = s.scalar(select(ModelVersion.id).where(ModelVersion.name == PACKAGE_NAME))
        assert s.scalar(select(Prediction.label).where(Prediction.model_version_id == vid)) is not None


def flagged_shares(datasets, per_set: int = 60) -> dict[str, float]:
    """The share of real cut-outs, cut out as classify cuts them, that the bundled differential's
    guard flags as outside its experience, through the runtime classify uses (Predictor), per
    set it never trained on: pbc-dev (another PBC draw), Raabin's and BCCD's white cells."""
    from core.cells.cutout import cut_out_for_model
    from core.inference.predict import Predictor
    from trainer.cell_data import central_cell, read_rgb

    card = verify_package(_package())
    predictor = Predictor(_package(), device="cpu", card=card)
    out = {}
    for name, pattern in (("pbc-dev", "pbc-dev/*/*.jpg"), ("raabin", "raabin-boxes/images/*.jpg"),
                          ("bccd", "bccd-boxes/images/*.jpg")):
        from core.cells.finder import find_cells

        files = sorted(datasets.glob(pattern))
        files = files[:: max(1, len(files) // per_set)][:per_set]
        batch = []
        for f in files:
            rgb = read_rgb(f)
            found = find_cells(rgb)
            cell = central_cell(found, rgb.shape)
            if cell is not None:
                batch.append(card.prep.apply(cut_out_for_model(rgb, cell, found.um_per_px, side_um=card.cut_out_side_um,
                                                               out_px=card.prep.input_size, prep=card.prep)))
        a = predictor.assess(np.stack(batch))
        out[name] = float(np.mean(a.outside))
    return out


@pytest.mark.dataset
def test_few_real_cut_outs_of_labs_it_never_trained_on_are_flagged(dataset_dir):
    shares = flagged_shares(dataset_dir.parent)
    assert shares["pbc-dev"] <= FLAG_LIMITS["pbc-dev"], shares
    assert shares["raabin"] <= FLAG_LIMITS["raabin"], shares
    assert shares["bccd"] <= FLAG_LIMITS["bccd"], shares


# measured 2026-12-04 on 60 cells each: pbc-dev 0.00, Raabin 0.23, BCCD 0.42 (the ALL-vs-normal
# package it replaces flagged all of pbc-dev's cells); a margin for another draw of 60
FLAG_LIMITS = {"pbc-dev": 0.1, "raabin": 0.4, "bccd": 0.65}


@pytest.mark.dataset
def test_grayscale_pbc_dev_cells_are_typed_nearly_as_well_as_the_originals(dataset_dir):
    """The head learnt from grayscale and stain-perturbed copies too (card: training_data.colour_copies):
    a grayscale pbc-dev cut-out is typed within 0.03 of its original (v1, without them: 0.883 -> 0.692)."""
    from core.cells.cutout import cut_out_for_model
    from core.cells.finder import find_cells
    from core.inference.predict import Predictor
    from core.models.taxonomy import resolve_alias
    from trainer.augment import to_grayscale
    from trainer.cell_data import central_cell, read_rgb

    card = verify_package(_package())
    predictor = Predictor(_package(), device="cpu", card=card)
    cut, truth = [], []
    for f in sorted((dataset_dir.parent / "pbc-dev").glob("*/*.jpg"))[::2]:
        rgb = read_rgb(f)
        found = find_cells(rgb)
        cell = central_cell(found, rgb.shape)
        if cell is not None:
            cut.append(cut_out_for_model(rgb, cell, found.um_per_px, side_um=card.cut_out_side_um,
                                         out_px=card.prep.input_size, prep=card.prep))
            truth.append(card.classes.index(resolve_alias(f.parent.name, "wbc_differential")[1]))
    cut, truth = np.stack(cut), np.asarray(truth)
    accuracy = {v: float((predictor.predict(np.stack([card.prep.apply(i) for i in imgs])).argmax(1) == truth).mean())
                for v, imgs in (("as_is", cut), ("grayscale", to_grayscale(cut)))}
    assert len(truth) >= 100 and accuracy["as_is"] >= 0.8, accuracy
    assert accuracy["grayscale"] >= accuracy["as_is"] - 0.03, accuracy
