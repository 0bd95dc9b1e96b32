"""Issue 22: the differential of a case: the arithmetic (Clopper-Pearson intervals against the
Rumke table's values and scipy, how many more cells to count, Cohen's kappa against a hand
computation and scikit-learn) and the path through real rows (images scanned, cells stored by
store_field_cells, cell predictions, cell label events), the command line and its JSON."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sqlalchemy import select, update

from core.cells.finder import FieldCells, FoundCell
from core.cells.records import add_cell, store_field_cells
from core.imaging.scan import folder_prefix, images_under, scan
from core.jobs import run_job
from core.models.taxonomy import OTHER, blast_class
from core.review.differential import (DISCLAIMER, MAX_CELLS_TO_COUNT, as_lines, blast_line, case_differential, cells_to_count,
                                      clopper_pearson, cohen_kappa, differential_table)
from core.storage import Case, Cell, CellLabelEvent, CellPrediction, ModelVersion

CELL_MODEL = "all-vs-normal-seed-cnn3-v1"  # the bundled ALL-vs-normal package: a cell model


# ---- arithmetic ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k, n, low, high", [
    (20, 100, 12.7, 29.2),  # Rumke: 100 cells, 20% -> about 12-29%
    (10, 100, 4.9, 17.6),
    (20, 200, 6.2, 15.0),  # 200 cells, 10% -> about 6-15%
    (50, 100, 39.8, 60.2),
    (5, 100, 1.6, 11.3),
])
def test_clopper_pearson_gives_the_rumke_tables_values(k, n, low, high):
    lo, hi = clopper_pearson(k, n)
    assert round(100 * lo, 1) == low and round(100 * hi, 1) == high


def test_clopper_pearson_at_none_and_all_is_exact():
    # k = 0: the upper bound is 1 - (alpha/2)^(1/n); k = n: the lower bound is (alpha/2)^(1/n)
    for n in (1, 10, 50, 500):
        lo, hi = clopper_pearson(0, n)
        assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / n), abs=1e-12)
        lo, hi = clopper_pearson(n, n)
        assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / n), abs=1e-12)
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        clopper_pearson(5, 4)


def test_clopper_pearson_agrees_with_scipy():
    beta = pytest.importorskip("scipy.stats").beta
    for k, n in [(1, 3), (7, 19), (33, 100), (150, 1000), (2, 5000), (4999, 5000), (12.5, 40.0)]:
        lo, hi = clopper_pearson(k, n)
        assert lo == pytest.approx(beta.ppf(0.025, k, n - k + 1), abs=1e-9)
        assert hi == pytest.approx(beta.ppf(0.975, k + 1, n - k), abs=1e-9)


def _excludes(k, n, t):
    lo, hi = clopper_pearson(k, n)
    return lo > t or hi < t


@pytest.mark.parametrize("k, n", [(12, 50), (15, 100), (25, 100), (1, 10), (0, 10), (3, 5), (48, 200)])
def test_how_many_more_is_the_smallest_count_whose_interval_excludes_the_threshold(k, n):
    more = cells_to_count(k, n, 0.20)
    p, total = k / n, n + more
    assert more > 0 and not _excludes(k, n, 0.20)
    assert _excludes(p * total, total, 0.20)  # at N' the same proportion tells
    assert not _excludes(p * (total - 1), total - 1, 0.20)  # one fewer does not


def test_how_many_more_is_zero_when_the_interval_excludes_and_none_at_the_threshold():
    assert cells_to_count(30, 100, 0.20) == 0  # 21.2-39.6%: above
    assert cells_to_count(10, 100, 0.20) == 0  # 4.9-17.6%: below
    assert cells_to_count(20, 100, 0.20) is None  # exactly at 20%: no count tells
    assert cells_to_count(1, 5, 0.20) is None
    assert cells_to_count(2001, 10000, 0.20) is None  # 20.01%: more than a million cells
    assert cells_to_count(19, 100, 0.20) < MAX_CELLS_TO_COUNT


def test_blast_line_says_what_to_do():
    line = blast_line("ALL", 12, 50)
    assert line.verdict == "undecided" and line.more_cells == cells_to_count(12, 50, 0.2)
    assert f"count {line.more_cells} more cells" in line.advice and "24.0%" in line.advice
    assert blast_line("ALL", 30, 100).verdict == "above" and blast_line("ALL", 5, 100).verdict == "below"
    at = blast_line("ALL", 20, 100)
    assert at.verdict == "at threshold" and at.more_cells is None and "cannot tell" in at.advice
    assert blast_line("ALL", 12, 50, threshold_pct=5).verdict == "above"  # the lab's threshold counts
    with pytest.raises(ValueError):
        blast_line("ALL", 1, 10, threshold_pct=0)
    one = blast_line("ALL", 0, 1)  # one cell counted: said in the singular
    assert one.more_cells and one.advice.startswith("1 cell cannot tell"), one.advice


def test_cohen_kappa_by_hand_and_against_scikit_learn():
    # 10 cells: both say A on 4, both B on 3, A/B on 2, B/A on 1.
    pairs = [("A", "A")] * 4 + [("B", "B")] * 3 + [("A", "B")] * 2 + [("B", "A")]
    # observed 0.7; first A 6 B 4, second A 5 B 5: chance 0.6*0.5 + 0.4*0.5 = 0.5; kappa (0.7-0.5)/0.5
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("A", "A"), ("B", "B")]) == pytest.approx(1.0)
    assert cohen_kappa([("A", "A")] * 3) is None and cohen_kappa([]) is None
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.choice(["ALL", "Normal", OTHER], 40)
        b = np.where(rng.random(40) < 0.7, a, rng.choice(["ALL", "Normal", OTHER], 40))
        assert cohen_kappa(zip(a, b)) == pytest.approx(metrics.cohen_kappa_score(a, b), abs=1e-12)


def test_differential_table_percentages_and_intervals():
    lines = differential_table({"ALL": 20, "Normal": 80}, {"ALL": 5})
    assert [(x.label, x.n, x.reviewed, x.predicted) for x in lines] == [("ALL", 20, 5, 15), ("Normal", 80, 0, 80)]
    assert lines[0].pct == 20.0 and round(lines[0].low_pct, 1) == 12.7 and round(lines[0].high_pct, 1) == 29.2
    assert lines[1].pct == 80.0 and math.isclose(lines[1].low_pct, 100 - lines[0].high_pct)


def test_the_blast_class_is_named_once_per_taxonomy():
    assert blast_class("all_vs_normal") == "ALL"
    assert blast_class("all_subtype") is None and blast_class(None) is None and blast_class("nope") is None


# ---- a case through real rows ---------------------------------------------------------------------

def _cell(x: int, y: int) -> FoundCell:
    box = (x, y, x + 20, y + 20)
    return FoundCell(box, np.array([[x, y], [x + 20, y], [x + 20, y + 20], [x, y + 20]], np.int32), None, 400,
                     frozenset())


def make_case(db, folder, per_image: int = 5):
    """The sample images under ``folder`` scanned, each with ``per_image`` cells; the bundled
    ALL-vs-normal version made the active cell model. Returns (version id, cell ids in order)."""
    from core.app.sample import generate

    generate(folder, n_per_class=1, seed=5)  # 4 images
    run_job(scan(db, folder))
    with db.session() as s:
        s.execute(update(ModelVersion).where(ModelVersion.input_kind == "cell").values(is_active=False))
        s.execute(update(ModelVersion).where(ModelVersion.name == CELL_MODEL).values(input_kind="cell", is_active=True))
        vid = s.scalar(select(ModelVersion.id).where(ModelVersion.name == CELL_MODEL))
        for image_id, _ in images_under(s, folder):
            store_field_cells(s, image_id, FieldCells(tuple(_cell(30 * k, 10) for k in range(per_image)), 0.1,
                                                      "red_cells", 12, False), "stain-v1")
        ids = list(s.scalars(select(Cell.id).order_by(Cell.id)))
        s.commit()
    return vid, ids


def _predict(s, vid, cell_ids, label, outside=False, uncertain=False):
    for c in cell_ids:
        s.add(CellPrediction(cell_id=c, model_version_id=vid, label=label, confidence=0.9, entropy=0.3,
                             probabilities=[0.9, 0.1], uncertain=uncertain, out_of_distribution=outside))


def _label(s, cell_ids, label, reviewer):
    for c in cell_ids:
        s.add(CellLabelEvent(cell_id=c, taxonomy="all_vs_normal", label=label, previous_label=None,
                             reviewer=reviewer, source="human"))


def test_case_differential_counts_reviewed_before_predicted_and_sets_outside_and_other_apart(db, tmp_path):
    folder = tmp_path / "case-17"
    vid, ids = make_case(db, folder)  # 20 cells
    with db.session() as s:
        _predict(s, vid, ids[:6], "ALL")
        _predict(s, vid, ids[6:16], "Normal")
        _predict(s, vid, ids[16:18], "Normal", outside=True)  # not counted...
        # ids[18:20]: not classified yet
        s.flush()
        _label(s, [ids[0]], "Normal", "ann")  # a correction: counted as Normal, reviewed
        _label(s, [ids[6], ids[7]], "ALL", "ann")
        _label(s, [ids[8]], OTHER, "ann")  # not counted
        _label(s, [ids[16]], "ALL", "ann")  # ...unless a reviewer gives it a class
        _label(s, [ids[9]], "ALL", "ann")
        _label(s, [ids[9]], None, "ann")  # cleared: back to the prediction
        s.commit()
    with db.session() as s:
        d = case_differential(s, folder, vid)
    by = {x.label: x for x in d.classes}
    # ALL: ids 1-5 predicted, 6, 7 and 16 reviewed; Normal: 0 reviewed, 9-15 predicted (8 is Other)
    assert (by["ALL"].n, by["ALL"].reviewed, by["ALL"].predicted) == (8, 3, 5)
    assert (by["Normal"].n, by["Normal"].reviewed, by["Normal"].predicted) == (8, 1, 7)
    assert d.total == 16 and d.n_cells == 20 and d.n_outside == 1 and d.n_other == 1 and d.n_unclassified == 2
    assert (d.n_reviewed, d.n_predicted) == (4, 12)
    assert d.case == "case-17" and d.model == CELL_MODEL and d.disclaimer == DISCLAIMER
    assert d.blast.label == "ALL" and d.blast.pct == 50.0 and d.blast.verdict == "above"
    lo, hi = clopper_pearson(8, 16)
    assert (d.blast.low_pct, d.blast.high_pct) == (100 * lo, 100 * hi)
    assert d.agreement == []  # one reviewer: no kappa
    json.dumps(d.as_dict())  # plain types


def test_kappa_over_the_cells_both_reviewers_labelled_with_each_ones_latest_label(db, tmp_path):
    folder = tmp_path / "case"
    vid, ids = make_case(db, folder)
    with db.session() as s:
        _predict(s, vid, ids, "Normal")
        s.flush()
        _label(s, ids[:10], "Normal", "ann")  # ann changes her mind on 0..3 below
        _label(s, ids[:4], "ALL", "ann")
        _label(s, ids[:2] + ids[4:9], "ALL", "bob")  # agrees on 0, 1; disagrees on 4..8
        _label(s, ids[2:4], "Normal", "bob")
        _label(s, ids[12:14], "ALL", "bob")  # only bob: not in the kappa
        s.commit()
    with db.session() as s:
        d = case_differential(s, folder, vid)
    [a] = d.agreement
    ann = ["ALL"] * 4 + ["Normal"] * 5
    bob = ["ALL", "ALL", "Normal", "Normal"] + ["ALL"] * 5
    assert (a.first, a.second, a.n_cells, a.n_agree) == ("ann", "bob", 9, 2)
    assert a.kappa == pytest.approx(cohen_kappa(zip(ann, bob)))


def test_cells_of_an_older_finder_are_not_counted_twice_and_added_cells_are(db, tmp_path):
    folder = tmp_path / "case"
    vid, ids = make_case(db, folder, per_image=2)  # 8 cells by stain-v1
    with db.session() as s:
        image_id = images_under(s, folder)[0][0]
        store_field_cells(s, image_id, FieldCells((_cell(0, 0), _cell(40, 0), _cell(80, 0)), 0.1, "red_cells", 9,
                                                  False), "stain-v2")  # newer run of the same image: 3 cells
        added = add_cell(s, image_id, (5, 5, 25, 25), 0.1, "ann")
        _label(s, [added], "ALL", "ann")
        s.commit()
    with db.session() as s:
        d = case_differential(s, folder, vid)
    assert d.n_cells == 6 + 3 + 1 and d.total == 1 and d.n_unclassified == 9


def test_case_name_comes_from_the_cases_table(db, tmp_path):
    folder = tmp_path / "f"
    vid, _ = make_case(db, folder, per_image=1)
    with db.session() as s:
        s.add(Case(root=folder_prefix(folder), name="Sample 2026-0042"))
        s.commit()
    with db.session() as s:
        assert case_differential(s, folder, vid).case == "Sample 2026-0042"


# ---- the command line ------------------------------------------------------------------------------

def _case_for_cli(data_dir, tmp_path):
    from core.app.bootstrap import open_database
    from core.config import resolve_paths

    db = open_database(resolve_paths(data_dir).ensure())
    folder = tmp_path / "case-cli"
    vid, ids = make_case(db, folder)
    with db.session() as s:
        _predict(s, vid, ids[:3], "ALL")
        _predict(s, vid, ids[3:19], "Normal")
        _predict(s, vid, ids[19:], "ALL", outside=True)
        s.flush()
        _label(s, ids[:2], "ALL", "ann")
        _label(s, ids[:2], "ALL", "bob")
        _label(s, ids[2:4], "Normal", "ann")
        _label(s, ids[2:4], "ALL", "bob")
        s.commit()
    db.dispose()
    return folder


def test_cli_prints_the_table_the_blast_line_the_advice_kappa_and_the_disclaimer(cli, data_dir, tmp_path):
    folder = _case_for_cli(data_dir, tmp_path)
    rc, out, err = cli("differential", folder)
    assert rc == 0, err
    # ALL: 0, 1 (reviewed), 3 (bob last: ALL) ... the current label is the latest event of anyone
    assert "N = 19 white cells counted" in out
    assert "ALL" in out and "Normal" in out and "95% interval" in out
    n_all = 4  # 0, 1 reviewed ALL; 2, 3: bob's ALL is the latest event
    lo, hi = clopper_pearson(n_all, 19)
    assert f"{100 * lo:.1f}-{100 * hi:.1f}%" in out
    assert "count " in out and " more cells" in out  # 4 of 19 cannot tell about 20%
    assert "outside the model's experience: 1" in out and "Other / not assessable: 0" in out
    assert "kappa" in out and "ann" in out and "bob" in out
    assert DISCLAIMER in out


def test_cli_json_and_threshold(cli, data_dir, tmp_path):
    folder = _case_for_cli(data_dir, tmp_path)
    out_json = tmp_path / "d.json"
    rc, out, err = cli("differential", folder, "--json", out_json, "--threshold", "10", "--model", CELL_MODEL)
    assert rc == 0, err
    d = json.loads(out_json.read_text())
    assert d["total"] == 19 and d["model"] == CELL_MODEL and d["threshold_pct"] == 10.0
    assert {c["label"]: c["n"] for c in d["classes"]} == {"ALL": 4, "Normal": 15}
    assert d["blast"]["verdict"] == "undecided" and d["blast"]["more_cells"] == cells_to_count(4, 19, 0.10) > 0
    assert d["agreement"][0]["n_cells"] == 4 and d["disclaimer"] == DISCLAIMER


def test_cli_says_one_sentence_for_a_folder_without_cells_and_for_bad_options(cli, data_dir, tmp_path, capsys):
    from core.app.sample import generate

    folder = tmp_path / "no-cells"
    generate(folder, n_per_class=1, seed=1)
    rc, out, err = cli("differential", folder)
    assert rc == 0 and "no white cells" in out and "Traceback" not in out + err
    with pytest.raises(SystemExit) as info:  # argparse's own check, before any work
        cli("differential", folder, "--threshold", "120")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--threshold: must be a number" in err and "Traceback" not in err
    rc, out, err = cli("differential", folder, "--model", "no-such-model")
    assert rc == 2 and "no-such-model" in err and "Traceback" not in err
    rc, out, err = cli("differential", folder, "--model", "all-subtype-effnet-lite0-v2")
    assert rc == 2 and "needs a cell model" in err and "Traceback" not in err


# ---- the PDF case report ----------------------------------------------------------------------------

def test_case_report_has_the_differential_and_galleries_of_blast_flagged_and_corrected_cells(db, tmp_path, qapp):
    import shutil
    import subprocess

    pytest.importorskip("PySide6")
    from desktop.report import STATEMENT, build_report, report_data, write_report
    from desktop.workers import setup_on_main_thread

    folder = tmp_path / "case-pdf"
    vid, ids = make_case(db, folder)  # 20 cells
    with db.session() as s:
        _predict(s, vid, ids[:8], "ALL")
        _predict(s, vid, ids[8:17], "Normal")
        _predict(s, vid, ids[17:], "Normal", outside=True)  # 3 flagged
        s.flush()
        _label(s, ids[8:10], "ALL", "ann")  # 2 corrected: 10 blasts of 17
        s.commit()
    with setup_on_main_thread(), db.session() as s:  # the test reads the report's data itself
        data = report_data(s, folder, None)
    text = build_report(None, folder, None, "ann", "Case 22", data).toPlainText()
    lo, hi = clopper_pearson(10, 17)
    assert "White-cell differential" in text and "N = 17 white cells counted" in text
    assert f"{100 * lo:.1f}-{100 * hi:.1f}%" in text and "ALL (blasts): 10 of 17 = 58.8%" in text
    assert "The 95% interval lies wholly above the 20% threshold" in text
    assert "Blast cells (ALL): 10" in text and "Cells flagged by the model: 3" in text
    # the bundled cell model's card states its cut-outs' side (25 um): the report uses it
    assert "Cells corrected by a reviewer: 2" in text and "25 um wide" in text and "states none" not in text
    assert STATEMENT in text and DISCLAIMER in text and "Sign-off" in text
    part = data.cells
    shown = [rgb for _t, _m, _n, cells in part.galleries for _c, rgb in cells]
    assert len(shown) == 15 and all(rgb is not None and rgb.shape == (96, 96, 3) for rgb in shown)
    pdf = write_report(None, folder, None, "ann", tmp_path / "case.pdf", case="Case 22", data=data)
    assert pdf.read_bytes().startswith(b"%PDF")
    if shutil.which("pdftotext"):  # what the PDF itself says
        said = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout.split())
        assert "N = 17 white cells counted" in said and "58.8%" in said and "Blast cells (ALL): 10" in said


def test_case_report_without_cells_is_as_before(db, tmp_path, qapp):
    pytest.importorskip("PySide6")
    from desktop.report import build_report, report_data
    from desktop.workers import setup_on_main_thread
    from core.app.sample import generate

    generate(tmp_path / "f", n_per_class=1, seed=2)
    run_job(scan(db, tmp_path / "f"))
    with setup_on_main_thread(), db.session() as s:
        data = report_data(s, tmp_path / "f", None)
    text = build_report(None, tmp_path / "f", None, "ann", "Case", data).toPlainText()
    assert data.cells is None and "White-cell differential" not in text and "Counts per class" in text


def test_cells_the_model_is_unsure_of_wait_for_a_reviewer_before_they_count(db, tmp_path):
    # as an analyser's "unidentified" cells: a guess below the card's threshold is no count (a model
    # unsure of most cells of another lab would otherwise report its guesses as a blast percentage)
    folder = tmp_path / "case"
    vid, ids = make_case(db, folder)  # 20 cells
    with db.session() as s:
        _predict(s, vid, ids[:4], "Normal")
        _predict(s, vid, ids[4:12], "ALL", uncertain=True)
        s.flush()
        _label(s, ids[4:6], "Normal", "ann")  # reviewed: counted as the reviewer says
        _label(s, [ids[6]], "ALL", "ann")
        s.commit()
    with db.session() as s:
        d = case_differential(s, folder, vid)
    by = {x.label: x for x in d.classes}
    assert (by["ALL"].n, by["Normal"].n, d.total) == (1, 6, 7)
    assert d.n_uncertain == 5 and d.n_unclassified == 8
    assert d.n_cells == d.total + d.n_uncertain + d.n_unclassified + d.n_outside + d.n_other
    assert "the model unsure, to review: 5" in "\n".join(as_lines(d))
