"""What a cell model is given for a folder of single-cell crops when it is evaluated: the crop's
central found cell, cut out as classify cuts it (core.inference.cells.cell_model_inputs: the
card's side in micrometres, input size and background) and as the cell model was trained on
(trainer/cell_data.py: the found cell nearest the crop's centre). Given the whole crop through
the preprocessing instead, the differential model scored 0.16 on pbc-dev, not its 0.88.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from core.cells.finder import decode_for_cells, find_cells
from core.imaging.images import read_file
from core.inference.cells import cell_model_inputs


def central_cut_out(data: bytes, card) -> np.ndarray | None:
    """uint8 (S, S, 3): the cut-out of the found cell nearest the centre of the crop ``data``,
    or None when the finder finds no cell in it."""
    rgb, reduced_by = decode_for_cells(data)
    found = find_cells(rgb, reduced_by=reduced_by)
    if not found.cells:
        return None
    h, w = rgb.shape[:2]
    cell = min(found.cells, key=lambda c: (c.centre[0] - w / 2) ** 2 + (c.centre[1] - h / 2) ** 2)
    return cell_model_inputs(data, rgb, reduced_by, [cell], found.um_per_px, True, card.prep,
                             card.cut_out_side_um, "cut_out")[0]


def cell_crop_inputs(paths: list[Path], card, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (N', S, S, 3) uint8, which of ``paths`` they are: bool (N,)) for a cell model
    evaluated on single-cell crops; crops without a found cell are left out (the caller says
    how many). Cached as .npy keyed by the files and the card's cut-out settings."""
    key = None
    if cache_dir is not None:
        h = hashlib.sha256(json.dumps({"prep": card.prep.to_dict(), "side_um": card.cut_out_side_um,
                                       "cut": "central cell"}, sort_keys=True).encode())
        for p in paths:
            st = Path(p).stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        key = Path(cache_dir) / f"cells-{h.hexdigest()[:20]}.npz"
        if key.is_file():
            with np.load(key) as z:
                return z["inputs"], z["kept"]
    s = card.prep.input_size
    out, kept = [], np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        cut = central_cut_out(read_file(str(p)), card)
        if cut is not None:
            out.append(cut)
            kept[i] = True
    inputs = np.stack(out) if out else np.zeros((0, s, s, 3), np.uint8)
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        tmp = key.with_name(key.stem + ".tmp.npz")
        np.savez(tmp, inputs=inputs, kept=kept)
        tmp.replace(key)
    return inputs, kept
