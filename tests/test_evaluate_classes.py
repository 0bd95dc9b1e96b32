"""``hemascan evaluate``: macro figures over the classes present in the folder, and class folders
read through the evaluated model's own taxonomy (a folder name may mean a class in several)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.models.architectures import build
from core.models.package import ModelCard, save_package
from core.models.taxonomy import TAXONOMIES


def constant_model(root, taxonomy: str, always: str):
    """A package whose model calls every image ``always``: zero last layer, a bias for that class."""
    classes = list(TAXONOMIES[taxonomy].classes)
    state = build("seed_cnn3", len(classes)).state_dict()
    state["classifier.5.weight"] = torch.zeros_like(state["classifier.5.weight"])
    bias = torch.zeros(len(classes))
    bias[classes.index(always)] = 10.0
    state["classifier.5.bias"] = bias
    name = f"{taxonomy.replace('_', '-')}-always"
    card = ModelCard(name=name, architecture="seed_cnn3", taxonomy=taxonomy, classes=classes,
                     preprocessing={"input_size": 32, "interpolation": "area"}, input=TAXONOMIES[taxonomy].input_kind)
    save_package(root / name, state, card)
    return root / name


def class_folders(root, counts: dict[str, int]):
    import cv2

    rng = np.random.default_rng(0)
    for folder, n in counts.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / folder / f"cell-{i:03d}.png"), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    return root


def run_evaluate(cli, tmp_path, model, data, *extra):
    js = tmp_path / "m.json"
    rc, out, err = cli("evaluate", "--model", model, "--data", data, "--variants", "as_is", "--json", js, *extra)
    assert rc == 0, err
    return out, json.loads(js.read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"all_vs_normal": constant_model(root, "all_vs_normal", "Normal"),
            "wbc_differential": constant_model(root, "wbc_differential", "Lymphocyte")}


def test_a_one_class_folder_reports_macro_recall_over_that_class_only(cli, tmp_path, models):
    data = class_folders(tmp_path / "other-lab", {"hem": 6})
    out, m = run_evaluate(cli, tmp_path, models["all_vs_normal"], data)
    assert m["accuracy"] == 1.0 and m["per_class"]["Normal"]["recall"] == 1.0
    # the absent class ALL no longer halves the figure (it showed 0.5)
    assert m["macro_recall"] == 1.0 and m["macro_f1"] == 1.0
    assert m["classes_present"] == ["Normal"] and m["classes_absent"] == ["ALL"]
    assert m["macro_over"] == "classes present in the folder"
    assert "over the classes present in the folder: Normal (absent, left out: ALL)" in out
    # --label-all: every image is of one class, whatever its folder
    out, m = run_evaluate(cli, tmp_path, models["all_vs_normal"], class_folders(tmp_path / "x", {"cells": 4}),
                          "--label-all", "Normal")
    assert m["n"] == 4 and m["macro_recall"] == 1.0 and m["classes_absent"] == ["ALL"]


def test_class_folders_are_read_in_the_evaluated_models_taxonomy(cli, tmp_path, models):
    # C-NMC's all/hem and a PBC folder name (ig): Blast, Lymphocyte and Immature granulocyte for
    # the differential; ALL and Normal for the ALL-vs-normal model, which has no "ig"
    data = class_folders(tmp_path / "cells", {"all": 3, "hem": 2, "ig": 4})
    out, m = run_evaluate(cli, tmp_path, models["wbc_differential"], data)
    assert m["n"] == 9 and m["classes_present"] == ["Blast", "Lymphocyte", "Immature granulocyte"]
    assert {c: v["support"] for c, v in m["per_class"].items() if v["support"]} == \
        {"Blast": 3, "Lymphocyte": 2, "Immature granulocyte": 4}
    assert m["macro_recall"] == pytest.approx(1 / 3)  # every image called Lymphocyte
    assert "Neutrophil" in m["classes_absent"] and len(m["classes_absent"]) == 6

    out, m = run_evaluate(cli, tmp_path, models["all_vs_normal"], data)
    assert m["n"] == 5 and m["classes_present"] == ["ALL", "Normal"] and m["classes_absent"] == []
    assert {c: v["support"] for c, v in m["per_class"].items()} == {"ALL": 3, "Normal": 2}
    assert m["macro_recall"] == 0.5


def test_a_folder_with_no_class_of_the_model_is_one_sentence(cli, tmp_path, models):
    data = class_folders(tmp_path / "pbc", {"neutrophil": 2})
    rc, out, err = cli("evaluate", "--model", models["all_vs_normal"], "--data", data, "--variants", "as_is")
    assert rc != 0 and "Traceback" not in err
    assert "no folder under" in err and "class of all_vs_normal (ALL, Normal)" in err


def test_every_alias_of_the_differential_is_read_as_its_class(tmp_path):
    from trainer.data import scan_class_folders

    # C-NMC's all/hem, "blast", and PBC's eight folder names
    names = {"all": "Blast", "blast": "Blast", "hem": "Lymphocyte", "basophil": "Basophil", "eosinophil": "Eosinophil",
             "erythroblast": "Erythroblast", "ig": "Immature granulocyte", "lymphocyte": "Lymphocyte",
             "monocyte": "Monocyte", "neutrophil": "Neutrophil", "platelet": "Platelet"}
    for name, cls in names.items():
        ds = scan_class_folders(class_folders(tmp_path / name, {name: 1}), "wbc_differential")
        assert [ds.classes[i] for i in ds.labels] == [cls], name


def cut_out_cell_model(root):
    """A differential package trained on cut-outs (black around the cell), calling every cell Blast."""
    pkg = constant_model(root, "wbc_differential", "Blast")
    card = json.loads((pkg / "card.json").read_text())
    card.update(cell_crops="cut_out", cell_side_um=25.0,
                preprocessing={"input_size": 32, "interpolation": "area", "cell_background": "black"})
    (pkg / "card.json").write_text(json.dumps(card))
    return pkg


def test_a_cut_out_cell_model_is_evaluated_on_the_cut_out_cell_as_classify_gives_it(cli, tmp_path):
    from tests.cellfixtures import single_cell_crop, write_png
    from core.models.package import read_card
    from trainer.cell_crops_input import cell_crop_inputs

    pkg = cut_out_cell_model(tmp_path / "models")
    data = tmp_path / "cells"
    for i in range(2):
        write_png(data / "blast" / f"cell-{i}.png", single_cell_crop(seed=i))
    write_png(data / "blast" / "empty.png", np.full((360, 360, 3), 236, np.uint8))  # no cell in it
    out, m = run_evaluate(cli, tmp_path, pkg, data)
    # the crop without a cell is left out and said so; the two cells are given cut out
    assert m["n"] == 2 and m["n_without_cell"] == 1 and "1 without a cell the finder found, left out" in out
    assert "central found cell of each image, cut out 25 um wide" in m["inputs"]

    card = read_card(pkg)
    paths = sorted((data / "blast").glob("cell-*.png"))
    inputs, kept = cell_crop_inputs(paths, card)
    assert kept.all() and inputs.shape == (2, 32, 32, 3)
    # black outside the cell (the card's background), where the whole crop is the light slide
    assert inputs[:, 0, 0].max() == 0
    whole = card.prep.apply(single_cell_crop(seed=0))
    assert whole[0, 0].min() > 200
