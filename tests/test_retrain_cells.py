"""A cell model retrains from the reviewers' cell labels: each labelled cell is cut out as
classify cuts it (its card's side and crop rule), on its field's fixed side."""
from __future__ import annotations

from pathlib import Path

import torch
from sqlalchemy import select

from core.app.sample import generate
from core.cells.finder import FieldCells
from core.cells.records import store_field_cells
from core.imaging.scan import images_under, scan
from core.jobs import run_job
from core.models.architectures import build
from core.models.package import ModelCard, read_card, save_package
from core.models.registry import register_package
from core.review.cell_labels import record_cell_labels
from core.review.reviewed import retrain_parent
from core.storage import Cell

from .cellfolder import _found
from .test_cell_view import cell_window  # noqa: F401  (the fixture)

BOXES = [(10, 10, 58, 58), (150, 10, 198, 58), (10, 150, 58, 198), (150, 150, 198, 198)]


def _cell_package(tmp: Path) -> Path:
    torch.manual_seed(0)
    card = ModelCard(name="tiny-cells-v1", architecture="seed_baseline", taxonomy="all_vs_normal",
                     classes=["ALL", "Normal"], preprocessing={"input_size": 32, "interpolation": "area"},
                     input="cell", cell_side_um=12.0, cell_crops="cut_out", notes="test cell model")
    save_package(tmp / card.name, build("seed_baseline", 2).state_dict(), card)
    return tmp / card.name


def test_a_cell_model_retrains_from_cell_labels(db, paths, tmp_path):
    from trainer.retrain import RetrainConfig, retrain

    folder = tmp_path / "case"
    generate(folder, n_per_class=3, seed=2, size=224)
    run_job(scan(db, folder))
    with db.session() as s:
        version = register_package(s, paths, _cell_package(tmp_path / "pkgs"), activate=True)
        cell_ids = []
        for image_id, _ in images_under(s, folder):
            store_field_cells(s, image_id, FieldCells(tuple(_found(b) for b in BOXES), 0.25, "red_cells", 10, False),
                              "test-finder")
        s.flush()
        cells = s.execute(select(Cell.id, Cell.x0)).all()
        for cell_id, x0 in cells:  # the left column ALL, the right Normal
            record_cell_labels(s, [cell_id], "ALL" if x0 < 100 else "Normal", "Ana Tester", taxonomy="all_vs_normal")
            cell_ids.append(cell_id)
    with db.session() as s:
        # only cells are labelled: a retrain with no parent named starts from the cell model
        assert retrain_parent(s).id == version.id
    cfg = RetrainConfig(epochs=1, min_steps=2, int8=False, replay="off", bootstrap=50, device="cpu")
    out = run_job(retrain(db, paths, cfg))
    assert out["status"] == "completed" and out["parent"] == "tiny-cells-v1"
    data = out["data"]
    assert data["n_train"] + data["n_val"] == len(cell_ids) == 48
    assert data["per_class"]["ALL"]["train"] + data["per_class"]["ALL"]["val"] == 24
    card = read_card(Path(out["package"]))  # the new version cuts its cells out as the parent did
    assert (card.input, card.cell_crops, card.cell_side_um) == ("cell", "cut_out", 12.0)


def test_retrain_from_the_cells_view_offers_the_cell_model_and_counts_reviewed_cells(qtbot, cell_window):  # noqa: F811
    w, pane, cells = cell_window
    ids = sorted(cells)
    with w.db.session() as s:  # (set up off the window: the test's own session)
        record_cell_labels(s, ids[:3], "ALL", "Ana Tester", taxonomy="all_vs_normal")
        record_cell_labels(s, ids[3:], "Normal", "Ana Tester", taxonomy="all_vs_normal")
    dlg = w.model_menu.show_retrain()
    qtbot.addWidget(dlg)
    assert dlg.active["id"] == pane.version["id"] and dlg.active["ref"].id == pane.version["id"]
    qtbot.waitUntil(lambda: getattr(dlg, "summary", None) is not None, timeout=10_000)
    assert dlg.summary["cells"] and dlg.summary["n_reviewed"] == len(ids) == 5
    assert "reviewed cells" in dlg.data_note.text() and dlg.start_btn.isEnabled()
    dlg.close()
    w.show_view("images")
    gallery_dlg = w.model_menu.show_retrain()  # from the image gallery: the version it shows
    qtbot.addWidget(gallery_dlg)
    assert gallery_dlg.active["id"] == w.ctl.version["id"] != pane.version["id"]
    gallery_dlg.close()
