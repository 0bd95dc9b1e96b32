"""Retrain from corrected labels: training data from the database, a fixed train /
validation assignment per image, a fine-tuning job, a fair comparison with the active
version, promotion and roll-back.

The job ``retrain(db, paths, config, progress=None, cancel=None)`` is a ``core.jobs``
generator: it yields ``Progress`` (stages ``data``, ``load``, ``train``, ``validate``,
``compare``, ``package``; per-epoch loss/accuracy in ``extra["history"]``) and returns a
summary dict. CLI (``hemascan retrain``) and GUI (Retrain dialog) drive the same job.

Safety:

* Every run has a ``training_runs`` row: ``running`` -> ``completed`` / ``cancelled`` /
  ``failed``. A running run holds a lease renewed by a heartbeat (core/models/runs.py); a
  process killed mid-run stops renewing it, and once it has expired the next retrain (or
  :func:`fail_stale_runs`) on any seat marks it ``failed``.
* The new package (weights, guard, int8 model) is written whole in a private folder of the
  registry (core.models.registry.package_workdir) after training finished, then copied into place
  by ``register_package`` (temp dir + rename): a cancelled or killed run leaves no model folder,
  and the next start removes the private folder a killed run left (core.app.bootstrap).
* The new version is registered with ``parent`` = the active version but NOT activated;
  :func:`promote` activates it, :func:`rollback` activates any earlier version. Every
  activation is appended to the ``model_activations`` table (core.models.registry.activate_version).

Validation sides (fixed per image forever) and the reviewed labels are read by
``core.review.reviewed``: the trainer holds no SQL.
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.config import Paths
from core.storage import Database
from core.imaging.duplicates import hamming, hash_int
from core.review.reviewed import (  # noqa: F401  (re-exported: the retrain API keeps these names)
    retrain_parent,
    SPLIT_TRAIN,
    SPLIT_VAL,
    assign_splits,
    reviewed_images,
    reviewed_labels,
    reviewed_summary,
)
from core.errors import HemascanError
from core.jobs import Progress
from core.models.registry import (  # noqa: F401  (re-exported: the retrain API keeps these names)
    VersionRef,
    activate,
    activation_log,
    lineage,
    promote,
    rollback,
)
from core.models.runs import fail_stale_runs, finish_run, start_run  # noqa: F401
from core.imaging.fspath import to_fs
from core.imaging.images import decode_rgb, read_file
from core.inference.runtime import runtime_plan
from core.models.figures import parent_record
from core.models.labsample import lab_sample
from core.models.package import ModelCard, load_model, save_package, verify_package
from core.imaging.preprocessing import Preprocessing
from core.models.registry import package_path, package_workdir, register_package, version_package
from core.models.guard import load_guard
from trainer.quantize import _write_card, add_int8
from trainer.data import compute_hashes, scan_class_folders

log = logging.getLogger(__name__)

MIN_VAL_FOR_CALIBRATION = 20
MIN_VAL_FOR_SELECTION = 20  # fewer validation images: keep the last epoch, no early stopping
MIN_PER_CLASS = 10  # fewer training images of a class: retrain says the class has too few
FINETUNE_LR = 3e-3  # last 8 stages, class-balanced, >= 60 steps: measured in docs/retrain.md
SMALL_VAL = 100  # below this many validation images a difference of a few % is noise



class RetrainError(HemascanError):
    """Retraining cannot start or go on (no reviewed labels, bad options...)."""


@dataclass
class RetrainConfig:
    epochs: int = 4  # at least; few images get more epochs (min_steps)
    min_steps: int = 60  # optimiser steps at least, whatever the number of reviewed images
    train_last: int | None = 8  # fine-tuning trains the last N stages (engine.stages), head first: measured in docs/retrain.md
    balance: str = "sampler"  # class-balanced sampling (engine.FitOptions.balance)
    patience: int | None = 3
    replay: str = "auto"  # auto: a class a fine-tune would forget (replay_needed) -> head refit with feature replay (trainer/replay.py); on; off
    arch: str | None = None  # None: the active version's architecture
    from_scratch: bool = False
    base_data: str | None = None  # folder of class folders added to the training side
    input_size: int | None = None  # from scratch only (default: the parent's); fine-tuning keeps the parent's preprocessing
    arch_params: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True  # from scratch: ImageNet weights where the architecture has them
    batch_size: int = 32
    lr: float | None = None  # None: 3e-4 fine-tuning, 1e-3 from scratch
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    freeze_blocks: int | None = None  # effnet_lite0: keep stem + first N blocks fixed (faster); None: as the parent was trained (fine-tuning), else 0
    val_fraction: float = 0.2
    phash_distance: int = 4
    sources: tuple[str, ...] = ("human",)  # label-event sources used as training labels
    augment: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: int | None = None
    device: str | None = None  # None/auto: CUDA when available
    name: str | None = None
    notes: str = ""
    bootstrap: int = 2000
    decode_workers: int = 2
    int8: bool = True  # add a checked int8 model for fast CPU classification (trainer/quantize.py)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RetrainConfig":
        d = dict(d)
        if "sources" in d:
            d["sources"] = tuple(d["sources"])
        return cls(**d)


@dataclass
class Item:
    path: str  # as stored in the database (core.imaging.fspath), or a plain path for base data
    label: int
    sha256: str
    image_id: int | None = None  # None for base-data images
    source: str = "reviewed"  # reviewed / base


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



def collect_training_data(db: Database, taxonomy: str, classes: list[str], cfg: RetrainConfig) -> TrainingData:
    """Reviewed images (train/val by their fixed side) plus, optionally, a base dataset
    folder on the training side, minus any base image that is (nearly) a validation image."""
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
            raise RetrainError(f"base data classes {ds.classes} differ from the model's {classes}")
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


# ---- training runs ------------------------------------------------------------------------

# ---- comparison ----------------------------------------------------------------------------

def bootstrap_difference(correct_new: np.ndarray, correct_old: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired bootstrap of accuracy(new) - accuracy(old) on the same images."""
    a = np.asarray(correct_new, dtype=np.float64)
    b = np.asarray(correct_old, dtype=np.float64)
    n = len(a)
    diff = float(a.mean() - b.mean()) if n else 0.0
    if n == 0:
        return {"difference": 0.0, "ci95": [float("nan"), float("nan")], "n": 0, "n_boot": 0}
    rng = np.random.default_rng(seed)
    d = a - b
    boots = np.empty(n_boot)
    for start in range(0, n_boot, 256):
        idx = rng.integers(0, n, size=(min(256, n_boot - start), n))
        boots[start : start + len(idx)] = d[idx].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"difference": diff, "ci95": [float(lo), float(hi)], "n": int(n), "n_boot": int(n_boot),
            "p_new_better": float((boots > 0).mean()),
            "n_fixed": int(((a == 1) & (b == 0)).sum()), "n_broken": int(((a == 0) & (b == 1)).sum())}


