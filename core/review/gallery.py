"""Gallery queries for review front-ends (headless): the images under a folder with their
prediction (by one model version) and current label, filtered and sorted in SQL; pages of
row details; per-class counts.

The ordered id list of a folder is one cheap query (ints only, ~100 ms for 100,000
images); the details of rows (path, prediction, label) are read a page at a time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from core.storage import ImageFile, LabelEvent, Prediction
from core.imaging.fspath import display
from core.imaging.scan import under_folder
from core.models.taxonomy import OTHER
from core.models.taxonomy import OTHER_TITLE

SORTS = ("confidence", "entropy", "name", "time")
UNREVIEWED = "__unreviewed__"  # value for GalleryFilter.reviewed: images nobody has labelled


@dataclass(frozen=True)
class GalleryFilter:
    predicted: str | None = None  # predicted class, None = any
    reviewed: str | None = None  # reviewed class, UNREVIEWED, or None = any
    uncertain_only: bool = False
    outside_only: bool = False  # outside the model's experience (foreign-image guard)
    disagreement: bool = False  # reviewed label differs from the prediction
    # reviewed label differs from a class the reviewer was shown: the model was sure and inside its
    # experience (the rule cells follow, core/review/differential.CellRow.corrected)
    corrected: bool = False
    sort: str = "confidence"  # confidence ascending (least certain first), entropy (highest first), name, time


@dataclass(frozen=True)
class GalleryRow:
    image_id: int
    path: str  # stored path (core.imaging.fspath.to_fs before opening)
    name: str  # for display
    predicted: str | None
    confidence: float | None
    entropy: float | None
    uncertain: bool
    probabilities: tuple[float, ...]
    reviewed: str | None  # current label (latest event), None when never labelled or cleared
    reviewer: str | None
    outside: bool | None = None  # outside the model's experience; None: not assessed (no guard)
    note: str | None = None  # the label's note (e.g. what an "Other" is)


@dataclass
class ClassCounts:
    total: int = 0
    n_predicted: int = 0
    n_reviewed: int = 0
    n_outside: int = 0  # predicted, but outside the model's experience: not in ``predicted``
    predicted: dict[str, int] = field(default_factory=dict)
    reviewed: dict[str, int] = field(default_factory=dict)

    @property
    def n_reviewed_classes(self) -> int:
        """Reviewed images given a class (not "Other"): the reviewed percentages' basis."""
        return self.n_reviewed - self.reviewed.get(OTHER, 0)

    @property
    def n_classified(self) -> int:
        """Predictions the class percentages are taken over (those inside the model's experience)."""
        return self.n_predicted - self.n_outside

    def pct(self, n: int, of: int) -> float:
        return 100.0 * n / of if of else 0.0


def _files(folder: str | os.PathLike):
    """One row per usable image under ``folder``: image_id, first path, newest mtime."""
    return (
        select(ImageFile.image_id.label("image_id"), func.min(ImageFile.path).label("path"),
               func.max(ImageFile.mtime_ns).label("mtime_ns"))
        .where(under_folder(ImageFile.path, folder), ImageFile.image_id.is_not(None), ImageFile.missing.is_(False))
        .group_by(ImageFile.image_id)
        .subquery("f")
    )


def _latest(taxonomy: str | None):
    q = select(LabelEvent.image_id.label("image_id"), func.max(LabelEvent.id).label("event_id"))
    if taxonomy is not None:
        q = q.where(LabelEvent.taxonomy == taxonomy)
    return q.group_by(LabelEvent.image_id).subquery("latest")


def _base(folder, version_id: int | None, taxonomy: str | None, columns):
    f = _files(folder)
    latest = _latest(taxonomy)
    ev = LabelEvent.__table__.alias("ev")
    p = Prediction.__table__.alias("p")
    q = (
        select(*columns(f, p, ev))
        .select_from(f)
        .outerjoin(p, and_(p.c.image_id == f.c.image_id, p.c.model_version_id == (version_id or -1)))
        .outerjoin(latest, latest.c.image_id == f.c.image_id)
        .outerjoin(ev, ev.c.id == latest.c.event_id)
    )
    return q, f, p, ev


