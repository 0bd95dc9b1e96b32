"""Reviewed cells as training data: the cells of one field share its fixed side, and each is
cut out again exactly as classify cut it for the cell model."""
from __future__ import annotations

import numpy as np
from sqlalchemy import select

from core.cells.cutout import cut_out_for_model
from core.cells.finder import decode_for_cells
from core.imaging.images import read_file
from core.imaging.preprocessing import Preprocessing
from core.review.cell_labels import record_cell_labels
from core.review.reviewed import cell_inputs, reviewed_cells
from core.storage import Image

from .cellfolder import CELL_TAXONOMY, UM_PER_PX, _found, make_cell_folder


def test_reviewed_cells_take_their_fields_side_and_are_cut_out_as_classify_cuts_them(db, tmp_path):
    folder, vid, cells = make_cell_folder(db, tmp_path)
    ids = sorted(cells)
    with db.session() as s:
        record_cell_labels(s, ids[:4], "ALL", "Ana Tester", taxonomy=CELL_TAXONOMY)
        record_cell_labels(s, [ids[4]], "Other", "Ana Tester", taxonomy=CELL_TAXONOMY)
        record_cell_labels(s, [ids[3]], None, "Ana Tester", taxonomy=CELL_TAXONOMY)  # cleared: not training data
    kept, other = reviewed_cells(db, CELL_TAXONOMY, ["ALL", "Normal"], val_fraction=0.5)
    assert [c.cell_id for c in kept] == ids[:3] and [c.cell_id for c in other] == [ids[4]]
    with db.session() as s:
        split = dict(s.execute(select(Image.id, Image.split)).all())
    assert all(c.side == split[c.image_id] and c.side for c in kept + other)  # stored once, the image's side
    assert len({c.side for c in kept if c.image_id == kept[0].image_id}) == 1

    prep = Preprocessing(input_size=32, cell_background="black")
    x, got_ids, failed = cell_inputs(kept, prep, side_um=12.0)
    assert got_ids == ids[:3] and not failed and x.shape == (3, 32, 32, 3) and x.dtype == np.uint8
    first = kept[0]
    rgb, reduced_by = decode_for_cells(read_file(first.path))
    expected = prep.apply(cut_out_for_model(rgb, _found(cells[first.cell_id][1]), UM_PER_PX, side_um=12.0,
                                            out_px=32, prep=prep, reduced_by=reduced_by))
    assert np.array_equal(x[0], expected)


def test_a_reviewed_cell_whose_file_changed_is_left_out_with_its_reason(db, tmp_path):
    folder, vid, cells = make_cell_folder(db, tmp_path)
    ids = sorted(cells)
    with db.session() as s:
        record_cell_labels(s, ids, "Normal", "Ana Tester", taxonomy=CELL_TAXONOMY)
    kept, _ = reviewed_cells(db, CELL_TAXONOMY, ["ALL", "Normal"])
    changed = kept[0]
    with open(changed.path, "ab") as f:
        f.write(b"\0edited")
    x, got_ids, failed = cell_inputs(kept, Preprocessing(input_size=32), side_um=12.0)
    same_image = {c.cell_id for c in kept if c.image_id == changed.image_id}
    assert set(failed) == same_image and "changed" in failed[changed.cell_id]
    assert set(got_ids) == {c.cell_id for c in kept} - same_image and len(x) == len(got_ids)


def test_lab_cells_are_the_cells_the_parent_classified_with_its_flags(db, tmp_path):
    from sqlalchemy import update

    from core.review.reviewed import lab_cells
    from core.storage import CellPrediction

    folder, vid, cells = make_cell_folder(db, tmp_path)
    ids = sorted(cells)
    with db.session() as s:
        s.execute(update(CellPrediction).where(CellPrediction.cell_id == ids[1]).values(out_of_distribution=True))
    got, flags = lab_cells(db, vid, limit=100)
    assert sorted(c.cell_id for c in got) == ids and len(flags) == len(got)
    assert dict(zip((c.cell_id for c in got), flags))[ids[1]] is True
    assert sum(flags) == 1
    first, _ = lab_cells(db, vid, limit=2)
    assert len(first) == 2 and first == lab_cells(db, vid, limit=2)[0]  # a fixed sample
    assert lab_cells(db, vid + 999, limit=10) == ([], [])  # a version that classified no cell
