"""The cut-out data set (trainer/cell_data.py) is made by the cell pipeline's own finder and
cut-out, on synthetic fields (core/cells/synthetic.py): typed crops give their central cell with
the class of their folder, boxed fields the found cells inside a white-cell box, untyped; the
cache gives back what was built."""
from __future__ import annotations

import cv2
import numpy as np

from core.cells.cutout import cut_out_for_model
from core.cells.finder import find_cells
from core.cells.synthetic import box_px, draw, standard_field
from trainer.cell_data import CLASSES, CutSpec, build_source, central_cell, cnmc_subject, load_or_build

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
