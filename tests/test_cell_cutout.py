"""A cell model's cut-out is made as its card says: ``cell_background`` "black" blacks out what lies
outside the cell's outline (as C-NMC's segmented cells are), "keep" (and a card without the field)
cuts out as before; the field is validated and round-trips; the cell stage uses it."""
from __future__ import annotations

import dataclasses
import json
import shutil

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from core.cells.cutout import cut_out_for_model
from core.cells.finder import FoundCell, cut_out
from core.errors import ModelPackageError
from core.imaging.preprocessing import Preprocessing
from core.jobs import run_job
from core.models.package import CARD_FILE, ModelCard, bundled_packages, read_card, save_package, verify_package

UM_PER_PX = 0.25


def _field(seed: int = 0) -> np.ndarray:
    """Noise in 1..255: no pixel is black by chance, so a 0 can only come from the mask."""
    return np.random.default_rng(seed).integers(1, 256, (200, 240, 3), dtype=np.uint8)


def _cell(cx: int = 120, cy: int = 100, r: int = 20) -> FoundCell:
    ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    contour = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1).round().astype(np.int32)
    return FoundCell((cx - r, cy - r, cx + r + 1, cy + r + 1), contour, None, int(np.pi * r * r), frozenset())


def _distance_to_outline(cell: FoundCell, side_px: int) -> np.ndarray:
    """Signed distance (px, > 0 inside) of each cut-out pixel to the outline, computed
    independently of the code under test: with out_px == the side in pixels the cut-out is a
    plain crop whose top-left is floor(centre - side / 2)."""
    cx, cy = cell.centre
    x0, y0 = int(np.floor(cx - side_px / 2)), int(np.floor(cy - side_px / 2))
    c = cell.contour.reshape(-1, 1, 2).astype(np.float32)
    return np.array([[cv2.pointPolygonTest(c, (float(x0 + j), float(y0 + i)), True) for j in range(side_px)]
                     for i in range(side_px)])


def test_black_sets_what_lies_outside_the_outline_to_zero_and_keeps_the_cell_unchanged():
    rgb, cell = _field(), _cell()
    side_px = 80
    prep = Preprocessing(cell_background="black")
    kept = cut_out(rgb, cell, UM_PER_PX, side_um=side_px * UM_PER_PX, out_px=side_px)
    black = cut_out_for_model(rgb, cell, UM_PER_PX, side_um=side_px * UM_PER_PX, out_px=side_px, prep=prep)
    d = _distance_to_outline(cell, side_px)
    assert black.shape == kept.shape == (side_px, side_px, 3)
    assert (black[d < -1.0] == 0).all()  # outside (a pixel's tolerance at the outline)
    assert (black[d > 1.0] == kept[d > 1.0]).all()  # inside: the field's pixels, untouched
    assert (d < -1.0).sum() > 2000 and (d > 1.0).sum() > 1000  # both parts are really there


def test_a_margin_keeps_a_rim_around_the_outline():
    rgb, cell = _field(1), _cell()
    side_px = 80
    prep = Preprocessing(cell_background="black", cell_margin_um=2.0)  # 8 px
    black = cut_out_for_model(rgb, cell, UM_PER_PX, side_um=side_px * UM_PER_PX, out_px=side_px, prep=prep)
    d = _distance_to_outline(cell, side_px)
    rim = (d < -1.0) & (d > -7.0)
    assert (black[rim] != 0).any(axis=-1).all()
    assert (black[d < -9.0] == 0).all()


def test_the_mask_follows_a_reduced_decode_and_a_resize():
    """A field decoded at half size (reduced_by 2) and a cut-out resized to 64 px: the outline is
    where the cell is (the centre's pixel kept, the corners black)."""
    rgb, cell = _field(2), _cell(cx=240, cy=200, r=40)  # in the original (full-size) grid
    half = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
    prep = Preprocessing(cell_background="black")
    out = cut_out_for_model(half, cell, UM_PER_PX / 2, side_um=100 * UM_PER_PX / 2 * 2, out_px=64, prep=prep,
                            reduced_by=2)
    kept = cut_out(half, cell, UM_PER_PX / 2, side_um=100 * UM_PER_PX / 2 * 2, out_px=64, reduced_by=2)
    assert (out[:6, :6] == 0).all() and (out[-6:, -6:] == 0).all()
    assert (out[26:38, 26:38] == kept[26:38, 26:38]).all()
    inside = (out != 0).any(axis=-1).mean()
    assert 0.09 < inside < 0.17  # a disc 40 px across in a 100 px square (decoded grid): 12.6 %


def test_keep_and_a_cell_without_an_outline_cut_out_as_before():
    rgb, cell = _field(3), _cell()
    kept = cut_out(rgb, cell, UM_PER_PX, side_um=25.0, out_px=64)
    assert (cut_out_for_model(rgb, cell, UM_PER_PX, side_um=25.0, out_px=64, prep=Preprocessing()) == kept).all()
    bare = dataclasses.replace(cell, contour=np.zeros((0, 2), np.int32))
    black = Preprocessing(cell_background="black")
    assert (cut_out_for_model(rgb, bare, UM_PER_PX, side_um=25.0, out_px=64, prep=black) == kept).all()


# ---- the card field ---------------------------------------------------------------------------


def _bundled_cell_package():
    return next(p for p in bundled_packages() if read_card(p).input == "cell")


