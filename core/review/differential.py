"""The differential of a case (a folder: one sample): how many of the N white cells counted
are of each class, with the 95% binomial interval a lab knows from the Rumke table, the blast
percentage, how many more cells to count before it can be said to lie above or below the lab's
threshold, and how well two reviewers agree (Cohen's kappa).

The interval is the exact binomial (Clopper-Pearson) interval: the one the Rumke table for
manual differentials tabulates. It is computed here from the regularised incomplete beta
function (a continued fraction), so the command line needs no scipy.

A cell's class is its latest reviewed label, else the cell model's prediction. Cells the model
finds outside its experience (unless a reviewer gave them a class) and cells a reviewer called
"Other / not assessable" are counted apart, not in N. None of this is a diagnosis."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.cells.records import GRAYSCALE, counted_cells, counted_searches, display_numbers
from core.errors import ModelPackageError
from core.imaging.scan import folder_prefix, images_under, under_folder
from core.review.cell_labels import latest_cell_events
from core.models.registry import CELL, active_version, get_version
from core.models.taxonomy import OTHER, OTHER_TITLE, TAXONOMIES, blast_class
from core.storage import Case, Cell, CellLabelEvent, CellPrediction, ImageFile, ModelVersion

DISCLAIMER = ("This differential is decision support, not a diagnosis: every count must be checked by a "
              "qualified person.")
#: The blast percentage a lab decides on when it sets none (e.g. 20% blasts for acute leukaemia).
DEFAULT_BLAST_THRESHOLD_PCT = 20.0
CONFIDENCE = 0.95
#: Beyond this many cells counting more is no answer: the proportion is too close to the threshold.
MAX_CELLS_TO_COUNT = 1_000_000
_CHUNK = 500  # ids per IN (...) list


# ---- arithmetic (no database) ------------------------------------------------------------------

def _beta_cf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 20_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (a, b > 0)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = q (bisection: I is increasing in x)."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if mid in (lo, hi):
            break
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def clopper_pearson(k: float, n: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact binomial interval of the proportion k/n, as fractions (0, 1 for n = 0).
    ``k`` may be fractional (the same proportion at another n: :func:`cells_to_count`)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"{k} of {n} is not a count")
    alpha = 1.0 - confidence
    low = 0.0 if k <= 0 else beta_ppf(alpha / 2, k, n - k + 1)
    high = 1.0 if k >= n else beta_ppf(1 - alpha / 2, k + 1, n - k)
    return low, high


def _excludes(k: float, n: float, threshold: float, confidence: float) -> bool:
    """Whether the interval of k/n lies wholly above or below ``threshold`` (no quantile needed:
    the bound is beyond the threshold exactly when the beta distribution's tail at it is)."""
    alpha = 1.0 - confidence
    if k > 0 and beta_cdf(threshold, k, n - k + 1) < alpha / 2:  # lower bound > threshold
        return True
    return k < n and beta_cdf(threshold, k + 1, n - k) > 1 - alpha / 2  # upper bound < threshold


def cells_to_count(k: int, n: int, threshold: float, confidence: float = CONFIDENCE) -> int | None:
    """The smallest N' >= n at which the same observed proportion k/n has an interval that
    excludes ``threshold`` (a fraction): ``N' - n`` more cells to count (0: it tells already).
    None when no count tells: the proportion is at the threshold (or within
    :data:`MAX_CELLS_TO_COUNT` cells of telling it apart)."""
    if n <= 0:
        raise ValueError("no cells counted yet")
    p = k / n
    if math.isclose(p, threshold, rel_tol=0, abs_tol=1e-12):
        return None
    if _excludes(k, n, threshold, confidence):
        return 0
    lo, hi = n, n  # lo never tells; find an hi that does, then the first one between
    while True:
        hi = min(hi * 2, MAX_CELLS_TO_COUNT)
        if _excludes(p * hi, hi, threshold, confidence):
            break
        if hi >= MAX_CELLS_TO_COUNT:
            return None
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _excludes(p * mid, mid, threshold, confidence):
            hi = mid
        else:
            lo = mid
    return hi - n


def cohen_kappa(pairs: Iterable[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' answers on the same items; None when it is undefined (no
    items, or both gave one and the same answer throughout: chance agreement is 1)."""
    pairs = list(pairs)
    n = len(pairs)
    if not n:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first: dict[str, int] = {}
    second: dict[str, int] = {}
    for a, b in pairs:
        first[a] = first.get(a, 0) + 1
        second[b] = second.get(b, 0) + 1
    expected = sum(first[c] * second.get(c, 0) for c in first) / (n * n)
    if math.isclose(expected, 1.0):
        return None
    return (observed - expected) / (1.0 - expected)


@dataclass(frozen=True)
class ClassLine:
    """One class of the differential: n of N, its percentage and 95% interval (percent), and
    how many of the n are a reviewer's label and how many the model's prediction alone."""

    label: str
    n: int
    pct: float
    low_pct: float
    high_pct: float
    reviewed: int = 0
    predicted: int = 0


def differential_table(counts: Mapping[str, int], reviewed: Mapping[str, int] | None = None,
                       confidence: float = CONFIDENCE) -> list[ClassLine]:
    """A line per class (in ``counts``' order) with its percentage of N = sum(counts) and its
    Clopper-Pearson interval; ``reviewed``: of each class's n, how many a reviewer labelled."""
    total = sum(counts.values())
    reviewed = reviewed or {}
    out = []
    for label, n in counts.items():
        low, high = clopper_pearson(n, total, confidence)
        r = min(reviewed.get(label, 0), n)
        out.append(ClassLine(label, n, 100.0 * n / total if total else 0.0, 100.0 * low, 100.0 * high, r, n - r))
    return out


@dataclass(frozen=True)
class BlastLine:
    """The blast percentage against the lab's threshold, and what to do about it."""

    label: str  # the taxonomy's blast class
    n: int
    total: int  # N
    pct: float
    low_pct: float
    high_pct: float
    threshold_pct: float
    verdict: str  # "above", "below", "undecided" or "at threshold"
    more_cells: int | None  # how many more cells to count to tell (0: it tells; None: counting cannot tell)
    advice: str  # one sentence

    def as_text(self) -> str:
        return (f"{self.label} (blasts): {self.n} of {self.total} = {self.pct:.1f}% "
                f"(95% interval {self.low_pct:.1f}-{self.high_pct:.1f}%). {self.advice}")


def blast_line(label: str, n: int, total: int, threshold_pct: float = DEFAULT_BLAST_THRESHOLD_PCT,
               confidence: float = CONFIDENCE) -> BlastLine:
    """The blast percentage of ``n`` of ``total`` cells against ``threshold_pct``."""
    if total <= 0:
        raise ValueError("no cells counted yet")
    if not 0 < threshold_pct < 100:
        raise ValueError("the blast threshold must lie between 0 and 100%")
    low, high = clopper_pearson(n, total, confidence)
    t = threshold_pct / 100.0
    more = cells_to_count(n, total, t, confidence)
    pct = 100.0 * n / total
    thr = f"{threshold_pct:g}%"
    if more == 0:
        verdict = "above" if low > t else "below"
        advice = (f"The 95% interval lies wholly {verdict} the {thr} threshold.")
    elif more is None:
        verdict = "at threshold" if math.isclose(n / total, t, abs_tol=1e-12) else "undecided"
        advice = (f"Counting more cells cannot tell whether the blasts are above or below {thr}: "
                  f"at this proportion ({pct:.1f}%) the interval keeps the threshold inside.")
    else:
        verdict = "undecided"
        counted = f"{total} cell" if total == 1 else f"{total} cells"
        advice = (f"{counted} cannot tell whether the blasts are above or below {thr}: count {more} more "
                  f"cells ({total + more} in all, if the proportion stays at {pct:.1f}%).")
    return BlastLine(label, n, total, pct, 100.0 * low, 100.0 * high, threshold_pct, verdict, more, advice)


@dataclass(frozen=True)
class Agreement:
    """Two reviewers over the cells both labelled (each one's latest label of each cell)."""

    first: str
    second: str
    n_cells: int
    n_agree: int
    kappa: float | None  # None: undefined (see cohen_kappa)


def agreements(latest_by_reviewer: Mapping[int, Mapping[str, str]]) -> list[Agreement]:
    """Cohen's kappa for each pair of reviewers with cells in common (none with fewer than
    two reviewers); ``latest_by_reviewer``: cell -> reviewer -> that reviewer's latest label."""
    reviewers = sorted({r for by in latest_by_reviewer.values() for r in by})
    out = []
    for i, a in enumerate(reviewers):
        for b in reviewers[i + 1:]:
            pairs = [(by[a], by[b]) for by in latest_by_reviewer.values() if a in by and b in by]
            if pairs:
                out.append(Agreement(a, b, len(pairs), sum(x == y for x, y in pairs), cohen_kappa(pairs)))
    return out


# ---- a case from the database -------------------------------------------------------------------

@dataclass(frozen=True)
class CaseCell:
    """One white cell of a case, with what the model said and what a reviewer said."""

    cell_id: int
    image_id: int
    path: str  # the image's stored path
    box: tuple[int, int, int, int]
    um_per_px: float
    flags: tuple[str, ...]
    predicted: str | None
    confidence: float | None
    uncertain: bool
    outside: bool  # outside the model's experience
    reviewed: str | None  # the current label (latest event), None: not reviewed (or cleared)
    reviewer: str | None
    number: int = 0  # its number in its image, as shown everywhere (core.cells.records.display_numbers)

    @property
    def counted_as(self) -> str | None:
        """The class it is counted as (reviewed, else predicted); OTHER; None: not counted
        (not reviewed and outside the model's experience, or the model unsure of it -- as an
        analyser's "unidentified" cells, they wait for a reviewer -- or not classified)."""
        if self.reviewed is not None:
            return self.reviewed
        if self.predicted is None or self.outside or self.uncertain:
            return None
        return self.predicted

    @property
    def shown_class(self) -> str | None:
        """The class the reviewer was shown for it: the model's, when it is sure and the cell is
        inside its experience; None when no class was shown (outside, unsure, not classified)."""
        if self.predicted is None or self.outside or self.uncertain:
            return None
        return self.predicted

    @property
    def corrected(self) -> bool:
        """A reviewer changed the class shown (Other included); a label given where no class
        was shown is a first answer, not a correction."""
        return self.reviewed is not None and self.shown_class is not None and self.reviewed != self.shown_class

    @property
    def centre(self) -> tuple[float, float]:  # what core.cells.finder.cut_out centres on
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


@dataclass(frozen=True)
class Differential:
    case: str
    folder: str
    model: str | None  # the cell model version's name
    taxonomy: str | None
    n_cells: int  # every cell found in or added to the case's images
    total: int  # N: the cells counted in the classes
    classes: list[ClassLine]
    blast: BlastLine | None
    n_outside: int  # outside the model's experience, not reviewed: not counted
    n_other: int  # "Other / not assessable" by a reviewer: not counted
    n_unclassified: int  # neither predicted nor reviewed yet
    n_reviewed: int  # of N, by a reviewer's label
    n_predicted: int  # of N, by the model's prediction alone
    agreement: list[Agreement] = field(default_factory=list)
    threshold_pct: float = DEFAULT_BLAST_THRESHOLD_PCT
    disclaimer: str = DISCLAIMER
    n_uncertain: int = 0  # the model unsure (below its card's threshold), not reviewed: not counted

    def as_dict(self) -> dict:
        """Plain types only (JSON)."""
        return asdict(self)


def case_name(session: Session, folder: str | os.PathLike) -> str:
    """What the lab calls the case (the ``cases`` table), else the folder's name."""
    name = session.scalar(select(Case.name).where(Case.root == folder_prefix(folder)))
    return name or Path(os.path.abspath(os.fspath(folder))).name


def _chunks(ids: Sequence[int]):
    for start in range(0, len(ids), _CHUNK):
        yield list(ids[start:start + _CHUNK])


def _case_cell_rows(session: Session, folder) -> list[tuple[Cell, str]]:
    """(cell, image path) for the cells of the images under ``folder`` that count: those of each
    image's counted finder run (core.cells.records.counted_searches: no cell counted twice, none
    a reviewer labelled hidden by a newer finder) and those added by reviewers."""
    images = dict(images_under(session, folder))
    out = []
    for chunk in _chunks(list(images)):
        for image_id, cells in counted_cells(session, chunk).items():
            out.extend((c, images[image_id]) for c in cells)
    out.sort(key=lambda row: (row[0].image_id, row[0].id))
    return out


def _label_events(session: Session, cell_ids: list[int], taxonomy: str | None):
    """Per cell: the current label event (core.review.cell_labels), and each reviewer's latest
    label (a cleared label is no opinion), of ``taxonomy`` when known."""
    current: dict[int, CellLabelEvent] = {}
    by_reviewer: dict[int, dict[str, str | None]] = {}
    for chunk in _chunks(cell_ids):
        current.update(latest_cell_events(session, chunk, taxonomy))
        q = (select(CellLabelEvent.cell_id, CellLabelEvent.reviewer, CellLabelEvent.label)
             .where(CellLabelEvent.cell_id.in_(chunk)).order_by(CellLabelEvent.id))
        if taxonomy is not None:
            q = q.where(CellLabelEvent.taxonomy == taxonomy)
        for cell_id, reviewer, label in session.execute(q):  # in id order: the last one of each stays
            by_reviewer.setdefault(cell_id, {})[reviewer] = label
    latest = {c: {r: lab for r, lab in by.items() if lab is not None} for c, by in by_reviewer.items()}
    return current, latest


def case_cells(session: Session, folder: str | os.PathLike, cell_version_id: int | None
               ) -> tuple[list[CaseCell], dict[int, dict[str, str]], ModelVersion | None]:
    """The case's cells with ``cell_version_id``'s predictions and their current labels; each
    reviewer's latest label per cell; the model version row."""
    version = session.get(ModelVersion, cell_version_id) if cell_version_id is not None else None
    rows = _case_cell_rows(session, folder)
    ids = [c.id for c, _ in rows]
    preds: dict[int, CellPrediction] = {}
    if version is not None:
        for chunk in _chunks(ids):
            for p in session.scalars(select(CellPrediction).where(
                    CellPrediction.cell_id.in_(chunk), CellPrediction.model_version_id == version.id)):
                preds[p.cell_id] = p
    current, latest = _label_events(session, ids, version.taxonomy if version is not None else None)
    numbers = display_numbers(c for c, _ in rows)
    cells = []
    for c, path in rows:
        p, e = preds.get(c.id), current.get(c.id)
        cells.append(CaseCell(
            c.id, c.image_id, path, (c.x0, c.y0, c.x1, c.y1), float(c.um_per_px), tuple(c.flags or ()),
            p.label if p else None, float(p.confidence) if p else None, bool(p.uncertain) if p else False,
            bool(p.out_of_distribution) if p else False,
            e.label if e is not None else None, e.reviewer if e is not None and e.label is not None else None,
            numbers[c.id]))
    return cells, latest, version


def summarise(cells: Sequence[CaseCell], classes: Sequence[str], blast: str | None, *, case: str, folder: str,
              model: str | None = None, taxonomy: str | None = None,
              latest_by_reviewer: Mapping[int, Mapping[str, str]] | None = None,
              threshold_pct: float = DEFAULT_BLAST_THRESHOLD_PCT, confidence: float = CONFIDENCE) -> Differential:
    """The differential of ``cells`` (the arithmetic of :func:`case_differential`)."""
    counts: dict[str, int] = {c: 0 for c in classes}
    reviewed: dict[str, int] = {}
    n_outside = n_other = n_unclassified = n_uncertain = 0
    for cell in cells:
        cls = cell.counted_as
        if cls is None:
            if cell.predicted is not None and cell.outside:
                n_outside += 1
            elif cell.predicted is not None and cell.uncertain:
                n_uncertain += 1
            else:
                n_unclassified += 1
        elif cls == OTHER:
            n_other += 1
        else:
            counts[cls] = counts.get(cls, 0) + 1
            if cell.reviewed is not None:
                reviewed[cls] = reviewed.get(cls, 0) + 1
    total = sum(counts.values())
    lines = differential_table(counts, reviewed, confidence)
    line = blast_line(blast, counts.get(blast, 0), total, threshold_pct, confidence) if blast and total else None
    n_rev = sum(reviewed.values())
    return Differential(case, folder, model, taxonomy, len(cells), total, lines, line, n_outside, n_other,
                        n_unclassified, n_rev, total - n_rev, agreements(latest_by_reviewer or {}), threshold_pct,
                        n_uncertain=n_uncertain)


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def no_cells_sentence(session: Session, folder: str | os.PathLike) -> str:
    """One sentence for a case without a white cell to count: never classified with a cell model,
    or searched and no white cell found (a blank field, red cells only, a crop smaller than a
    cell), with how many files could not be searched (their reasons are recorded per file)."""
    ids = [i for i, _ in images_under(session, folder)]
    searched = counted_searches(session, ids)
    refused = [(p, i) for p, i in session.execute(  # a reason recorded, by the scan or the cell stage
        select(ImageFile.path, ImageFile.image_id).where(
            under_folder(ImageFile.path, folder), ImageFile.missing.is_(False), ImageFile.error.is_not(None)))
        if i not in searched]
    unsearchable = {p for p, _ in refused}
    waiting = len(set(ids) - set(searched) - {i for _, i in refused})
    if not searched and not unsearchable:
        return f"no white cells recorded under {folder}: classify it with a cell model active first (nothing to count)"
    gray = sum(1 for c in searched.values() if c.scale_source == GRAYSCALE)
    parts = [f"no white cells found under {folder}: {_n(len(searched) - gray, 'image')} searched, none holds "
             "a white cell"]
    if gray:
        parts.append(f"{_n(gray, 'grayscale image')} not searched (white cells are found by the colour of "
                     "their stain)")
    if unsearchable:
        parts.append(f"{_n(len(unsearchable), 'file')} could not be searched (hemascan classify lists "
                     "each one's reason)")
    if waiting > 0:
        parts.append(f"{_n(waiting, 'image')} not searched yet (classify it with a cell model active)")
    return "; ".join(parts) + "; nothing to count"


def case_differential(session: Session, folder: str | os.PathLike, cell_version_id: int | None, *,
                      threshold_pct: float = DEFAULT_BLAST_THRESHOLD_PCT,
                      confidence: float = CONFIDENCE) -> Differential:
    """The differential of the case under ``folder`` by the cell model ``cell_version_id``'s
    predictions and the reviewers' labels."""
    cells, latest, version = case_cells(session, folder, cell_version_id)
    return differential_of(session, folder, cells, latest, version, threshold_pct=threshold_pct,
                           confidence=confidence)


def differential_of(session: Session, folder: str | os.PathLike, cells: Sequence[CaseCell],
                    latest: Mapping[int, Mapping[str, str]], version: ModelVersion | None, *,
                    threshold_pct: float = DEFAULT_BLAST_THRESHOLD_PCT, confidence: float = CONFIDENCE) -> Differential:
    """:func:`case_differential` of cells read already (:func:`case_cells`)."""
    taxonomy = version.taxonomy if version is not None else None
    if version is not None:
        classes = list((version.card or {}).get("classes") or TAXONOMIES[taxonomy].classes)
    else:
        classes = sorted({c.reviewed for c in cells if c.reviewed not in (None, OTHER)})
    return summarise(cells, classes, blast_class(taxonomy), case=case_name(session, folder),
                     folder=os.path.abspath(os.fspath(folder)), model=version.name if version is not None else None,
                     taxonomy=taxonomy, latest_by_reviewer=latest, threshold_pct=threshold_pct,
                     confidence=confidence)


INTERVAL_NOTE = ("95% intervals: exact binomial (Clopper-Pearson), the interval the Rumke table for manual "
                 "differentials tabulates.")


def as_lines(d: Differential) -> list[str]:
    """The differential as text: the table, N, the blast line and its advice, what was not
    counted, the reviewers' agreement, how the intervals were computed, and the disclaimer."""
    out = [f"Differential of {d.case} ({d.folder}), cell model {d.model or 'none (reviewers labels only)'}",
           f"N = {d.total} white cells counted ({d.n_reviewed} by a reviewer's label, {d.n_predicted} by the "
           f"model's prediction alone)"]
    width = max([5] + [len(c.label) for c in d.classes])
    out.append(f"  {'class':<{width}} {'n':>6} {'%':>6}  {'95% interval':>13}  {'reviewed':>8} {'predicted':>9}")
    for c in d.classes:
        out.append(f"  {c.label:<{width}} {c.n:>6} {c.pct:>5.1f}%  {f'{c.low_pct:.1f}-{c.high_pct:.1f}%':>13}  "
                   f"{c.reviewed:>8} {c.predicted:>9}")
    if d.blast is not None:
        out.append(d.blast.as_text())
    elif d.taxonomy and blast_class(d.taxonomy) is None:
        out.append(f"(the {d.taxonomy} classes have no blast class: no blast percentage)")
    out.append(f"Not counted in N: outside the model's experience: {d.n_outside}; the model unsure, to review: "
               f"{d.n_uncertain}; {OTHER_TITLE}: {d.n_other}"
               + (f"; not classified yet: {d.n_unclassified}" if d.n_unclassified else ""))
    for a in d.agreement:
        kappa = "undefined (one answer throughout)" if a.kappa is None else f"{a.kappa:.2f}"
        out.append(f"Agreement of {a.first} and {a.second}: Cohen's kappa {kappa} over the {a.n_cells} cells "
                   f"both labelled ({a.n_agree} the same)")
    out.append(INTERVAL_NOTE)
    out.append(d.disclaimer)
    return out


def cell_version_id(session: Session, name: str | None = None) -> int | None:
    """The model version ``name`` (a cell model), else the active cell model; None when no cell
    model is active."""
    if name is None:
        version = active_version(session, CELL)
        return version.id if version is not None else None
    version = get_version(session, name)  # one sentence when there is none
    if version.input_kind != CELL:
        raise ModelPackageError(f"{name} classifies whole fields, not cells: a differential needs a cell model "
                                "(see 'hemascan models list')")
    return version.id


def write_json(d: Differential, output: str | os.PathLike) -> Path:
    """The differential as JSON (plain types, no NaN), written whole or not at all."""
    output = Path(output)
    text = json.dumps(d.as_dict(), indent=2, allow_nan=False)
    json.loads(text)  # what is written reads back
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(output)
    return output


__all__ = ["no_cells_sentence", "DISCLAIMER", "INTERVAL_NOTE", "as_lines", "DEFAULT_BLAST_THRESHOLD_PCT", "Agreement", "BlastLine", "CaseCell", "ClassLine",
           "Differential", "cell_version_id", "write_json", "agreements", "beta_cdf", "beta_ppf", "blast_line",
           "case_cells", "case_differential", "differential_of", "case_name", "cells_to_count", "clopper_pearson", "cohen_kappa",
           "differential_table", "summarise"]
