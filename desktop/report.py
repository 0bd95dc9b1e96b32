"""The PDF case report of a folder (Qt's own PDF writer): case name, local date and time,
reviewer and a sign-off block, counts per class (predicted and reviewed), the white-cell
differential with its intervals, blast line and advice (when the case has cells), the
corrected, outside-experience, uncertain and "Other" images with thumbnails, galleries of the
blast, flagged and corrected cells cut out of their fields, the model in one line with the
basis of its figures, and the decision-support statement."""
from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PySide6.QtCore import QMarginsF, QRectF, QSizeF, Qt, QUrl
import numpy as np
from PySide6.QtGui import QImage, QPageLayout, QPageSize, QPainter, QPdfWriter, QTextDocument, QTextFormat
from sqlalchemy import select

from core.cells.finder import cut_out, decode_for_cells
from core.cells.records import cell_title
from core.review import differential as diff
from core.review import gallery as q
from core.review.export import bidi_isolated
from core.review import release
from core.storage import Prediction
from core.storage.audit import ChainAnchor, chain_head
from core.distribution import hemascan_version
from core.imaging.fspath import display, to_fs
from core.imaging.images import read_file
from core.models.package import DEFAULT_CELL_SIDE_UM
from core.models.taxonomy import OTHER, OTHER_TITLE

from .models_panel import trained_on
from .tiles import make_thumbnail
from desktop.models_panel import headline_metrics

log = logging.getLogger(__name__)

# A name of the report file: its case's name cut to what every file system takes, with room
# for the prefix, the time and the extension (255 bytes is the usual limit of one name).
FILE_STEM_MAX_BYTES = 120


def shown(value) -> str:
    """A name, path or note as the report shows it: markup escaped, and its direction isolated
    (core.review.export.bidi_isolated: a U+202E in a file name cannot reverse a caption)."""
    return html.escape(bidi_isolated(value))


def file_stem(name: str, max_bytes: int = FILE_STEM_MAX_BYTES) -> str:
    """A file-name stem from a case's name: letters, digits, dot and dash only, cut (whole
    characters) to ``max_bytes`` of UTF-8, so a long case name gives a shorter file name, not
    "File name too long"; "case" when nothing is left."""
    stem = re.sub(r"[^\w.-]+", "-", name or "").strip("-.")[:max_bytes]
    while len(stem.encode("utf-8")) > max_bytes:
        stem = stem[:-1]
    return stem.rstrip("-.") or "case"

STATEMENT = ("hemascan supports and does not replace diagnosis. It is research and decision-support "
             "software, not a diagnostic device: every result must be reviewed by a qualified person.")


SECTIONS = (  # (title, filter, what it means): the images a lab signs off on
    ("Corrected by the reviewer", q.GalleryFilter(corrected=True, sort="name"),
     "the model was sure and the reviewer gave another class"),
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
    note = f"<br>note: {shown(r.note)}" if r.note and not r.note.startswith("imported from") else ""
    return (f"<td align='center' width='25%'>{img}<small>{shown(r.name)}<br>model: {html.escape(model)}"
            f"<br>reviewed: <b>{html.escape(rev)}</b>{note}</small></td>")


def write_report(db, folder, version: dict | None, reviewer: str, output, case: str | None = None,
                 data: ReportData | None = None, signed: SignedOff | None = None) -> Path:
    """A case report a lab can file: case name, local date and time, reviewer and sign-off,
    counts per class, the flagged and the corrected images with thumbnails, the model in one
    line, the decision-support statement. ``version``: dict(id, name, taxonomy, classes, card)."""
    output = Path(output)
    case = (case or Path(str(folder)).name).strip() or Path(str(folder)).name
    doc = build_report(db, folder, version, reviewer, case, data, signed)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    writer = QPdfWriter(str(tmp))
    writer.setPageSize(QPageSize(QPageSize.A4))
    writer.setPageMargins(QMarginsF(15, 15, 15, 15), QPageLayout.Millimeter)
    writer.setResolution(150)
    writer.setTitle(f"hemascan case report: {bidi_isolated(case)}")
    writer.setCreator("hemascan")
    paint_pages(doc, writer, f"hemascan case report: {bidi_isolated(case)}")
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
                             f"{footer} · hemascan {hemascan_version()} · page {k + 1} of {n}")
    finally:
        painter.end()
    return n


CELL_THUMB_PX = 96


