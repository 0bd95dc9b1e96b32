"""``export --format cells``: one row per cell, through a real database; values a spreadsheet
would run as formulas are written as text, in both exports."""
from __future__ import annotations

import csv

import pytest
from sqlalchemy import select

from core.cells.records import add_cell
from core.review.cell_labels import record_cell_labels
from core.review.export import FORMULA_STARTS, spreadsheet_safe
from core.review.labels import record_labels
from core.storage import CellPrediction, ImageFile, ModelVersion

from .cellfixtures import add_cells, single_cell_crop, write_png


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _cell_model(s, name="cell-net", active=True) -> ModelVersion:
    v = ModelVersion(name=name, architecture="tiny", taxonomy="all_vs_normal", path="/nowhere", weights_sha256="0" * 64,
                     card={"classes": ["ALL", "Normal"]}, is_active=active, input_kind="cell")
    s.add(v)
    s.flush()
    return v


def _predict(s, cell_id, version, label, p_all, uncertain=False, outside=None):
    s.add(CellPrediction(cell_id=cell_id, model_version_id=version.id, label=label, confidence=max(p_all, 1 - p_all),
                         entropy=0.5, probabilities=[p_all, 1 - p_all], uncertain=uncertain,
                         out_of_distribution=outside, runtime="torch fp32 cpu"))


@pytest.fixture
def case(cli, db, tmp_path):
    """Two fields under case/ (one with two found cells and one a reviewer added, one where the
    finder found nothing), one more under other/; predictions of two cell models."""
    folder = tmp_path / "case"
    for name in ("a", "b"):
        write_png(folder / f"{name}.png", single_cell_crop(seed=ord(name)))
    write_png(tmp_path / "other" / "c.png", single_cell_crop(seed=9))
    cli("scan", folder)
    cli("scan", tmp_path / "other")
    with db.session() as s:
        ids = {f.path.rsplit("/", 1)[-1]: f.image_id for f in s.scalars(select(ImageFile))}
        for v in s.scalars(select(ModelVersion)):  # whatever bootstrap made active: not a cell model here
            v.input_kind = "field"
        active, older = _cell_model(s), _cell_model(s, "cell-net-old", active=False)
        found = add_cells(s, ids["a.png"], [(10, 20, 110, 130), (200, 5, 300, 99)], flags=[(), ("border",)])
        added = add_cell(s, ids["a.png"], (50, 200, 120, 280), 0.2, "Dr. Ada")
        add_cells(s, ids["b.png"], [])
        other = add_cells(s, ids["c.png"], [(1, 1, 90, 90)])
        _predict(s, found[0], active, "ALL", 0.9)
        _predict(s, found[1], active, "Normal", 0.3, uncertain=True, outside=True)
        _predict(s, found[0], older, "Normal", 0.2)
        _predict(s, other[0], active, "ALL", 0.8)
        record_cell_labels(s, [found[0]], "Normal", "Dr. Ada", taxonomy="all_vs_normal")
        record_cell_labels(s, [added], "ALL", "=HYPERLINK(\"http://x\")", taxonomy="all_vs_normal")
    return folder, found, added


def test_cells_csv_has_one_row_per_cell_with_box_prediction_and_label(cli, case, tmp_path):
    folder, found, added = case
    out = tmp_path / "cells.csv"
    rc, stdout, _ = cli("export", "--format", "cells", "--output", out, "--folder", folder)
    assert rc == 0 and "wrote 3 rows" in stdout
    rows = read_csv(out)
    for column in ("path", "sha256", "cell", "x0", "y0", "x1", "y1", "um_per_px", "predicted_label", "confidence",
                   "uncertain", "out_of_distribution", "reviewed_label", "reviewer", "model_version", "flags",
                   "scale_source", "source", "p_ALL", "p_Normal"):
        assert column in rows[0]
    assert [(r["path"].rsplit("/", 1)[-1], r["cell"], r["cell_id"], r["source"]) for r in rows] == [
        ("a.png", "1", str(found[0]), "found"), ("a.png", "2", str(found[1]), "found"),
        ("a.png", "3", str(added), "added")]  # the number the view and the report show (display_numbers)
    first, second, third = rows
    assert [first[k] for k in ("x0", "y0", "x1", "y1")] == ["10", "20", "110", "130"]
    assert (first["um_per_px"], first["scale_source"], first["flags"]) == ("0.20000", "red_cells", "")
    assert (first["predicted_label"], first["confidence"], first["p_ALL"], first["uncertain"],
            first["out_of_distribution"], first["model_version"]) == ("ALL", "0.9000", "0.9000", "0", "", "cell-net")
    assert (first["reviewed_label"], first["reviewer"], first["label_source"]) == ("Normal", "Dr. Ada", "human")
    assert (second["flags"], second["uncertain"], second["out_of_distribution"], second["reviewed_label"]) == \
        ("border", "1", "1", "")
    # the added cell: no prediction yet, a label whose reviewer name would be a formula
    assert (third["predicted_label"], third["model_version"], third["reviewed_label"]) == ("", "", "ALL")
    assert third["reviewer"] == "'=HYPERLINK(\"http://x\")"
    assert len(first["sha256"]) == 64