def _edited(tmp_path, **prep_changes):
    pkg = tmp_path / "pkg"
    shutil.copytree(_bundled_cell_package(), pkg)
    card = json.loads((pkg / CARD_FILE).read_text(encoding="utf-8"))
    card["preprocessing"].update(prep_changes)
    for key, value in prep_changes.items():
        if value is None:
            card["preprocessing"].pop(key)
    (pkg / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    return pkg


def test_the_bundled_all_vs_normal_card_cuts_its_cells_out_on_black_and_verifies():
    pkg = _bundled_cell_package()
    card = verify_package(pkg)
    assert card.prep.cell_background == "black"


def test_a_card_without_the_field_keeps_the_background(tmp_path):
    card = verify_package(_edited(tmp_path, cell_background=None, cell_margin_um=None))
    assert "cell_background" not in card.preprocessing
    assert card.prep.cell_background == "keep" and card.prep.cell_margin_um == 0.0


@pytest.mark.parametrize("changes, field", [
    (dict(cell_background="white"), "cell_background"),
    (dict(cell_background=None), "preprocessing"),  # a key without a value is refused by the schema
    (dict(cell_background=0), "cell_background"),
    (dict(cell_margin_um=-1.0), "cell_margin_um"),
    (dict(cell_margin_um=50.0), "cell_margin_um"),
    (dict(cell_margin_um=float("nan")), "cell_margin_um"),
    (dict(cell_margin_um="2"), "cell_margin_um"),
])
def test_a_bad_cell_background_is_refused_with_the_field_named(tmp_path, changes, field):
    pkg = tmp_path / "pkg"
    shutil.copytree(_bundled_cell_package(), pkg)
    card = json.loads((pkg / CARD_FILE).read_text(encoding="utf-8"))
    card["preprocessing"].update(changes)
    (pkg / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelPackageError, match=field) as err:
        verify_package(pkg)
    assert "\n" not in str(err.value)


def test_preprocessing_refuses_a_bad_background_itself():
    with pytest.raises(ValueError, match="cell_background"):
        Preprocessing.from_dict({"cell_background": "grey"})
    with pytest.raises(ValueError, match="cell_margin_um"):
        Preprocessing.from_dict({"cell_margin_um": 99})


def test_the_field_round_trips_through_save_and_read(tmp_path):
    from core.models.architectures import build

    prep = Preprocessing(input_size=40, interpolation="area", cell_background="black", cell_margin_um=1.5)
    card = ModelCard(name="cells-v2", architecture="seed_baseline", taxonomy="all_vs_normal", classes=["ALL", "Normal"],
                     preprocessing=prep.to_dict(), input="cell", cell_side_um=25.0)
    save_package(tmp_path / "cells-v2", build("seed_baseline", 2).state_dict(), card)
    back = read_card(tmp_path / "cells-v2")
    assert back.prep == prep
    written = json.loads((tmp_path / "cells-v2" / CARD_FILE).read_text())["preprocessing"]
    assert written["cell_background"] == "black" and written["cell_margin_um"] == 1.5


# ---- the cell stage ---------------------------------------------------------------------------


@pytest.mark.parametrize("background", ["keep", "black"])
def test_the_cell_stage_gives_the_model_cut_outs_with_the_cards_background(db, paths, tmp_path, monkeypatch,
                                                                           background):
    """Found cells, and cells found by an earlier run (their outline read back from the database),
    reach the model with the card's background: black corners with "black", the field's with "keep"."""
    from core.inference.predict import Predictor, classify
    from core.models.registry import version_package, version_ref_by_id
    from core.storage import Cell, CellPrediction
    from tests.cellfields import write_fields
    from tests.test_cell_stage import make_cell_model_active

    import shutil

    from sqlalchemy import update

    from core.models.registry import register_package
    from core.storage import ModelVersion

    vid = make_cell_model_active(db, keep_field_active=False)
    with db.session() as s:
        pkg = version_package(s, version_ref_by_id(s, vid), paths)
    # a changed card is a new version (issue 24): the same model with this background, registered
    variant = tmp_path / "variant"
    shutil.copytree(pkg, variant)
    card = json.loads((variant / CARD_FILE).read_text(encoding="utf-8"))
    card["preprocessing"]["cell_background"] = background
    card["name"] = f"{card['name']}-{background}"
    (variant / CARD_FILE).chmod(0o644)
    (variant / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    with db.session() as s:
        vid = register_package(s, paths, variant).id
        s.execute(update(ModelVersion).values(is_active=False))
        s.execute(update(ModelVersion).where(ModelVersion.id == vid).values(input_kind="cell", is_active=True))
    seen: list[np.ndarray] = []
    real_assess = Predictor.assess

    def spy(self, batch, *rest):
        seen.append(np.array(batch))
        return real_assess(self, batch, *rest)

    monkeypatch.setattr(Predictor, "assess", spy)
    folder = tmp_path / "case1"
    write_fields(folder, 2)
    run_job(classify(db, paths, folder, workers=1))
    with db.session() as s:  # as if a run was killed before classifying these cells
        s.execute(CellPrediction.__table__.delete().where(CellPrediction.cell_id.in_(select(Cell.id))))
    first = np.concatenate(seen)
    seen.clear()
    again = run_job(classify(db, paths, folder, workers=1))
    assert again.n_cells == 0 and again.n_cells_classified == len(first) == 6
    for batch in (first, np.concatenate(seen)):
        corners = batch[:, :4, :4]  # top-left: outside every cell (bottom-right is the card's corner mask)
        if background == "black":
            assert (corners == 0).all()
        else:
            assert (corners.reshape(len(batch), -1).max(axis=1) > 100).all()
