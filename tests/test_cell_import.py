"""``import-labels`` on single-cell crops labels their one cell with the class folder's name."""
from __future__ import annotations

from sqlalchemy import func, select

from core.cells.finder import FINDER_NAME, FieldCells, find_cells
from core.cells.records import store_field_cells
from core.storage import Cell, CellLabelEvent, CellSearch, ImageFile, LabelEvent
from core.imaging.fspath import to_db

from .cellfixtures import field_of_three, found_cell, single_cell_crop, write_png


def _crops_folder(root):
    """C-NMC-like class folders: all/ (3 crops and a whole field), hem/ (2 crops)."""
    for i in range(3):
        write_png(root / "all" / f"blast{i}.png", single_cell_crop(seed=i))
    for i in range(2):
        write_png(root / "hem" / f"normal{i}.png", single_cell_crop(seed=10 + i))
    write_png(root / "all" / "field.png", field_of_three())
    return root


def _cell_labels(db):
    with db.session() as s:
        return sorted(s.execute(select(CellLabelEvent.label, CellLabelEvent.taxonomy, CellLabelEvent.source,
                                       CellLabelEvent.reviewer)).all())


def test_single_cell_crops_get_their_cell_labelled_once(cli, db, tmp_path):
    folder = _crops_folder(tmp_path / "cnmc")
    rc, out, _ = cli("import-labels", folder, "--reviewer", "dr.b")
    assert rc == 0
    assert "labels recorded: 6 (ALL: 4, Normal: 2)" in out  # every image keeps its image label
    assert "cells labelled (single-cell crops): 5; 0 already had that label; 1 images are not single-cell crops" in out
    assert _cell_labels(db) == [("ALL", "all_vs_normal", "dataset", "dr.b")] * 3 + \
        [("Normal", "all_vs_normal", "dataset", "dr.b")] * 2
    with db.session() as s:
        # the finder's results are stored as classify stores them: the field with its three cells
        assert s.scalar(select(func.count(CellSearch.id))) == 6
        field_id = s.scalar(select(ImageFile.image_id).where(ImageFile.path == to_db(str(folder / "all" / "field.png"))))
        search = s.scalar(select(CellSearch).where(CellSearch.image_id == field_id))
        assert not search.single_cell_crop and search.n_cells == 3
        labelled = set(s.scalars(select(CellLabelEvent.cell_id)))
        assert not labelled & set(s.scalars(select(Cell.id).where(Cell.image_id == field_id)))
        n_cells = s.scalar(select(func.count(Cell.id)))

    rc, out, _ = cli("import-labels", folder)  # again: nothing twice
    assert rc == 0 and "labels recorded: 0" in out and "6 already" in out
    assert "cells labelled (single-cell crops): 0; 5 already had that label" in out
    with db.session() as s:
        assert s.scalar(select(func.count(CellLabelEvent.id))) == 5
        assert s.scalar(select(func.count(CellSearch.id))) == 6
        assert s.scalar(select(func.count(Cell.id))) == n_cells
        assert s.scalar(select(func.count(LabelEvent.id))) == 6


def test_the_finder_is_not_run_again_on_an_image_it_has_searched(cli, db, tmp_path, monkeypatch):
    import core.review.cell_import as cell_import

    folder = tmp_path / "pbc"
    write_png(folder / "Normal" / "a.png", single_cell_crop(seed=3))
    cli("scan", folder)
    write_png(folder / "Normal" / "b.png", single_cell_crop(seed=4))  # not scanned yet: import-labels scans it
    searched = []
    monkeypatch.setattr(cell_import, "find_cells", lambda rgb, **kw: searched.append(rgb.shape) or find_cells(rgb, **kw))
    with db.session() as s:
        image_id = s.scalar(select(ImageFile.image_id))
        # an earlier run (say, classify) found the cell and stored it with this box
        store_field_cells(s, image_id, FieldCells((found_cell((100, 100, 260, 260)),), 0.1, "default", 0, True),
                          FINDER_NAME)
    rc, out, _ = cli("import-labels", folder, "--reviewer", "dr.b")
    assert rc == 0 and "cells labelled (single-cell crops): 2;" in out
    assert len(searched) == 1  # b.png only
    with db.session() as s:
        cell = s.scalar(select(Cell).where(Cell.image_id == image_id))
        assert s.scalar(select(func.count(Cell.id)).where(Cell.image_id == image_id)) == 1
        assert (cell.x0, cell.y1) == (100, 260)
        assert cell.id in set(s.scalars(select(CellLabelEvent.cell_id)))


def test_a_crop_relabelled_by_a_reviewer_is_relabelled_by_a_new_import_as_images_are(cli, db, tmp_path):
    from core.review.cell_labels import latest_cell_events, record_cell_labels

    folder = tmp_path / "cnmc"
    write_png(folder / "hem" / "a.png", single_cell_crop(seed=4))
    cli("import-labels", folder)
    with db.session() as s:
        cell_id = s.scalar(select(Cell.id))
        record_cell_labels(s, [cell_id], "ALL", "Dr. Ada", taxonomy="all_vs_normal")
    rc, out, _ = cli("import-labels", folder)
    assert "cells labelled (single-cell crops): 1;" in out
    with db.session() as s:
        assert latest_cell_events(s, [cell_id])[cell_id].label == "Normal"
        assert s.scalar(select(func.count(CellLabelEvent.id))) == 3


def test_a_whole_field_class_labels_the_image_only(cli, db, tmp_path, monkeypatch):
    """An ALL-subtype folder (Taleqani's Benign/ Pro/ ...) names the sample's diagnosis, not a cell:
    even an image the finder would take for a single-cell crop gets its image label only."""
    import core.review.cell_import as cell_import

    searched = []
    monkeypatch.setattr(cell_import, "find_cells", lambda rgb, **kw: searched.append(1) or find_cells(rgb, **kw))
    folder = tmp_path / "taleqani"
    write_png(folder / "Benign" / "a.png", single_cell_crop(seed=5))
    write_png(folder / "all" / "b.png", single_cell_crop(seed=6))  # a cell taxonomy's folder beside it
    rc, out, _ = cli("import-labels", folder)
    assert rc == 0 and "labels recorded: 2 (ALL: 1, Benign: 1)" in out
    assert "cells labelled (single-cell crops): 1;" in out
    assert "1 images are in folders of whole-field classes (image label only)" in out
    assert len(searched) == 1  # b.png only
    with db.session() as s:
        assert s.scalar(select(func.count(CellSearch.id))) == 1
        assert list(s.scalars(select(CellLabelEvent.label))) == ["ALL"]
