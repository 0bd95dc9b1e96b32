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

import functools
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict

from core.config import Paths
from core.storage import Database
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
from core.jobs import Progress, run_job
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
from core.models.figures import parent_record
from core.models.labsample import lab_sample
from core.models.package import DEFAULT_CELL_SIDE_UM, load_model
from core.review.reviewed import cell_inputs, lab_cells, learns_from_cells
from core.imaging.preprocessing import Preprocessing
from core.models.registry import package_path, package_workdir, version_package
from core.models.guard import load_guard
from trainer.data import Split
from trainer.pipeline import (
    INT8_CHECK_IMAGES,
    CalibrationConfig,
    GuardInputs,
    Int8Config,
    PackageConfig,
    finish_package_job,
    freeze_first,
    new_model,
    register_version,
    relay,
    training_device,
)
from trainer.sources import (  # noqa: F401  (re-exported: the retrain API keeps these names)
    MIN_PER_CLASS,
    Item,
    SourceError,
    TrainingData,
    collect_training_data,
    from_reviewed_cells,
    from_reviewed_labels,
    load_items,
)

log = logging.getLogger(__name__)

MIN_VAL_FOR_CALIBRATION = 20
MIN_VAL_FOR_SELECTION = 20  # fewer validation images: keep the last epoch, no early stopping
FINETUNE_LR = 3e-3  # last 8 stages, class-balanced, >= 60 steps: measured in docs/retrain.md
SMALL_VAL = 100  # below this many validation images a difference of a few % is noise



class RetrainError(HemascanError):
    """Retraining cannot start or go on (no reviewed labels, bad options...)."""


class RetrainConfig(BaseModel):
    """``retrain``'s settings (the pipeline from reviewed labels); stored with the run and in the card."""
    model_config = ConfigDict(extra="forbid")

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
    arch_params: dict[str, Any] = {}
    pretrained: bool = True  # from scratch: ImageNet weights where the architecture has them
    batch_size: int = 32
    lr: float | None = None  # None: 3e-4 fine-tuning, 1e-3 from scratch
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    freeze_blocks: int | None = None  # effnet_lite0: keep stem + first N blocks fixed (faster); None: as the parent was trained (fine-tuning), else 0
    val_fraction: float = 0.2
    phash_distance: int = 4
    sources: tuple[str, ...] = ("human",)  # label-event sources used as training labels
    augment: dict[str, Any] = {}
    seed: int = 0
    threads: int | None = None
    device: str | None = None  # None/auto: CUDA when available
    name: str | None = None
    notes: str = ""
    bootstrap: int = 2000
    # k-fold comparison: every reviewed training image predicted by a version fitted as this one
    # (same config, same method) without it; 0 or 1: validation images only
    cv_folds: int = 5
    decode_workers: int = 2
    int8: bool = True  # add a checked int8 model for fast CPU classification (trainer/quantize.py)
    # the head refit with replay (trainer/replay.fit_head_with_replay): replayed embeddings learn
    # the parent head's own probabilities (distil), the pull towards the parent's head, the reviewed
    # images' share of their class's weight; chosen on the cell learning curve (docs/retrain.md)
    head_distill: bool = True
    head_anchor: float = 0.0
    head_real_share: float = 0.5

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict) -> "RetrainConfig":
        return cls.model_validate(d)


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


ALPHA = 0.05  # the paired test's level: a difference this unlikely by chance counts


def mcnemar_exact(correct_new: np.ndarray, correct_old: np.ndarray) -> dict:
    """McNemar's exact test on paired right/wrong: the images only one version gets right,
    under "either is as likely" (binomial, p = 1/2), two-sided."""
    from math import comb

    a, b = np.asarray(correct_new, bool), np.asarray(correct_old, bool)
    fixed, broken = int((a & ~b).sum()), int((~a & b).sum())
    n = fixed + broken
    p = 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(min(fixed, broken) + 1)) / 2 ** n)
    return {"test": "McNemar exact (two-sided)", "n_fixed": fixed, "n_broken": broken, "p": float(p)}