def _apply_filter(q, flt: GalleryFilter, f, p, ev):
    if flt.predicted:
        q = q.where(p.c.label == flt.predicted)
    if flt.reviewed == UNREVIEWED:
        q = q.where(ev.c.label.is_(None))
    elif flt.reviewed:
        q = q.where(ev.c.label == flt.reviewed)
    if flt.uncertain_only:
        q = q.where(p.c.uncertain.is_(True))
    if flt.outside_only:
        q = q.where(p.c.out_of_distribution.is_(True))
    if flt.disagreement:
        # a class other than the model's; "Other" (no class fits) is its own filter, not a correction
        q = q.where(ev.c.label.is_not(None), p.c.label.is_not(None), ev.c.label != p.c.label, ev.c.label != OTHER)
    if flt.corrected:
        # ("Other" has its own section in a report, as for the disagreement filter). Against what
        # the reviewer was shown when labelling (stored with the event since migration 0009, which
        # also records the login): a retrain that learnt the correction does not undo it. Events
        # from before (no login) fall back to the prediction shown now.
        shown_then = and_(ev.c.login.is_not(None), ev.c.shown_label.is_not(None), ev.c.label != ev.c.shown_label)
        shown_now = and_(ev.c.login.is_(None), p.c.label.is_not(None), ev.c.label != p.c.label,
                         p.c.uncertain.is_not(True), p.c.out_of_distribution.is_not(True))
        q = q.where(ev.c.label.is_not(None), ev.c.label != OTHER, or_(shown_then, shown_now))
    if flt.sort == "confidence":
        q = q.order_by(p.c.confidence.is_(None), p.c.confidence.asc(), f.c.image_id)
    elif flt.sort == "entropy":
        q = q.order_by(p.c.entropy.is_(None), p.c.entropy.desc(), f.c.image_id)
    elif flt.sort == "time":
        q = q.order_by(f.c.mtime_ns.asc(), f.c.path)
    elif flt.sort == "name":
        q = q.order_by(f.c.path)
    else:
        raise ValueError(f"unknown sort {flt.sort!r}; known: {', '.join(SORTS)}")
    return q


def ordered_ids(session: Session, folder, version_id: int | None, flt: GalleryFilter = GalleryFilter(),
                taxonomy: str | None = None) -> list[int]:
    """Image ids under ``folder`` passing the filter, in the filter's order."""
    q, f, p, ev = _base(folder, version_id, taxonomy, lambda f, p, ev: [f.c.image_id])
    q = _apply_filter(q, flt, f, p, ev)
    return list(session.scalars(q))


def rows(session: Session, folder, version_id: int | None, image_ids: list[int],
         taxonomy: str | None = None) -> dict[int, GalleryRow]:
    """Row details for a page of image ids (at most a few hundred at a time)."""
    if not image_ids:
        return {}
    q, f, p, ev = _base(folder, version_id, taxonomy, lambda f, p, ev: [
        f.c.image_id, f.c.path, p.c.label, p.c.confidence, p.c.entropy, p.c.uncertain, p.c.probabilities,
        p.c.out_of_distribution, ev.c.label.label("reviewed"), ev.c.reviewer, ev.c.note])
    out = {}
    for start in range(0, len(image_ids), 500):
        chunk = image_ids[start:start + 500]
        for r in session.execute(q.where(f.c.image_id.in_(chunk))):
            probs = r.probabilities
            if isinstance(probs, str):  # JSON column read through a core alias may come back as text
                import json

                probs = json.loads(probs)
            out[r.image_id] = GalleryRow(
                image_id=r.image_id, path=r.path, name=os.path.basename(display(r.path)),
                predicted=r.label, confidence=r.confidence, entropy=r.entropy, uncertain=bool(r.uncertain),
                probabilities=tuple(probs or ()), reviewed=r.reviewed, reviewer=r.reviewer,
                outside=None if r.out_of_distribution is None else bool(r.out_of_distribution), note=r.note)
    return out


