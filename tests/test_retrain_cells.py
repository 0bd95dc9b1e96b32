"""A cell model retrains from the reviewers' cell labels: each labelled cell is cut out as
classify cuts it (its card's side and crop rule), on its field's fixed side."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from core.app.sample import generate
from core.cells.finder import FieldCells
from core.cells.records import store_field_cells
from core.imaging.scan import images_under, scan
from core.jobs import run_job
from core.models.architectures import build
from core.imaging.images import decode_rgb, read_file
from core.models.package import ModelCard, load_model, read_card, save_package
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


def _guarded_cell_package(tmp: Path, threshold: float | None = None) -> Path:
    """A tiny cell model (256-wide embedding) with a foreign-image guard fitted on sample images
    (``threshold``: its threshold set so, e.g. as tight as a real lab's cells find it)."""
    from trainer.guard import add_guard, fit_guard, logits_and_embeddings

    torch.manual_seed(0)
    card = ModelCard(name="tiny-guarded-cells-v1", architecture="seed_cnn3", taxonomy="all_vs_normal",
                     classes=["ALL", "Normal"], preprocessing={"input_size": 32, "interpolation": "area"},
                     arch_params={"width": 4}, input="cell", cell_side_um=12.0, cell_crops="cut_out",
                     notes="test cell model with a guard")
    save_package(tmp / card.name, build("seed_cnn3", 2, width=4).state_dict(), card)
    model, card = load_model(tmp / card.name)
    sets = {}
    for seed in (11, 12):
        generate(tmp / f"fit{seed}", n_per_class=40, seed=seed, size=64, taxonomy="all_vs_normal")
        files = sorted((tmp / f"fit{seed}").rglob("*.jpg"))
        x = np.stack([card.prep.apply(decode_rgb(read_file(str(f)))) for f in files])
        sets[seed] = (logits_and_embeddings(model, x, card.prep)[1], np.array([f.parent.name == "hem" for f in files]))
    guard, info = fit_guard(sets[11][0], sets[11][1].astype(int), sets[12][0])
    if threshold is not None:
        import dataclasses

        guard = dataclasses.replace(guard, threshold=threshold)
    add_guard(tmp / card.name, guard, info)
    return tmp / card.name


def test_a_cell_retrain_keeps_the_parents_guard_for_labs_nobody_reviewed(db, paths, tmp_path):
    """A head refit on one new lab's reviewed cells must not open the guard for another lab.
    Before, the guard was refitted on the reviewed and replayed cells with its threshold from the
    new lab's few validation cells: after 50 reviewed cells of one lab, 86% -> 4% of another
    lab's white cells were flagged. Now the parent's whitening and threshold are kept and the
    reviewed cells' class centres added."""
    from core.models.guard import load_guard
    from trainer.guard import logits_and_embeddings
    from trainer.retrain import RetrainConfig, retrain

    package = _guarded_cell_package(tmp_path / "pkgs")
    folder = tmp_path / "new-lab"
    generate(folder, n_per_class=3, seed=2, size=224)
    run_job(scan(db, folder))
    with db.session() as s:
        register_package(s, paths, package, activate=True)
        for image_id, _ in images_under(s, folder):
            store_field_cells(s, image_id, FieldCells(tuple(_found(b) for b in BOXES), 0.25, "red_cells", 10, False),
                              "test-finder")
        s.flush()
        for cell_id, x0 in s.execute(select(Cell.id, Cell.x0)).all():
            record_cell_labels(s, [cell_id], "ALL" if x0 < 100 else "Normal", "Ana Tester", taxonomy="all_vs_normal")
    out = run_job(retrain(db, paths, RetrainConfig(int8=False, bootstrap=50, device="cpu", cv_folds=0)))
    assert out["status"] == "completed"
    new_card = read_card(Path(out["package"]))
    assert "replayed" in new_card.metrics["method"]
    parent_model, parent_card = load_model(package)
    parent_guard = load_guard(package, parent_card.guard, 2)
    new_guard = load_guard(Path(out["package"]), new_card.guard, 2)
    # the parent's experience kept as it was: same whitening, threshold and centres, plus the new lab's
    assert np.array_equal(new_guard.whitening, parent_guard.whitening)
    assert new_guard.threshold == parent_guard.threshold
    assert np.array_equal(new_guard.class_means[: len(parent_guard.class_means)], parent_guard.class_means)
    assert len(new_guard.class_means) == len(parent_guard.class_means) + 2
    assert new_guard.classes_of_centres() == [0, 1, 0, 1]
    # a lab nobody reviewed (another stain, blurred) is flagged exactly as the parent flagged it
    generate(tmp_path / "other-lab", n_per_class=20, seed=21, size=64, taxonomy="all_vs_normal")
    files = sorted((tmp_path / "other-lab").rglob("*.jpg"))
    x = np.stack([parent_card.prep.apply(decode_rgb(read_file(str(f)))) for f in files])
    from trainer import augment as aug
    before = []
    for seen in (aug.other_stain(x), aug.blur(x, 3.0), np.random.default_rng(0).integers(0, 256, x.shape, dtype=np.uint8)):
        emb = logits_and_embeddings(parent_model, seen, parent_card.prep)[1]  # the backbone is the parent's
        flagged_before, flagged_after = parent_guard.flags(emb)[1].mean(), new_guard.flags(emb)[1].mean()
        assert flagged_after >= flagged_before - 0.05
        before.append(flagged_before)
    assert max(before) > 0.9  # (the parent does flag them)


def _reviewed_cell_lab(tmp_path, db, paths, noise: bool, guard_threshold: float | None = None) -> str:
    """A new lab's cells (4 per field, 16 fields of each class), each reviewed: as the class of
    its field's folder (learnable: the two kinds of field are stained plainly apart), or
    (noise) as a class drawn at random, which nothing can learn. Returns the parent's name."""
    rng = np.random.default_rng(1)

    from PIL import Image

    package = _guarded_cell_package(tmp_path / "pkgs", guard_threshold)
    folder = tmp_path / "lab"
    for kind, colour in (("all", (200, 60, 160)), ("hem", (60, 90, 200))):  # two stains, plainly apart
        (folder / kind).mkdir(parents=True)
        for i in range(16):
            px = np.clip(np.array(colour) + rng.normal(0, 25, (224, 224, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(folder / kind / f"{kind}{i:02d}.png")
    run_job(scan(db, folder))
    with db.session() as s:
        register_package(s, paths, package, activate=True)
        fields = list(images_under(s, folder))
        for image_id, _ in fields:
            store_field_cells(s, image_id, FieldCells(tuple(_found(b) for b in BOXES), 0.25, "red_cells", 10, False),
                              "test-finder")
        s.flush()
        folder_of = {image_id: Path(path).parent.name for image_id, path in fields}
        for cell_id, image_id in s.execute(select(Cell.id, Cell.image_id)).all():
            label = ("ALL", "Normal")[int(rng.integers(0, 2))] if noise else \
                ("ALL" if folder_of[image_id] == "all" else "Normal")
            record_cell_labels(s, [cell_id], label, "Ana Tester", taxonomy="all_vs_normal")
        return retrain_parent(s).name


def test_retrain_promote_on_reviewed_cells_promotes_when_kfold_shows_better(tmp_path, db, paths, cli):
    """128 reviewed cells of a lab the parent calls at chance: each training cell predicted by a
    version fitted without it (5 folds) plus the validation cells: clearly better, promoted
    without --force."""
    parent = _reviewed_cell_lab(tmp_path, db, paths, noise=False)
    rc, out, err = cli("retrain", "--threads", 2, "--promote")
    assert rc == 0, err
    assert "predicted by versions trained without them" in out, out
    assert "promoted: " in out and "not promoted" not in out, out
    with db.session() as s:
        assert retrain_parent(s).name != parent  # the new version is the active cell model


def test_retrain_promote_on_reviewed_cells_refuses_when_kfold_cannot_tell(tmp_path, db, paths, cli):
    parent = _reviewed_cell_lab(tmp_path, db, paths, noise=True)
    rc, out, err = cli("retrain", "--threads", 2, "--promote")
    assert rc == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("not promoted: "))
    assert f"cannot tell the new version from {parent}" in line or f"is worse than {parent}" in line, line
    with db.session() as s:
        assert retrain_parent(s).name == parent


def _noise_fields(folder: Path, colours: dict[str, tuple[int, int, int]], n: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for kind, colour in colours.items():
        (folder / kind).mkdir(parents=True)
        for i in range(n):
            px = np.clip(np.array(colour) + rng.normal(0, 25, (224, 224, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(folder / kind / f"{kind}{i:02d}.png")


def _flagged(db, paths, cli, folder: Path, model: str, engine: str) -> float:
    """Share of ``folder``'s cells (stored at BOXES, kept by classify) ``model`` calls outside its experience."""
    from core.cells.finder import finder_name
    from core.models.registry import CELL
    from core.storage import CellPrediction, ModelVersion

    with db.session() as s:
        for image_id, _ in images_under(s, folder):
            if not s.scalar(select(Cell.id).where(Cell.image_id == image_id).limit(1)):
                store_field_cells(s, image_id, FieldCells(tuple(_found(b) for b in BOXES), 0.25, "red_cells", 10,
                                                          False), finder_name("auto"))
    rc, out, err = cli("classify", folder, "--model", model, "--engine", engine)
    assert rc == 0, err
    with db.session() as s:
        vid = s.scalar(select(ModelVersion.id).where(ModelVersion.name == model, ModelVersion.input_kind == CELL))
        ids = [i for i, _ in images_under(s, folder)]
        flags = s.scalars(select(CellPrediction.out_of_distribution).join(Cell, Cell.id == CellPrediction.cell_id)
                          .where(CellPrediction.model_version_id == vid, Cell.image_id.in_(ids))).all()
    assert len(flags) == 4 * len(ids)
    return float(np.mean(flags))


@pytest.mark.parametrize("engine", ["torch", "openvino"])  # the lab's centres: in numpy, or in the graph
def test_a_cell_retrain_admits_the_reviewed_labs_cells_and_no_other_labs(tmp_path, db, paths, cli, engine):
    """After a lab reviewed its cells, the retrained guard admits that lab's cells (the parent's
    threshold kept them all flagged: docs/retrain.md) by their embedding AND their lab
    signature, while another lab's cells, just as far from the parent, stay flagged."""
    from core.models.guard import load_guard
    from trainer.retrain import RetrainConfig, retrain

    # stains (200,60,160) and (60,90,200); the parent's threshold as tight as real labs' cells find it
    # (they lie 5-8 times the threshold from their own class centres): the added centres alone admit
    # none of them
    parent = _reviewed_cell_lab(tmp_path, db, paths, noise=False, guard_threshold=5.0)
    out = run_job(retrain(db, paths, RetrainConfig(int8=False, bootstrap=50, device="cpu", cv_folds=0)))
    assert out["status"] == "completed"
    card = read_card(Path(out["package"]))
    assert card.guard["lab_admission"]["admitted"] is True, card.guard["lab_admission"]
    guard = load_guard(Path(out["package"]), card.guard, 2)
    assert guard.has_lab and guard.lab_signature_mean.shape == (18,)
    same_lab, other_lab = tmp_path / "same-lab", tmp_path / "other-lab"
    _noise_fields(same_lab, {"all": (200, 60, 160), "hem": (60, 90, 200)}, 6, seed=7)
    _noise_fields(other_lab, {"a": (90, 190, 90), "b": (210, 190, 70)}, 6, seed=8)
    for folder in (same_lab, other_lab):
        run_job(scan(db, folder))
    before = {f.name: _flagged(db, paths, cli, f, parent, engine) for f in (same_lab, other_lab)}
    after = {f.name: _flagged(db, paths, cli, f, card.name, engine) for f in (same_lab, other_lab)}
    assert before["same-lab"] > 0.9 and before["other-lab"] > 0.9, before  # the parent flags both labs
    assert after["same-lab"] < 0.3, after  # the reviewed lab is admitted
    assert after["other-lab"] >= before["other-lab"] - 0.05, (before, after)  # the other lab is not


def test_the_lab_admission_needs_both_the_embedding_and_the_signature(tmp_path):
    from core.models.guard import ForeignImageGuard, load_guard
    from trainer.guard import fit_lab_admission, write_guard

    rng = np.random.default_rng(0)
    z = rng.normal(0, 1, (40, 4)) + 10.0  # the reviewed lab: far from the parent's one centre (origin)
    sig = rng.normal(0, 0.05, (40, 18)) + 1.0
    fields, info = fit_lab_admission(z, np.zeros(40, int), sig)
    assert info["admitted"] and fields["lab_means"].shape == (1, 4)
    guard = ForeignImageGuard(np.eye(4, dtype=np.float32), np.zeros((1, 4), np.float32), 16.0, **fields)
    near, far = np.full((1, 4), 10.0), np.full((1, 4), 30.0)
    lab_sig, other_sig = np.ones((1, 18)), np.full((1, 18), 1.5)

    def outside(e, s):
        return bool(guard.verdict(guard.distances(e), None, guard.lab_distances(e), guard.signature_distances(s))[0])
    assert not outside(near, lab_sig)
    assert outside(near, other_sig) and outside(far, lab_sig) and outside(far, other_sig)
    assert outside(near, None) is True  # no signature (e.g. a path that cannot compute it): not admitted
    assert not bool(guard.verdict(guard.distances(np.zeros((1, 4))))[0])  # the parent's experience is kept
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    record = write_guard(pkg, guard, info)
    again = load_guard(pkg, record, 2)
    assert again.has_lab and np.allclose(again.lab_signature_precision, guard.lab_signature_precision)
    assert again.lab_radius == pytest.approx(guard.lab_radius)
    too_few, why = fit_lab_admission(z[:10], np.zeros(10, int), sig[:10])
    assert too_few == {} and not why["admitted"]