@dataclass(frozen=True)
class CellsPart:
    """The white-cell part of the report: the differential and the galleries of cells."""

    differential: diff.Differential
    side_um: float  # of each cut-out
    side_stated: bool  # False: DEFAULT_CELL_SIDE_UM, the cell model's card gives none
    galleries: list  # (title, meaning, n, [(CaseCell, rgb cut-out or None)] shown)


@dataclass(frozen=True)
class ReportData:
    """What the report says, read from the database (in a worker: the window reads nothing itself)."""

    counts: q.ClassCounts
    sections: list  # (title, meaning, n, rows by id, ids shown)
    runtimes: list[str]
    cells: CellsPart | None = None  # None: no white cells recorded for the case
    releases: tuple = ()  # the case's earlier releases (core.storage.ReleaseEvent rows), oldest first
    amendments: tuple = ()  # label changes after a release (core.review.release.Amendment), oldest first
    audit_head: ChainAnchor | None = None  # the audit record's newest event when the report was made


@dataclass(frozen=True)
class SignedOff:
    """The release this report is the document of: who releases it, and when."""

    display_name: str
    login: str
    when: datetime


def _cut_outs(cells, side_um: float) -> list[np.ndarray | None]:
    """Each cell cut out of its field, ``side_um`` wide (each image decoded once); None where its
    image cannot be read any more."""
    out: list[np.ndarray | None] = [None] * len(cells)
    by_image: dict[str, list[int]] = {}
    for k, c in enumerate(cells):
        by_image.setdefault(c.path, []).append(k)
    for path, ks in by_image.items():
        try:
            rgb, reduced_by = decode_for_cells(read_file(to_fs(path)))
            for k in ks:
                out[k] = cut_out(rgb, cells[k], cells[k].um_per_px, side_um=side_um, out_px=CELL_THUMB_PX,
                                 reduced_by=reduced_by)
        except Exception as exc:  # a file moved or changed since: the report goes on without its picture
            log.info("report cut-out from %s failed: %s", display(path), exc)
    return out


def cells_part(session, folder, cell_version_id: int | None = None,
               threshold_pct: float = diff.DEFAULT_BLAST_THRESHOLD_PCT) -> CellsPart | None:
    """The case's differential and its galleries (blasts; flagged; corrected), by
    ``cell_version_id`` (default: the active cell model); None when the case has no cells."""
    vid = cell_version_id if cell_version_id is not None else diff.cell_version_id(session)
    cells, latest, version = diff.case_cells(session, folder, vid)
    if not cells:
        return None
    d = diff.differential_of(session, folder, cells, latest, version, threshold_pct=threshold_pct)
    card_side = ((version.card or {}).get("cell_side_um") if version is not None else None)
    side_um = float(card_side) if card_side else DEFAULT_CELL_SIDE_UM
    blast = d.blast.label if d.blast is not None else None
    chosen = [(f"Blast cells ({blast})", "counted as blasts (reviewed, else predicted)",
               [c for c in cells if c.counted_as == blast])] if blast else []
    chosen += [
        ("Cells flagged by the model", "outside the model's experience or below its confidence threshold",
         [c for c in cells if c.predicted is not None and (c.outside or c.uncertain)]),
        ("Cells corrected by a reviewer", "the reviewer's class differs from the class the model showed (a sure "
         "prediction inside its experience)",
         [c for c in cells if c.corrected]),
    ]
    galleries = []
    for title, meaning, found in chosen:
        shown = found[:MAX_THUMBS]
        galleries.append((title, meaning, len(found), list(zip(shown, _cut_outs(shown, side_um)))))
    return CellsPart(d, side_um, bool(card_side), galleries)


def report_data(session, folder, version: dict | None, cell_version_id: int | None = None) -> ReportData:
    vid = version["id"] if version else None
    tax = version["taxonomy"] if version else None
    counts = q.class_counts(session, folder, vid, tax)
    sections = []
    for title, flt, meaning in SECTIONS:
        ids = q.ordered_ids(session, folder, vid, flt, tax)
        sections.append((title, meaning, len(ids), q.rows(session, folder, vid, ids[:MAX_THUMBS], tax), ids[:MAX_THUMBS]))
    runtimes = sorted(filter(None, session.scalars(select(Prediction.runtime).where(
        Prediction.model_version_id == vid).distinct()))) if vid else []
    return ReportData(counts, sections, runtimes, cells_part(session, folder, cell_version_id),
                      tuple(release.releases(session, folder)), tuple(release.amendments(session, folder)),
                      chain_head(session))