def points(x: float) -> str:
    """An accuracy difference in percentage points, signed: '+3', '-8', '+0.5'."""
    v = 100.0 * x
    return f"{v:+.0f}" if abs(v) >= 10 or float(v).is_integer() else f"{v:+.1f}"


def difference_range(ci95) -> str:
    """The 95% range of an accuracy difference in plain words (a paired bootstrap, not named)."""
    lo, hi = ci95
    return f"95% range of the difference: could be from {points(lo)} to {points(hi)} points"


def compare_predictions(y: np.ndarray, probs_new: np.ndarray, probs_old: np.ndarray, classes: list[str],
                        items: list[Item] | None = None, names: tuple[str, str] = ("new", "active"),
                        n_boot: int = 2000, seed: int = 0) -> dict:
    """Both versions on the same images: metrics, confusion matrices, changed predictions,
    bootstrap interval of the accuracy difference and a warning when it cannot tell."""
    from .metrics import classification_metrics  # heavy: imports scikit-learn, torch

    y = np.asarray(y)
    mn = classification_metrics(y, probs_new, classes)
    mo = classification_metrics(y, probs_old, classes)
    pn, po = probs_new.argmax(1), probs_old.argmax(1)

    def brief(m):
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "ece": m["ece"], "nll": m["nll"],
                # a class without validation images has no recall (None, null in the card), not 0
                "recall": {c: m["per_class"][c]["recall"] if m["per_class"][c]["support"] else None
                           for c in classes},
                "support": {c: m["per_class"][c]["support"] for c in classes},
                "confusion_matrix": m["confusion_matrix"]}

    changes = []
    for k in np.nonzero(pn != po)[0]:
        it = items[k] if items is not None else None
        changes.append({"index": int(k), "image_id": it.image_id if it else None, "path": it.path if it else None,
                        "label": classes[int(y[k])], "old": classes[int(po[k])], "new": classes[int(pn[k])],
                        "old_confidence": float(probs_old[k].max()), "new_confidence": float(probs_new[k].max())})
    boot = bootstrap_difference(pn == y, po == y, n_boot, seed)
    n = len(y)
    warning = None
    lo, hi = boot["ci95"]
    if n == 0:
        warning = "no validation images: the versions cannot be compared; review more images"
    elif n < SMALL_VAL or lo <= 0.0 <= hi:
        warning = (f"too few validation images to tell the versions apart: accuracy differs by "
                   f"{points(boot['difference'])} points ({difference_range((lo, hi))}) on {n} images"
                   + (f"; fewer than {SMALL_VAL} validation images" if n < SMALL_VAL else ""))
    if n and hi < 0.0:
        verdict = "worse"
    elif n and lo > 0.0 and n >= SMALL_VAL:
        verdict = "better"
    else:
        verdict = "undecided"
    return {"names": list(names), "classes": list(classes), "n": int(n), names[0]: brief(mn), names[1]: brief(mo),
            "new": brief(mn), "old": brief(mo), "accuracy_difference": boot, "changed": changes,
            "n_changed": len(changes), "warning": warning, "verdict": verdict}


