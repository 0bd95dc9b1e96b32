"""The PDF report of a folder (Qt's own PDF writer): folder, date, model version and its
card metrics, counts and percentages per class (reviewed vs predicted), the least
confident images as thumbnails, reviewer, and the decision-support statement."""
from __future__ import annotations

import html
import logging
from datetime import datetime, timezone
from pathlib import Path

from PySide6.QtCore import QMarginsF, QUrl
from PySide6.QtGui import QPageLayout, QPageSize, QPdfWriter, QTextDocument
from sqlalchemy import select

from core import gallery as q
from core.db import Prediction
from core.fspath import display
from core.taxonomy import OTHER, OTHER_TITLE

from .models_panel import trained_on
from .gallery import make_thumbnail

log = logging.getLogger(__name__)

STATEMENT = ("hemascan supports and does not replace diagnosis. It is research and decision-support "
             "software, not a diagnostic device: every result must be reviewed by a qualified person.")


def _metrics_html(card: dict) -> str:
    metrics = card.get("metrics") or {}
    flat = {}
    for k, v in metrics.items():  # scalars, and one level into sections (as_is, grayscale, split...)
        if isinstance(v, (int, float, str)):
            flat[k] = v
        elif isinstance(v, dict) and k != "history":
            for k2, v2 in v.items():
                if isinstance(v2, (int, float)) and k2 in ("accuracy", "macro_f1", "ece", "n", "n_test",
                                                           "temperature", "uncertain_threshold", "auroc"):
                    flat[f"{k} {k2}"] = v2
    if not flat:
        return "<p><i>The model card records no evaluation metrics.</i></p>"
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v:.3f}</td></tr>" if isinstance(v, float)
                    else f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                    for k, v in list(flat.items())[:24])
    return f"<table cellpadding='3' border='1' cellspacing='0'>{cells}</table>"


def _int8_note(card: dict, runtimes: list[str]) -> str:
    """Where int8 computed the predictions, say how closely it was checked against fp32."""
    info = card.get("int8") or {}
    if not any(" int8 " in f" {r} " for r in runtimes) or "agreement" not in info:
        return ""
    return (f" (int8 model: same label as the fp32 model on {float(info['agreement']):.1%} of "
            f"{info.get('n_checked', '?')} held-out images)")