def test_cells_csv_of_another_cell_model_and_of_every_folder(cli, case, tmp_path):
    folder, found, _ = case
    out = tmp_path / "cells.csv"
    assert cli("export", "--format", "cells", "--output", out, "--model", "cell-net-old")[0] == 0
    rows = read_csv(out)
    assert len(rows) == 4  # without --folder: the other folder's cell too
    by_id = {r["cell_id"]: r for r in rows}
    assert (by_id[str(found[0])]["predicted_label"], by_id[str(found[0])]["model_version"]) == ("Normal", "cell-net-old")
    assert by_id[str(found[1])]["predicted_label"] == ""


def test_a_field_model_or_an_unknown_name_is_refused_in_one_sentence(cli, case, db, tmp_path):
    with db.session() as s:
        field_model = s.scalar(select(ModelVersion.name).where(ModelVersion.input_kind == "field"))
    rc, _, err = cli("export", "--format", "cells", "--output", tmp_path / "x.csv", "--model", field_model)
    assert rc != 0 and "not cells" in err and "Traceback" not in err
    rc, _, err = cli("export", "--format", "cells", "--output", tmp_path / "x.csv", "--model", "nope")
    assert rc != 0 and "no model version 'nope'" in err
    assert not (tmp_path / "x.csv").exists()


def test_the_image_export_stays_the_default_and_writes_formulas_as_text(cli, db, tmp_path):
    folder = tmp_path / "lab"
    write_png(folder / "Pro" / "a.png", single_cell_crop())
    cli("scan", folder)
    with db.session() as s:
        record_labels(s, [s.scalar(select(ImageFile.image_id))], "Pro-B", "@SUM(A1:A9)")
    out = tmp_path / "images.csv"
    assert cli("export", "--output", out)[0] == 0
    (row,) = read_csv(out)
    assert "p_Pro-B" in row and "cell" not in row
    assert row["reviewer"] == "'@SUM(A1:A9)"


@pytest.mark.parametrize("start", FORMULA_STARTS)
def test_every_formula_start_is_made_text(start):
    assert spreadsheet_safe(start + "1+2") == "'" + start + "1+2"


@pytest.mark.parametrize("value", ["Dr. Ada", "0.9000", "/data/=a.png", "", 3, None, "a=b"])
def test_other_values_are_unchanged(value):
    assert spreadsheet_safe(value) == value


def test_import_labels_then_cells_csv_gives_each_crop_its_cell_in_the_image_grid(cli, tmp_path):
    folder = tmp_path / "cnmc"
    for i in range(2):
        write_png(folder / "hem" / f"n{i}.png", single_cell_crop(seed=i))
    assert cli("import-labels", folder, "--reviewer", "dr.b")[0] == 0
    out = tmp_path / "cells.csv"
    assert cli("export", "--format", "cells", "--output", out, "--folder", folder)[0] == 0
    rows = read_csv(out)
    assert len(rows) == 2
    for r in rows:  # the one cell of a 360 px crop, around its centre, labelled by its folder
        x0, y0, x1, y1 = (int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        assert x0 < 180 < x1 and y0 < 180 < y1 and 80 <= x1 - x0 <= 140
        assert (r["reviewed_label"], r["reviewer"], r["label_source"], r["scale_source"]) == \
            ("Normal", "dr.b", "dataset", "default")