def recall_or_none(side: dict, c: str) -> float | None:
    """A class's recall on one side of a comparison; None when the class has no validation
    image (stored as null, or as 0.0 with support 0 by a card written before null)."""
    r = (side.get("recall") or {}).get(c)
    support = side.get("support") or {}
    if r is None or (c in support and not support[c]):
        return None
    return float(r)


SHARP_RECALL_DROP = 0.5  # a class's recall falling this much (on >= 2 of its images) is a loss, however few the images


def recall_losses(cmp: dict) -> list[str]:
    """The classes the new version loses on the validation images: recall fallen to 0 from
    above 0, or fallen sharply (SHARP_RECALL_DROP, on at least 2 images of the class); e.g.
    'Pre-B recall 0.667 -> 0.000 (3 images)'."""
    old, new = cmp.get("old") or {}, cmp.get("new") or {}
    out = []
    for c in cmp.get("classes") or []:
        a, b = recall_or_none(old, c), recall_or_none(new, c)
        n = int((new.get("support") or old.get("support") or {}).get(c) or 0)
        if a is None or b is None or n == 0:
            continue
        if (a > 0 and b == 0) or (n >= 2 and a - b >= SHARP_RECALL_DROP):
            out.append(f"{c} recall {a:.3f} -> {b:.3f} ({n} image{'s' if n != 1 else ''})")
    return out


def promotion_advice(cmp: dict | None) -> tuple[str, str | None]:
    """What Promote must say before making a new version active: ("better", None) when the
    comparison shows it is better; ("worse" | "undecided", one sentence why, with its basis:
    the number of validation images both versions were run on) otherwise, for a confirmation
    (GUI) or a refusal without --force (CLI). Worse: the whole interval below zero, or a lower
    accuracy with a class lost (recall_losses), however few the images."""
    if not cmp or not cmp.get("n"):
        return "undecided", ("the new version was not compared with the active one (no validation images): "
                             "nothing shows it is better")
    d = cmp["accuracy_difference"]
    lo, hi = d["ci95"]
    old = cmp.get("old_name") or "the active version"
    n = cmp["n"]
    acc_old, acc_new = (cmp.get("old") or {}).get("accuracy"), (cmp.get("new") or {}).get("accuracy")
    accuracy = (f"accuracy {acc_old:.3f} -> {acc_new:.3f}" if acc_old is not None and acc_new is not None
                else f"accuracy {d['difference']:+.1%}")
    losses = recall_losses(cmp)
    lost = f"; {', '.join(losses)}" if losses else ""
    if cmp.get("verdict") == "worse" or hi < 0.0 or (d["difference"] < 0.0 and losses):
        return "worse", (f"the new version is worse than {old} on the same {n} validation images: {accuracy} "
                         f"({difference_range((lo, hi))}){lost}")
    if cmp.get("verdict") == "better":
        return "better", None
    return "undecided", (f"the comparison cannot tell the new version from {old}: {accuracy} "
                         f"({difference_range((lo, hi))}) on the same {n} validation images"
                         + (f", fewer than the {SMALL_VAL} needed to tell a few points apart" if n < SMALL_VAL else "")
                         + lost)


