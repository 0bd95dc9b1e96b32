"""Releasing a case: the PDF report, signed off by this login, and the release event holding its
SHA-256 (core/review/release.py). Used by ``hemascan release`` and the window's Release action.

The PDF is written beside its destination first; the release is recorded (a supervisor's
right, checked here and by the database); only then does the PDF take its name. A refused
release leaves no PDF that looks released."""
from __future__ import annotations

import os
from pathlib import Path

from core.models.registry import FIELD, active_version, get_version
from core.review.cases import case_name
from core.review.release import label_state_sha256, record_release
from core.storage import ReleaseEvent, utcnow
from core.storage.identity import current_identity
from desktop.models_panel import version_info
from desktop.report import SignedOff, report_data, write_report


def read_for_release(session, folder, local_name: str | None = None, model: str | None = None):
    """What a release needs, read in one go (a worker's read in the app): the identity (refused
    here, one sentence, when it may not release), the model, the report's data, the case's name
    and its label state."""
    ident = current_identity(session, local_name)
    ident.check("release")
    row = get_version(session, model) if model else active_version(session, FIELD)
    version = version_info(row) if row is not None else None
    return (ident, version, report_data(session, folder, version), case_name(session, folder),
            label_state_sha256(session, folder))


def write_signed_pdf(folder, output, read) -> tuple[Path, object]:
    """The signed PDF, written beside ``output`` under a temporary name (Qt's PDF writer: the
    GUI thread in the app). Returns (that file, when it was signed)."""
    ident, version, data, case, _labels = read
    output = Path(output)
    when = utcnow()
    tmp = output.with_name(f".{output.name}.release.pdf")
    write_report(None, folder, version, ident.display_name, tmp, case=case, data=data,
                 signed=SignedOff(ident.display_name, ident.login, when))
    return tmp, when


def record_and_place(db, folder, output, read, tmp: Path, when, local_name: str | None = None) -> ReleaseEvent:
    """Record the release of the PDF ``tmp`` (the database's work: a worker in the app), then give
    it its name; a refused release leaves no PDF."""
    try:
        with db.session() as s:
            event = record_release(s, folder, tmp, local_name, when=when, labels_sha256=read[4])
        os.replace(tmp, output)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return event


def release_case(db, folder, output, local_name: str | None = None, model: str | None = None) -> ReleaseEvent:
    with db.session() as s:
        read = read_for_release(s, folder, local_name, model)
    tmp, when = write_signed_pdf(folder, output, read)
    return record_and_place(db, folder, output, read, tmp, when, local_name)
