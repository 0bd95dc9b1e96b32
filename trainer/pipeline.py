"""One training pipeline, in typed stages, for ``train`` (engine.run), ``retrain`` and the experiments:

    data source -> fit -> calibrate -> guard -> package -> int8 -> register

* **data source** (trainer/sources.py): class folders, reviewed labels, or arrays a caller
  built itself (cut-out cells): each gives a :class:`TrainingArrays` and a ``Split``.
* **fit**: ``engine.fit``, the one training loop (or replay.fit_head_with_replay).
* **calibrate**: temperature and "uncertain" threshold on the validation side (:func:`calibrate`).
* **guard**: the foreign-image guard, fitted on the training side, threshold on validation
  (:func:`fit_guard_stage`).
* **package**: weights + card + guard in one folder (:func:`write_package`).
* **int8**: the checked int8 CPU model (:func:`int8_stage`).
* **register**: the registry's copy, not active (:func:`register_version`).

:func:`finish_package` runs calibrate -> guard -> package -> int8 on a model already fitted:
the entry point for a caller that trains its own way (e.g. a cell model from cut-out arrays).
The stages are job generators (``core.jobs``): they yield ``Progress`` ("package" with
``extra["step"]``: guard / lab / save / int8 / register) and return their result.

This module imports no torch at module level (retrain, imported by the desktop, uses it).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from core.imaging.preprocessing import Preprocessing
from core.jobs import Progress, run_job
from core.models.package import ModelCard, save_package, verify_package
from core.models.registry import register_package
from core.inference.runtime import runtime_plan
from trainer.data import Split
from trainer.quantize import _write_card, add_int8

INT8_CHECK_IMAGES = 800  # a retrain checks its int8 model on at least this many images (lab's own first)


# ---- what flows between the stages ----------------------------------------------------------

@dataclass
class TrainingArrays:
    """A data source's output and every later stage's input: preprocessed uint8 images with
    their labels. ``images`` (N, S, S, 3) are already through ``prep.apply``."""
    images: np.ndarray
    labels: np.ndarray  # int64 class index per item
    classes: list[str]
    taxonomy: str
    prep: Preprocessing
    input_kind: Literal["field", "cell"] = "field"  # the card's ``input``
    subjects: list[str] | None = None  # patient / donor per item, where known
    sources: list[str] | None = None  # dataset / lab per item, where known
    cell_side_um: float | None = None  # a cell model: the physical side its cut-outs were made at
    cell_crops: str = "whole"  # a cell model: how its single-cell crops were given (whole / cut_out)


@dataclass
class Calibration:
    temperature: float
    uncertain_threshold: float | None
    record: dict  # what the card's metrics.calibration says
    val_logits: np.ndarray  # the model's logits on the validation side (before temperature)


@dataclass
class GuardInputs:
    """What a retrain adds to the guard's training side: images reviewers called "Other"
    (kept flagged), the parent's classes replayed as embeddings (feature replay), and the
    lab's own images with the parent's flags on them (the new guard may flag no more)."""
    other: np.ndarray | None = None
    replayed: tuple[np.ndarray, np.ndarray] | None = None  # (embeddings, labels)
    lab: np.ndarray | None = None
    lab_parent_flags: np.ndarray | None = None
    parent_name: str | None = None
    # the class-folder dataset the split was made on: the threshold is then set on the validation
    # block's held-out patients only (trainer.guard.fit_guard_on_split), not on every validation image
    dataset: Any = None
    # (guard, card record) of the parent when only the head was refitted: its guard is kept and the
    # reviewed training images' class centres are added (trainer.guard.extend_guard), not refitted
    parent_guard: tuple[Any, dict] | None = None
    # with parent_guard: the lab signatures of the data's images (core.cells.signature), so that the
    # kept guard admits the reviewed lab's cells (trainer.guard.fit_lab_admission)
    signatures: np.ndarray | None = None


@dataclass
class Finished:
    package: Path | None  # None: PackageConfig.write was False
    calibration: Calibration
    guard_info: dict
    int8: dict | None
    card: ModelCard | None


# ---- configs -------------------------------------------------------------------------------

class CalibrationConfig(BaseModel):
    """Fewer than ``min_images`` validation images: the fallback values (e.g. the parent's)."""
    model_config = ConfigDict(extra="forbid")
    min_images: int = 1
    confident_share: float = 0.95  # the threshold leaves this share of validation images confident
    fallback_temperature: float = 1.0
    fallback_threshold: float | None = None
    fallback_source: str = "none"


class Int8Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    calibration_source: str = ""  # in the card: what the int8 model was calibrated on
    check_images: int = 0  # top the check set (lab, validation, test) up with training images to this many
    note_fp32: bool = True  # without an accepted int8 model, the card says why (the model panel shows it)


class PackageConfig(BaseModel):
    """What the package stages write into the card and how they run."""
    model_config = ConfigDict(extra="forbid")
    name: str
    architecture: str
    arch_params: dict[str, Any] = {}
    parent: str | None = None
    notes: str = ""
    training_data: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    device: str = "cpu"
    write: bool = True  # False: calibrate, guard and evaluate only (experiments that need no package)
    calibration: CalibrationConfig = CalibrationConfig()
    int8: Int8Config = Int8Config()


def relay(job, emit: Callable[[Progress], Progress]):
    """Drive a job generator inside another, passing each Progress through ``emit`` (the
    caller's progress callback); returns the inner job's result."""
    while True:
        try:
            p = next(job)
        except StopIteration as stop:
            return stop.value
        yield emit(p)


# ---- before fit: device and model ------------------------------------------------------------

def training_device(device: str | None = None, precision: str = "auto", threads: int | None = None):
    """(torch.device, precision) from the runtime plan (core/inference/runtime.py: fp32 unless
    bf16/fp16 is asked for); ``threads`` sets torch's CPU threads."""
    import torch  # heavy: imports torch

    if threads:
        torch.set_num_threads(threads)
    plan = runtime_plan(device=device, precision=precision, purpose="train")
    return torch.device(str(plan.device)), plan.precision


def new_model(arch: str, n_classes: int, arch_params: dict | None = None, pretrained: bool = True):
    """A fresh network; ImageNet weights where the architecture has them (effnet_lite0)."""
    from core.models.architectures import build  # heavy: imports torch

    kw = dict(arch_params or {})
    if pretrained and arch == "effnet_lite0":
        kw["pretrained"] = True
    return build(arch, n_classes, **kw)


def freeze_first(arch: str, freeze_blocks: int | None) -> int:
    """``FitOptions.freeze_first`` for "keep effnet_lite0's stem and first N blocks fixed"."""
    return freeze_blocks + 1 if freeze_blocks and arch == "effnet_lite0" else 0


# ---- the stages ----------------------------------------------------------------------------

def calibrate(val_logits: np.ndarray, val_labels: np.ndarray, config: CalibrationConfig) -> Calibration:
    """Temperature scaling (NLL on validation) and the uncertain threshold (the
    ``confident_share`` quantile of calibrated confidence on validation); fewer than
    ``config.min_images`` validation images: the fallback values."""
    from .metrics import ece, fit_temperature, softmax, uncertain_threshold  # heavy: imports scikit-learn, torch

    logits, y = np.asarray(val_logits), np.asarray(val_labels)
    if len(y) < max(1, config.min_images):
        return Calibration(config.fallback_temperature, config.fallback_threshold, {"source": config.fallback_source},
                           logits)
    temperature = fit_temperature(logits, y)
    pv = softmax(logits, temperature)
    threshold = uncertain_threshold(pv, config.confident_share)
    share = round(100 * config.confident_share)
    return Calibration(temperature, threshold, {
        "source": "validation", "temperature": temperature, "val_ece_before": ece(softmax(logits), y),
        "val_ece_after": ece(pv, y), "uncertain_threshold": threshold,
        "uncertain_threshold_rule": f"{100 - share}th percentile of calibrated max-probability on validation "
                                    f"({share}% of in-distribution images confident)"}, logits)


def fit_guard_stage(model, data: TrainingArrays, split: Split, device="cpu", inputs: GuardInputs | None = None,
                    val_emb: np.ndarray | None = None):
    """The foreign-image guard: class means and covariance from the training side's
    embeddings (plus replayed ones), threshold from the validation side (``val_emb``: their
    embeddings, when already computed), "Other" centres, then raised to the parent's flag count
    on the lab's own images. A job generator; returns (guard, card record)."""
    from .guard import extend_guard, fit_guard, fit_guard_on_split  # heavy: imports torch
    from .guard import logits_and_embeddings, match_parent_on_lab  # heavy: imports torch

    inputs = inputs or GuardInputs()
    yield Progress("package", 0, None, "fitting the foreign-image guard on the training side",
                   {"step": "guard", "n_images": int(len(split.train))})
    e_tr = logits_and_embeddings(model, data.images[split.train], data.prep, device)[1]
    y_tr = data.labels[split.train]
    if inputs.parent_guard is not None:
        e_other = (logits_and_embeddings(model, inputs.other, data.prep, device)[1]
                   if inputs.other is not None and len(inputs.other) else None)
        sig_tr = None if inputs.signatures is None else np.asarray(inputs.signatures)[split.train]
        return extend_guard(inputs.parent_guard[0], inputs.parent_guard[1], e_tr, y_tr, e_other, sig_tr)
    if val_emb is None:
        val_emb = (logits_and_embeddings(model, data.images[split.val], data.prep, device)[1] if len(split.val)
                   else np.zeros((0, 0)))
    e_other = None
    if inputs.other is not None and len(inputs.other):
        e_other = logits_and_embeddings(model, inputs.other, data.prep, device)[1]
    if inputs.replayed is not None:  # the parent's classes keep their place in the guard too
        e_tr, y_tr = np.concatenate([e_tr, inputs.replayed[0]]), np.concatenate([y_tr, inputs.replayed[1]])
    if inputs.dataset is not None and len(split.val):
        guard, info = fit_guard_on_split(e_tr, y_tr, val_emb, inputs.dataset, split, other_emb=e_other)
    else:
        guard, info = fit_guard(e_tr, y_tr, val_emb if len(split.val) else np.zeros((0, 0)), other_emb=e_other)
    if inputs.lab is not None and len(inputs.lab) and inputs.lab_parent_flags is not None:
        guard, info = match_parent_on_lab(guard, info, logits_and_embeddings(
            model, inputs.lab, data.prep, device)[1], inputs.lab_parent_flags, inputs.parent_name or "the parent")
    return guard, info


def write_package(model, data: TrainingArrays, calibration: Calibration, guard, guard_info: dict,
                  config: PackageConfig, out_dir: Path) -> ModelCard:
    """Weights, card and guard into ``out_dir`` (replaced if it exists); returns the card."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    card = ModelCard(
        name=config.name, architecture=config.architecture, taxonomy=data.taxonomy, classes=list(data.classes),
        preprocessing=data.prep.to_dict(), arch_params=dict(config.arch_params),
        temperature=float(calibration.temperature), uncertain_threshold=calibration.uncertain_threshold,
        metrics=dict(config.metrics), training_data=dict(config.training_data), parent=config.parent,
        input=data.input_kind, cell_side_um=data.cell_side_um, cell_crops=data.cell_crops, notes=config.notes)
    save_package(out_dir, {k: v for k, v in model.state_dict().items()}, card)
    from .guard import add_guard  # heavy: imports torch

    add_guard(out_dir, guard, guard_info)
    return verify_package(out_dir)


def int8_stage(package: Path, data: TrainingArrays, split: Split, config: Int8Config, lab: np.ndarray | None = None):
    """The int8 CPU model, checked as training checks it (label agreement with fp32 and the
    same guard flags) on the lab's own images, the validation and test images, topped up with
    training images (it measures arithmetic, not accuracy) to ``check_images``; else none
    ships and the version runs fp32 (the card says why). A job generator; returns the record."""
    held_out = np.concatenate([split.val, split.test]).astype(int)
    n_lab = 0 if lab is None else len(lab)
    top_up = np.asarray(split.train, dtype=int)[: max(0, config.check_images - n_lab - len(held_out))]
    parts = ([lab] if n_lab else []) + [data.images[held_out], data.images[top_up]]
    x_check = np.concatenate(parts)
    yield Progress("package", 0, None, f"making the int8 model for fast CPU classification and checking "
                   f"it on {len(x_check)} images", {"step": "int8", "n_images": int(len(x_check))})
    rec = add_int8(package, data.images[split.train], x_check, config.calibration_source)
    if not rec.get("accepted") and config.note_fp32:
        note_fp32(package, rec)
    return rec


def note_fp32(package: Path, rec: dict) -> None:
    """Say in the card why the version has no int8 model (it runs fp32): the model panel shows it."""
    card = verify_package(package)
    card.int8 = {"accepted": False, "reason": str(rec.get("reason") or "not made"),
                 **{k: rec[k] for k in ("agreement", "n_checked", "flag_agreement", "n_flagged_fp32",
                                        "n_flagged_int8") if k in rec}}
    _write_card(package, card)


def register_version(db, paths, package: Path, activate: bool = False, action: str | None = None):
    """Copy the package into the model registry (temp dir + rename). A job generator; returns
    the version id."""
    yield Progress("package", 0, None, "copying the new version into the model registry", {"step": "register"})
    with db.session() as s:
        kw = {"action": action} if action else {}
        return register_package(s, paths, package, activate=activate, **kw).id


EvaluateHook = Callable[[Any, Calibration, Any, dict], Generator[Progress, None, dict]]


def finish_package_job(model, data: TrainingArrays, split: Split, config: PackageConfig, out_dir: Path, *,
                       guard_inputs: GuardInputs | None = None, evaluate: EvaluateHook | None = None,
                       cancel=None):
    """calibrate -> guard -> [evaluate] -> package -> int8, as a job generator returning
    :class:`Finished` (None when ``cancel`` was set before the package was written).
    ``evaluate(model, calibration, guard, guard_info)`` (a job generator) returns the card
    metrics to add (train: held-out test figures; retrain: the comparison with the parent); what
    it adds to ``guard_info`` goes into the card's guard record too."""
    from .guard import logits_and_embeddings  # heavy: imports torch

    device = config.device
    model.eval()
    val_logits, val_emb = logits_and_embeddings(model, data.images[split.val], data.prep, device)
    calibration = calibrate(val_logits, data.labels[split.val], config.calibration)
    guard, guard_info = yield from fit_guard_stage(model, data, split, device, guard_inputs, val_emb)
    metrics = dict(config.metrics)
    if evaluate is not None:
        metrics.update((yield from evaluate(model, calibration, guard, guard_info)))
    if cancel is not None and cancel.is_set():
        return None
    if not config.write:
        return Finished(None, calibration, guard_info, None, None)
    yield Progress("package", 0, None, "writing the model package", {"step": "save"})
    card = write_package(model, data, calibration, guard, guard_info,
                         config.model_copy(update={"metrics": metrics}), out_dir)
    int8 = None
    if config.int8.enabled and not (cancel is not None and cancel.is_set()):
        int8 = yield from int8_stage(out_dir, data, split, config.int8, guard_inputs.lab if guard_inputs else None)
        card = verify_package(out_dir)
    return Finished(Path(out_dir), calibration, guard_info, int8, card)


def finish_package(model, data: TrainingArrays, split: Split, config: PackageConfig, out_dir: Path,
                   progress: Callable[[Progress], None] | None = None) -> Path:
    """Make a model package of an already-fitted ``model``: calibrate (temperature and
    uncertain threshold on ``split.val``) -> foreign-image guard (training side
    ``split.train``, threshold on ``split.val``) -> package (weights, card, guard written to
    ``out_dir``, replaced if it exists) -> int8 (when ``config.int8.enabled``; checked on
    ``split.val`` + ``split.test``). Returns ``out_dir``.

    ``data`` is any data source's :class:`TrainingArrays`; for cut-out cells, e.g.::

        data = TrainingArrays(images=cells_u8, labels=y, classes=list(TAXONOMIES["wbc_differential"].classes),
                              taxonomy="wbc_differential", prep=prep, input_kind="cell",
                              subjects=subject_per_cell, sources=source_per_cell, cell_side_um=side)
        split = Split("leave-source-out", train=tr_idx, val=va_idx, test=te_idx)
        cfg = PackageConfig(name="wbc-diff-v1", architecture="effnet_lite0",
                            int8=Int8Config(enabled=True, calibration_source="cut-out cells of ..."),
                            metrics={...}, training_data={...})
        finish_package(model, data, split, cfg, Path("runs/wbc/package"))

    The model must be on ``config.device``; ``register_version`` adds the package to a registry."""
    done = run_job(finish_package_job(model, data, split, config, Path(out_dir)), progress)
    return done.package
