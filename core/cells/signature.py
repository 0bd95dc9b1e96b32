"""A cut-out's lab signature: the colours of the cell and of what surrounds it.

Each lab's stain, microscope and camera give its cells and their surroundings (red cells,
plasma) a colour of their own. The cell model's embedding does not keep a lab apart (it is
trained not to read the stain), so after a lab reviewed some of its cells, the cells of labs
nobody reviewed lie as near the reviewed lab's centres as the lab's own (docs/retrain.md). The
signature tells them apart: optical density (Beer-Lambert, -log of transmitted light, per RGB
channel) at the 10th, 50th and 90th percentile inside the cell's outline and outside it, 18
numbers, on a small square cut out at the same physical scale whatever the camera. A
retrained cell model's guard admits a cell as "the reviewed lab's" only when both its embedding
and its signature are near that lab's (core.models.guard.ForeignImageGuard.verdict).

Measured (session 13, trainer/experiments/lab_admission.py): with 50 reviewed cells, a cell
of the reviewed lab falls within the 95th percentile of the reviewed cells' leave-one-out
distances 90-96% of the time; cells of the other labs we hold 0-20%.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from core.cells.cutout import cell_mask
from core.cells.finder import FoundCell, cut_out

SIGNATURE_PX = 64  # enough pixels for three percentiles, cheap next to the model (~0.2 ms a cell)
SIGNATURE_DIM = 18
_QUANTILES = np.array([0.10, 0.50, 0.90])
_MIN_PIXELS = 10


def signature_of_cutout(crop: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """(18,) float32 signature of one uint8 (S, S, 3) cut-out kept with its surroundings and its
    (S, S) bool cell mask; a part with fewer than 10 pixels takes the whole square's colours."""
    od = -np.log((crop.reshape(-1, 3).astype(np.float32) + 1.0) / 256.0)
    inside = np.asarray(inside, bool).reshape(-1)
    parts = []
    for part in (od[inside], od[~inside]):
        parts.append(np.quantile(part if len(part) >= _MIN_PIXELS else od, _QUANTILES, axis=0).reshape(-1))
    return np.concatenate(parts).astype(np.float32)


def lab_signatures(rgb: np.ndarray, reduced_by: int, cells: Sequence[FoundCell], um_per_px: float,
                   side_um: float) -> np.ndarray:
    """(N, 18) float32 signatures of ``cells`` of a field decoded for the finder as ``rgb`` at
    1/``reduced_by``: each cut out ``side_um`` wide like the model's input, at SIGNATURE_PX."""
    out = np.zeros((len(cells), SIGNATURE_DIM), np.float32)
    for i, cell in enumerate(cells):
        crop = cut_out(rgb, cell, um_per_px, side_um=side_um, out_px=SIGNATURE_PX, reduced_by=reduced_by)
        inside = cell_mask(rgb.shape[:2], cell, um_per_px, side_um=side_um, out_px=SIGNATURE_PX,
                           reduced_by=reduced_by)
        out[i] = signature_of_cutout(crop, inside)
    return out


__all__ = ["SIGNATURE_DIM", "SIGNATURE_PX", "lab_signatures", "signature_of_cutout"]