def compare_predictions(y: np.ndarray, probs_new: np.ndarray, probs_old: np.ndarray, classes: list[str],
                        items: list[Item] | None = None, names: tuple[str, str] = ("new", "active"),
                        n_boot: int = 2000, seed: int = 0, basis: dict | None = None) -> dict:
    """Both versions on the same images: metrics, confusion matrices, changed predictions,
    bootstrap interval of the accuracy difference, McNemar's exact test and a warning when it
    cannot tell. ``basis`` (k-fold comparison: {"k", "n_cross_validated", "n_validation"}):
    the images include reviewed training images each predicted by a version that did not
    train on them, and the verdict is the paired test's (no minimum number of images);
    without it, validation images only, and "better" needs SMALL_VAL of them."""
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
    test = mcnemar_exact(pn == y, po == y)
    n = len(y)
    warning = None
    lo, hi = boot["ci95"]
    if basis is not None:
        chance = test["p"] >= ALPHA
        if n == 0:
            warning = "no reviewed images to compare on; review more images"
        elif chance or lo <= 0.0 <= hi:
            warning = (f"the versions cannot be told apart: accuracy differs by {points(boot['difference'])} points "
                       f"({difference_range((lo, hi))}) on {n} images; {test['n_fixed']} fixed and "
                       f"{test['n_broken']} broken could be chance")
        better = n and lo > 0.0 and not chance
        worse = n and (hi < 0.0 or (test["n_broken"] > test["n_fixed"] and not chance))
    else:
        if n == 0:
            warning = "no validation images: the versions cannot be compared; review more images"
        elif n < SMALL_VAL or lo <= 0.0 <= hi:
            warning = (f"too few validation images to tell the versions apart: accuracy differs by "
                       f"{points(boot['difference'])} points ({difference_range((lo, hi))}) on {n} images"
                       + (f"; fewer than {SMALL_VAL} validation images" if n < SMALL_VAL else ""))
        better = n and lo > 0.0 and n >= SMALL_VAL
        worse = n and hi < 0.0
    verdict = "worse" if worse else "better" if better else "undecided"
    return {"names": list(names), "classes": list(classes), "n": int(n), names[0]: brief(mn), names[1]: brief(mo),
            "new": brief(mn), "old": brief(mo), "accuracy_difference": boot, "paired_test": test,
            "basis": basis, "changed": changes, "n_changed": len(changes), "warning": warning, "verdict": verdict}


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


def images_compared(cmp: dict) -> str:
    """What the comparison ran on, in words: 'validation images', or, for a k-fold comparison,
    the reviewed images each predicted by a version that did not learn from them."""
    basis = cmp.get("basis")
    if not basis:
        return f"{cmp['n']} validation images"
    return (f"{cmp['n']} reviewed images ({basis['n_cross_validated']} predicted by versions trained without "
            f"them, {basis['n_validation']} validation)")


def promotion_advice(cmp: dict | None) -> tuple[str, str | None]:
    """What Promote must say before making a new version active: ("better", None) when the
    comparison shows it is better; ("worse" | "undecided", one sentence why, with its basis:
    the images both versions were run on) otherwise, for a confirmation (GUI) or a refusal
    without --force (CLI). Worse: the whole interval below zero (or, k-fold, clearly more
    broken than fixed), or a lower accuracy with a class lost (recall_losses), however few
    the images."""
    if not cmp or not cmp.get("n"):
        return "undecided", ("the new version was not compared with the active one (no validation images): "
                             "nothing shows it is better")
    d = cmp["accuracy_difference"]
    lo, hi = d["ci95"]
    old = cmp.get("old_name") or "the active version"
    on = images_compared(cmp)
    acc_old, acc_new = (cmp.get("old") or {}).get("accuracy"), (cmp.get("new") or {}).get("accuracy")
    accuracy = (f"accuracy {acc_old:.3f} -> {acc_new:.3f}" if acc_old is not None and acc_new is not None
                else f"accuracy {d['difference']:+.1%}")
    losses = recall_losses(cmp)
    lost = f"; {', '.join(losses)}" if losses else ""
    if cmp.get("verdict") == "worse" or hi < 0.0 or (d["difference"] < 0.0 and losses):
        return "worse", (f"the new version is worse than {old} on the same {on}: {accuracy} "
                         f"({difference_range((lo, hi))}){lost}")
    if cmp.get("verdict") == "better":
        return "better", None
    test = cmp.get("paired_test") if cmp.get("basis") else None
    chance = (f"; {test['n_fixed']} fixed and {test['n_broken']} broken could be chance" if test else
              f", fewer than the {SMALL_VAL} needed to tell a few points apart" if cmp["n"] < SMALL_VAL else "")
    return "undecided", (f"the comparison cannot tell the new version from {old}: {accuracy} "
                         f"({difference_range((lo, hi))}) on the same {on}" + chance + lost)


