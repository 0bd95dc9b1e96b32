"""The card's cell fields: ``input`` (field or cell) and ``cell_side_um`` (the physical side of a
cell model's cut-outs): validated, round-tripped, and absent from old cards without harm."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict

import pytest

from core.errors import ModelPackageError
from core.models.package import (
    CARD_FILE, DEFAULT_CELL_SIDE_UM, ModelCard, bundled_default_package, read_card, save_package, verify_package,
)


def _edited(tmp_path, **changes):
    pkg = tmp_path / "pkg"
    shutil.copytree(bundled_default_package(), pkg)
    card = json.loads((pkg / CARD_FILE).read_text(encoding="utf-8"))
    card.update(changes)
    (pkg / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    return pkg


def test_an_old_card_without_the_fields_loads_as_a_field_model(tmp_path):
    card_json = json.loads((bundled_default_package() / CARD_FILE).read_text(encoding="utf-8"))
    card_json.pop("input", None), card_json.pop("cell_side_um", None)
    pkg = _edited(tmp_path)
    (pkg / CARD_FILE).write_text(json.dumps(card_json), encoding="utf-8")
    card = verify_package(pkg)
    assert card.input == "field" and card.cell_side_um is None
    assert card.cut_out_side_um == DEFAULT_CELL_SIDE_UM


@pytest.mark.parametrize("changes, field", [
    (dict(input="tile"), "input"),
    (dict(input=None), "input"),
    (dict(cell_side_um=-5.0), "cell_side_um"),
    (dict(cell_side_um=0.0), "cell_side_um"),
    (dict(cell_side_um=1.0), "cell_side_um"),       # smaller than any white cell
    (dict(cell_side_um=5000.0), "cell_side_um"),    # a crowd, not a cell
    (dict(cell_side_um=math.nan), "cell_side_um"),
    (dict(cell_side_um="30"), "cell_side_um"),
])
def test_bad_cell_fields_are_refused_with_the_field_named(tmp_path, changes, field):
    with pytest.raises(ModelPackageError, match=field) as err:
        verify_package(_edited(tmp_path, **changes))
    assert "\n" not in str(err.value)


def test_cell_fields_are_read_and_an_integer_side_is_accepted(tmp_path):
    card = verify_package(_edited(tmp_path, input="cell", cell_side_um=36))
    assert card.input == "cell" and card.cell_side_um == 36 and card.cut_out_side_um == 36.0


def test_a_cell_card_round_trips_through_save_and_read(tmp_path):
    from core.imaging.preprocessing import Preprocessing
    from core.models.architectures import build

    card = ModelCard(name="cells-v1", architecture="seed_baseline", taxonomy="all_vs_normal", classes=["ALL", "Normal"],
                     preprocessing=Preprocessing(input_size=40, interpolation="area").to_dict(),
                     input="cell", cell_side_um=24.5)
    saved = save_package(tmp_path / "cells-v1", build("seed_baseline", 2).state_dict(), card)
    back = read_card(tmp_path / "cells-v1")
    assert back.input == "cell" and back.cell_side_um == 24.5
    assert asdict(back) == asdict(saved)
    assert json.loads((tmp_path / "cells-v1" / CARD_FILE).read_text())["input"] == "cell"
