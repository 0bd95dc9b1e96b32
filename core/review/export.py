"""Exporters, by format name (a registry). Each row is one image file: where it is, what
the model said, and what a person said."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage import Database, Image, ImageFile, ModelVersion, Prediction
from core.imaging.fspath import display
from core.review.labels import latest_events
from core.models.registry import active_version
from core.imaging.scan import under_folder


def export_rows(session: Session, folder: str | os.PathLike | None = None,
                version: ModelVersion | None = None) -> tuple[list[str], Iterator[dict]]:
    version = version or active_version(session)
    classes = list(version.card["classes"]) if version else []
    # One row per file present on disk: byte-identical copies share one image (and so one
    # prediction and label) but a lab looks files up by path.
    q = (
        select(Image.id, Image.sha256, ImageFile.path)
        .join(ImageFile, ImageFile.image_id == Image.id)
        .where(ImageFile.missing.is_(False))
        .order_by(ImageFile.path)
    )
    if folder is not None:
        q = q.where(under_folder(ImageFile.path, folder))
    rows = session.execute(q).all()
    columns = ["path", "sha256", "predicted_label", "confidence", "entropy", "uncertain", "out_of_distribution",
               *[f"p_{c}" for c in classes], "reviewed_label", "reviewer", "reviewed_at", "label_source",
               "model_version", "runtime"]

    def gen() -> Iterator[dict]:
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            ids = list({r[0] for r in chunk})
            preds = {}
            if version is not None:
                preds = {p.image_id: p for p in session.scalars(
                    select(Prediction).where(Prediction.model_version_id == version.id, Prediction.image_id.in_(ids)))}
            labels = latest_events(session, ids)
            for image_id, sha, path in chunk:
                p, ev = preds.get(image_id), labels.get(image_id)
                row = {"path": display(path), "sha256": sha,
                       "predicted_label": p.label if p else "", "confidence": f"{p.confidence:.4f}" if p else "",
                       "entropy": f"{p.entropy:.4f}" if p else "", "uncertain": int(p.uncertain) if p else "",
                       # 1: outside the model's experience (foreign-image guard); empty: not assessed
                       "out_of_distribution": "" if p is None or p.out_of_distribution is None
                       else int(p.out_of_distribution),
                       "reviewed_label": ev.label or "" if ev else "", "reviewer": ev.reviewer if ev else "",
                       "reviewed_at": ev.created_at.isoformat() if ev else "", "label_source": ev.source if ev else "",
                       "model_version": version.name if (p and version) else "",
                       "runtime": (p.runtime or "") if p else ""}
                for c, prob in zip(classes, p.probabilities if p else [""] * len(classes)):
                    row[f"p_{c}"] = f"{prob:.4f}" if p else ""
                yield row

    return columns, gen()


def export_csv(db: Database, output: str | os.PathLike, folder=None) -> int:
    """Write the CSV atomically (temp file, then rename); return the number of rows."""
    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp")
    n = 0
    with db.session() as s:
        columns, rows = export_rows(s, folder)
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            for row in rows:
                w.writerow(row)
                n += 1
    os.replace(tmp, output)
    return n


EXPORTERS: dict[str, Callable[..., int]] = {"csv": export_csv}