def class_counts(session: Session, folder, version_id: int | None, taxonomy: str | None = None) -> ClassCounts:
    """Images per predicted class and per reviewed class under ``folder``."""
    counts = ClassCounts()
    q, f, p, ev = _base(folder, version_id, taxonomy, lambda f, p, ev: [
        p.c.label, p.c.out_of_distribution, ev.c.label.label("reviewed"), func.count()])
    q = q.group_by(p.c.label, p.c.out_of_distribution, ev.c.label)
    for pred, outside, rev, n in session.execute(q):
        counts.total += n
        if pred is not None:
            counts.n_predicted += n
            if outside:  # its class is not reliable: its own row, not a class count
                counts.n_outside += n
            else:
                counts.predicted[pred] = counts.predicted.get(pred, 0) + n
        if rev is not None:
            counts.n_reviewed += n
            counts.reviewed[rev] = counts.reviewed.get(rev, 0) + n
    return counts


__all__ = ["GalleryFilter", "GalleryRow", "ClassCounts", "ordered_ids", "rows", "class_counts", "SORTS",
           "UNREVIEWED"]


OUTSIDE_MARK = "\u2298"


def tile_caption(row: GalleryRow) -> str:
    """What a gallery tile says in words. Once reviewed: the reviewer's class and who gave it
    (several seats review one folder), and the model's class when it differs; before: the
    prediction, "?" when uncertain, or that the image is outside the model's experience."""

    conf = f" {row.confidence:.0%}" if row.confidence is not None else ""
    model = OUTSIDE_MARK if row.outside else f"{row.predicted}{conf}" if row.predicted else None
    if row.reviewed:
        shown = OTHER_TITLE if row.reviewed == OTHER else row.reviewed
        by = f" by {row.reviewer}" if row.reviewer else ""
        if row.reviewed == row.predicted and not row.outside:
            return f"\u2713 {shown}{by}"
        # the model's call before the name: a narrow tile cuts the end, and a correction is about the classes
        return f"\u270e {shown}" + (f" \u00b7 model: {model}" if model else "") + (f" \u00b7{by}" if by else "")
    if row.outside:  # the band is narrow: the filter and the detail panel say it in full
        return f"{OUTSIDE_MARK} outside"
    if row.predicted is None:
        return "not predicted"
    return ("? " if row.uncertain else "") + f"{row.predicted}{conf}"


@dataclass
class FolderFiles:
    """Files under a folder against images: copies of one image are one image (its content
    hash), and files that could not be used are listed with the reason."""
    n_files: int = 0
    n_images: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (stored path, reason)

    @property
    def n_copies(self) -> int:
        return self.n_files - len(self.problems) - self.n_images

    def summary(self) -> str:
        parts = [f"{self.n_files:,} file(s), {self.n_images:,} image(s)"]
        if self.n_copies > 0:
            parts.append(f"{self.n_copies:,} file(s) are copies of an image already listed (same content)")
        if self.problems:
            parts.append(f"{len(self.problems):,} file(s) could not be used")
        return "; ".join(parts)


def folder_files(session: Session, folder) -> FolderFiles:
    present = (under_folder(ImageFile.path, folder), ImageFile.missing.is_(False))
    out = FolderFiles()
    out.n_files = session.scalar(select(func.count(ImageFile.id)).where(*present)) or 0
    out.n_images = session.scalar(select(func.count(func.distinct(ImageFile.image_id)))
                                  .where(*present, ImageFile.image_id.is_not(None))) or 0
    out.problems = [(p, e) for p, e in session.execute(
        select(ImageFile.path, ImageFile.error).where(*present, ImageFile.image_id.is_(None), ImageFile.error.is_not(None))
        .order_by(ImageFile.path))]
    return out
