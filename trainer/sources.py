"""The pipeline's data sources (trainer/pipeline.py): each gives preprocessed uint8 arrays
(:class:`~trainer.pipeline.TrainingArrays`) and a train / validation / test ``Split``.

* :func:`from_class_folders`: a folder of class folders (``train``), split by patient, at random or all.
* :func:`from_reviewed_labels`: the reviewers' labels in the database (``retrain``), each image on
  its fixed side; optionally a base folder on the training side.
* :func:`from_reviewed_cells`: the reviewers' cell labels (``retrain`` of a cell model), each cell
  cut out as classify cuts it, on its field's fixed side.
* cut-out cells or any other arrays: build ``TrainingArrays`` directly (input_kind "cell").
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.errors import HemascanError
from core.imaging.duplicates import hamming, hash_int
from core.imaging.fspath import to_fs
from core.imaging.images import decode_rgb, read_file
from core.imaging.preprocessing import Preprocessing
from core.jobs import Progress
from core.review.reviewed import SPLIT_VAL, cell_inputs, reviewed_cells, reviewed_images
from core.storage import Database
from trainer.data import (
    Dataset,
    Split,
    check_trainable,
    compute_hashes,
    dedup_indices,
    load_images,
    make_split,
    scan_class_folders,
    subject_of,
)
from trainer.pipeline import TrainingArrays

MIN_PER_CLASS = 10  # fewer training images of a class: retrain says the class has too few


class SourceError(HemascanError):
    """A data source that cannot give training data (bad base folder...)."""


@dataclass
class FolderSource:
    data: TrainingArrays
    split: Split  # as made (its description goes in the card)
    used: Split  # what the stages train on: ``split`` with near-duplicates dropped from training when asked
    dataset: Dataset


def from_class_folders(root: Path, prep: Preprocessing, taxonomy: str | None = None, split: str = "patient",
                  seed: int = 0, fold: int = 4, dedup_train: bool = False, cache_dir: Path | None = None):
    """Class folders -> arrays and split (refused before any training when a class has too few
    training images). A job generator (stage "load"); returns a :class:`FolderSource`."""
    yield Progress("load", 0, None, "reading class folders")
    ds = scan_class_folders(Path(root), taxonomy)
    if split == "patient" or dedup_train or split == "all":
        compute_hashes(ds)
    made = make_split(ds, split, seed=seed, fold=fold)
    train_idx = dedup_indices(ds, made.train) if dedup_train else made.train
    used = Split(made.method, train_idx, made.val, made.test, made.info)
    check_trainable(ds, train_idx, made)
    images = load_images(ds, prep, cache_dir)
    yield Progress("load", len(ds), len(ds), f"{len(ds)} images, split {made.method}: "
                   f"{len(train_idx)}/{len(made.val)}/{len(made.test)}")
    data = TrainingArrays(images, ds.labels, list(ds.classes), ds.taxonomy, prep,
                          subjects=[subject_of(p) for p in ds.paths], sources=[Path(root).name] * len(ds))
    return FolderSource(data, made, used, ds)


@dataclass
class Item:
    path: str  # as stored in the database (core.imaging.fspath), or a plain path for base data
    label: int
    sha256: str
    image_id: int | None = None  # None for base-data images
    source: str = "reviewed"  # reviewed / base
    cell_id: int | None = None  # a reviewed cell of the image (a cell model's retrain)


@dataclass
class TrainingData:
    taxonomy: str
    classes: list[str]
    train: list[Item]
    val: list[Item]
    n_missing_files: int = 0
    base: dict[str, Any] = field(default_factory=dict)
    # images reviewers called "Other" (no class fits): never a training target; the guard
    # is refitted with them as examples of what lies outside the model's experience
    other: list[Item] = field(default_factory=list)

    def summary(self) -> dict:
        per = {c: {"train": 0, "val": 0, "base": 0} for c in self.classes}
        for it in self.train:
            per[self.classes[it.label]]["base" if it.source == "base" else "train"] += 1
        for it in self.val:
            per[self.classes[it.label]]["val"] += 1
        too_few = [c for c, n in per.items() if n["train"] + n["base"] < MIN_PER_CLASS]
        return {"taxonomy": self.taxonomy, "classes": self.classes, "per_class": per, "too_few": too_few,
                "min_per_class": MIN_PER_CLASS,
                "n_train_reviewed": sum(1 for it in self.train if it.source != "base"),
                "n_train_base": sum(1 for it in self.train if it.source == "base"),
                "n_train": len(self.train), "n_val": len(self.val),
                "n_missing_files": self.n_missing_files, "base_data": self.base}



def collect_training_data(db: Database, taxonomy: str, classes: list[str], cfg) -> TrainingData:
    """Reviewed images (train/val by their fixed side) plus, optionally, a base dataset
    folder on the training side, minus any base image that is (nearly) a validation image.
    ``cfg`` (a RetrainConfig) gives sources, val_fraction, phash_distance and base_data."""
    r = reviewed_images(db, taxonomy, classes, cfg.sources, cfg.val_fraction, cfg.phash_distance)
    labels, sides, files, other_files, ph = r.labels, r.sides, r.files, r.other, r.val_hashes
    data = TrainingData(taxonomy, list(classes), [], [])
    for image_id in sorted(labels):
        if image_id not in files:
            data.n_missing_files += 1
            continue
        path, sha = files[image_id]
        it = Item(path, classes.index(labels[image_id]), sha, image_id)
        (data.val if sides[image_id] == SPLIT_VAL else data.train).append(it)
    data.other = [Item(path, -1, sha, image_id) for image_id, (path, sha) in sorted(other_files.items())]
    if cfg.base_data:
        ds = compute_hashes(scan_class_folders(Path(cfg.base_data), taxonomy))
        if list(ds.classes) != list(classes):
            raise SourceError(f"base data classes {ds.classes} differ from the model's {classes}")
        val_sha = set(ph)
        val_ph = np.array([hash_int(p) for p in ph.values()], dtype=np.uint64)
        reviewed_sha = {it.sha256 for it in data.train}
        dropped_val, dropped_dup = 0, 0
        for k, p in enumerate(ds.paths):
            sha = ds.sha256[k]
            if sha in val_sha or (len(val_ph) and hamming(val_ph, int(ds.phash[k])).min() <= cfg.phash_distance):
                dropped_val += 1
                continue
            if sha in reviewed_sha:  # the reviewed label wins
                dropped_dup += 1
                continue
            data.train.append(Item(str(p), int(ds.labels[k]), sha, None, "base"))
        data.base = {"folder": str(cfg.base_data), "n_found": len(ds), "n_used": len(ds) - dropped_val - dropped_dup,
                     "n_dropped_near_validation": dropped_val, "n_dropped_reviewed": dropped_dup}
    return data


def load_items(items: list[Item], prep, cache: dict | None = None, workers: int = 2,
               on_progress: Callable[[int, int], None] | None = None, cancel=None) -> np.ndarray:
    """Decode + ``prep.apply`` -> uint8 (N, S, S, 3). ``cache`` (optional dict) keeps
    decoded inputs by (SHA-256, preprocessing) across runs in one process."""

    key_p = json.dumps(prep.to_dict(), sort_keys=True)
    s = prep.input_size
    out = np.empty((len(items), s, s, 3), dtype=np.uint8)

    def one(k: int):
        it = items[k]
        ck = (it.sha256, key_p)
        if cache is not None and ck in cache:
            return k, cache[ck]
        arr = prep.apply(decode_rgb(read_file(to_fs(it.path) if it.image_id is not None else it.path)))
        if cache is not None:
            cache[ck] = arr
        return k, arr

    done = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for k, arr in pool.map(one, range(len(items))):
            out[k] = arr
            done += 1
            if on_progress is not None and (done % 64 == 0 or done == len(items)):
                on_progress(done, len(items))
            if cancel is not None and cancel.is_set():
                break
    return out


@dataclass
class ReviewedSource:
    data: TrainingArrays | None  # None: cancelled while decoding
    split: Split | None
    items: TrainingData
    other: np.ndarray | None  # images reviewers called "Other" (preprocessed), for the guard
    signatures: np.ndarray | None = None  # cells: each one's lab signature, in the order of data's images


def from_reviewed_labels(db: Database, taxonomy: str, classes: list[str], cfg, prep: Preprocessing,
                    input_kind: str = "field", cell_side_um: float | None = None,
                    cache: dict | None = None, cancel=None):
    """The reviewers' labels -> arrays (training side first, then validation) and split. A job
    generator (stages "data", "load"); returns a :class:`ReviewedSource` (without data when
    cancelled while decoding). Fewer than 2 training images: SourceError."""
    yield Progress("data", 0, None, "collecting reviewed labels")
    items = collect_training_data(db, taxonomy, classes, cfg)
    summary = items.summary()
    if len(items.train) < 2:
        raise SourceError(f"not enough reviewed images to train on ({len(items.train)} on the training side, "
                          f"{len(items.val)} on validation); review more images first")
    yield Progress("data", 1, 1, f"{len(items.train)} training, {len(items.val)} validation images", {"data": summary})
    all_items = items.train + items.val
    yield Progress("load", 0, len(all_items), "decoding images")
    x = load_items(all_items, prep, cache, cfg.decode_workers, None, cancel)
    if cancel is not None and cancel.is_set():
        return ReviewedSource(None, None, items, None)
    y = np.array([it.label for it in all_items], dtype=np.int64)
    yield Progress("load", len(all_items), len(all_items), "images decoded")
    other = (load_items(items.other, prep, cache, cfg.decode_workers) if items.other
             else np.zeros((0, prep.input_size, prep.input_size, 3), np.uint8))
    data = TrainingArrays(x, y, list(classes), taxonomy, prep, input_kind=input_kind, cell_side_um=cell_side_um,
                          sources=[it.source for it in all_items])
    split = Split("reviewed labels, fixed train/val by content hash", np.arange(len(items.train)),
                  np.arange(len(items.train), len(all_items)), np.zeros(0, dtype=int))
    return ReviewedSource(data, split, items, other)


def from_reviewed_cells(db: Database, taxonomy: str, classes: list[str], cfg, prep: Preprocessing,
                        cell_side_um: float, cell_crops: str = "whole", cancel=None):
    """The reviewers' cell labels -> cut-outs (training side first, then validation) and split,
    as :func:`from_reviewed_labels` for images: each cell cut out by the function classify uses
    (the card's side, background and crop rule), on its field's fixed side. A job generator
    (stages "data", "load"); returns a :class:`ReviewedSource`. Fewer than 2 training cells:
    SourceError. A base folder is not used here (cells come from the lab's own fields)."""
    yield Progress("data", 0, None, "collecting reviewed cells")
    kept, other_cells = reviewed_cells(db, taxonomy, classes, cfg.sources, cfg.val_fraction, cfg.phash_distance)
    yield Progress("load", 0, len(kept), "cutting out the reviewed cells")
    sigs: list = []
    x, ids, failed = cell_inputs(kept, prep, cell_side_um, cell_crops, signatures=sigs)
    if cancel is not None and cancel.is_set():
        return ReviewedSource(None, None, TrainingData(taxonomy, list(classes), [], []), None)
    by_id = {c.cell_id: c for c in kept}
    items = TrainingData(taxonomy, list(classes), [], [], n_missing_files=len(kept) - len(ids))
    order: dict[str, list[int]] = {"train": [], "val": []}
    for k, cid in enumerate(ids):
        c = by_id[cid]
        it = Item(c.path, classes.index(c.label), c.sha256, c.image_id, cell_id=cid)
        side = "val" if c.side == SPLIT_VAL else "train"
        (items.val if side == "val" else items.train).append(it)
        order[side].append(k)
    summary = items.summary()
    if len(items.train) < 2:
        raise SourceError(f"not enough reviewed cells to train on ({len(items.train)} on the training side, "
                          f"{len(items.val)} on validation); review more cells first")
    yield Progress("data", 1, 1, f"{len(items.train)} training, {len(items.val)} validation cells", {"data": summary})
    pick = np.array(order["train"] + order["val"], dtype=np.int64)
    x = x[pick] if len(pick) else x
    signatures = np.asarray(sigs, np.float32)[pick] if len(pick) else None
    y = np.array([it.label for it in items.train + items.val], dtype=np.int64)
    yield Progress("load", len(ids), len(kept), f"{len(ids)} cells cut out"
                   + (f"; {len(failed)} left out (their field changed or cannot be read)" if failed else ""))
    other, _, _ = cell_inputs(other_cells, prep, cell_side_um, cell_crops)
    data = TrainingArrays(x, y, list(classes), taxonomy, prep, input_kind="cell", cell_side_um=cell_side_um,
                          cell_crops=cell_crops, sources=["reviewed"] * len(y))
    split = Split("reviewed cells, fixed train/val by their field's content hash", np.arange(len(items.train)),
                  np.arange(len(items.train), len(y)), np.zeros(0, dtype=int))
    return ReviewedSource(data, split, items, other, signatures)