def _differential_html(part: CellsPart) -> str:
    d = part.differential
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(c.label)}</td><td align='right'>{c.n:,}</td><td align='right'>{c.pct:.1f}%</td>"
        f"<td align='right'>{c.low_pct:.1f}-{c.high_pct:.1f}%</td><td align='right'>{c.reviewed:,}</td>"
        f"<td align='right'>{c.predicted:,}</td></tr>" for c in d.classes)
    blast = f"<p><b>{e(d.blast.as_text())}</b></p>" if d.blast is not None else ""
    kappa = "".join(
        f"<p>Agreement of {e(a.first)} and {e(a.second)}: Cohen's kappa "
        f"{'undefined' if a.kappa is None else format(a.kappa, '.2f')} over the {a.n_cells:,} cells both "
        f"labelled ({a.n_agree:,} the same).</p>" for a in d.agreement)
    return f"""
    <h3>White-cell differential</h3>
    <p>N = {d.total:,} white cells counted ({d.n_reviewed:,} by a reviewer's label, {d.n_predicted:,} by the
    model's prediction alone); cell model {e(d.model or 'none')}.</p>
    <table cellpadding='4' border='1' cellspacing='0'>
      <tr><th align='left'>Class</th><th>n</th><th>%</th><th>95% interval</th><th>Reviewed</th><th>Predicted</th></tr>
      {rows}
    </table>
    {blast}
    <p>Not counted in N: outside the model's experience: {d.n_outside:,}; the model unsure, not reviewed:
      {d.n_uncertain:,}; {e(OTHER_TITLE)}: {d.n_other:,}{
        f"; not classified yet: {d.n_unclassified:,}" if d.n_unclassified else ""}.</p>
    {kappa}
    <p><small>{e(diff.INTERVAL_NOTE)} {e(d.disclaimer)}</small></p>
    """


def _cell_thumb(doc, cell, rgb) -> str:
    url = f"cell://{cell.cell_id}"
    if rgb is not None:
        h, w = rgb.shape[:2]
        image = QImage(np.ascontiguousarray(rgb).data, w, h, 3 * w, QImage.Format_RGB888).copy()
        doc.addResource(QTextDocument.ImageResource, QUrl(url), image)
        img = f"<img src='{url}' width='{CELL_THUMB_PX}' height='{CELL_THUMB_PX}'><br>"
    else:
        img = "<i>(image not readable)</i><br>"
    model = ("-" if cell.predicted is None else "outside experience" if cell.outside
             else f"{cell.predicted} {(cell.confidence or 0):.0%}" + (" uncertain" if cell.uncertain else ""))
    rev = OTHER_TITLE if cell.reviewed == OTHER else (cell.reviewed or "not reviewed")
    name = cell_title(Path(to_fs(cell.path)).name, cell.number)
    return (f"<td align='center' width='16%'>{img}<small>{shown(display(name))}<br>model: "
            f"{html.escape(model)}<br>reviewed: <b>{html.escape(rev)}</b></small></td>")


def _cell_galleries_html(doc, part: CellsPart) -> str:
    side = f"{part.side_um:g} um wide" + ("" if part.side_stated else " (a default: the cell model's card states none)")
    out = [f"<p><small>Each cell is cut out of its field, {html.escape(side)}.</small></p>"]
    for title, meaning, n, shown in part.galleries:
        head = f"<h3>{html.escape(title)}: {n:,}</h3><p><small>{html.escape(meaning)}.</small></p>"
        cells = [_cell_thumb(doc, c, rgb) for c, rgb in shown]
        more = f"<p><small>… and {n - len(cells):,} more (see the cells export).</small></p>" if n > len(cells) else ""
        out.append(gallery_html(head, cells, 6, 3) + more)
    return "".join(out)


def gallery_html(head: str, thumbs: list[str], per_row: int, padding: int) -> str:
    """A gallery's heading and its thumbnails (table cells): one table per row of thumbnails, so
    a page break falls between rows (keep_tables_whole), the heading in the first one, so that
    it never stands alone at the foot of a page."""
    rows = [thumbs[k:k + per_row] for k in range(0, len(thumbs), per_row)] or [[]]
    out = []
    for k, row in enumerate(rows):
        top = f"<tr><td colspan='{per_row}'>{head}</td></tr>" if k == 0 else ""
        body = f"<tr>{''.join(row)}</tr>" if row else f"<tr><td colspan='{per_row}'><i>None.</i></td></tr>"
        out.append(f"<table cellpadding='{padding}' cellspacing='0' width='100%'>{top}{body}</table>")
    return "".join(out)


