"""``import-labels`` on single-cell crops: besides its image label (core/review/labels.py), a
pre-cut single cell (C-NMC, PBC, a CellaVision export) gets the same label on its one cell,
so a lab can import cells it has already classified.

Only classes of a cell taxonomy (core.models.taxonomy: ``input_kind`` "cell", e.g. ALL vs normal)
label cells: an ALL-subtype folder names the sample's diagnosis, not what each cell is. The
cell finder runs on an image it has not yet seen (its result is stored as classify would
store it: core/cells/records.py); an image the finder does not judge a single-cell crop keeps
its image label only. Files are read and searched outside any transaction; each batch's
cells and cell labels are then written in one short transaction, so a kill loses at most
the batch being read and a re-import adds nothing twice."""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path


from core.cells.finder import FINDER_NAME, IMAGE_KINDS, FieldCells, decode_for_cells, find_cells, finder_name
from core.cells.records import counted_cells, counted_searches, images_to_search, store_field_cells
from core.config import default_reviewer
from core.errors import ImageError
from core.imaging.fspath import display, to_fs
from core.imaging.images import FileChanged, read_and_hash
from core.imaging.scan import images_to_read
from core.jobs import Job, Progress
from core.models.taxonomy import get_taxonomy
from core.review.cell_labels import latest_cell_events, record_cell_labels
from core.review.labels import ImportSummary, class_folder_labels, import_labels
from core.storage import Database

log = logging.getLogger(__name__)

#: Images read and searched per transaction (a 5-megapixel field takes ~0.1 s to search).
CELL_BATCH = 32


@dataclass
class CellImportSummary:
    labels: ImportSummary  # the image labels, as import-labels has always recorded them
    n_cells_labelled: int = 0  # single-cell crops whose one cell got the folder's label now
    n_cells_already: int = 0  # ... whose cell already had it
    n_not_single_cell: int = 0  # labelled images the finder does not judge a single-cell crop
    n_field_class: int = 0  # labelled with a class of a field taxonomy: no cell label, the finder not run
    n_searched: int = 0  # images the finder ran on during this import
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, why the finder could not run)


def import_labels_and_cells(db: Database, folder: str | os.PathLike, reviewer: str | None = None,
                            taxonomy: str | None = None,
                            cancel: threading.Event | None = None,
                            amend_reason: str | None = None) -> Job[CellImportSummary]:
    """import_labels, then the one cell of each single-cell crop labelled like its image
    (``amend_reason``: the reason for changing a released case)."""
    cancel = cancel or threading.Event()
    labels = yield from import_labels(db, folder, reviewer, taxonomy, cancel, amend_reason)
    summary = CellImportSummary(labels)
    if cancel.is_set():
        return summary
    reviewer = reviewer or default_reviewer()
    note = f"imported from folder names under {Path(folder).name}"
    with db.session() as s:
        by_label, _ = class_folder_labels(s, folder, taxonomy)
        files = {i: (path, sha) for i, path, sha in images_to_read(s, folder)}
    label_of: dict[int, tuple[str, str]] = {}
    whole_field: set[int] = set()
    for hit, ids in by_label.items():
        # a field taxonomy's class (ALL subtype) is said of the whole sample, never of one cell
        if get_taxonomy(hit[0]).input_kind != "cell":
            whole_field.update(ids)
            continue
        for i in ids:
            label_of[i] = hit  # a copy in two class folders: the later label, as the image's latest event
    summary.n_field_class = len(whole_field - set(label_of))
    ids = sorted(i for i in label_of if i in files)
    for start in range(0, len(ids), CELL_BATCH):
        chunk = ids[start : start + CELL_BATCH]
        with db.session() as s:
            # a labelled older search stays, and so does this finder's search told another image kind
            to_search = sorted(images_to_search(s, FINDER_NAME, chunk, [finder_name(k) for k in IMAGE_KINDS]))
        found = {i: f for i in to_search
                 if (f := _search(files[i], summary, db.settings.max_file_bytes)) is not None}
        with db.session() as s:
            for image_id, cells in found.items():
                store_field_cells(s, image_id, cells, FINDER_NAME)
            s.flush()
            _label_crop_cells(s, chunk, label_of, reviewer, note, summary, amend_reason)
        summary.n_searched += len(found)
        yield Progress("cells", min(start + CELL_BATCH, len(ids)), len(ids))
        if cancel.is_set():
            return summary
    return summary


def _search(file: tuple[str, str], summary: CellImportSummary, max_bytes: int) -> FieldCells | None:
    """The finder's result on one file (None, and the reason in the summary, when unreadable)."""
    path, sha256 = file
    try:
        content = read_and_hash(to_fs(path), max_bytes)
        if content.sha256 != sha256:
            raise FileChanged("the file changed since it was scanned; scan the folder again")
        rgb, reduced_by = decode_for_cells(content.data)
        return find_cells(rgb, reduced_by=reduced_by)
    except ImageError as exc:
        log.warning("cell finder not run on %s: %s", display(path), exc)
        summary.errors.append((display(path), str(exc)))
        return None


def _label_crop_cells(s, image_ids: list[int], label_of: dict[int, tuple[str, str]], reviewer: str,
                      note: str, summary: CellImportSummary, amend_reason: str | None = None) -> None:
    searches = counted_searches(s, image_ids)  # the search whose cells count, as everywhere else
    crops = sorted(i for i, c in searches.items() if c.single_cell_crop)
    summary.n_not_single_cell += len(searches) - len(crops)
    cell_of: dict[int, int] = {}
    for image_id, cells in counted_cells(s, crops, searches).items():
        found = [c for c in cells if c.source == "found"]  # the crop's one cell, not one a reviewer added
        if len(found) == 1:
            cell_of[image_id] = found[0].id
    current = latest_cell_events(s, cell_of.values())
    by_label: dict[tuple[str, str], list[int]] = {}
    for image_id, cell_id in cell_of.items():
        tax, label = label_of[image_id]
        ev = current.get(cell_id)
        if ev is not None and ev.label == label and ev.taxonomy == tax:
            summary.n_cells_already += 1
            continue
        by_label.setdefault((tax, label), []).append(cell_id)
    for (tax, label), cell_ids in by_label.items():
        record_cell_labels(s, cell_ids, label, reviewer, taxonomy=tax, source="dataset", note=note,
                           amend_reason=amend_reason)
        summary.n_cells_labelled += len(cell_ids)
