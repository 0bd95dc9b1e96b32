"""Issue 24, item 7: what hemascan writes for people to open is safe to open. CSV: a formula
start is made text, a number stays a number. PDF report: markup is shown as text, a name's
direction controls cannot reverse the text around it, a long case name gives a file name the
file system takes."""
from __future__ import annotations

import csv

import pytest

from core.review.export import FSI, PDI, bidi_isolated, export_csv, spreadsheet_safe


@pytest.mark.parametrize("value", ["-0.25", "+3", "-12", "1e-05", "-.5", "0.9000", 3, -2.5])
def test_numbers_stay_numbers(value):
    assert spreadsheet_safe(value) == value


@pytest.mark.parametrize("value", ["-1+2", "+A1", "-2-3", "@x", "=1", "\t=1", "\r=1", "-", "-1e5+cmd|' /C calc'!A0"])
def test_formula_like_text_is_made_text(value):
    assert spreadsheet_safe(value) == "'" + value


def test_a_hostile_reviewer_name_in_the_csv_is_text_and_numbers_are_numbers(db, tmp_path):
    from core.app.sample import generate
    from core.imaging.scan import scan
    from core.jobs import run_job
    from core.review.labels import record_labels
    from core.storage import Image

    generate(tmp_path / "f", n_per_class=1, seed=3)
    run_job(scan(db, tmp_path / "f"))
    with db.session() as s:
        ids = [i for (i,) in s.query(Image.id).all()]
        record_labels(s, ids[:1], "Benign", '=HYPERLINK("http://x","y")')
        record_labels(s, ids[1:2], "Benign", "\t-1+1")
    out = tmp_path / "e.csv"
    export_csv(db, out, folder=tmp_path / "f")
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    reviewers = sorted(r["reviewer"] for r in rows if r["reviewer"])
    # the name is trimmed when recorded (its tab goes); what is left still starts with "-": neutralised
    assert reviewers == ["'-1+1", "'=HYPERLINK(\"http://x\",\"y\")"]


@pytest.mark.parametrize("name", ["scan\u202egpj.exe", "\u2067a\u2069b\u200f", "plain"])
def test_a_name_is_isolated_and_loses_its_own_direction_controls(name):
    shown = bidi_isolated(name)
    assert shown.startswith(FSI) and shown.endswith(PDI)
    inner = shown[1:-1]
    assert not any(ch in inner for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
    assert inner == "".join(ch for ch in name if ch.isalnum() or ch in ".")


def test_the_report_shows_markup_as_text_and_no_override_reverses_a_caption(db, tmp_path, qapp):
    pytest.importorskip("PySide6")
    from core.app.sample import generate
    from core.imaging.scan import scan
    from core.jobs import run_job
    from sqlalchemy import select

    from core.models.taxonomy import OTHER
    from core.review.labels import record_labels
    from core.storage import ImageFile
    from desktop.report import build_report, report_data, write_report
    from desktop.workers import setup_on_main_thread

    folder = tmp_path / "f"
    generate(folder, n_per_class=1, seed=4)
    first = sorted(p for p in folder.rglob("*") if p.is_file())[0]
    first.rename(first.with_name("x\u202egpj.exe" + first.suffix))  # its caption read reversed before
    run_job(scan(db, folder))
    with db.session() as s:  # in the report's gallery of images no class fits, with its caption
        record_labels(s, [s.scalar(select(ImageFile.image_id).where(ImageFile.path.like("%.exe%")))], OTHER, "dr.a")
    with setup_on_main_thread(), db.session() as s:
        data = report_data(s, folder, None)
    case, reviewer = "Case \u202e71-6202", "<b>Dr. Bold</b> & co"
    text = build_report(None, folder, None, reviewer, case, data).toPlainText()
    assert "\u202e" not in text  # every override is gone: nothing reverses the text after it
    assert f"{FSI}Case 71-6202{PDI}" in text  # the case's name, isolated
    assert f"{FSI}<b>Dr. Bold</b> & co{PDI}" in text  # markup shown as typed, not applied
    assert f"{FSI}xgpj.exe{first.suffix}{PDI}" in text  # the renamed file's caption
    pdf = write_report(None, folder, None, reviewer, tmp_path / "r.pdf", case=case, data=data)
    assert pdf.read_bytes().startswith(b"%PDF")


def test_a_long_case_name_gives_a_file_name_the_file_system_takes(tmp_path):
    pytest.importorskip("PySide6")
    from desktop.report import FILE_STEM_MAX_BYTES, file_stem

    for name in ("A" * 1000, "Ωμέγα-" * 200, "\u202e" * 10, "  "):
        stem = file_stem(name)
        assert 0 < len(stem.encode("utf-8")) <= FILE_STEM_MAX_BYTES
        path = tmp_path / f"hemascan-{stem}-cells-20261204-1930.pdf"
        path.write_bytes(b"%PDF")  # no "File name too long"
        assert path.read_bytes() == b"%PDF"
    assert file_stem("Case 2026/117") == "Case-2026-117"
    assert file_stem("\u202e" * 10) == "case"