def comparison_table(cmp: dict) -> str:
    """Plain-text side-by-side table (CLI)."""
    classes = cmp["classes"]
    a, b = cmp["old"], cmp["new"]
    name_old, name_new = cmp.get("old_name", "active"), cmp.get("new_name", "new")
    w = max(22, len(name_old) + 2, len(name_new) + 2)
    lines = [f"validation images: {cmp['n']}", f"{'':<22}{name_old:>{w}}{name_new:>{w}}"]
    lines.append(f"{'accuracy':<22}{a['accuracy']:>{w}.3f}{b['accuracy']:>{w}.3f}")
    lines.append(f"{'macro-F1':<22}{a['macro_f1']:>{w}.3f}{b['macro_f1']:>{w}.3f}")
    for c in classes:
        ra, rb = (recall_or_none(m, c) for m in (a, b))
        lines.append(f"{'recall ' + c:<22}" + "".join(f"{'n/a':>{w}}" if r is None else f"{r:>{w}.3f}"
                                                       for r in (ra, rb)))
    d = cmp["accuracy_difference"]
    lines.append(f"accuracy difference {points(d['difference'])} points ({difference_range(d['ci95'])}); "
                 f"fixed {d.get('n_fixed', 0)}, broken {d.get('n_broken', 0)}; "
                 f"predictions changed: {cmp['n_changed']}")
    for title, m in (("confusion " + name_old, a), ("confusion " + name_new, b)):
        lines.append(f"{title} (rows true, columns predicted: {', '.join(classes)})")
        for c, row in zip(classes, m["confusion_matrix"]):
            lines.append(f"  {c:<14}" + "".join(f"{v:>6}" for v in row))
    if cmp.get("warning"):
        lines.append("WARNING: " + cmp["warning"])
    return "\n".join(lines)


# ---- the job ---------------------------------------------------------------------------------

def _resolve_device(pref: str | None):
    """The training device from the runtime plan (core/inference/runtime.py); training computes in fp32."""
    import torch


    return torch.device(str(runtime_plan(device=pref, purpose="train").device))


