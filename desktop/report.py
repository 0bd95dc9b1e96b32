"""The PDF case report of a folder (Qt's own PDF writer): case name, local date and time,
reviewer and a sign-off block, counts per class (predicted and reviewed), the corrected,
outside-experience, uncertain and "Other" images with thumbnails, the model in one line
with the basis of its figures, and the decision-support statement."""
from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PySide6.QtCore import QMarginsF, QRectF, QSizeF, Qt, QUrl
from PySide6.QtGui import QPageLayout, QPageSize, QPainter, QPdfWriter, QTextDocument, QTextFormat
from sqlalchemy import select

from core.review import gallery as q
from core.storage import Prediction
from core.imaging.fspath import display
from core.models.taxonomy import OTHER, OTHER_TITLE

from .models_panel import trained_on
from .tiles import make_thumbnail
from desktop.models_panel import headline_metrics

log = logging.getLogger(__name__)

STATEMENT = ("hemascan supports and does not replace diagnosis. It is research and decision-support "
             "software, not a diagnostic device: every result must be reviewed by a qualified person.")


SECTIONS = (  # (title, filter, what it means): the images a lab signs off on
    ("Corrected by the reviewer", q.GalleryFilter(disagreement=True, sort="name"),
     "the reviewer's class differs from the model's"),
    ("Outside the model's experience", q.GalleryFilter(outside_only=True, sort="name"),
     "unlike the images the model was trained on: its class is not reliable"),
    ("Uncertain", q.GalleryFilter(uncertain_only=True, sort="confidence"),
     "the model's confidence is below its threshold"),
    (OTHER_TITLE, q.GalleryFilter(reviewed=OTHER, sort="name"), "the reviewer found that no class fits"),
)
MAX_THUMBS = 24  # per section; the rest are counted


def _thumb_cell(doc, r, size: int = 96) -> str:
    url = f"thumb://{r.image_id}"
    try:
        doc.addResource(QTextDocument.ImageResource, QUrl(url), make_thumbnail(r.path, 160))
        img = f"<img src='{url}' width='{size}' height='{size}'><br>"
    except Exception as exc:
        log.info("report thumbnail of %s failed: %s", r.name, exc)
        img = "<i>(no thumbnail)</i><br>"
    model = "outside experience" if r.outside else f"{r.predicted or '-'} {(r.confidence or 0):.0%}"
    rev = OTHER_TITLE if r.reviewed == OTHER else (r.reviewed or "not reviewed")
    return (f"<td align='center' width='25%'>{img}<small>{html.escape(r.name)}<br>model: {html.escape(model)}"
            f"<br>reviewed: <b>{html.escape(rev)}</b></small></td>")


def write_report(db, folder, version: dict | None, reviewer: str, output, case: str | None = None,
                 data: ReportData | None = None) -> Path:
    """A case report a lab can file: case name, local date and time, reviewer and sign-off,
    counts per class, the flagged and the corrected images with thumbnails, the model in one
    line, the decision-support statement. ``version``: dict(id, name, taxonomy, classes, card)."""
    output = Path(output)
    case = (case or Path(str(folder)).name).strip() or Path(str(folder)).name
    doc = build_report(db, folder, version, reviewer, case, data)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    writer = QPdfWriter(str(tmp))
    writer.setPageSize(QPageSize(QPageSize.A4))
    writer.setPageMargins(QMarginsF(15, 15, 15, 15), QPageLayout.Millimeter)
    writer.setResolution(150)
    writer.setTitle(f"hemascan case report: {case}")
    writer.setCreator("hemascan")
    paint_pages(doc, writer, f"hemascan case report: {case}")
    del writer  # flushes the file
    tmp.replace(output)
    return output


