"""A folder of fields with cells and cell predictions, inserted directly (no finder, no model run):
what the cell review tests start from."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select, update

from core.cells.finder import FieldCells, FoundCell
from core.cells.records import store_field_cells
from core.imaging.scan import under_folder
from core.jobs import run_job
from core.storage import CellPrediction, ImageFile, ModelVersion

FINDER = "test-finder"
UM_PER_PX = 0.25
CELL_TAXONOMY = "all_vs_normal"
# per image: (box, predicted class, confidence, uncertain)
PLAN = [
    [((20, 20, 70, 70), "ALL", 0.91, False), ((120, 30, 170, 80), "Normal", 0.62, False),
     ((60, 130, 110, 180), "ALL", 0.55, True)],
    [((30, 40, 80, 90), "Normal", 0.97, False), ((130, 120, 180, 170), "ALL", 0.74, False)],
]


def _found(box) -> FoundCell:
    x0, y0, x1, y1 = box
    contour = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.int32)
    return FoundCell(box=box, contour=contour, nucleus_contour=None, area_px=(x1 - x0) * (y1 - y0),
                     flags=frozenset())


def activate_cell_model(db) -> int:
    """The bundled ALL-vs-normal model made the active cell model (as the kinds work will do; the
    bundled differential, active after setup, no longer is)."""
    with db.session() as s:
        vid = s.scalar(select(ModelVersion.id).where(ModelVersion.taxonomy == CELL_TAXONOMY))
        # one active model per kind: the bundled differential (a first start's cell model) steps down
        s.execute(update(ModelVersion).where(ModelVersion.input_kind == "cell", ModelVersion.id != vid)
                  .values(is_active=False))
        s.execute(update(ModelVersion).where(ModelVersion.id == vid).values(input_kind="cell", is_active=True))
    return vid


def make_cell_folder(db, tmp_path: Path) -> tuple[Path, int, dict[int, tuple]]:
    """Two 224 px fields with 3 and 2 cells and the cell model's predictions of them; returns
    (folder, cell model version id, cell id -> (image id, box, class, confidence, uncertain))."""
    from core.app.sample import generate
    from core.imaging.scan import scan

    folder = tmp_path / "case"
    generate(folder, n_per_class=1, seed=5)
    run_job(scan(db, folder))
    vid = activate_cell_model(db)
    cells: dict[int, tuple] = {}
    with db.session() as s:
        image_ids = sorted(set(s.scalars(select(ImageFile.image_id).where(
            under_folder(ImageFile.path, folder), ImageFile.image_id.is_not(None)))))[:len(PLAN)]
        for image_id, plan in zip(image_ids, PLAN):
            found = FieldCells(cells=tuple(_found(box) for box, *_ in plan), um_per_px=UM_PER_PX,
                               scale_source="red_cells", n_red_cells=10, single_cell_crop=False)
            store_field_cells(s, image_id, found, FINDER)
        s.flush()
        from core.storage import Cell

        for image_id, plan in zip(image_ids, PLAN):
            rows = list(s.scalars(select(Cell).where(Cell.image_id == image_id).order_by(Cell.number)))
            for c, (box, label, conf, uncertain) in zip(rows, plan):
                probs = [conf, 1 - conf] if label == "ALL" else [1 - conf, conf]
                s.add(CellPrediction(cell_id=c.id, model_version_id=vid, label=label, confidence=conf, entropy=0.5,
                                     probabilities=probs, uncertain=uncertain, out_of_distribution=False))
                cells[c.id] = (image_id, box, label, conf, uncertain)
    return folder, vid, cells
