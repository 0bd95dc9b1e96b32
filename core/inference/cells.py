"""The cell stage of classify: find the white cells of each image and classify their cut-outs
with a cell model (a card with ``"input": "cell"``).

A plain job (core/jobs.py): it yields Progress (stage "cells") between batches, checks the
cancel event between batches, and fills a ClassifySummary. Per batch of images, in ONE
transaction, idempotently (INSERT ... ON CONFLICT DO NOTHING on the unique keys, as
predict_images does):

1. images the finder (finder_name(image_kind): its method and the image kind the lab declared,
   core/cells/finder.py IMAGE_KINDS) should run on (core.cells.records.images_to_search: never
   searched, or searched only by an older finder or with another declared kind and no cell of that search labelled -- a
   reviewer's work is never hidden by a new finder version): read the bytes (the scan's SHA-256
   must still match), decode at the reduced scale the finder needs, find the cells, store the
   search and its cells;
2. cells that count (core.cells.records.counted_cells) without a prediction of the cell version
   (just found, found by a run that was killed before classifying, kept from an older finder, or
   added by a reviewer): cut out at the card's physical side
   (``cell_side_um``) and input size, with the card's background around the cell
   (core/cells/cutout.py), through the card's preprocessing, batched ACROSS fields
   for the model -> CellPrediction rows. A pre-cut single-cell crop is given whole through the
   card's preprocessing (as an image is today; or cut out like a field's cells where the card's
   ``cell_crops`` says "cut_out", as a model trained on cut-outs needs), and its prediction is also written as the
   image's Prediction, so folders of single-cell crops work as they always have.

A killed run loses only the batch in flight; a re-run finds what is missing and adds nothing twice.
Decoding, finding and cutting out run in a thread pool (OpenCV releases the GIL) while the model
runs on the previous batch; at most two batches of fields are held in memory, whatever the
folder's size.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from core.cells.signature import lab_signatures
from core.cells.cutout import cut_out_for_model
from core.cells.finder import (IMAGE_KINDS, FieldCells, FoundCell, central_index, decode_for_cells, find_cells,
                               finder_name)
from core.cells.records import (ADDED_BY_REVIEWER, GRAYSCALE, CountedSearch, counted_searches, images_to_search,
                                store_field_cells)
from core.errors import ImageError
from core.imaging.fspath import display, to_fs
from core.imaging.images import FileChanged, decode_rgb, read_and_hash
from core.imaging.scan import UNTRUSTED_STAT
from core.inference.outcome import Assessment, ClassifySummary, prediction_rows
from core.jobs import Job, Progress, RateMeter
from core.storage import Cell, CellPrediction, CellSearch, Database, ImageFile, ModelVersion, Prediction
from core.storage.dbutil import insert_ignore, with_reconnect

log = logging.getLogger(__name__)

#: Images per batch (one transaction): a 5-megapixel field's reduced decode is ~4.5 MB, so two
#: batches in flight hold < 150 MB however many fields the folder has.
FIELDS_PER_BATCH = 16
IN_CHUNK = 500  # ids per IN (...) list

#: ``on_batch(session, done_image_ids, failed)`` runs inside each batch's transaction (as
#: core.inference.predict.BatchHook): a work queue marks its items with the batch's cells.
CellBatchHook = Callable[[Session, list[int], list[tuple[int, str, str]]], None]


def is_cell_version(session: Session, version_id: int) -> bool:
    """Whether the model version takes one cut-out cell as its input (the registry's record)."""
    return session.scalar(select(ModelVersion.input_kind).where(ModelVersion.id == version_id)) == "cell"


def active_cell_version_id(session: Session) -> int | None:
    """The active cell model's version id, if one is active."""
    return session.scalar(select(ModelVersion.id).where(ModelVersion.is_active.is_(True),
                                                        ModelVersion.input_kind == "cell")
                          .order_by(ModelVersion.id.desc()).limit(1))


def _waiting_cells(session: Session, version_id: int, counted: dict[int, CountedSearch]
                   ) -> dict[int, list[tuple[int, tuple[int, int, int, int], list]]]:
    """image id -> (cell id, box, outline) of its cells that count (core.cells.records.counted_searches,
    and those added by reviewers) without a prediction of ``version_id``, in id order."""
    waiting: dict[int, list] = {i: [] for i in counted}
    if not counted:
        return waiting
    predicted = exists().where(CellPrediction.cell_id == Cell.id, CellPrediction.model_version_id == version_id)
    finders = {c.finder for c in counted.values()} | {ADDED_BY_REVIEWER}
    for cid, image_id, finder, x0, y0, x1, y1, contour in session.execute(
            select(Cell.id, Cell.image_id, Cell.finder, Cell.x0, Cell.y0, Cell.x1, Cell.y1, Cell.contour)
            .where(Cell.image_id.in_(list(counted)), Cell.finder.in_(finders), ~predicted)
            .order_by(Cell.image_id, Cell.id)):
        if finder in (ADDED_BY_REVIEWER, counted[image_id].finder):
            waiting[image_id].append((cid, (x0, y0, x1, y1), contour or []))
    return waiting


def _finders(image_kind: str | None) -> tuple[str, list[str]]:
    """(the finder name a new search is stored under, other names whose searches stay): a kind
    given is searched with; none given keeps this finder's searches of any kind and searches
    the rest with "auto"."""
    if image_kind is not None:
        return finder_name(image_kind), []
    return finder_name("auto"), [finder_name(k) for k in IMAGE_KINDS]


def _kept_searches(session: Session, image_ids: Sequence[int], image_kind: str | None) -> dict[int, CountedSearch]:
    """The images whose counted search stays (none to run the finder on again), with that search."""
    finder, also_current = _finders(image_kind)
    counted = counted_searches(session, image_ids)
    again = images_to_search(session, finder, image_ids, also_current)
    return {i: c for i, c in counted.items() if i not in again}


def _returning_searches(session: Session, image_ids: Sequence[int], image_kind: str | None
                        ) -> dict[int, CountedSearch]:
    """Of the images to search (not kept), those this finder already searched with this kind
    (fields, then crops, then fields again): that stored search is made to count again
    (:func:`_restore_search`) instead of being "found" again, which its unique key would not store."""
    finder, also_current = _finders(image_kind)
    again = images_to_search(session, finder, image_ids, also_current)
    if not again:
        return {}
    return {i: CountedSearch(i, finder, float(um), source, int(n or 0), bool(single), False)
            for i, um, source, n, single in session.execute(
                select(CellSearch.image_id, CellSearch.um_per_px, CellSearch.scale_source, CellSearch.n_cells,
                       CellSearch.single_cell_crop)
                .where(CellSearch.image_id.in_(list(again)), CellSearch.finder == finder))}


def _restore_search(session: Session, image_id: int, finder: str) -> None:
    """Make ``finder``'s stored search of the image the one that counts again: the newest
    (core.cells.records.counted_searches ranks unlabelled searches by id). The row is written
    again with every value it had (its id only is new); its cells and their predictions stay."""
    row = session.execute(select(CellSearch.__table__).where(CellSearch.image_id == image_id,
                                                             CellSearch.finder == finder)).mappings().first()
    if row is None:
        return
    values = {k: v for k, v in row.items() if k != "id"}
    session.execute(delete(CellSearch).where(CellSearch.image_id == image_id, CellSearch.finder == finder))
    insert_ignore(session, CellSearch.__table__, [values], ["image_id", "finder"])


def complete_image_ids(session: Session, version_id: int, image_ids: Iterable[int],
                       image_kind: str | None = None) -> set[int]:
    """Of ``image_ids``, those whose cells are all found and classified by ``version_id``: their
    counted search stays (core.cells.records.images_to_search, for the finder run with
    ``image_kind``, see :func:`classify_cells`), and no cell of theirs that counts is waiting
    for a prediction."""
    ids = list(image_ids)
    done: set[int] = set()
    for start in range(0, len(ids), IN_CHUNK):
        kept = _kept_searches(session, ids[start:start + IN_CHUNK], image_kind)
        done |= {i for i, cells in _waiting_cells(session, version_id, kept).items() if not cells}
    return done


@dataclass(frozen=True)
class _Stored:
    """What an earlier run stored for an image: its search and the cells still to classify."""

    um_per_px: float
    single_cell_crop: bool
    cells: tuple[tuple[int, tuple[int, int, int, int], list], ...]  # (cell id, box, outline)
    restore_cells: int | None = None  # a search of this kind that no longer counts: made to count again (its cells)


@dataclass
class _FieldResult:
    image_id: int
    path: str
    found: FieldCells | None = None  # a new search (None: the stored one)
    keys: tuple = ()  # per cut-out: ("new", number) or ("id", cell id)
    cutouts: np.ndarray | None = None  # (n, S, S, 3) uint8, through the card's preprocessing
    signatures: np.ndarray | None = None  # (n, 18) lab signatures, where the guard admits a reviewed lab
    single_cell_crop: bool = False
    crop_cell: int = 0  # a single-cell crop: which of ``keys`` is its cell (the one nearest the centre)
    error: str | None = None
    changed: bool = False  # the file holds other content than the scan hashed


def _stored_state(session: Session, version_id: int, image_ids: Sequence[int],
                  image_kind: str | None) -> dict[int, _Stored]:
    kept = _kept_searches(session, image_ids, image_kind)
    returning = _returning_searches(session, image_ids, image_kind)
    waiting = _waiting_cells(session, version_id, {**kept, **returning})
    stored = {i: _Stored(c.um_per_px, c.single_cell_crop, tuple(waiting[i])) for i, c in kept.items()}
    stored.update({i: _Stored(c.um_per_px, c.single_cell_crop, tuple(waiting[i]), c.n_cells)
                   for i, c in returning.items()})
    return stored


def _colourless(rgb: np.ndarray) -> bool:
    """Whether the image carries no colour (a grayscale file, or gray saved as RGB): every pixel's
    channels within 2 levels of each other (a JPEG's rounding), on every 4th pixel. Such a field's
    search is stored with no cells and scale_source GRAYSCALE (a single cell cut out on black is
    still found: that test needs no colour)."""
    sample = rgb[::4, ::4].astype(np.int16)
    return int((sample.max(axis=2) - sample.min(axis=2)).max(initial=0)) <= 2


def stored_cell(box: tuple[int, int, int, int], contour: list) -> FoundCell:
    """A stored cell as the cutter needs it: its box (centred on) and its outline (the card's
    background is applied outside it)."""
    outline = np.asarray(contour, np.int32).reshape(-1, 2)
    return FoundCell(tuple(int(v) for v in box), outline, None, 0, frozenset())  # type: ignore[arg-type]


def cell_model_inputs(data: bytes, rgb: np.ndarray, reduced_by: int, cells: Sequence[FoundCell], um_per_px: float,
                      single_cell_crop: bool, prep, side_um: float, cell_crops: str = "whole") -> np.ndarray:
    """What a cell model is given for ``cells`` of one image (bytes ``data``, decoded for the
    finder as ``rgb`` at 1/``reduced_by``): uint8 (N, S, S, 3) through the card's preprocessing
    ``prep``. Each cell is cut out ``side_um`` wide with the card's background; a pre-cut
    single-cell crop is given whole when the card's ``cell_crops`` says so (models trained on
    whole crops), one input. The one definition classify and retrain-from-cell-labels share."""
    if single_cell_crop and cell_crops == "whole":
        whole = rgb if reduced_by == 1 else decode_rgb(data)
        return prep.apply(whole)[None]
    return np.stack([prep.apply(cut_out_for_model(rgb, c, um_per_px, side_um=side_um, out_px=prep.input_size,
                                                  prep=prep, reduced_by=reduced_by)) for c in cells])


def classify_cells(
    db: Database,
    predictor,  # core.inference.predict.Predictor of the cell model (that module runs this one)
    version_id: int,
    todo: list[tuple[int, str]],
    expected_sha: dict[int, str],
    summary: ClassifySummary,
    cancel: threading.Event | None = None,
    *,
    workers: int | None = None,
    fields_per_batch: int = FIELDS_PER_BATCH,
    count_images: bool = True,
    on_batch: CellBatchHook | None = None,
    image_kind: str | None = None,
) -> Job[ClassifySummary]:
    """Find and classify the cells of the images ``todo`` ((image_id, path)) with the cell model
    ``predictor`` (version ``version_id``). Counts go into ``summary`` (n_cells, n_cell_images,
    n_cells_classified; with ``count_images`` also n_predicted/n_errors per image, as when the
    cell model is the only one running). A file that cannot be read is recorded with its
    reason and the batch goes on. ``image_kind``: what the images are (core/cells/finder.py
    IMAGE_KINDS: auto, fields or crops), as the lab declares it, stored in the search's finder
    name: an image searched with another kind (and no cell labelled) is searched again. None (not
    said): an image this finder searched with any kind keeps that search, others are "auto"."""
    finder, _ = _finders(image_kind)  # a bad kind is refused here, before any work
    find_kind = image_kind or "auto"
    summary.cell_image_kind = find_kind
    cancel = cancel or threading.Event()
    card = predictor.card
    prep = predictor.prep
    side_um = card.cut_out_side_um
    runtime = predictor.runtime
    # a retrained model's guard admits the reviewed lab's cells by their lab signature too
    with_signatures = getattr(predictor.guard, "has_lab", False)
    max_bytes = db.settings.max_file_bytes
    workers = workers or min(8 if predictor.plan.device.type == "cuda" else 2, os.cpu_count() or 2)
    meter = RateMeter()
    cells0 = summary.n_cells_classified
    yield Progress("cells", 0, len(todo), summary.device)

    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the pool, not from inside OpenCV

    def work(image_id: int, path: str, stored: _Stored | None) -> _FieldResult:
        res = _FieldResult(image_id, path)
        try:
            content = read_and_hash(to_fs(path), max_bytes)
            if content.sha256 != expected_sha[image_id]:
                raise FileChanged("the file changed after it was scanned; it will be re-scanned on the next run")
            data = content.data
            rgb, reduced_by = decode_for_cells(data)
            if stored is None:
                res.found = find_cells(rgb, reduced_by=reduced_by, image_kind=find_kind)
                if not res.found.single_cell_crop and _colourless(rgb):  # said, not guessed at
                    res.found = FieldCells((), res.found.um_per_px, GRAYSCALE, res.found.n_red_cells, False)
                res.single_cell_crop = res.found.single_cell_crop
                um = res.found.um_per_px
                cells = [(("new", n), c) for n, c in enumerate(res.found.cells)]
            else:
                res.single_cell_crop = stored.single_cell_crop
                um = stored.um_per_px
                cells = [(("id", cid), stored_cell(box, contour)) for cid, box, contour in stored.cells]
            if not cells:
                return res
            if res.single_cell_crop and card.cell_crops == "whole":
                cells = cells[:1]
            res.keys = tuple(k for k, _ in cells)
            if res.single_cell_crop:  # the image's own prediction is its central cell's
                res.crop_cell = max(0, central_index([c for _, c in cells], rgb.shape[1] * reduced_by,
                                                     rgb.shape[0] * reduced_by))
            res.cutouts = cell_model_inputs(data, rgb, reduced_by, [c for _, c in cells], um, res.single_cell_crop,
                                            prep, side_um, card.cell_crops)
            if with_signatures:
                res.signatures = lab_signatures(rgb, reduced_by, [c for _, c in cells], um, side_um)
        except FileChanged as exc:
            res.error, res.changed = str(exc), True
        except ImageError as exc:
            res.error = str(exc)
        except Exception as exc:  # one bad file never stops the batch
            log.exception("unexpected error finding the cells of %s", display(path))
            res.error = f"unexpected error: {exc}"
        return res

    def assess(results: list[_FieldResult]) -> Assessment | None:
        arrays = [r.cutouts for r in results if r.cutouts is not None]
        if not arrays:
            return None
        batch = np.concatenate(arrays)
        sigs = (np.concatenate([r.signatures for r in results if r.cutouts is not None])
                if with_signatures else None)
        bs = predictor.batch_size
        parts = [predictor.assess(batch[i:i + bs], None if sigs is None else sigs[i:i + bs])
                 for i in range(0, len(batch), bs)]
        probs = np.concatenate([p.probs for p in parts])
        if any(p.guard_distance is None or p.outside is None for p in parts):
            return Assessment(probs, None, None)
        return Assessment(probs, np.concatenate([p.guard_distance for p in parts]),
                          np.concatenate([p.outside for p in parts]),
                          None if any(p.colour is None for p in parts) else np.concatenate([p.colour for p in parts]))

    def restored_here(results: list[_FieldResult], complete: list[int], restore: dict[int, int]) -> dict[int, int]:
        """Of ``restore`` (image id -> its search's cells), the images this batch made count again."""
        return {i: restore[i] for i in [r.image_id for r in results if r.error is None] + complete if i in restore}

    def write_once(results: list[_FieldResult], assessment: Assessment | None, complete: list[int],
                   restore: dict[int, int]) -> None:
        with db.session() as s:  # one transaction per batch
            ok = [r for r in results if r.error is None]
            for image_id in restored_here(results, complete, restore):
                _restore_search(s, image_id, finder)
            for r in ok:
                if r.found is not None:
                    store_field_cells(s, r.image_id, r.found, finder)
            new_ids = {}
            fresh = [r.image_id for r in ok if r.found is not None and r.found.cells]
            if fresh:
                new_ids = {(i, n): cid for cid, i, n in s.execute(
                    select(Cell.id, Cell.image_id, Cell.number).where(
                        Cell.image_id.in_(fresh), Cell.finder == finder))}
            if assessment is not None:
                cell_ids, crop_rows = [], []
                for r in ok:
                    first = len(cell_ids)
                    for key in r.keys:
                        cell_ids.append(new_ids[(r.image_id, key[1])] if key[0] == "new" else key[1])
                    if r.single_cell_crop and r.keys:
                        crop_rows.append((r.image_id, first + r.crop_cell))
                rows = prediction_rows(cell_ids, assessment, version_id, card, runtime)
                for row in rows:
                    row["cell_id"] = row.pop("image_id")
                insert_ignore(s, CellPrediction.__table__, rows, ["cell_id", "model_version_id"])
                if crop_rows:  # a single-cell crop: the cell's figures are the image's too
                    image_rows = [dict(rows[k], image_id=image_id) for image_id, k in crop_rows]
                    for row in image_rows:
                        row.pop("cell_id")
                    insert_ignore(s, Prediction.__table__, image_rows, ["image_id", "model_version_id"])
            if ok:  # read and used now: an error an earlier run left on these files is stale
                s.execute(update(ImageFile).where(ImageFile.image_id.in_([r.image_id for r in ok]),
                                                  ImageFile.error.is_not(None)).values(error=None))
            failed = [(r.image_id, r.path, r.error) for r in results if r.error is not None]
            for r in results:
                if r.error is None:
                    continue
                if r.changed:  # the file no longer holds that image: unlink it, the next scan re-reads it
                    s.execute(update(ImageFile).where(ImageFile.path == r.path, ImageFile.image_id == r.image_id)
                              .values(error=r.error, image_id=None, size=UNTRUSTED_STAT, mtime_ns=UNTRUSTED_STAT))
                else:
                    s.execute(update(ImageFile).where(ImageFile.path == r.path).values(error=r.error))
            if on_batch is not None:
                on_batch(s, [r.image_id for r in ok] + complete, failed)

    def write(results: list[_FieldResult], assessment: Assessment | None, complete: list[int],
              restore: dict[int, int]) -> None:
        t0 = time.perf_counter()
        with_reconnect(lambda: write_once(results, assessment, complete, restore), "a batch of cells", db.settings)
        summary.db_seconds += time.perf_counter() - t0
        ok = [r for r in results if r.error is None]
        failed = [r for r in results if r.error is not None]
        found = [r.found for r in ok if r.found is not None]
        summary.n_cells += sum(len(f.cells) for f in found)
        summary.n_cell_images += sum(1 for f in found if f.cells)
        summary.n_cell_grayscale += sum(1 for f in found if f.scale_source == GRAYSCALE)
        summary.n_cells_classified += sum(len(r.keys) for r in ok)
        restored = restored_here(results, complete, restore)
        summary.n_cell_images_restored += len(restored)
        summary.n_cells_restored += sum(restored.values())
        summary.n_cell_errors += len(failed)
        if count_images:
            summary.n_predicted += len(ok) + len(complete)
            summary.n_errors += len(failed)
        known = {p for p, _ in summary.errors}
        summary.errors.extend((display(r.path), r.error) for r in failed[: max(0, 200 - len(summary.errors))]
                              if display(r.path) not in known)

    chunks = [todo[i:i + fields_per_batch] for i in range(0, len(todo), fields_per_batch)]
    done = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="hemascan-cells") as pool:
        inflight: deque[tuple[list[Future], list[int], dict[int, int]]] = deque()
        next_chunk = 0

        def submit_next() -> None:
            nonlocal next_chunk
            chunk = chunks[next_chunk]
            next_chunk += 1
            with db.session() as s:
                stored = _stored_state(s, version_id, [i for i, _ in chunk], image_kind)
            # an image searched before whose cells are all classified needs no reading
            complete = [i for i, _ in chunk if i in stored and not stored[i].cells]
            restore = {i: st.restore_cells for i, st in stored.items() if st.restore_cells is not None}
            inflight.append(([pool.submit(work, i, p, stored.get(i)) for i, p in chunk
                              if i not in stored or stored[i].cells], complete, restore))

        while next_chunk < len(chunks) or inflight:
            while next_chunk < len(chunks) and len(inflight) < 2 and not cancel.is_set():
                submit_next()  # the pool works on the next batch while this one is classified
            if not inflight:
                break
            futures, complete, restore = inflight.popleft()
            results = [f.result() for f in futures]
            write(results, assess(results), complete, restore)
            done = min(len(todo), done + fields_per_batch)
            n_cells = summary.n_cells_classified - cells0
            rate = meter.rate(n_cells)
            yield Progress("cells", done, len(todo), f"{meter.rate(done):.1f} fields/s, {rate:.0f} cells/s",
                           extra={"rate": meter.rate(done), "cells_rate": rate, "cells": n_cells,
                                  "eta_s": meter.eta(done, len(todo)), "device": summary.device})
            if cancel.is_set():
                summary.cancelled = True
                for batch, _, _ in inflight:  # not started: dropped; started: finished but not written
                    for f in batch:
                        f.cancel()
                inflight.clear()
                break
    summary.seconds += meter.elapsed()
    return summary