def keep_tables_whole(doc: QTextDocument, page_height: float, rounds: int = 200) -> None:
    """A table shorter than a page starts on a new page rather than being cut by one: a
    thumbnail and its caption, or a sign-off block, stay together."""
    for _ in range(rounds):
        layout = doc.documentLayout()
        for frame in doc.rootFrame().childFrames():
            r = layout.frameBoundingRect(frame)
            if r.height() < page_height and int(r.top() // page_height) != int((r.bottom() - 1) // page_height):
                fmt = frame.frameFormat()
                fmt.setPageBreakPolicy(QTextFormat.PageBreak_AlwaysBefore)
                frame.setFrameFormat(fmt)
                break
        else:
            return


def paint_pages(doc: QTextDocument, writer: QPdfWriter, footer: str) -> int:
    """Lay ``doc`` out on the writer's pages, keep tables whole, and print each page with a
    footer (the case and "page n of N"). Returns the number of pages."""
    doc.documentLayout().setPaintDevice(writer)
    fmt = doc.rootFrame().frameFormat()
    fmt.setMargin(0)
    doc.rootFrame().setFrameFormat(fmt)
    foot = writer.logicalDpiY() * 0.3  # inches of the page kept for the footer
    width, height = writer.width(), writer.height() - foot
    doc.setPageSize(QSizeF(width, height))
    keep_tables_whole(doc, height)
    n = doc.pageCount()
    painter = QPainter(writer)
    try:
        for k in range(n):
            if k:
                writer.newPage()
            painter.save()
            painter.translate(0, -k * height)
            doc.drawContents(painter, QRectF(0, k * height, width, height))
            painter.restore()
            painter.drawText(QRectF(0, height, width, foot), Qt.AlignRight | Qt.AlignBottom,
                             f"{footer} · page {k + 1} of {n}")
    finally:
        painter.end()
    return n


@dataclass(frozen=True)
class ReportData:
    """What the report says, read from the database (in a worker: the window reads nothing itself)."""

    counts: q.ClassCounts
    sections: list  # (title, meaning, n, rows by id, ids shown)
    runtimes: list[str]


def report_data(session, folder, version: dict | None) -> ReportData:
    vid = version["id"] if version else None
    tax = version["taxonomy"] if version else None
    counts = q.class_counts(session, folder, vid, tax)
    sections = []
    for title, flt, meaning in SECTIONS:
        ids = q.ordered_ids(session, folder, vid, flt, tax)
        sections.append((title, meaning, len(ids), q.rows(session, folder, vid, ids[:MAX_THUMBS], tax), ids[:MAX_THUMBS]))
    runtimes = sorted(filter(None, session.scalars(select(Prediction.runtime).where(
        Prediction.model_version_id == vid).distinct()))) if vid else []
    return ReportData(counts, sections, runtimes)


def build_report(db, folder, version: dict | None, reviewer: str, case: str,
                 data: ReportData | None = None) -> QTextDocument:
    """The report as a rich-text document (write_report prints it to PDF); ``data`` read
    beforehand, else read from ``db`` here."""

    if data is None:
        with db.session() as s:
            data = report_data(s, folder, version)
    counts, sections, runtimes = data.counts, data.sections, data.runtimes
    classes = list(version["classes"]) if version else []
    doc = QTextDocument()
    now = datetime.now().astimezone()
    card = (version or {}).get("card") or {}
    rows = []
    for c in classes + sorted(set(counts.reviewed) - set(classes) - {OTHER}):
        pn, rn = counts.predicted.get(c, 0), counts.reviewed.get(c, 0)
        rows.append(f"<tr><td>{html.escape(c)}</td><td align='right'>{pn:,}</td>"
                    f"<td align='right'>{counts.pct(pn, counts.n_classified):.1f}%</td>"
                    f"<td align='right'>{rn:,}</td><td align='right'>{counts.pct(rn, counts.n_reviewed_classes):.1f}%</td></tr>")
    rows.append(f"<tr><td><i>Outside the model's experience</i></td><td align='right'>{counts.n_outside:,}</td>"
                "<td></td><td></td><td></td></tr>")
    rows.append(f"<tr><td><i>{OTHER_TITLE}</i></td><td></td><td></td>"
                f"<td align='right'>{counts.reviewed.get(OTHER, 0):,}</td><td></td></tr>")
    rows.append(f"<tr><td><b>Total</b></td><td align='right'><b>{counts.n_predicted:,}</b></td><td></td>"
                f"<td align='right'><b>{counts.n_reviewed:,}</b></td><td></td></tr>")
    parts = []
    for title, meaning, n, found, ids in sections:
        head = f"<h3>{html.escape(title)}: {n:,}</h3><p><small>{html.escape(meaning)}.</small></p>"
        if not n:
            parts.append(head + "<p><i>None.</i></p>")
            continue
        cells = [_thumb_cell(doc, found[i]) for i in ids if i in found]
        # one table per row of thumbnails, so a page break falls between rows (keep_tables_whole)
        grid = "".join("<table cellpadding='4' cellspacing='0' width='100%'><tr>" + "".join(cells[k:k + 4])
                       + "</tr></table>" for k in range(0, len(cells), 4))
        more = f"<p><small>… and {n - len(cells):,} more (see the CSV export).</small></p>" if n > len(cells) else ""
        parts.append(f"{head}{grid}{more}")
    offset = now.strftime("%z")
    when = f"{now.strftime('%Y-%m-%d %H:%M')} (local time, UTC{offset[:3]}:{offset[3:]})"
    model_line = (f"{html.escape(version['name'] if version else 'none')}: "
                  f"{html.escape(headline_metrics(card))}; computed with {html.escape(', '.join(runtimes) or 'not recorded')}")
    body = f"""
    <h2>hemascan case report: {html.escape(case)}</h2>
    <p style='background:#fff3e0; padding:6px'><b>{html.escape(STATEMENT)}</b></p>
    <table cellpadding='3' cellspacing='0' border='1' width='100%'>
      <tr><td width='28%'><b>Case / sample</b></td><td>{html.escape(case)}</td></tr>
      <tr><td><b>Images from</b></td><td>{html.escape(display(str(folder)))}</td></tr>
      <tr><td><b>Report date</b></td><td>{when}</td></tr>
      <tr><td><b>Reviewer</b></td><td>{html.escape(reviewer or 'not set')}</td></tr>
      <tr><td><b>Images</b></td><td>{counts.total:,}: {counts.n_predicted:,} classified by the model,
          {counts.n_reviewed:,} reviewed by a person</td></tr>
      <tr><td><b>Model</b></td><td>{model_line}</td></tr>
    </table>
    {"<p><b>The model is a placeholder with untrained weights: its predictions are meaningless.</b></p>"
     if card.get('placeholder') else ''}
    <h3>Counts per class</h3>
    <table cellpadding='4' border='1' cellspacing='0'>
      <tr><th align='left'>Class</th><th>Predicted</th><th>%</th><th>Reviewed</th><th>%</th></tr>
      {''.join(rows)}
    </table>
    <p><small>Percentages of the classified images inside the model's experience, and of the images a
    reviewer gave a class. {counts.n_outside:,} image(s) were unlike the images the model was trained on
    ({html.escape(trained_on(card))}): their class is not reliable and is not counted above.</small></p>
    <h3>Sign-off</h3>
    <table cellpadding='8' cellspacing='0' border='1' width='100%'>
      <tr><td width='28%'>Reviewed by</td><td>{html.escape(reviewer or '')}</td></tr>
      <tr><td>Signature</td><td>&nbsp;</td></tr>
      <tr><td>Date</td><td>&nbsp;</td></tr>
    </table>
    <p><small>The images below are those a reviewer corrected or the model flagged.</small></p>
    {''.join(parts)}
    <p><small>{html.escape(card.get('intended_use', '') or STATEMENT)}</small></p>
    """
    doc.setHtml(body)
    return doc
