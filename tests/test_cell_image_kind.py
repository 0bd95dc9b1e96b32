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


# ---- through the command line: classify FOLDER --images KIND -> the finder -> the database ----

def _searches(db, image_id) -> dict[str, tuple[int, bool]]:
    from sqlalchemy import select

    from core.storage import CellSearch

    with db.session() as s:
        return {f: (n, bool(single)) for f, n, single in s.execute(
            select(CellSearch.finder, CellSearch.n_cells, CellSearch.single_cell_crop)
            .where(CellSearch.image_id == image_id))}


def test_classify_images_option_reaches_the_finder_and_a_new_kind_searches_again(cli, db, tmp_path):
    from core.cells.records import counted_cells
    from core.imaging.scan import images_under
    from core.review.cell_labels import record_cell_labels
    from tests.cellfixtures import write_png
    from tests.test_cell_stage import make_cell_model_active

    make_cell_model_active(db, keep_field_active=False)
    folder = tmp_path / "camera"
    write_png(folder / "field.png", _centred_field(11.0, 8.0))  # auto judges it a crop: one cell

    rc, out, err = cli("classify", folder, "--images", "crops")
    assert rc == 0, err
    with db.session() as s:
        ((image_id, _),) = images_under(s, folder)
    assert _searches(db, image_id) == {finder_name("crops"): (1, True)}

    rc, out, err = cli("classify", folder, "--images", "fields")  # the lab says: a camera's fields
    assert rc == 0, err
    assert _searches(db, image_id)[finder_name("fields")] == (3, False)
    with db.session() as s:
        counted = counted_cells(s, [image_id])[image_id]
        assert len(counted) == 3 and {c.finder for c in counted} == {finder_name("fields")}
        assert sum("border" in c.flags for c in counted) == 2
        record_cell_labels(s, [counted[0].id], "ALL", "ann", taxonomy="all_vs_normal")

    # the same kind again: nothing searched twice; another kind: a labelled search is kept
    assert cli("classify", folder, "--images", "fields")[0] == 0
    assert cli("classify", folder)[0] == 0  # auto
    assert set(_searches(db, image_id)) == {finder_name("crops"), finder_name("fields")}
    with db.session() as s:
        assert len(counted_cells(s, [image_id])[image_id]) == 3



def test_import_labels_keeps_the_kind_a_classify_was_told(cli, db, tmp_path):
    # a field centred on one blast: auto would call it a field of three cells (not labelled by
    # import-labels); the lab classified the folder as crops, so its one cell takes the label
    from core.cells.records import store_field_cells
    from core.imaging.scan import images_under, scan
    from core.jobs import run_job
    from tests.cellfixtures import write_png

    folder = tmp_path / "cells"
    img = _centred_field(17.0, 15.0)
    write_png(folder / "all" / "blast.png", img)
    run_job(scan(db, folder))
    with db.session() as s:
        ((image_id, _),) = images_under(s, folder)
        store_field_cells(s, image_id, find_cells(img, image_kind="crops"), finder_name("crops"))
    rc, out, err = cli("import-labels", folder, "--reviewer", "dr.b")
    assert rc == 0, err
    assert "cells labelled (single-cell crops): 1" in out
    assert set(_searches(db, image_id)) == {finder_name("crops")}  # not searched again as auto


def test_classify_without_images_keeps_the_kind_each_image_was_searched_with(cli, db, tmp_path):
    # a folder classified as fields, then again without --images (a new file, a worker): nothing
    # is searched again; --images auto, said, searches it again as auto
    from core.imaging.scan import images_under
    from tests.cellfixtures import write_png
    from tests.test_cell_stage import make_cell_model_active

    make_cell_model_active(db, keep_field_active=False)
    folder = tmp_path / "camera"
    write_png(folder / "field.png", _centred_field(11.0, 8.0))
    assert cli("classify", folder, "--images", "fields")[0] == 0
    with db.session() as s:
        ((first, _),) = images_under(s, folder)
    write_png(folder / "later.png", _centred_field(11.0, 8.0)[::-1].copy())
    assert cli("classify", folder)[0] == 0
    with db.session() as s:
        later = next(i for i, p in images_under(s, folder) if p.endswith("later.png"))
    assert _searches(db, first) == {finder_name("fields"): (3, False)}
    assert _searches(db, later) == {finder_name("auto"): (1, True)}  # never searched: the finder judged

    assert cli("classify", folder, "--images", "auto")[0] == 0
    assert _searches(db, first) == {finder_name("fields"): (3, False), finder_name("auto"): (1, True)}


def test_going_back_to_a_kind_searched_before_counts_that_search_and_says_so(cli, db, tmp_path):
    # fields -> crops -> fields: the third run must make the fields search count again (the
    # database, the Cells view and the differential read counted_cells), say so in its summary,
    # and a fourth run has nothing new to do. Before: the fields search (stored already) was
    # "found" again but not stored, the crops cell kept counting, and every later run repeated it.
    from core.cells.records import counted_cells
    from core.imaging.scan import images_under
    from tests.cellfixtures import write_png
    from tests.test_cell_stage import make_cell_model_active

    make_cell_model_active(db, keep_field_active=False)
    folder = tmp_path / "camera"
    write_png(folder / "field.png", _centred_field(11.0, 8.0))

    def cells_line(*kind):
        rc, out, err = cli("classify", folder, *kind)
        assert rc == 0, err
        return next(line for line in out.splitlines() if line.startswith("cells:"))

    def counted() -> tuple[str, int]:
        """(the finder whose cells count, how many count): what the Cells view and the differential read."""
        with db.session() as s:
            cells = counted_cells(s, [image_id])[image_id]
        assert len({c.finder for c in cells}) == 1
        return cells[0].finder, len(cells)

    assert cells_line("--images", "fields").startswith("cells: 3 found in 1 images, 3 classified")
    with db.session() as s:
        ((image_id, _),) = images_under(s, folder)
    assert counted() == (finder_name("fields"), 3)
    assert cells_line("--images", "crops").startswith("cells: 1 found in 1 images, 1 classified")
    assert counted() == (finder_name("crops"), 1)

    back = cells_line("--images", "fields")  # nothing found again: the stored search counts again
    assert counted() == (finder_name("fields"), 3)
    assert back.startswith("cells: 0 found in 0 images, 0 classified"), back
    assert "1 image(s) already searched as camera fields: the cells found then count again (3 cell(s))" in back
    assert cells_line("--images", "fields") == "cells: nothing new to find (3 cells in 1 images already found)"
    assert _searches(db, image_id) == {finder_name("fields"): (3, False), finder_name("crops"): (1, True)}
    assert cells_line("--images", "crops").endswith("1 image(s) already searched as single-cell crops: the cells found then count again (1 cell(s))")
    assert counted() == (finder_name("crops"), 1)
