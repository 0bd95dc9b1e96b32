"""What a classification produced: an assessment of a batch, the rows it becomes, and a
classify job's summary. Shared by the image pipeline (core/inference/predict.py) and the
cell stage (core/inference/cells.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.imaging import stain
from core.imaging.scan import ScanSummary
from core.models.package import ModelCard
from core.models.registry import VersionRef
from core.storage import utcnow


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


# how an earlier search of the images was made, by declared image kind (--images), in plain words
SEARCHED_AS = {"fields": "as camera fields", "crops": "as single-cell crops", "auto": "with hemascan judging each image"}


@dataclass
class ClassifySummary:
    scan: ScanSummary | None  # None: a worker's claim (core/app/workqueue.py), no scan
    model: str
    device: str
    n_todo: int = 0
    n_predicted: int = 0
    n_errors: int = 0
    seconds: float = 0.0
    db_seconds: float = 0.0  # spent writing predictions (transactions included)
    cancelled: bool = False
    errors: list[tuple[str, str]] = field(default_factory=list)
    version: VersionRef | None = None  # the version that predicted (None: a worker's part of several)
    # The cell stage (core/inference/cells.py), when a cell model ran:
    cell_model: str | None = None
    n_cells: int = 0  # cells found (in images searched by this run)
    n_cell_images: int = 0  # images in which this run found at least one cell
    n_cells_classified: int = 0  # cells given a prediction by the cell model
    n_cell_errors: int = 0  # images the cell stage could not read
    n_cell_grayscale: int = 0  # images not searched for cells: no colour (cells are found by their stain's)
    cell_image_kind: str | None = None  # what the lab declared the images are (--images), None: not said
    n_cell_images_restored: int = 0  # images searched with the declared kind before: that search counts again
    n_cells_restored: int = 0  # the cells of those searches (found then, counted again now)

    @property
    def rate(self) -> float:
        return self.n_predicted / self.seconds if self.seconds > 0 else 0.0

    def restored_cells_sentence(self) -> str | None:
        """What the run did for images it had searched with the declared kind before (their
        earlier cells count again, nothing is found twice); None when there were none. The one
        wording the command line and the window give."""
        if not self.n_cell_images_restored:
            return None
        how = SEARCHED_AS.get(self.cell_image_kind or "auto", SEARCHED_AS["auto"])
        return (f"{self.n_cell_images_restored:,} image(s) already searched {how}: the cells found then "
                f"count again ({self.n_cells_restored:,} cell(s))")


#: why a prediction is outside the model's experience, when not by the guard's distance: the code
#: stored in its ``outside_reason`` -> the one sentence a user reads
OUTSIDE_REASONS = {"colour": stain.REASON}
#: the sentence for a prediction flagged by the guard's distance (outside_reason None)
DISTANCE_REASON = "it is unlike the images the model was trained on"


def outside_sentence(out_of_distribution: bool | None, outside_reason: str | None) -> str | None:
    """Why a prediction is outside the model's experience, in one sentence; None when it is not."""
    if not out_of_distribution:
        return None
    return OUTSIDE_REASONS.get(outside_reason or "", DISTANCE_REASON)


@dataclass(frozen=True)
class Assessment:
    probs: np.ndarray  # (N, C) calibrated
    guard_distance: np.ndarray | None  # (N,) None: no guard for this model/engine
    outside: np.ndarray | None  # (N,) bool: outside the model's experience (distance or colour)
    # (N,) bool: flagged by the colour check (core/imaging/stain.py); part of ``outside``
    colour: np.ndarray | None = None


def prediction_rows(ids: list[int], assessment: Assessment, version_id: int, card: ModelCard,
                     runtime: str | None = None) -> list[dict]:
    probs = assessment.probs
    conf = probs.max(axis=1)
    top = probs.argmax(axis=1)
    ent = entropy(probs)
    thr = card.uncertain_threshold
    n = len(ids)
    outside = assessment.outside if assessment.outside is not None else [None] * n
    dist = assessment.guard_distance if assessment.guard_distance is not None else [None] * n
    colour = assessment.colour if assessment.colour is not None and assessment.outside is not None else [False] * n
    now = utcnow()
    return [
        dict(image_id=i, model_version_id=version_id, label=card.classes[int(k)], confidence=float(c),
             entropy=float(e), probabilities=[round(float(x), 6) for x in p],
             uncertain=bool(thr is not None and c < thr), created_at=now, runtime=runtime,
             out_of_distribution=None if o is None else bool(o), guard_distance=None if d is None else float(d),
             outside_reason="colour" if col else None)
        for i, p, k, c, e, o, d, col in zip(ids, probs, top, conf, ent, outside, dist, colour)
    ]
