"""Bad input through the whole cell pipeline (`hemascan classify` with a cell model active, then
`hemascan differential`): a field with no cells, with 500 cells, with red cells only, out of
focus, a 30,000 x 30,000 scan, a grayscale and a 16-bit image, a crop smaller than a cell. Each
gets a clear recorded reason or a correct empty result (a search with no cells; a grayscale
field's search records why it has none), never a traceback; the batch goes on and the other images' cells are stored."""
from __future__ import annotations

import json
import os
import struct

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from core.cells import synthetic as syn
from core.cells.finder import FINDER_NAME
from core.cells.records import GRAYSCALE
from core.imaging.images import DEFAULT_MAX_PIXELS
from core.storage import Cell, CellPrediction, CellSearch, ImageFile
from tests.test_cell_stage import make_cell_model_active

UM_PER_PX = 0.125  # the synthetic fields' camera: 800 x 600 px for 100 x 75 um


def red_cells_only() -> np.ndarray:
    f = syn.standard_field()
    f.white_cells, f.specks = [], []
    return syn.draw(f, UM_PER_PX)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) claims ``width`` x ``height``: cheap to write,
    what a whole-slide scan's header says."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 200, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _write(path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb), path


@pytest.fixture
def bad_folder(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = syn.draw(syn.standard_field(), UM_PER_PX)
    _write(folder / "good.png", good)
    _write(folder / "blank.png", syn.draw(syn.Field(), UM_PER_PX))
    _write(folder / "crowded.png", syn.crowded_field())
    _write(folder / "red_cells_only.png", red_cells_only())
    _write(folder / "out_of_focus.png", cv2.GaussianBlur(good, (0, 0), 12))
    (folder / "scan_30000.jpg").write_bytes(jpeg_claiming(30_000, 30_000))
    _write(folder / "grayscale.png", cv2.cvtColor(good, cv2.COLOR_RGB2GRAY))
    _write(folder / "sixteen_bit.png", good.astype(np.uint16) * 257)
    _write(folder / "tiny_12px.png", good[100:112, 100:112])
    return folder


def _by_name(db):
    """file name -> (recorded error, the current finder's search or None, n stored cells)."""
    out = {}
    with db.session() as s:
        for f in s.scalars(select(ImageFile)):
            search = s.scalar(select(CellSearch).where(CellSearch.image_id == f.image_id,
                                                      CellSearch.finder == FINDER_NAME)) if f.image_id else None
            n = len(s.scalars(select(Cell.id).where(Cell.image_id == f.image_id)).all()) if f.image_id else 0
            out[os.path.basename(f.path)] = (f.error, search.n_cells if search else None, n)
    return out


def test_classify_and_differential_on_a_folder_of_bad_input(db, cli, bad_folder):
    vid = make_cell_model_active(db, keep_field_active=False)
    rc, out, err = cli("classify", bad_folder)
    assert rc == 0 and "Traceback" not in out + err, out + err
    files = _by_name(db)
    # a recorded reason, one sentence, for what cannot be searched
    error, search, _ = files["scan_30000.jpg"]
    assert "too large" in error and f"{DEFAULT_MAX_PIXELS:,}" in error and search is None
    assert "scan_30000.jpg" in out
    # a grayscale field: searched for nothing, and said so (its search records why: no stain colour)
    assert files["grayscale.png"] == (None, 0, 0)
    assert "1 grayscale image(s) not searched: white cells are found by the colour of their stain" in out
    with db.session() as s:
        assert s.scalar(select(CellSearch.scale_source).join(ImageFile, ImageFile.image_id == CellSearch.image_id)
                        .where(ImageFile.path.like("%grayscale.png"))) == GRAYSCALE
    # a correct empty result: searched, no white cell
    for name in ("blank.png", "red_cells_only.png", "tiny_12px.png"):
        assert files[name] == (None, 0, 0), name
    # cells found and stored
    assert files["good.png"][0] is None and files["good.png"][1] == files["good.png"][2] >= 4
    assert files["sixteen_bit.png"][:2] == (None, files["good.png"][1])  # the same field as 8 bits
    error, n_found, n_stored = files["crowded.png"]
    assert error is None and 450 <= n_found == n_stored <= 500
    error, n_found, n_stored = files["out_of_focus.png"]
    assert error is None and n_found == n_stored  # whatever the finder makes of it, it is stored
    with db.session() as s:  # every stored cell classified
        n_cells = len(s.scalars(select(Cell.id)).all())
        assert len(s.scalars(select(CellPrediction.id).where(CellPrediction.model_version_id == vid)).all()) \
            == n_cells > 450

    report = bad_folder.parent / "differential.json"
    rc, out, err = cli("differential", bad_folder, "--json", report)
    assert rc == 0 and "Traceback" not in out + err
    assert "white cells counted" in out and "95% interval" in out  # the table
    d = json.loads(report.read_text())  # every stored cell is in it once: counted, or set apart with its reason
    assert d["n_cells"] == n_cells == d["total"] + d["n_outside"] + d["n_uncertain"] + d["n_other"] + d["n_unclassified"]


def test_differential_of_a_searched_folder_without_cells_says_so_in_one_sentence(db, cli, bad_folder):
    """Not "classify it first" when it was: how many images were searched and found no white
    cell, and how many could not be searched."""
    make_cell_model_active(db, keep_field_active=False)
    for name in ("good.png", "crowded.png", "out_of_focus.png", "sixteen_bit.png"):
        (bad_folder / name).unlink()
    rc, out, err = cli("differential", bad_folder)  # never classified: that is what to do
    assert rc == 0 and "Traceback" not in out + err and "classify it with a cell model active first" in out
    rc, out, err = cli("classify", bad_folder)
    assert rc == 0 and "Traceback" not in out + err
    rc, out, err = cli("differential", bad_folder)
    assert rc == 0 and "Traceback" not in out + err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    # blank, red cells only, the 12 px crop: searched; the grayscale field and the 30,000 px scan: not
    assert "no white cells found" in lines[0] and "3 images searched" in lines[0], lines[0]
    assert "1 grayscale image not searched (white cells are found by the colour of their stain)" in lines[0]
    assert "1 file could not be searched" in lines[0] and "classify it" not in lines[0], lines[0]