def comparison_table(cmp: dict) -> str:
    """Plain-text side-by-side table (CLI)."""
    classes = cmp["classes"]
    a, b = cmp["old"], cmp["new"]
    name_old, name_new = cmp.get("old_name", "active"), cmp.get("new_name", "new")
    w = max(22, len(name_old) + 2, len(name_new) + 2)
    lines = [f"compared on: {images_compared(cmp)}" if cmp.get("basis") else f"validation images: {cmp['n']}",
             f"{'':<22}{name_old:>{w}}{name_new:>{w}}"]
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
    if cmp.get("paired_test"):
        lines.append(f"paired test ({cmp['paired_test']['test']}): p = {cmp['paired_test']['p']:.3g}")
    for title, m in (("confusion " + name_old, a), ("confusion " + name_new, b)):
        lines.append(f"{title} (rows true, columns predicted: {', '.join(classes)})")
        for c, row in zip(classes, m["confusion_matrix"]):
            lines.append(f"  {c:<14}" + "".join(f"{v:>6}" for v in row))
    if cmp.get("warning"):
        lines.append("WARNING: " + cmp["warning"])
    return "\n".join(lines)


# ---- the job ---------------------------------------------------------------------------------

def retrain(db: Database, paths: Paths, config: RetrainConfig | dict | None = None,
            progress: Callable[[Progress], None] | None = None, cancel: threading.Event | None = None,
            image_cache: dict | None = None, parent: VersionRef | None = None):
    """Fine-tune (or train from scratch) ``parent`` (None: the version active when the job
    starts) on the reviewed labels, compare with it on the same validation images, register
    the result (not active): the pipeline (trainer/pipeline.py) from reviewed labels, in a
    ``training_runs`` row. A job generator; returns a summary dict with ``status``,
    ``version`` and ``comparison``."""
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
        device, _ = training_device(cfg.device, threads=cfg.threads)
        taxonomy, classes = parent.taxonomy, list(pcard["classes"])
        arch = cfg.arch or parent_arch
        if not cfg.from_scratch and arch != parent_arch:
            raise RetrainError(f"fine-tuning keeps the active model's architecture ({parent_arch}); "
                               f"use from-scratch training for {arch}")
        parent_prep = Preprocessing.from_dict(pcard["preprocessing"])
        if cfg.from_scratch:  # the trainer's preprocessing (area, scale-bar corner masked), not the parent's
            from .engine import TrainConfig  # heavy: imports scikit-learn, torch

            prep = TrainConfig(data="", input_size=cfg.input_size or parent_prep.input_size).prep
        else:
            prep = parent_prep
        # a cell model learns from the reviewers' cell labels, each cell cut out as classify cuts it;
        # one that sees crops whole and has no cell label learns from crops labelled as images, as before cells
        cell_side_um = float(pcard.get("cell_side_um") or DEFAULT_CELL_SIDE_UM)
        cell_crops = pcard.get("cell_crops") or "whole"
        is_cell = learns_from_cells(db, pcard, cfg.sources)
        if is_cell and cfg.from_scratch:
            raise RetrainError("a cell model is retrained from itself, not from scratch: its cut-outs follow its "
                               "card (side, background, crops)")
        try:
            src = yield from relay(
                from_reviewed_cells(db, taxonomy, classes, cfg, prep, cell_side_um, cell_crops, cancel) if is_cell
                else from_reviewed_labels(db, taxonomy, classes, cfg, prep, pcard.get("input") or "field",
                                          pcard.get("cell_side_um"), image_cache, cancel), emit)
        except SourceError as exc:
            raise RetrainError(str(exc)) from None
        if src.data is None:
            status = "cancelled"
            summary_data = src.items.summary()
            finish_run(db, run_id, status, metrics={"data": summary_data})
            return {"status": status, "run_id": run_id, "data": summary_data, "history": []}
        data, split, summary_data = src.data, src.split, src.items.summary()

        @functools.cache
        def all_views():  # a head refit (and its folds) keeps the parent's backbone: every view embedded once
            from .replay import reviewed_embeddings  # heavy: imports torch

            n = len(split.train)
            emb, y = reviewed_embeddings(parent_backbone(), data.images[split.train], data.labels[split.train],
                                         data.prep, cfg.augment, "cpu", cfg.seed)
            return emb.reshape(-1, n, emb.shape[1]), y.reshape(-1, n)

        def views(tr_idx):
            emb, y = all_views()
            pos = np.searchsorted(split.train, tr_idx)
            return emb[:, pos].reshape(-1, emb.shape[2]), y[:, pos].reshape(-1)

        def parent_backbone():
            return load_model(parent_path, "cpu")[0]

        fitted, replayed = yield from _fit(cfg, data, split, summary_data, parent, parent_path, pcard, arch,
                                           device, paths.data_dir / "runs" / f"retrain-{run_id}", emit, progress,
                                           cancel, views)
        history, train_seconds = fitted["history"], fitted["train_seconds"]
        if fitted["status"] != "completed":
            status = "cancelled"
            finish_run(db, run_id, status, metrics={"data": summary_data, "history": history,
                                                     "train_seconds": train_seconds})
            return {"status": status, "run_id": run_id, "data": summary_data, "history": history,
                    "train_seconds": train_seconds}
        if replayed is not None:
            device = torch_device("cpu")

        name = cfg.name or f"{arch.replace('_', '-')}-retrain{run_id}-{time.strftime('%Y%m%d-%H%M%S')}"
        compared: dict[str, Any] = {"comparison": None}

        def refit(fold: Split, f: int) -> dict:  # one fold of the k-fold comparison, fitted as this run was
            return run_job(_fit(cfg, data, fold, summary_data, parent, parent_path, pcard, arch, device,
                                paths.data_dir / "runs" / f"retrain-{run_id}-fold{f}", lambda p: p, None, cancel,
                                views))[0]

        def compare(model, calibration, guard, guard_info):  # the card's metrics: both versions, same images
            cmp = yield from relay(_compare_with_parent(
                model, calibration, data, split, src.items, parent, parent_path, parent_prep, image_cache, cfg,
                device, refit if cfg.cv_folds >= 2 else None, cancel), emit)
            if cmp is not None:
                cmp["new_name"] = name
            compared["comparison"] = cmp
            val = (cmp.get("validation") if cmp.get("basis") else cmp["new"]) if cmp else None
            return {"split": split.method, "val_accuracy": val["accuracy"] if val else None,
                    "val_macro_f1": val["macro_f1"] if val else None, "validation": val,
                    "calibration": calibration.record, "history": history, "best_epoch": fitted["best"]["epoch"],
                    "epochs_run": len(history), "train_seconds": round(train_seconds, 1),
                    "method": fitted.get("method"), "device": str(device), "comparison": _comparison_brief(cmp),
                    # the parent's own figures with their basis (its test set, for a trained model):
                    # this card's validation figures rest on a few reviewed images
                    "parent": parent_record(pcard)}

        # The lab's own images: the guard may flag no more of them than the parent's did (a guard
        # fitted on a few dozen images flagged a quarter of them), and the int8 model is checked on them.
        if is_cell:  # the lab's own cells the parent classified, cut out as it saw them
            lab_cell_rows, _ = lab_cells(db, parent.id, LAB_SAMPLE)
            x_lab, lab, _ = cell_inputs(lab_cell_rows, prep, cell_side_um, cell_crops)
            yield emit(Progress("package", 0, None, f"checking the new version on {len(lab)} of the lab's own cells",
                                {"step": "lab", "n_images": len(lab)}))
        else:
            with db.session() as s:
                lab = lab_sample(s, parent.id, LAB_SAMPLE)
            yield emit(Progress("package", 0, None, f"checking the new version on {len(lab)} of the lab's own images",
                                {"step": "lab", "n_images": len(lab)}))
            lab, x_lab = _decode_lab(lab, prep, image_cache, cfg.decode_workers)
        parent_flags = None
        if len(x_lab):
            parent_flags = _parent_flags(parent_path, pcard, x_lab if parent_prep == prep else
                                         _decode_lab(lab, parent_prep, image_cache, cfg.decode_workers)[1], device)
        # a cell model's head refit keeps the parent's backbone, so its guard too: the parent's
        # experience plus the reviewed cells' centres (a guard refitted here opened for unreviewed labs)
        kept_guard = None
        if is_cell and replayed is not None:
            kept_guard = (load_guard(parent_path, pcard["guard"], len(classes)), dict(pcard["guard"]))
        guard_inputs = GuardInputs(other=src.other, replayed=replayed, lab=x_lab, lab_parent_flags=parent_flags,
                                   parent_name=parent.name, parent_guard=kept_guard,
                                   signatures=getattr(src, "signatures", None) if kept_guard else None)
        calibration = (CalibrationConfig(fallback_source="none") if cfg.from_scratch else CalibrationConfig(
            fallback_temperature=float(pcard.get("temperature") or 1.0),
            fallback_threshold=pcard.get("uncertain_threshold"), fallback_source="parent"))
        package = PackageConfig(
            name=name, architecture=arch, parent=parent.name, device=str(device),
            arch_params=dict(cfg.arch_params) if cfg.from_scratch else dict(pcard.get("arch_params") or {}),
            notes=cfg.notes or f"Retrained from reviewed labels (run {run_id}).",
            training_data={"source": "hemascan database: reviewed labels (latest event per image, sources "
                                     + "/".join(cfg.sources) + ")" + (" + base data folder" if cfg.base_data else ""),
                           **summary_data, "training_run_id": run_id,
                           "mode": "from scratch" if cfg.from_scratch else f"fine-tuned from {parent.name}",
                           "config": cfg.to_dict()},
            calibration=calibration.model_copy(update={"min_images": MIN_VAL_FOR_CALIBRATION}),
            int8=Int8Config(enabled=cfg.int8, check_images=INT8_CHECK_IMAGES,
                            calibration_source=f"{len(split.train)} reviewed training images"))
        # the package is written whole in a private folder and copied into the registry only when
        # complete (register_version): a run killed while writing leaves nothing in models/
        with package_workdir(paths) as workdir:
            done = yield from relay(finish_package_job(
                fitted["model"], data, split, package, workdir / name, guard_inputs=guard_inputs, evaluate=compare,
                cancel=cancel), emit)
            if done is None:
                status = "cancelled"
                finish_run(db, run_id, status, metrics={"data": summary_data, "history": history})
                return {"status": status, "run_id": run_id, "data": summary_data, "history": history}
            version_id = yield from relay(register_version(db, paths, done.package), emit)
        comparison = compared["comparison"]
        int8 = None if done.int8 is None else {k: done.int8[k] for k in INT8_KEYS if k in done.int8}
        status = "completed"
        run_metrics = {"data": summary_data, "history": history, "train_seconds": train_seconds,
                       "comparison": _comparison_brief(comparison), "calibration": done.calibration.record,
                       "int8": int8}
        finish_run(db, run_id, status, metrics=_jsonable(run_metrics), model_version_id=version_id)
        yield emit(Progress("package", 1, 1, name))
        return {"status": status, "run_id": run_id, "version": name, "version_id": version_id,
                "parent": parent.name, "parent_id": parent.id, "data": summary_data, "history": history,
                "comparison": comparison, "train_seconds": train_seconds, "seconds": time.perf_counter() - t0,
                "device": str(device), "package": str(package_path(paths, name)), "int8": int8,
                "trained_paths": [to_fs(it.path) if it.image_id is not None else it.path for it in src.items.train]}
    except GeneratorExit:
        if status not in ("completed", "cancelled"):
            finish_run(db, run_id, "cancelled", error="job closed before it finished")
        raise
    except BaseException as exc:
        if status not in ("completed", "cancelled"):
            finish_run(db, run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise


INT8_KEYS = ("accepted", "agreement", "n_checked", "flag_agreement", "n_flagged_fp32", "n_flagged_int8",
             "quantize_seconds", "reason")


def torch_device(name: str):
    import torch  # heavy: imports torch

    return torch.device(name)


def _fit(cfg: RetrainConfig, data, split, summary_data: dict, parent: VersionRef, parent_path: Path, pcard: dict,
         arch: str, device, run_dir: Path, emit, progress, cancel, views=None):
    """The fit stage of a retrain: the parent's weights (or new ones) through engine.fit, or
    the head refitted with feature replay when a class would be forgotten (``views``: training
    indices -> their augmented views' embeddings and labels, computed once for all folds). A
    job generator; returns (fit summary with "model" and "method", replayed (embeddings, labels) or None)."""
    from .engine import FitOptions, _seed_all, fit  # heavy: imports scikit-learn, torch

    classes, prep, tr_idx, va_idx = data.classes, data.prep, split.train, split.val
    x_all, y_all = data.images, data.labels
    _seed_all(cfg.seed)
    if cfg.from_scratch:
        model = new_model(arch, len(classes), cfg.arch_params, cfg.pretrained)
    else:
        model, _ = load_model(parent_path, "cpu")
    freeze = cfg.freeze_blocks
    if freeze is None:
        freeze = 0 if cfg.from_scratch else int(((pcard.get("training_data") or {}).get("config") or {}).get("freeze_blocks") or 0)
    opts = FitOptions(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr or (1e-3 if cfg.from_scratch else FINETUNE_LR),
        weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs, patience=cfg.patience,
        balance=cfg.balance, augment=cfg.augment, seed=cfg.seed, freeze_first=freeze_first(arch, freeze),
        train_last=None if cfg.from_scratch else cfg.train_last, min_steps=cfg.min_steps)
    replay = _replay_source(cfg, pcard, parent_path, summary_data, len(classes))
    replayed = None
    if replay is not None:  # a class has too few reviewed images: refit the head, replaying the parent's classes
        from .guard import logits_and_embeddings  # heavy: imports torch
        from .replay import REPLAY_PER_CLASS, fit_head_with_replay, replay_embeddings, reviewed_embeddings  # heavy: imports torch

        yield emit(Progress("train", 0, None, f"{replay_reason(summary_data) or 'asked for'}: refitting the "
                            "classifier on your images and on the model's own memory of its classes",
                            {"method": "replay", "n_reviewed": len(tr_idx)}))
        model = model.to("cpu")
        if views is not None:  # the backbone is the parent's whatever the fold: its embeddings, once
            real, real_y = views(tr_idx)
        else:
            real, real_y = reviewed_embeddings(model, x_all[tr_idx], y_all[tr_idx], prep, cfg.augment, "cpu", cfg.seed)
        replayed = replay_embeddings(replay[0], replay[1], REPLAY_PER_CLASS, cfg.seed)
        val_emb = None  # the validation images' embeddings: curves of how the refit does on them
        if len(va_idx):
            val_emb = (logits_and_embeddings(model, x_all[va_idx], prep, "cpu")[1], y_all[va_idx])
        fitted = yield from fit_head_with_replay(model, real, real_y, replayed[0], replayed[1], len(classes),
                                                 seed=cfg.seed, cancel=cancel, val=val_emb, progress=progress,
                                                 anchor=cfg.head_anchor, real_share=cfg.head_real_share,
                                                 distill=cfg.head_distill)
        fitted["method"] = (f"classifier head refitted on {len(tr_idx)} reviewed images (x4 views) and "
                            f"{len(replayed[1])} embeddings replayed from {parent.name}'s guard; backbone unchanged")
    else:
        # Few labels: model selection and early stopping on a handful of validation images are
        # noise, so below MIN_VAL_FOR_SELECTION the last epoch is kept (the comparison still
        # runs on every validation image). Checkpoints go to run_dir, removed when the run ends.
        try:
            fitted = yield from fit(model, x_all, y_all, tr_idx, va_idx, classes, prep, device, opts,
                                    out_dir=run_dir, checkpoint_config=cfg.to_dict(), progress=progress,
                                    cancel=cancel, select_on_val=len(va_idx) >= MIN_VAL_FOR_SELECTION)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        fitted["method"] = f"fine-tuned the last {cfg.train_last or 'all'} stages from {parent.name}"
    fitted["model"] = model
    return fitted, replayed


def _compare_with_parent(model, calibration, data, split, items, parent: VersionRef, parent_path: Path,
                         parent_prep, image_cache, cfg: RetrainConfig, device, refit=None, cancel=None):
    """Both versions on the same images: the validation images (the new version as its card
    will be) and, with ``refit`` (fold Split, fold number -> fitted, as this run fitted), every
    reviewed training image predicted by a version fitted without it (k-fold). A job
    generator (stage "compare"); returns compare_predictions' dict (k-fold: with ``basis``
    and ``validation``, the new version's figures on the validation images alone), or None
    when there is nothing to compare on."""
    from .engine import predict_logits  # heavy: imports scikit-learn, torch
    from .metrics import softmax  # heavy: imports scikit-learn, torch

    yield Progress("compare", 0, None, "evaluating both versions on the validation images")
    idx, logits = [np.asarray(split.val, int)], [calibration.val_logits if len(split.val) else
                                                  np.zeros((0, len(data.classes)))]
    k = 0
    if refit is not None:
        k, cv_idx, cv_logits = yield from _cross_validated(data, split, items, cfg, refit, cancel)
        if k:
            idx, logits = [cv_idx, *idx], [cv_logits, *logits]
    idx = np.concatenate(idx)
    if not len(idx):
        return None
    y = data.labels[idx]
    probs_new = softmax(np.concatenate(logits), calibration.temperature)
    all_items = items.train + items.val
    old_model, old_card = load_model(parent_path, "cpu")
    xo = (data.images[idx] if parent_prep == data.prep
          else load_items([all_items[i] for i in idx], parent_prep, image_cache, cfg.decode_workers))
    probs_old = softmax(predict_logits(old_model.to(device), xo, parent_prep, device), float(old_card.temperature or 1.0))
    del old_model
    yield Progress("compare", 1, 2, "comparing")
    n_val = len(split.val)
    basis = {"k": k, "n_cross_validated": len(idx) - n_val, "n_validation": n_val} if k else None
    comparison = compare_predictions(y, probs_new, probs_old, data.classes, [all_items[i] for i in idx],
                                     ("new", "old"), cfg.bootstrap, cfg.seed, basis=basis)
    if basis is not None:
        val = slice(len(idx) - n_val, len(idx))
        comparison["validation"] = (compare_predictions(y[val], probs_new[val], probs_old[val], data.classes,
                                                        n_boot=200)["new"] if n_val else None)
    comparison["old_name"] = parent.name
    return comparison


def _cross_validated(data, split, items, cfg: RetrainConfig, refit, cancel):
    """k-fold predictions of the reviewed training images (base-data images stay on every
    fold's training side): (k, their indices, their logits); k = 0 when under 2 folds can be
    made or the run was cancelled. A job generator (stage "compare", one step per fold)."""
    from .engine import predict_logits  # heavy: imports scikit-learn, torch

    reviewed = np.array([i for i in split.train if items.train[i].source != "base"], dtype=int)
    k = min(cfg.cv_folds, len(reviewed))
    if k < 2:
        return 0, reviewed[:0], None
    fold_of = np.empty(len(reviewed), int)
    fold_of[np.random.default_rng(cfg.seed).permutation(len(reviewed))] = np.arange(len(reviewed)) % k
    logits = np.zeros((len(reviewed), len(data.classes)))
    for f in range(k):
        yield Progress("compare", f, k, f"fitting the new version again without some of your reviewed images "
                       f"({f + 1} of {k}), to check it on images it did not learn from", {"fold": f + 1, "folds": k})
        held = fold_of == f
        fitted = refit(Split(split.method, np.setdiff1d(split.train, reviewed[held]), split.val, split.test), f)
        if fitted["status"] != "completed" or (cancel is not None and cancel.is_set()):
            return 0, reviewed[:0], None
        fold_model = fitted["model"]
        dev = next(fold_model.parameters()).device
        logits[held] = predict_logits(fold_model, data.images[reviewed[held]], data.prep, dev)
    return k, reviewed, logits


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
    return guard, guard.classes_of_centres(record.get("classes_fitted", range(len(guard.class_means))))


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



