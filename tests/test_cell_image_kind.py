"""The image kind a lab declares (core/cells/finder.py IMAGE_KINDS): "crops" always gives the
central cell, "fields" every cell found (border-cut ones flagged), "auto" lets the finder judge."""
from __future__ import annotations

import numpy as np
import pytest

from core.cells import synthetic
from core.cells.finder import FINDER_NAME, find_cells, finder_name

UM_PER_PX = 0.1


def _centred_field(neighbour_cell_um: float, neighbour_nucleus_um: float) -> np.ndarray:
    """36 um square centred on one white cell, two neighbours cut by the right and top borders
    (a Raabin field and a PBC crop are this picture)."""
    central = synthetic.WhiteCell(18, 18, 11, 8)
    right = synthetic.WhiteCell(35, 18, neighbour_cell_um, neighbour_nucleus_um)
    top = synthetic.WhiteCell(16, 1, neighbour_cell_um, neighbour_nucleus_um)
    reds = [(6, 31), (6, 8), (20, 33), (30, 31)]
    return synthetic.draw(synthetic.Field(width_um=36, height_um=36, white_cells=[central, right, top],
                                          red_cells=reds), UM_PER_PX)


def _holds_centre(cell, img) -> bool:
    h, w = img.shape[:2]
    return cell.box[0] <= w / 2 < cell.box[2] and cell.box[1] <= h / 2 < cell.box[3]


@pytest.mark.parametrize("neighbours", [(11.0, 8.0), (17.0, 15.0)], ids=["slivers", "whole-nuclei"])
def test_declared_kind_decides_how_many_cells_a_centred_field_gives(neighbours):
    img = _centred_field(*neighbours)
    fields = find_cells(img, image_kind="fields")
    crops = find_cells(img, image_kind="crops")
    auto = find_cells(img, image_kind="auto")

    assert len(fields.cells) == 3 and not fields.single_cell_crop
    assert sum("border" in c.flags for c in fields.cells) == 2
    assert len(crops.cells) == 1 and crops.single_cell_crop and _holds_centre(crops.cells[0], img)
    if neighbours == (11.0, 8.0):  # slivers of nucleus at the border: auto judges it a crop
        assert auto.single_cell_crop and len(auto.cells) == 1
    else:  # a whole nucleus's worth showing: auto judges it a field
        assert not auto.single_cell_crop and len(auto.cells) == 3


def test_a_cell_on_black_declared_a_field_is_not_called_a_crop():
    import cv2

    img = np.zeros((450, 450, 3), np.uint8)
    cv2.circle(img, (225, 225), 120, synthetic.CYTOPLASM, -1)
    cv2.circle(img, (235, 215), 80, synthetic.NUCLEUS, -1)
    assert find_cells(img).single_cell_crop
    as_field = find_cells(img, image_kind="fields")
    assert len(as_field.cells) == 1 and not as_field.single_cell_crop


def test_a_crop_without_a_cell_at_its_centre_gives_the_nearest():
    field = synthetic.standard_field()
    img = synthetic.draw(field, 0.25)
    found = find_cells(img, image_kind="crops")
    assert len(found.cells) == 1 and found.single_cell_crop
    h, w = img.shape[:2]
    every = find_cells(img, image_kind="fields").cells
    nearest = min(every, key=lambda c: (c.centre[0] - w / 2) ** 2 + (c.centre[1] - h / 2) ** 2)
    assert found.cells[0].box == nearest.box


def test_an_unknown_kind_is_refused_in_one_sentence():
    with pytest.raises(ValueError, match="must be one of auto, fields, crops"):
        find_cells(np.zeros((32, 32, 3), np.uint8), image_kind="slides")


def test_each_declared_kind_is_its_own_search():
    assert finder_name() == FINDER_NAME
    names = {finder_name(k) for k in ("auto", "fields", "crops")}
    assert len(names) == 3 and all(len(n) <= 32 for n in names)  # CellSearch.finder is String(32)