def write_report(db, folder, version: dict | None, reviewer: str, output, n_thumbs: int = 12) -> Path:
    """``version``: dict(id, name, taxonomy, classes, card) of the model whose predictions are reported."""
    output = Path(output)
    vid = version["id"] if version else None
    tax = version["taxonomy"] if version else None
    classes = list(version["classes"]) if version else []
    with db.session() as s:
        counts = q.class_counts(s, folder, vid, tax)
        low_ids = q.ordered_ids(s, folder, vid, q.GalleryFilter(sort="confidence"), tax)[:n_thumbs]
        low = q.rows(s, folder, vid, low_ids, tax)
        runtimes = sorted(filter(None, s.scalars(select(Prediction.runtime).where(
            Prediction.model_version_id == vid).distinct()))) if vid else []
    doc = QTextDocument()
    now = datetime.now(timezone.utc).astimezone()
    card = (version or {}).get("card") or {}
    rows = []
    for c in classes + sorted(set(counts.reviewed) - set(classes) - {OTHER}):
        pn, rn = counts.predicted.get(c, 0), counts.reviewed.get(c, 0)
        rows.append(f"<tr><td>{html.escape(c)}</td><td align='right'>{pn}</td>"
                    f"<td align='right'>{counts.pct(pn, counts.n_classified):.1f}%</td>"
                    f"<td align='right'>{rn}</td><td align='right'>{counts.pct(rn, counts.n_reviewed_classes):.1f}%</td></tr>")
    # not classes: their own rows, outside the percentages
    rows.append(f"<tr><td><i>Outside the model's experience</i></td><td align='right'>{counts.n_outside}</td>"
                f"<td></td><td></td><td></td></tr>")
    rows.append(f"<tr><td><i>{OTHER_TITLE}</i></td><td></td><td></td>"
                f"<td align='right'>{counts.reviewed.get(OTHER, 0)}</td><td></td></tr>")
    rows.append(f"<tr><td><b>Total</b></td><td align='right'><b>{counts.n_predicted}</b></td><td></td>"
                f"<td align='right'><b>{counts.n_reviewed}</b></td><td></td></tr>")
    thumbs = []
    for i in low_ids:
        r = low.get(i)
        if r is None:
            continue
        url = f"thumb://{i}"
        try:
            doc.addResource(QTextDocument.ImageResource, QUrl(url), make_thumbnail(r.path, 160))
        except Exception as exc:
            log.info("report thumbnail of %s failed: %s", r.name, exc)
            continue
        rev = f"<br>reviewed: {html.escape(r.reviewed)}" if r.reviewed else ""
        if r.outside:
            rev = "<br><b>outside the model's experience</b>" + rev
        thumbs.append(f"<td align='center' width='25%'><img src='{url}' width='110' height='110'><br>"
                      f"<small>{html.escape(r.name)}<br>{html.escape(r.predicted or '-')} "
                      f"{(r.confidence or 0):.0%}{rev}</small></td>")
    grid = "".join("<tr>" + "".join(thumbs[k:k + 4]) + "</tr>" for k in range(0, len(thumbs), 4))
    body = f"""
    <h2>hemascan report</h2>
    <p style='background:#fff3e0; padding:6px'><b>{html.escape(STATEMENT)}</b></p>
    <table cellpadding='2'>
      <tr><td><b>Folder</b></td><td>{html.escape(display(str(folder)))}</td></tr>
      <tr><td><b>Date</b></td><td>{now.strftime('%Y-%m-%d %H:%M %Z')}</td></tr>
      <tr><td><b>Reviewer</b></td><td>{html.escape(reviewer)}</td></tr>
      <tr><td><b>Model version</b></td><td>{html.escape(version['name'] if version else 'none')}
          ({html.escape(card.get('architecture', ''))}, {html.escape(card.get('taxonomy', ''))})</td></tr>
      <tr><td><b>Computed with</b></td><td>{html.escape(', '.join(runtimes) or 'not recorded')}{_int8_note(card, runtimes)}</td></tr>
      <tr><td><b>Images</b></td><td>{counts.total} — {counts.n_predicted} predicted,
          {counts.n_reviewed} reviewed by a person</td></tr>
    </table>
    {"<p><b>The model is a placeholder with untrained weights: its predictions are meaningless.</b></p>"
     if card.get('placeholder') else ''}
    <h3>Counts per class</h3>
    <table cellpadding='4' border='1' cellspacing='0'>
      <tr><th>Class</th><th>Predicted</th><th>%</th><th>Reviewed</th><th>%</th></tr>
      {''.join(rows)}
    </table>
    <p><small>Percentages of the predicted images inside the model's experience and of the images
    reviewers gave a class, respectively. {counts.n_outside} image(s) were unlike anything the model was
    trained on ({html.escape(trained_on(card))}): their predicted class is not reliable and they are
    not counted in the classes. "{OTHER_TITLE}" is a reviewer's answer that no class fits.</small></p>
    <h3>Model card metrics</h3>
    {_metrics_html(card)}
    <h3>Least confident predictions</h3>
    <table cellpadding='4'>{grid}</table>
    <p><small>{html.escape(card.get('intended_use', ''))}</small></p>
    """
    doc.setHtml(body)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    writer = QPdfWriter(str(tmp))
    writer.setPageSize(QPageSize(QPageSize.A4))
    writer.setPageMargins(QMarginsF(15, 15, 15, 15), QPageLayout.Millimeter)
    writer.setResolution(150)
    writer.setTitle(f"hemascan report: {Path(str(folder)).name}")
    writer.setCreator("hemascan")
    doc.print_(writer)
    del writer  # flushes the file
    tmp.replace(output)
    return output
