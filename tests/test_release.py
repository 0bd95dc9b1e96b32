"""Issue 24 (items 5 and 8) on SQLite: a case released with its PDF's and labels' SHA-256, then
read-only: a plain label refused with one sentence, an amendment with a reason accepted and
shown in the next report; corrections by the prediction shown when labelling; notes exported."""
from __future__ import annotations

import csv
import hashlib
import shutil

import pytest
from sqlalchemy import select

from core.errors import EXIT_REFUSED, CaseReleasedError
from core.imaging.scan import images_under
from core.models.registry import FIELD, active_version
from core.review.gallery import GalleryFilter, ordered_ids
from core.review.labels import record_labels
from core.review.release import amendments, label_state_sha256, releases
from core.storage import LabelEvent, Prediction, ReleaseEvent


def _released(cli, sample_folder, tmp_path):
    rc, out, err = cli("import-labels", sample_folder)
    assert rc == 0, err
    pdf = tmp_path / "case.pdf"
    rc, out, err = cli("release", sample_folder, "--report", pdf)
    assert rc == 0, err
    assert "released" in out
    return pdf


def test_release_records_the_pdf_and_label_state_and_a_plain_label_is_refused(cli, sample_folder, tmp_path, data_dir):
    pdf = _released(cli, sample_folder, tmp_path)
    from core.app.bootstrap import open_database
    from core.config import resolve_paths

    db = open_database(resolve_paths(data_dir).ensure())
    try:
        with db.session() as s:
            (event,) = releases(s, sample_folder)
            assert event.pdf_sha256 == hashlib.sha256(pdf.read_bytes()).hexdigest()
            assert event.labels_sha256 == label_state_sha256(s, sample_folder)
            assert event.login  # the OS account on SQLite
            image_id = images_under(s, sample_folder)[0][0]
        with pytest.raises(CaseReleasedError, match="released .* needs a reason"), db.session() as s:
            record_labels(s, [image_id], "Pro-B", "Dr. Ada")
        with db.session() as s:  # nothing was written
            assert not s.scalars(select(LabelEvent).where(LabelEvent.amend_reason.is_not(None))).all()
            with pytest.raises(Exception):  # append-only
                s.execute(ReleaseEvent.__table__.delete())
    finally:
        db.dispose()


def test_import_labels_on_a_released_case_is_refused_then_accepted_as_an_amendment(cli, sample_folder, tmp_path,
                                                                                    data_dir):
    _released(cli, sample_folder, tmp_path)
    subs = sorted(p for p in sample_folder.iterdir() if p.is_dir())
    moved = next(subs[0].iterdir())
    shutil.copy(moved, subs[1] / moved.name)  # the same image now also in another class folder: a new label
    rc, out, err = cli("import-labels", sample_folder)
    assert rc == EXIT_REFUSED
    assert "released" in err and "needs a reason" in err and "Traceback" not in err
    rc, out, err = cli("import-labels", sample_folder, "--amend-reason", "mislabelled in the first import")
    assert rc == 0, err
    from core.app.bootstrap import open_database
    from core.config import resolve_paths

    db = open_database(resolve_paths(data_dir).ensure())
    try:
        with db.session() as s:
            (a,) = [a for a in amendments(s, sample_folder) if "(cell)" not in a.item]
            assert a.reason == "mislabelled in the first import"
            assert a.login
            from desktop.report import build_report, report_data
            from desktop.workers import setup_on_main_thread

            with setup_on_main_thread():  # no window here: the test reads as a command would
                data = report_data(s, sample_folder, None)
        text = build_report(None, sample_folder, None, "x", "case", data).toPlainText()
        assert "Amended after release" in text and "mislabelled in the first import" in text
    finally:
        db.dispose()


def test_a_correction_stays_listed_after_a_retrain_learnt_it(db, sample_folder):
    from core.imaging.scan import scan
    from core.jobs import run_job

    run_job(scan(db, sample_folder))
    with db.session() as s:
        version = active_version(s, FIELD)
        ids = [i for i, _ in images_under(s, sample_folder)]
        for i in ids:  # what the reviewer is shown: a sure "Benign"
            s.add(Prediction(image_id=i, model_version_id=version.id, label="Benign", confidence=0.99, entropy=0.01,
                             probabilities=[0.99, 0.0, 0.0, 0.01], uncertain=False, out_of_distribution=False))
    with db.session() as s:
        record_labels(s, ids[:3], "Pro-B", "Dr. Ada")
    with db.session() as s:
        assert len(ordered_ids(s, sample_folder, version.id, GalleryFilter(corrected=True))) == 3
        # a retrain learnt the corrections: the model now says "Pro" for them
        for p in s.scalars(select(Prediction).where(Prediction.image_id.in_(ids[:3]))):
            p.label = "Pro-B"
    with db.session() as s:
        assert len(ordered_ids(s, sample_folder, version.id, GalleryFilter(corrected=True))) == 3
        assert {e.shown_label for e in s.scalars(select(LabelEvent))} == {"Benign"}


def test_notes_and_the_login_are_in_the_csv_export(db, sample_folder, tmp_path):
    from core.imaging.scan import scan
    from core.jobs import run_job
    from core.models.taxonomy import OTHER
    from core.review.export import export_csv

    run_job(scan(db, sample_folder))
    with db.session() as s:
        ids = [i for i, _ in images_under(s, sample_folder)]
        record_labels(s, ids[:1], OTHER, "Dr. Ada", note="=smudge cell, not assessable")
    out = tmp_path / "e.csv"
    export_csv(db, out, folder=sample_folder)
    rows = [r for r in csv.DictReader(out.open(encoding="utf-8")) if r["reviewed_label"]]
    assert rows[0]["note"] == "'=smudge cell, not assessable"  # as text, never a formula
    assert rows[0]["reviewer_login"]


def test_setup_roles_on_sqlite_says_roles_are_for_a_lab_server(cli):
    rc, out, err = cli("lab", "setup-roles")
    assert rc == 2 and "PostgreSQL" in err and "Traceback" not in err


def test_the_report_prints_the_audit_head_and_verify_checks_it_later(cli, sample_folder, tmp_path, data_dir):
    """A printed report is the chain's anchor outside the database (issue 24's open hole)."""
    import re

    _released(cli, sample_folder, tmp_path)
    from core.app.bootstrap import open_database
    from core.config import resolve_paths
    from core.storage.audit import chain_head
    from desktop.report import build_report, report_data
    from desktop.workers import setup_on_main_thread

    db = open_database(resolve_paths(data_dir).ensure())
    try:
        with db.session() as s:
            head = chain_head(s)
            with setup_on_main_thread():
                data = report_data(s, sample_folder, None)
    finally:
        db.dispose()
    text = build_report(None, sample_folder, None, "x", "case", data).toPlainText()
    assert f"Audit record at this report: event {head.seq:,}, SHA-256 {head.event_hash}" in text
    (anchor,) = re.findall(r"hemascan audit verify --anchor (\S+)", text)
    assert anchor == f"{head.seq}:{head.event_hash}"
    rc, out, err = cli("audit", "verify", "--anchor", anchor)
    assert rc == 0 and "whole" in out, (out, err)
    rc, out, err = cli("audit", "verify", "--anchor", f"{head.seq}:{'0' * 64}")
    assert rc != 0 and f"no longer has the hash written down for event {head.seq}" in out