def retrain(db: Database, paths: Paths, config: RetrainConfig | dict | None = None,
            progress: Callable[[Progress], None] | None = None, cancel: threading.Event | None = None,
            image_cache: dict | None = None, parent: VersionRef | None = None):
    """Fine-tune (or train from scratch) ``parent`` (None: the version active when the job
    starts) on the reviewed labels, compare with it on the same validation images, register
    the result (not active). A job generator; returns a summary dict with ``status``,
    ``version`` and ``comparison``."""
    import torch

    from core.models.architectures import build  # heavy: imports torch

    from .engine import FitOptions, _seed_all, fit, predict_logits  # heavy: imports scikit-learn, torch
    from .metrics import ece, fit_temperature, softmax, uncertain_threshold  # heavy: imports scikit-learn, torch

    cfg = config if isinstance(config, RetrainConfig) else RetrainConfig.from_dict(config or {})
    cancel = cancel or threading.Event()

    def emit(p: Progress) -> Progress:
        if progress is not None:
            progress(p)
        return p

    t0 = time.perf_counter()
    with db.session() as s:
        row = parent.row(s) if parent is not None else retrain_parent(s)
        parent = VersionRef.of(row)
        parent_path = version_package(s, parent, paths)
        parent_arch, pcard = row.architecture, dict(row.card or {})
    try:
        run_id = start_run(db, cfg.arch or parent_arch, cfg.to_dict(), parent.id, exclusive=True)
    except HemascanError as exc:
        raise RetrainError(str(exc)) from None
    status = "failed"
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = _resolve_device(cfg.device)
        taxonomy, classes = parent.taxonomy, list(pcard["classes"])
        arch = cfg.arch or parent_arch
        if not cfg.from_scratch and arch != parent_arch:
            raise RetrainError(f"fine-tuning keeps the active model's architecture ({parent_arch}); "
                               f"use from-scratch training for {arch}")
        parent_prep = Preprocessing.from_dict(pcard["preprocessing"])
        if cfg.from_scratch:  # the trainer's preprocessing (area, scale-bar corner masked), not the parent's
            from .engine import TrainConfig  # heavy: imports scikit-learn, torch

            tc = TrainConfig(data="", input_size=cfg.input_size or parent_prep.input_size)
            prep = tc.prep
        else:
            prep = parent_prep

        yield emit(Progress("data", 0, None, "collecting reviewed labels"))
        data = collect_training_data(db, taxonomy, classes, cfg)
        summary_data = data.summary()
        if len(data.train) < 2:
            raise RetrainError(f"not enough reviewed images to train on ({len(data.train)} on the training side, "
                               f"{len(data.val)} on validation); review more images first")
        yield emit(Progress("data", 1, 1, f"{len(data.train)} training, {len(data.val)} validation images",
                            {"data": summary_data}))

        def on_load(done, total):
            pass

        all_items = data.train + data.val
        yield emit(Progress("load", 0, len(all_items), "decoding images"))
        x_all = load_items(all_items, prep, image_cache, cfg.decode_workers, on_load, cancel)
        if cancel.is_set():
            status = "cancelled"
            finish_run(db, run_id, status, metrics={"data": summary_data})
            return {"status": status, "run_id": run_id, "data": summary_data, "history": []}
        y_all = np.array([it.label for it in all_items], dtype=np.int64)
        tr_idx = np.arange(len(data.train))
        va_idx = np.arange(len(data.train), len(all_items))
        yield emit(Progress("load", len(all_items), len(all_items), "images decoded"))

        # -- model, then the trainer's one training loop (engine.fit)
        _seed_all(cfg.seed)
        if cfg.from_scratch:
            kw = dict(cfg.arch_params)
            if cfg.pretrained and arch == "effnet_lite0":
                kw["pretrained"] = True
            model = build(arch, len(classes), **kw)
            arch_params = dict(cfg.arch_params)
        else:
            model, _ = load_model(parent_path, "cpu")
            arch_params = dict(pcard.get("arch_params") or {})
        freeze = cfg.freeze_blocks
        if freeze is None:
            freeze = 0 if cfg.from_scratch else int(((pcard.get("training_data") or {}).get("config") or {}).get("freeze_blocks") or 0)
        # Few labels: model selection and early stopping on a handful of validation images are
        # noise, so below MIN_VAL_FOR_SELECTION the last epoch is kept (the comparison still
        # runs on every validation image).
        select = len(va_idx) >= MIN_VAL_FOR_SELECTION
        opts = FitOptions(
            epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr or (1e-3 if cfg.from_scratch else FINETUNE_LR),
            weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs, patience=cfg.patience,
            balance=cfg.balance, augment=cfg.augment, seed=cfg.seed,
            freeze_first=freeze + 1 if freeze and arch == "effnet_lite0" else 0,
            train_last=None if cfg.from_scratch else cfg.train_last, min_steps=cfg.min_steps)
        replay = _replay_source(cfg, pcard, parent_path, summary_data, len(classes))
        if replay is not None:  # a class has too few reviewed images: refit the head, replaying the parent's classes
            from .guard import logits_and_embeddings  # heavy: imports torch
            from .replay import REPLAY_PER_CLASS, fit_head_with_replay, replay_embeddings, reviewed_embeddings  # heavy: imports torch

            yield emit(Progress("train", 0, None, f"{replay_reason(summary_data) or 'asked for'}: refitting the "
                                "classifier on your images and on the model's own memory of its classes",
                                {"method": "replay", "n_reviewed": len(tr_idx)}))
            model = model.to("cpu")
            real, real_y = reviewed_embeddings(model, x_all[tr_idx], y_all[tr_idx], prep, cfg.augment, "cpu", cfg.seed)
            replayed, replayed_y = replay_embeddings(replay[0], replay[1], REPLAY_PER_CLASS, cfg.seed)
            val_emb = None  # the validation images' embeddings: curves of how the refit does on them
            if len(va_idx):
                val_emb = (logits_and_embeddings(model, x_all[va_idx], prep, "cpu")[1], y_all[va_idx])
            fitted = yield from fit_head_with_replay(model, real, real_y, replayed, replayed_y, len(classes),
                                                     seed=cfg.seed, cancel=cancel, val=val_emb, progress=progress)
            fitted["method"] = (f"classifier head refitted on {len(tr_idx)} reviewed images (x4 views) and "
                                f"{len(replayed_y)} embeddings replayed from {parent.name}'s guard; backbone unchanged")
            device = torch.device("cpu")
        else:
            run_dir = paths.data_dir / "runs" / f"retrain-{run_id}"  # checkpoints; removed when the run ends
            try:
                fitted = yield from fit(model, x_all, y_all, tr_idx, va_idx, classes, prep, device, opts,
                                        out_dir=run_dir, checkpoint_config=cfg.to_dict(), progress=progress,
                                        cancel=cancel, select_on_val=select)
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
            fitted["method"] = f"fine-tuned the last {cfg.train_last or 'all'} stages from {parent.name}"
        history, train_seconds = fitted["history"], fitted["train_seconds"]
        best = fitted["best"]
        if fitted["status"] != "completed":
            status = "cancelled"
            finish_run(db, run_id, status, metrics={"data": summary_data, "history": history,
                                                     "train_seconds": train_seconds})
            return {"status": status, "run_id": run_id, "data": summary_data, "history": history,
                    "train_seconds": train_seconds}

        # -- calibration and comparison on the same validation images
        yield emit(Progress("compare", 0, 2, "evaluating both versions on the validation images"))
        temperature = float(pcard.get("temperature") or 1.0) if not cfg.from_scratch else 1.0
        threshold = pcard.get("uncertain_threshold") if not cfg.from_scratch else None
        calib: dict[str, Any] = {"source": "parent" if not cfg.from_scratch else "none"}
        comparison = None
        val_metrics = None
        if len(va_idx):
            xv, yv = x_all[va_idx], y_all[va_idx]
            logits_new = predict_logits(model, xv, prep, device)
            if len(va_idx) >= MIN_VAL_FOR_CALIBRATION:
                temperature = fit_temperature(logits_new, yv)
                pv = softmax(logits_new, temperature)
                threshold = uncertain_threshold(pv, 0.95)
                calib = {"source": "validation", "temperature": temperature, "val_ece_before": ece(softmax(logits_new), yv),
                         "val_ece_after": ece(pv, yv), "uncertain_threshold": threshold}
            probs_new = softmax(logits_new, temperature)
            old_model, old_card = load_model(parent_path, "cpu")
            old_model = old_model.to(device)
            xo = xv if parent_prep == prep else load_items(data.val, parent_prep, image_cache, cfg.decode_workers)
            probs_old = softmax(predict_logits(old_model, xo, parent_prep, device), float(old_card.temperature or 1.0))
            del old_model
            yield emit(Progress("compare", 1, 2, "comparing"))
            comparison = compare_predictions(yv, probs_new, probs_old, classes, data.val, ("new", "old"),
                                             cfg.bootstrap, cfg.seed)
            comparison["old_name"] = parent.name
            val_metrics = comparison["new"]

        # -- package, written whole in a private folder and copied into the registry only when
        # complete (register_package): a run killed while writing leaves nothing in models/
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = cfg.name or f"{arch.replace('_', '-')}-retrain{run_id}-{stamp}"
        if comparison is not None:
            comparison["new_name"] = name
        metrics = {"split": "reviewed labels, fixed train/val by content hash",
                   "val_accuracy": val_metrics["accuracy"] if val_metrics else None,
                   "val_macro_f1": val_metrics["macro_f1"] if val_metrics else None,
                   "validation": val_metrics, "calibration": calib, "history": history,
                   "best_epoch": best["epoch"], "epochs_run": len(history), "train_seconds": round(train_seconds, 1),
                   "method": fitted.get("method"),
                   "device": str(device),
                   "comparison": _comparison_brief(comparison),
                   # the parent's own figures with their basis (its test set, for a trained model):
                   # this card's validation figures rest on a few reviewed images
                   "parent": parent_record(pcard)}
        card = ModelCard(
            name=name, architecture=arch, taxonomy=taxonomy, classes=classes, preprocessing=prep.to_dict(),
            arch_params=arch_params, temperature=float(temperature), uncertain_threshold=threshold, metrics=metrics,
            training_data={"source": "hemascan database: reviewed labels (latest event per image, sources "
                                     + "/".join(cfg.sources) + ")" + (" + base data folder" if cfg.base_data else ""),
                           **summary_data, "training_run_id": run_id,
                           "mode": "from scratch" if cfg.from_scratch else f"fine-tuned from {parent.name}",
                           "config": cfg.to_dict()},
            parent=parent.name, notes=cfg.notes or f"Retrained from reviewed labels (run {run_id}).")
        if cancel.is_set():
            status = "cancelled"
            finish_run(db, run_id, status, metrics={"data": summary_data, "history": history})
            return {"status": status, "run_id": run_id, "data": summary_data, "history": history}
        from .guard import add_guard, fit_guard, logits_and_embeddings, match_parent_on_lab  # heavy: imports torch

        with package_workdir(paths) as workdir:
            pkg = workdir / name
            # The package stages have no steps to count: total None (the dialog shows a busy bar
            # and the sentence of extra["step"], never a 0% that does not move)
            yield emit(Progress("package", 0, None, "writing the model package", {"step": "save"}))
            save_package(pkg, {k: v for k, v in model.state_dict().items()}, card)
            yield emit(Progress("package", 0, None, "fitting the foreign-image guard on the training side",
                                {"step": "guard", "n_images": int(len(tr_idx))}))
            e_tr = logits_and_embeddings(model, x_all[tr_idx], prep, device)[1]
            e_va = logits_and_embeddings(model, x_all[va_idx], prep, device)[1] if len(va_idx) else np.zeros((0, 0))
            e_other = None
            if data.other:
                x_other = load_items(data.other, prep, image_cache, cfg.decode_workers)
                e_other = logits_and_embeddings(model, x_other, prep, device)[1]
            y_guard = y_all[tr_idx]
            if replay is not None:  # the parent's classes keep their place in the guard too
                e_tr, y_guard = np.concatenate([e_tr, replayed]), np.concatenate([y_guard, replayed_y])
            guard, guard_info = fit_guard(e_tr, y_guard, e_va, other_emb=e_other)
            # The lab's own images: the guard may flag no more of them than the parent's did
            # (a guard fitted on a few dozen images flagged a quarter of them), and the int8
            # model is checked on them too.
            with db.session() as s:
                lab = lab_sample(s, parent.id, LAB_SAMPLE)
            yield emit(Progress("package", 0, None, f"checking the new version on {len(lab)} of the lab's own images",
                                {"step": "lab", "n_images": len(lab)}))
            lab, x_lab = _decode_lab(lab, prep, image_cache, cfg.decode_workers)
            if len(x_lab):
                parent_flags = _parent_flags(parent_path, pcard, x_lab if parent_prep == prep else
                                             _decode_lab(lab, parent_prep, image_cache, cfg)[1], device)
                if parent_flags is not None:
                    guard, guard_info = match_parent_on_lab(guard, guard_info, logits_and_embeddings(
                        model, x_lab, prep, device)[1], parent_flags, parent.name)
            add_guard(pkg, guard, guard_info)
            int8 = None
            if cfg.int8 and not cancel.is_set():
                int8 = yield from _add_int8(pkg, x_all, tr_idx, va_idx, x_lab, emit)
            yield emit(Progress("package", 0, None, "copying the new version into the model registry",
                                {"step": "register"}))
            with db.session() as s:
                v = register_package(s, paths, pkg, activate=False)
                version_id = v.id
        pkg = package_path(paths, name)  # the registry's copy
        status = "completed"
        run_metrics = {"data": summary_data, "history": history, "train_seconds": train_seconds,
                       "comparison": _comparison_brief(comparison), "calibration": calib, "int8": int8}
        finish_run(db, run_id, status, metrics=_jsonable(run_metrics), model_version_id=version_id)
        yield emit(Progress("package", 1, 1, name))
        return {"status": status, "run_id": run_id, "version": name, "version_id": version_id,
                "parent": parent.name, "parent_id": parent.id, "data": summary_data, "history": history,
                "comparison": comparison, "train_seconds": train_seconds, "seconds": time.perf_counter() - t0,
                "device": str(device), "package": str(pkg), "int8": int8,
                "trained_paths": [to_fs(it.path) if it.image_id is not None else it.path for it in data.train]}
    except GeneratorExit:
        if status not in ("completed", "cancelled"):
            finish_run(db, run_id, "cancelled", error="job closed before it finished")
        raise
    except BaseException as exc:
        if status not in ("completed", "cancelled"):
            finish_run(db, run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise


INT8_CHECK_IMAGES = 800


def replay_needed(summary_data: dict) -> list[str]:
    """The classes a fine-tune would forget: under MIN_PER_CLASS reviewed training images and
    under a quarter of the best-covered class (absent, or swamped by another). A few images of
    every class are not: the fine-tune learns them (docs/retrain.md)."""
    n = {c: v["train"] + v["base"] for c, v in summary_data["per_class"].items()}
    top = max(n.values(), default=0)
    return [c for c, k in n.items() if k < MIN_PER_CLASS and k < top / 4]


def replay_reason(summary_data: dict) -> str | None:
    """Why this run refits the head with feature replay instead of fine-tuning (None: it
    fine-tunes): a class it would forget, or a training side too small to refit the
    foreign-image guard on alone (it then flagged a third of the lab's own images)."""
    forgotten = replay_needed(summary_data)
    if forgotten:
        return f"too few reviewed images of {', '.join(forgotten)}"
    # The learning curve (docs/retrain.md) found the fine-tune forgetting the parent's test side
    # in every run up to 160 reviewed training images; until one is measured that does not,
    # auto always refits the head with replay (--replay off fine-tunes).
    return f"{summary_data['n_train']} reviewed training images: the fine-tune forgot the model's own classes in every learning-curve run"


def _replay_source(cfg: RetrainConfig, pcard: dict, parent_path: Path, summary_data: dict, n_classes: int):
    """(parent guard, its classes) when this run should refit the head with feature replay:
    ``cfg.replay`` "on", or "auto" with a class under MIN_PER_CLASS reviewed images; None otherwise."""
    if cfg.from_scratch or cfg.replay == "off" or (cfg.replay == "auto" and not replay_reason(summary_data)):
        return None

    from .replay import replay_possible  # heavy: imports torch

    record = pcard.get("guard") or {}
    try:
        guard = load_guard(parent_path, record, n_classes)
    except Exception as exc:  # noqa: BLE001  (no usable guard: fine-tune as usual, and say why)
        log.warning("no feature replay: %s", exc)
        return None
    if not replay_possible(guard):
        return None
    return guard, [int(c) for c in record.get("classes_fitted", range(len(guard.class_means)))]


def _add_int8(pkg: Path, x_all: np.ndarray, tr_idx: np.ndarray, va_idx: np.ndarray, x_lab: np.ndarray, emit):
    """The int8 model, checked as training checks it: label agreement with fp32 and the same
    guard flags, on the lab's own images, the validation images and training images (it
    measures arithmetic, not accuracy), at least MIN_CHECK_IMAGES of them; else none ships
    and the version runs fp32 (the card says why)."""

    check = np.concatenate([va_idx, tr_idx])[: max(0, INT8_CHECK_IMAGES - len(x_lab))]
    x_check = np.concatenate([x_lab, x_all[check]]) if len(x_lab) else x_all[check]
    yield emit(Progress("package", 0, None, f"making the int8 model for fast CPU classification and checking "
                        f"it on {len(x_check)} images", {"step": "int8", "n_images": int(len(x_check))}))
    rec = add_int8(pkg, x_all[tr_idx], x_check, f"{len(tr_idx)} reviewed training images")
    if not rec.get("accepted"):
        _note_fp32(pkg, rec)
    keys = ("accepted", "agreement", "n_checked", "flag_agreement", "n_flagged_fp32", "n_flagged_int8",
            "quantize_seconds", "reason")
    return {k: rec[k] for k in keys if k in rec}


def _note_fp32(pkg: Path, rec: dict) -> None:
    """Say in the card why the version has no int8 model (it runs fp32): the model panel shows it."""
    card = verify_package(pkg)
    card.int8 = {"accepted": False, "reason": str(rec.get("reason") or "not made"),
                 **{k: rec[k] for k in ("agreement", "n_checked", "flag_agreement", "n_flagged_fp32",
                                        "n_flagged_int8") if k in rec}}
    _write_card(pkg, card)


LAB_SAMPLE = 800  # the lab's own images a retrain checks its guard and int8 model on


def _decode_lab(lab: list, prep, cache: dict | None, workers: int) -> tuple[list, np.ndarray]:
    """(the lab images that could be read, their preprocessed uint8 pixels); unreadable ones are left out."""
    items = [Item(it.path, -1, it.sha256, it.image_id) for it in lab]
    try:
        return lab, load_items(items, prep, cache, workers)
    except (HemascanError, OSError, ValueError):
        keep, arrays = [], []
        for it, item in zip(lab, items):
            try:
                arrays.append(load_items([item], prep, cache, 1)[0])
                keep.append(it)
            except (HemascanError, OSError, ValueError):
                continue
        s = prep.input_size
        return keep, (np.stack(arrays) if arrays else np.zeros((0, s, s, 3), np.uint8))


def _parent_flags(parent_path: Path, pcard: dict, x_lab: np.ndarray, device) -> np.ndarray | None:
    """Which of the lab images the parent's guard calls outside its experience (fp32, as the
    new version's guard is measured); None when the parent has no usable guard."""
    from .guard import logits_and_embeddings  # heavy: imports torch

    try:
        guard = load_guard(parent_path, pcard.get("guard"), len(pcard["classes"]))
    except Exception as exc:  # noqa: BLE001  (no usable guard: nothing to match)
        log.warning("parent guard not usable: %s", exc)
        return None
    if guard is None:
        return None
    model, card = load_model(parent_path, "cpu")
    emb = logits_and_embeddings(model.to(device), x_lab, card.prep, device)[1]
    return guard.flags(emb)[1]


def _comparison_brief(cmp: dict | None) -> dict | None:
    if cmp is None:
        return None
    out = {k: v for k, v in cmp.items() if k not in ("changed", "new", "old")}
    out["new"], out["old"] = cmp["new"], cmp["old"]
    out["changed"] = cmp["changed"][:200]
    return _jsonable(out)


def _jsonable(o):
    return json.loads(json.dumps(o, default=lambda x: x.item() if hasattr(x, "item") else str(x)))



