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


def write_and_record(db, folder, output, read, local_name: str | None = None) -> ReleaseEvent:
    """Write the signed PDF (on the thread that may use Qt's PDF writer) and record the release."""
    ident, version, data, case, labels = read
    output = Path(output)
    when = utcnow()
    tmp = output.with_name(f".{output.name}.release.pdf")
    write_report(None, folder, version, ident.display_name, tmp, case=case, data=data,
                 signed=SignedOff(ident.display_name, ident.login, when))
    try:
        with db.session() as s:
            event = record_release(s, folder, tmp, local_name, when=when, labels_sha256=labels)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return event


def release_case(db, folder, output, local_name: str | None = None, model: str | None = None) -> ReleaseEvent:
    with db.session() as s:
        read = read_for_release(s, folder, local_name, model)
    return write_and_record(db, folder, output, read, local_name)
