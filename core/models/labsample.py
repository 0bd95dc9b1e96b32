"""The lab's own images for checking a new version against its parent: a fixed sample of the
images the parent classified (by content hash, so the same images every time), with the
parent's stored "outside the model's experience" flag. A retrain calibrates its guard and
checks its int8 model on them (trainer/retrain.py)."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.storage import Image, ImageFile, Prediction


@dataclass(frozen=True)
class LabImage:
    image_id: int
    path: str  # stored path (core.imaging.fspath.to_fs before opening)
    sha256: str
    parent_outside: bool | None  # the parent's stored flag; None: not classified by it, or no guard


def lab_sample(session: Session, version_id: int, limit: int) -> list[LabImage]:
    """Up to ``limit`` images the version classified whose files are still there; the lab's
    other images where it classified none."""
    path = func.min(ImageFile.path)
    base = (select(Image.id, path, Image.sha256)
            .join(ImageFile, ImageFile.image_id == Image.id)
            .where(ImageFile.missing.is_(False))
            .group_by(Image.id, Image.sha256))
    flagged = (select(Image.id, path, Image.sha256, Prediction.out_of_distribution)
               .join(ImageFile, ImageFile.image_id == Image.id)
               .join(Prediction, (Prediction.image_id == Image.id) & (Prediction.model_version_id == version_id))
               .where(ImageFile.missing.is_(False))
               .group_by(Image.id, Image.sha256, Prediction.out_of_distribution)
               .order_by(Image.sha256).limit(limit))
    rows = [LabImage(int(i), p, sha, None if o is None else bool(o)) for i, p, sha, o in session.execute(flagged)]
    if rows:
        return rows
    return [LabImage(int(i), p, sha, None)
            for i, p, sha in session.execute(base.order_by(Image.sha256).limit(limit))]