def _release_html(data: ReportData, signed: SignedOff | None) -> str:
    """The sign-off: a release recorded by the database (who, login, when), the earlier releases,
    and every amendment after a release (who, when, why)."""
    e = html.escape
    out = []
    if signed is not None:
        out.append(f"<p><b>Released by {e(signed.display_name)} (login {e(signed.login)}) on "
                   f"{signed.when.astimezone():%Y-%m-%d %H:%M %Z}.</b> The release is recorded with this "
                   "document's SHA-256 and that of the case's labels.</p>")
    for r in data.releases:
        out.append(f"<p><small>Released before by {e(r.display_name)} (login {e(r.login or '-')}) on "
                   f"{r.created_at.astimezone():%Y-%m-%d %H:%M %Z}.</small></p>")
    if data.amendments:
        items = "".join(
            f"<li>{e(a.who)} (login {e(a.login or '-')}), {a.when.astimezone():%Y-%m-%d %H:%M %Z}: {e(a.item)} "
            f"{e(a.previous_label or 'not labelled')} &rarr; {e(a.label or 'cleared')}; why: {e(a.reason)}</li>"
            for a in data.amendments)
        out.append(f"<h3>Amended after release: {len(data.amendments):,}</h3><ul>{items}</ul>")
    return "".join(out)


def _audit_html(head: ChainAnchor | None) -> str:
    """The audit record's head, printed: a copy outside the database that ``hemascan audit verify
    --anchor`` checks later (the newest events cannot then be removed unseen)."""
    if head is None:
        return ""
    return (f"<p><small><b>Audit record</b> at this report: event {head.seq:,}, SHA-256 "
            f"<tt>{html.escape(head.event_hash)}</tt>. <tt>hemascan audit verify --anchor "
            f"{html.escape(head.text())}</tt> checks later that no label or correction made before this "
            "report was changed or removed.</small></p>")


def build_report(db, folder, version: dict | None, reviewer: str, case: str,
                 data: ReportData | None = None, signed: SignedOff | None = None) -> QTextDocument:
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
        cells = [_thumb_cell(doc, found[i]) for i in ids if i in found] if n else []
        more = f"<p><small>… and {n - len(cells):,} more (see the CSV export).</small></p>" if n > len(cells) else ""
        parts.append(gallery_html(head, cells, 4, 4) + more)
    offset = now.strftime("%z")
    when = f"{now.strftime('%Y-%m-%d %H:%M')} (local time, UTC{offset[:3]}:{offset[3:]})"
    model_line = (f"{shown(version['name']) if version else 'none'}: "
                  f"{html.escape(headline_metrics(card))}; computed with {html.escape(', '.join(runtimes) or 'not recorded')}")
    body = f"""
    <h2>hemascan case report: {shown(case)}</h2>
    <p style='background:#fff3e0; padding:6px'><b>{html.escape(STATEMENT)}</b></p>
    <table cellpadding='3' cellspacing='0' border='1' width='100%'>
      <tr><td width='28%'><b>Case / sample</b></td><td>{shown(case)}</td></tr>
      <tr><td><b>Images from</b></td><td>{shown(display(str(folder)))}</td></tr>
      <tr><td><b>Report date</b></td><td>{when}</td></tr>
      <tr><td><b>Reviewer</b></td><td>{shown(reviewer) if reviewer else 'not set'}</td></tr>
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
    {_differential_html(data.cells) if data.cells is not None else ''}
    <h3>Sign-off</h3>
    <table cellpadding='8' cellspacing='0' border='1' width='100%'>
      <tr><td width='28%'>Reviewed by</td><td>{shown(reviewer) if reviewer else ''}</td></tr>
      <tr><td>Signature</td><td>{shown(f"released by {signed.display_name} ({signed.login})")
                                  if signed else "&nbsp;"}</td></tr>
      <tr><td>Date</td><td>{f"{signed.when.astimezone():%Y-%m-%d %H:%M %Z}" if signed else "&nbsp;"}</td></tr>
    </table>
    {_release_html(data, signed)}
    {_audit_html(data.audit_head)}
    <p><small>The images below are those a reviewer corrected or the model flagged.</small></p>
    {''.join(parts)}
    {_cell_galleries_html(doc, data.cells) if data.cells is not None else ''}
    <p><small>{html.escape(card.get('intended_use', '') or STATEMENT)}</small></p>
    """
    doc.setHtml(body)
    return doc
