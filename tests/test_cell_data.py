"""The cut-out data set (trainer/cell_data.py) is made by the cell pipeline's own finder and
cut-out, on synthetic fields (core/cells/synthetic.py): typed crops give their central cell with
the class of their folder, boxed fields the found cells inside a white-cell box, untyped; the
cache gives back what was built."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.cells.cutout import cut_out_for_model
from core.cells.finder import DEFAULT_UM_PER_PX, find_cells
from core.cells.synthetic import box_px, draw, standard_field
from trainer.cell_data import (CLASSES, CutSpec, build_source, central_cell, cnmc_scale, cnmc_subject,
                               load_or_build)

UM_PER_PX = 0.25


def _write(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_typed_crops_give_their_central_cell_cut_out_as_classify_cuts_it(tmp_path):
    rgb = draw(standard_field(), UM_PER_PX)
    _write(tmp_path / "pbc-cells" / "lymphocyte" / "a.png", rgb)
    _write(tmp_path / "pbc-cells" / "not-a-class" / "b.png", rgb)  # an unknown folder is left out
    spec = CutSpec(out_px=64, background="black")
    cells = build_source("pbc", tmp_path, spec)
    assert len(cells) == 1 and cells.labels.tolist() == [CLASSES.index("Lymphocyte")]
    again = cv2.cvtColor(cv2.imread(str(tmp_path / "pbc-cells" / "lymphocyte" / "a.png")), cv2.COLOR_BGR2RGB)
    found = find_cells(again)
    expected = cut_out_for_model(again, central_cell(found, again.shape), found.um_per_px, side_um=25.0, out_px=64,
                                 prep=spec.prep)
    assert np.array_equal(cells.images[0], expected)
    assert cells.masks.shape == (1, 64, 64) and cells.masks[0].any() and not cells.masks[0].all()
    assert (cells.images[0][~cells.masks[0]] == 0).all()  # black outside the cell


def test_boxed_fields_give_the_cells_inside_white_cell_boxes_untyped(tmp_path):
    f = standard_field()
    rgb = draw(f, UM_PER_PX)
    _write(tmp_path / "bccd-boxes" / "images" / "BloodImage_00001.jpg", rgb)
    x0, y0, x1, y1 = box_px(f.white_cells[0], UM_PER_PX)
    (tmp_path / "bccd-boxes" / "annotations").mkdir()
    (tmp_path / "bccd-boxes" / "annotations" / "BloodImage_00001.xml").write_text(
        f"<annotation><object><name>WBC</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object><object><name>RBC</name><bndbox><xmin>0</xmin><ymin>0</ymin>"
        f"<xmax>{rgb.shape[1]}</xmax><ymax>{rgb.shape[0]}</ymax></bndbox></object></annotation>")
    cells = build_source("bccd", tmp_path, CutSpec(out_px=48))
    assert len(find_cells(rgb).cells) > 1  # the field has more cells than the one boxed
    assert len(cells) == 1 and cells.labels.tolist() == [-1]


def test_the_cache_gives_back_what_was_built(tmp_path):
    _write(tmp_path / "cnmc-train" / "all" / "UID_16_1_1_all.png", draw(standard_field(), UM_PER_PX))
    spec = CutSpec(out_px=32)
    built = load_or_build("cnmc", tmp_path, spec, tmp_path / "cache")
    cached = load_or_build("cnmc", tmp_path, spec, tmp_path / "cache")
    assert np.array_equal(built.images, cached.images) and cached.subjects.tolist() == ["16"]
    assert cached.labels.tolist() == [CLASSES.index("Blast")]


def test_cnmc_subjects_come_from_the_file_name():
    assert cnmc_subject("UID_16_11_1_all.jpg") == "16"
    assert cnmc_subject("UID_H10_43_1_hem.bmp") == "H10"
    assert cnmc_subject("other.jpg") == ""


def _cell_on_black(radius_px: int, size: int = 200) -> np.ndarray:
    """A C-NMC-like crop: one segmented cell on black, no red cells (so no scale)."""
    rgb = np.zeros((size, size, 3), np.uint8)
    cv2.circle(rgb, (size // 2, size // 2), radius_px, (190, 150, 200), -1)
    cv2.circle(rgb, (size // 2, size // 2), int(radius_px * 0.7), (110, 60, 150), -1)
    return rgb


def _mask_diameter_um(mask: np.ndarray, spec: CutSpec) -> float:
    return 2.0 * np.sqrt(mask.sum() / np.pi) * spec.side_um / spec.out_px


def test_cnmc_crops_get_the_scale_that_makes_their_normal_cells_pbc_lymphocyte_sized(tmp_path):
    # PBC lymphocyte: a field with red cells (the finder measures its scale); C-NMC: cells on black,
    # normal (hem) 60 px and blasts 90 px across, which the finder's default 0.1 um/px makes 6 and 9 um
    _write(tmp_path / "pbc-cells" / "lymphocyte" / "a.png", draw(standard_field(), UM_PER_PX))
    for i in range(3):
        _write(tmp_path / "cnmc-train" / "hem" / f"UID_H10_{i}_1_hem.png", _cell_on_black(30))
        _write(tmp_path / "cnmc-train" / "all" / f"UID_16_{i}_1_all.png", _cell_on_black(45))
    spec = CutSpec(out_px=96)
    lymph = build_source("pbc", tmp_path, spec)
    lymph_um = _mask_diameter_um(lymph.masks[0], spec)
    scale = cnmc_scale(tmp_path, tmp_path / "cache")
    assert scale["um_per_px"] != DEFAULT_UM_PER_PX and scale["n_matched"] == 3 and scale["n_reference"] == 1
    assert cnmc_scale(tmp_path, tmp_path / "cache") == scale  # kept, not measured again

    unscaled = build_source("cnmc", tmp_path, spec)
    scaled = build_source("cnmc", tmp_path, spec, unscaled_um_per_px=scale["um_per_px"])
    hem, blast = scaled.labels == CLASSES.index("Lymphocyte"), scaled.labels == CLASSES.index("Blast")
    hem_um = np.median([_mask_diameter_um(m, spec) for m in scaled.masks[hem]])
    blast_um = np.median([_mask_diameter_um(m, spec) for m in scaled.masks[blast]])
    default_hem_um = np.median([_mask_diameter_um(m, spec) for m in unscaled.masks[hem]])
    assert abs(default_hem_um - lymph_um) > 0.15 * lymph_um  # the finder's default: not a lymphocyte's size
    assert abs(hem_um - lymph_um) < 0.05 * lymph_um  # calibrated: the normal cells are lymphocyte-sized
    assert abs(blast_um / hem_um - 1.5) < 0.05  # blasts keep their size relative to the normal cells
    assert scaled.info["unscaled_um_per_px"] == scale["um_per_px"]


def test_a_calibrated_scale_is_cached_apart_from_the_default_cut_outs(tmp_path):
    _write(tmp_path / "cnmc-train" / "hem" / "UID_H10_1_1_hem.png", _cell_on_black(30))
    spec = CutSpec(out_px=64)
    default = load_or_build("cnmc", tmp_path, spec, tmp_path / "cache")
    scaled = load_or_build("cnmc", tmp_path, spec, tmp_path / "cache", unscaled_um_per_px=0.05)
    assert default.masks.sum() != scaled.masks.sum()


def test_no_cells_to_calibrate_on_is_one_clear_sentence(tmp_path):
    (tmp_path / "pbc-cells" / "lymphocyte").mkdir(parents=True)
    (tmp_path / "cnmc-train" / "hem").mkdir(parents=True)
    with pytest.raises(ValueError, match="cannot calibrate C-NMC's scale"):
        cnmc_scale(tmp_path)


def test_the_nucleus_match_makes_the_normal_cells_nuclei_pbc_lymphocyte_sized(tmp_path):
    _write(tmp_path / "pbc-cells" / "lymphocyte" / "a.png", draw(standard_field(), UM_PER_PX))
    _write(tmp_path / "cnmc-train" / "hem" / "UID_H10_1_1_hem.png", _cell_on_black(30))
    by_cell = cnmc_scale(tmp_path, tmp_path / "cache", "cell")
    by_nucleus = cnmc_scale(tmp_path, tmp_path / "cache", "nucleus")
    assert by_nucleus["match"] == "nucleus" and by_nucleus["um_per_px"] != by_cell["um_per_px"]
    ratio = by_nucleus["reference_median_um"] / by_nucleus["matched_median_um_at_default"]
    assert abs(by_nucleus["um_per_px"] - DEFAULT_UM_PER_PX * ratio) < 1e-4
    with pytest.raises(ValueError, match="match must be one of cell, nucleus"):
        cnmc_scale(tmp_path, match="outline")
