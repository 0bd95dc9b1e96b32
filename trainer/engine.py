"""Training engine: ``train_one_epoch``, ``evaluate``, ``predict_logits`` and ``run``.

``run(config, progress=None, cancel=None)`` is a job generator (see ``core.jobs``): it
yields ``Progress`` (stages load / train / validate / calibrate / test / package) and
returns a summary dict. The CLI drives it with ``App.progress``; the GUI in a worker
thread. Per-epoch train/val loss and accuracy are in ``Progress.extra["history"]``.

Determinism: every epoch re-seeds its own generators from ``(seed, epoch)``, so a run
resumed from the checkpoint of epoch k continues exactly as the uninterrupted run.
Checkpoints are safetensors (model + optimiser tensors) plus a JSON state file; nothing
is pickled.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from core.jobs import Progress
from core.imaging.preprocessing import Preprocessing

from . import augment as aug
from .data import Dataset, Split
from .metrics import classification_metrics, ood_auroc, per_group_metrics, softmax
from trainer.guard import logits_and_embeddings, ood_sets
from trainer.baselines import colour_histogram_baseline
from trainer.pipeline import (
    GuardInputs,
    Int8Config,
    PackageConfig,
    finish_package_job,
    freeze_first,
    new_model,
    relay,
    training_device,
)
from trainer.sources import from_class_folders

CHECKPOINT_WEIGHTS = "last.safetensors"
CHECKPOINT_STATE = "last.json"
BEST_WEIGHTS = "best.safetensors"

# Citations of the public datasets the trainer knows, by their folder name; a card names the
# source of its training images, so an unknown folder gets an honest "not given".
DATA_ATTRIBUTIONS = {
    "all-taleqani": (
        "Acute Lymphoblastic Leukemia (ALL) image dataset, Taleqani Hospital, Tehran: Aria M., "
        "Ghaderzadeh M., et al., 'Acute Lymphoblastic Leukemia (ALL) image dataset', Kaggle "
        "'mehradaria/leukemia' (2021); Ghaderzadeh M. et al., Int J Intell Syst 2022."
    ),
    "cnmc-train": (
        "C-NMC 2019 (ISBI 2019 challenge): SBI Lab, IIIT Delhi and AIIMS New Delhi; Gupta A., "
        "Gupta R., 'ALL Challenge dataset of ISBI 2019', The Cancer Imaging Archive, "
        "doi:10.7937/tcia.2019.dc64i46r; licence CC BY 3.0."
    ),
    "pbc-dev": (
        "PBC normal peripheral-blood cells, Hospital Clinic Barcelona: Acevedo A. et al., "
        "Data in Brief 2020; licence CC BY 4.0."
    ),
}


def data_attribution(cfg: TrainConfig) -> str:
    if cfg.attribution:
        return cfg.attribution
    folder = Path(cfg.data).name
    return DATA_ATTRIBUTIONS.get(folder) or (
        f"images of the folder {folder!r}; their source was not given (hemascan train --attribution)"
    )


class TrainConfig(BaseModel):
    """``train``'s settings (the pipeline from class folders); stored with the run and in the card."""
    model_config = ConfigDict(extra="forbid")

    data: str
    arch: str = "effnet_lite0"
    arch_params: dict[str, Any] = {}
    pretrained: bool = True
    freeze_blocks: int = 0  # effnet_lite0: keep the stem and the first N MBConv blocks fixed (faster on CPU)
    taxonomy: str | None = None
    input_size: int = 128
    interpolation: str = "area"
    corner_mask: tuple[float, float] | None = (0.1, 0.2)
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    patience: int = 4
    balance: str = "loss"  # loss (class-weighted CE), sampler (weighted sampling), none
    split: str = "patient"  # patient, random, all
    fold: int = 4
    dedup_train: bool = False  # drop exact/near duplicates inside the training set
    seed: int = 0
    threads: int | None = None
    augment: dict[str, Any] = {}
    out_dir: str = "runs/train"
    cache_dir: str | None = None
    resume: bool = False
    name: str | None = None
    attribution: str | None = None  # where the training images come from (the card cites it)
    package: bool = True
    int8: bool = False  # add the checked int8 CPU model to the package (trainer/quantize.py)
    max_epochs_this_call: int | None = None  # stop (resumably) after this many epochs
    eval_robustness: bool = True
    eval_ood: bool = True
    colour_baseline: bool = True
    device: str | None = None
    precision: str = "auto"  # auto is fp32 on every device (core/inference/runtime.py); bf16/fp16 only when asked
    notes: str = ""

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls.model_validate(d)

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing(input_size=self.input_size, interpolation=self.interpolation, corner_mask=self.corner_mask)


# ---- precision / device ---------------------------------------------------------------

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(device: torch.device | str, precision: str = "fp32"):
    """A context manager factory computing in ``precision`` on ``device``. fp32 (the default
    for training, evaluation and calibration, see core/inference/runtime.py) is a no-op context."""
    import contextlib

    device = torch.device(device)
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---- batches ----------------------------------------------------------------------------

def _to_input(batch_u8: np.ndarray | torch.Tensor, prep: Preprocessing, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(batch_u8).to(device, non_blocking=True)
    return prep.normalise(t).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, prep: Preprocessing, device: torch.device | str = "cpu",
                   batch_size: int = 64, cancel=None, precision: str = "fp32") -> np.ndarray:
    """uint8 (N,S,S,3) already through ``prep.apply`` -> float64 logits (N, C), computed in
    ``precision`` (fp32 unless the caller asks otherwise)."""
    device = torch.device(device)
    model.eval()
    ctx = autocast_for(device, precision)
    out = []
    for i in range(0, len(images), batch_size):
        if cancel is not None and cancel.is_set():
            break
        with ctx():
            out.append(model(_to_input(images[i : i + batch_size], prep, device)).float().cpu())
    return torch.cat(out).double().numpy() if out else np.zeros((0, 0))


def iter_train_epoch(model: nn.Module, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, *,
                     optimizer: torch.optim.Optimizer, scheduler, criterion: nn.Module, prep: Preprocessing,
                     augmenter: aug.Augmenter, device: torch.device, batch_size: int, epoch_seed: int,
                     sample_weights: np.ndarray | None = None, cancel=None, precision: str = "fp32",
                     frozen: list[nn.Module] = ()):
    """Generator form of :func:`train_one_epoch`: yields ``(batch, n_batches, loss)`` after
    every optimiser step and returns the epoch's stats."""
    gen = torch.Generator().manual_seed(epoch_seed)
    torch.manual_seed(epoch_seed)  # dropout / drop-connect
    if sample_weights is not None:
        w = torch.as_tensor(sample_weights, dtype=torch.double)
        order = indices[torch.multinomial(w, len(indices), replacement=True, generator=gen).numpy()]
    else:
        order = indices[torch.randperm(len(indices), generator=gen).numpy()]
    model.train()
    for mod in frozen:  # fixed stages keep their BatchNorm statistics too
        mod.eval()
    ctx = autocast_for(device, precision)
    t0 = time.perf_counter()
    total_loss, correct, seen = 0.0, 0, 0
    n_batches = math.ceil(len(order) / batch_size)
    cancelled = False
    for b in range(n_batches):
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        idx = order[b * batch_size : (b + 1) * batch_size]
        if len(idx) < 2 and seen:  # BatchNorm cannot train on a single image
            continue
        x = _to_input(augmenter(torch.from_numpy(images[idx]), gen), prep, device)
        y = torch.as_tensor(labels[idx], device=device)
        with ctx():
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
        yield b + 1, n_batches, float(loss.detach())
    dt = time.perf_counter() - t0
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "n": seen,
            "seconds": dt, "images_per_s": seen / dt if dt > 0 else 0.0, "cancelled": cancelled}


def train_one_epoch(model: nn.Module, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                    on_batch: Callable[[int, int, float], None] | None = None, **kw) -> dict:
    """One pass over ``indices`` (shuffled, or weighted-sampled with ``sample_weights``).
    Returns {"loss", "accuracy", "n", "seconds", "images_per_s", "cancelled"}."""
    it = iter_train_epoch(model, images, labels, indices, **kw)
    while True:
        try:
            step = next(it)
        except StopIteration as stop:
            return stop.value
        if on_batch is not None:
            on_batch(*step)


def evaluate(model: nn.Module | None, images: np.ndarray, labels: np.ndarray, classes: list[str], prep: Preprocessing,
             device: torch.device | str = "cpu", temperature: float = 1.0, batch_size: int = 64,
             logits_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """Metrics of ``model`` on uint8 images (through ``prep.apply``) with the given
    temperature; adds ``seconds`` and ``images_per_s`` and the raw ``logits``.
    ``logits_fn`` (uint8 batch -> logits) replaces the torch model, e.g. an inference
    engine as `classify` runs it (core.inference.predict.Predictor.logits)."""
    t0 = time.perf_counter()
    if logits_fn is not None:
        logits = np.concatenate([np.asarray(logits_fn(images[i : i + batch_size]), dtype=np.float64)
                                 for i in range(0, len(images), batch_size)])
    else:
        logits = predict_logits(model, images, prep, device, batch_size)
    dt = time.perf_counter() - t0
    m = classification_metrics(labels, softmax(logits, temperature), classes)
    m["loss"] = m["nll"]
    m["seconds"] = dt
    m["images_per_s"] = len(images) / dt if dt > 0 else 0.0
    m["logits"] = logits
    return m


# ---- checkpoints ------------------------------------------------------------------------

def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(out_dir: Path, model: nn.Module, optimizer, scheduler, state: dict) -> None:
    """Model + optimiser tensors -> safetensors; everything else -> JSON. Weights first,
    then the JSON that names the epoch, so a crash in between keeps the older pair usable
    only if both match (the JSON records the weights' epoch)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for key, val in st.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(val)
    save_weights(out_dir / CHECKPOINT_WEIGHTS, tensors)
    js = dict(state)
    js["optimizer_param_groups"] = opt["param_groups"]
    js["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    _atomic_write_text(out_dir / CHECKPOINT_STATE, json.dumps(js, indent=1, default=_json_default))


def load_checkpoint(out_dir: Path, model: nn.Module, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    js = json.loads((out_dir / CHECKPOINT_STATE).read_text(encoding="utf-8"))
    tensors = load_file(str(out_dir / CHECKPOINT_WEIGHTS))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    opt_state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[key] = v
    groups = js["optimizer_param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    if scheduler is not None and js.get("scheduler"):
        scheduler.load_state_dict(js["scheduler"])
    return js


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


# ---- the job ------------------------------------------------------------------------------

def _lr_lambda(warmup_steps: int, total_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return f


def _eval_rows(model, images, labels, classes, prep, device, temperature, robustness: bool, seed: int) -> dict:
    rows = {"as_is": evaluate(model, images, labels, classes, prep, device, temperature)}
    if robustness:
        rows["grayscale"] = evaluate(model, aug.to_grayscale(images), labels, classes, prep, device, temperature)
        rows["stain_perturbed"] = evaluate(model, aug.stain_perturb(images, seed=seed), labels, classes, prep, device, temperature)
    return rows




def _strip(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "logits"}


@dataclass
class FitOptions:
    """How the weights are optimised: the one training loop's settings, for ``train``,
    ``retrain`` and the experiments alike."""
    epochs: int
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    patience: int | None = 4  # epochs without a better validation score before stopping; None: never
    balance: str = "loss"  # loss (class-weighted CE), sampler (class-balanced sampling), none
    augment: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    precision: str = "fp32"
    freeze_first: int = 0  # keep the first N stages (see ``stages``) fixed
    train_last: int | None = None  # train only the last N stages (head first); None: all not frozen
    min_steps: int = 0  # at least this many optimiser steps: few images get more epochs, not fewer updates
    max_epochs_this_call: int | None = None  # stop (resumably) after this many epochs

    def epochs_for(self, n_train: int) -> int:
        steps = max(1, math.ceil(n_train / self.batch_size))
        return max(self.epochs, math.ceil(self.min_steps / steps))


def stages(model: nn.Module) -> list[nn.Module]:
    """The network from input to output in the pieces fine-tuning freezes or trains:
    EfficientNet's stem, each MBConv block, head conv, classifier; the seed CNNs' blocks
    and classifier."""
    if hasattr(model, "_blocks"):
        return [nn.ModuleList([model._conv_stem, model._bn0]), *model._blocks,
                nn.ModuleList([model._conv_head, model._bn1]), model._fc]
    return [*model.features, model.classifier]


def freeze_stages(model: nn.Module, freeze_first: int = 0, train_last: int | None = None) -> list[nn.Module]:
    """Fix the parameters (and BatchNorm statistics) of the first stages; returns the frozen
    modules, which the epoch loop keeps in eval mode."""
    parts = stages(model)
    n_frozen = max(freeze_first, len(parts) - train_last if train_last is not None else 0)
    frozen = parts[: min(n_frozen, len(parts) - 1)]  # the classifier always trains
    for mod in frozen:
        for p in mod.parameters():
            p.requires_grad_(False)
    return frozen


def fit(model: nn.Module, images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
        classes: list[str], prep: Preprocessing, device: torch.device, opts: FitOptions, *,
        out_dir: Path | None = None, resume: bool = False, checkpoint_config: dict | None = None,
        progress: Callable[[Progress], None] | None = None, cancel=None, stage_name: str = "train",
        select_on_val: bool = True):
    """The training loop (torchvision references' shape: ``train_one_epoch`` + ``evaluate``
    per epoch). Best epoch by validation macro-F1 (then loss), early stopping after
    ``patience`` epochs without improvement (``select_on_val=False``: validation is only
    reported, the last epoch is kept: for validation sets too small to choose by). With ``out_dir``: a checkpoint after every
    epoch (``resume=True`` continues it bit-identically) and the best weights on disk;
    without, the best weights are kept in memory. A generator of Progress; returns
    {status: completed/cancelled/paused, history, best, train_seconds, stopped_early,
    epochs_planned}; on completion the model holds the best epoch's weights."""

    def emit(p: Progress) -> Progress:
        if progress is not None:
            progress(p)
        return p

    n_cls = len(classes)
    frozen = freeze_stages(model, opts.freeze_first, opts.train_last)
    model = model.to(device).to(memory_format=torch.channels_last)
    y_tr = labels[train_idx]
    sample_weights, class_weight = None, None
    if opts.balance == "loss":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(y_tr)
        cw = np.ones(n_cls)
        cw[present] = compute_class_weight("balanced", classes=present, y=y_tr)
        class_weight = torch.tensor(cw, dtype=torch.float32, device=device)
    elif opts.balance == "sampler":
        counts = np.bincount(y_tr, minlength=n_cls).astype(np.float64)
        sample_weights = 1.0 / counts[y_tr]
    criterion = nn.CrossEntropyLoss(weight=class_weight, label_smoothing=opts.label_smoothing)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.lr,
                                  weight_decay=opts.weight_decay)
    epochs = opts.epochs_for(len(train_idx))
    steps_per_epoch = math.ceil(len(train_idx) / opts.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(int(opts.warmup_epochs * steps_per_epoch), epochs * steps_per_epoch))
    augmenter = aug.Augmenter(aug.AugmentConfig(**opts.augment), fill=prep.mean)

    history: list[dict] = []
    best: dict[str, Any] = {"epoch": -1, "val_macro_f1": -1.0, "val_loss": float("inf")}
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch, bad_epochs, seconds_before = 0, 0, 0.0
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume and (out_dir / CHECKPOINT_STATE).is_file():
            st = load_checkpoint(out_dir, model, optimizer, scheduler)
            want = (checkpoint_config or {}).get("arch")
            if want is not None and st.get("config", {}).get("arch") != want:
                raise ValueError(f"checkpoint in {out_dir} is for {st.get('config', {}).get('arch')!r}, not {want!r}")
            history, best, start_epoch = st["history"], st["best"], st["epoch"] + 1
            bad_epochs, seconds_before = st.get("bad_epochs", 0), st.get("train_seconds", 0.0)
            yield emit(Progress(stage_name, start_epoch, epochs, f"resumed after epoch {start_epoch}"))

    status, stopped_early, epochs_this_call = "completed", False, 0
    t_train = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        if cancel is not None and cancel.is_set():
            status = "cancelled"
            break
        if opts.max_epochs_this_call is not None and epochs_this_call >= opts.max_epochs_this_call:
            status = "paused"
            break
        it = iter_train_epoch(model, images, labels, train_idx, optimizer=optimizer, scheduler=scheduler,
                              criterion=criterion, prep=prep, augmenter=augmenter, device=device,
                              batch_size=opts.batch_size, epoch_seed=opts.seed * 100_003 + epoch,
                              sample_weights=sample_weights, cancel=cancel, precision=opts.precision, frozen=frozen)
        while True:
            try:
                bi, nb, loss = next(it)
            except StopIteration as stop:
                tr = stop.value
                break
            done = epoch * nb + bi
            elapsed = time.perf_counter() - t_train
            eta = elapsed / (done - start_epoch * nb) * (epochs * nb - done) if done > start_epoch * nb else None
            yield emit(Progress(stage_name, done, epochs * nb, f"epoch {epoch + 1}/{epochs} loss {loss:.3f}",
                                {"epoch": epoch + 1, "epochs": epochs, "batch": bi, "batches": nb, "loss": loss,
                                 "history": list(history), "eta_s": eta, "elapsed_s": elapsed}))
        if tr["cancelled"]:
            status = "cancelled"
            break
        val = evaluate(model, images[val_idx], labels[val_idx], classes, prep, device) if len(val_idx) else None
        rec = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "train_images_per_s": tr["images_per_s"], "lr": optimizer.param_groups[0]["lr"],
               "val_loss": val["loss"] if val else None, "val_accuracy": val["accuracy"] if val else None,
               "val_macro_f1": val["macro_f1"] if val else None}
        history.append(rec)
        improved = (val is None or not select_on_val
                    or (val["macro_f1"], -val["loss"]) > (best["val_macro_f1"], -best["val_loss"]))
        if improved:  # without validation: the last epoch
            best = {"epoch": epoch + 1, "val_macro_f1": val["macro_f1"] if val else -1.0,
                    "val_loss": val["loss"] if val else float("inf")}
            if out_dir is not None:
                save_weights(out_dir / BEST_WEIGHTS, model.state_dict())
            else:
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
        epochs_this_call += 1
        if out_dir is not None:
            save_checkpoint(out_dir, model, optimizer, scheduler, {
                "epoch": epoch, "history": history, "best": best, "bad_epochs": bad_epochs,
                "config": checkpoint_config or {}, "train_seconds": seconds_before + time.perf_counter() - t_train})
        yield emit(Progress("validate", epoch + 1, epochs,
                            f"epoch {epoch + 1}: train loss {tr['loss']:.3f} acc {tr['accuracy']:.3f}"
                            + (f" | val loss {val['loss']:.3f} acc {val['accuracy']:.3f} F1 {val['macro_f1']:.3f}" if val else ""),
                            {"history": list(history), "epoch": epoch + 1, "epochs": epochs}))
        if val is not None and select_on_val and opts.patience is not None and bad_epochs >= opts.patience:
            stopped_early = True
            break
    train_seconds = seconds_before + time.perf_counter() - t_train
    if status == "completed":
        if out_dir is not None and (out_dir / BEST_WEIGHTS).is_file():
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(out_dir / BEST_WEIGHTS)))
        elif best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
    return {"status": status, "history": history, "best": best, "train_seconds": train_seconds,
            "stopped_early": stopped_early, "epochs_planned": epochs}


def run(config: TrainConfig | dict, progress: Callable[[Progress], None] | None = None, cancel=None):
    """Train, calibrate, evaluate and package one model: the pipeline (trainer/pipeline.py)
    from class folders. A job generator: iterate it (or ``core.jobs.run_job``) to drive it; it
    returns the summary dict. ``progress`` (optional) is also called with every Progress, for
    callers that do not iterate themselves."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)

    def emit(p: Progress) -> Progress:
        if progress is not None:
            progress(p)
        return p

    t_start = time.perf_counter()
    device, precision = training_device(cfg.device, cfg.precision, cfg.threads)
    _seed_all(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = yield from relay(from_class_folders(Path(cfg.data), cfg.prep, cfg.taxonomy, cfg.split, cfg.seed, cfg.fold,
                                             cfg.dedup_train, Path(cfg.cache_dir) if cfg.cache_dir else None), emit)
    data, split, used = src.data, src.split, src.used

    # -- fit: the one training loop
    model = new_model(cfg.arch, len(data.classes), cfg.arch_params, cfg.pretrained)
    opts = FitOptions(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                      warmup_epochs=cfg.warmup_epochs, label_smoothing=cfg.label_smoothing, patience=cfg.patience,
                      balance=cfg.balance, augment=cfg.augment, seed=cfg.seed, precision=precision,
                      freeze_first=freeze_first(cfg.arch, cfg.freeze_blocks),
                      max_epochs_this_call=cfg.max_epochs_this_call)
    fitted = yield from fit(model, data.images, data.labels, used.train, used.val, data.classes, data.prep, device,
                            opts, out_dir=out_dir, resume=cfg.resume, checkpoint_config=cfg.to_dict(),
                            progress=progress, cancel=cancel)
    summary: dict[str, Any] = {"status": fitted["status"], "config": cfg.to_dict(), "history": fitted["history"],
                               "best": fitted["best"], "split": split.describe(), "precision": precision,
                               "device": str(device), "train_seconds": fitted["train_seconds"],
                               "stopped_early": fitted["stopped_early"], "out_dir": str(out_dir)}
    if fitted["status"] != "completed":
        summary["message"] = "stopped; resume with the same out_dir and resume=True"
        return summary

    def test(model, calibration, guard, guard_info):  # held-out figures, as the card states them
        summary["calibration"] = calibration.record
        summary["evaluation"] = yield from relay(_held_out(model, data, used, calibration, guard, guard_info,
                                                               cfg, device), emit)
        summary["guard"] = guard_info
        summary["total_seconds"] = time.perf_counter() - t_start
        return _card_metrics(summary)

    name = cfg.name or f"{data.taxonomy.replace('_', '-')}-{cfg.arch.replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    package = PackageConfig(
        name=name, architecture=cfg.arch, arch_params=dict(cfg.arch_params), notes=cfg.notes, device=str(device),
        training_data=_training_data(cfg, src.dataset, split, used.train), write=cfg.package,
        int8=Int8Config(enabled=cfg.int8, calibration_source=f"{len(used.train)} training images of "
                        f"{Path(cfg.data).name} ({split.method} split)"))
    done = yield from relay(finish_package_job(model, data, used, package, out_dir / "package",
                                               guard_inputs=GuardInputs(dataset=src.dataset), evaluate=test), emit)
    if done.package is not None:
        if done.int8 is not None:
            summary["int8"] = done.int8
        summary["package"] = str(done.package)
        summary["model_name"] = name
        yield emit(Progress("package", 1, 1, str(done.package)))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default), encoding="utf-8")
    return summary


def _held_out(model, data, split: Split, calibration, guard, guard_info: dict, cfg: TrainConfig, device):
    """The test side three ways (as is, grayscale, stain-perturbed), per subject, the share
    called uncertain, the colour-histogram baseline, and synthetic foreign images against the
    calibrated confidence and the guard (added to ``guard_info``). A job generator."""
    if not len(split.test):
        return {}
    temperature, threshold = calibration.temperature, calibration.uncertain_threshold
    classes, prep, labels = data.classes, data.prep, data.labels
    yield Progress("test", 0, 3, "held-out evaluation")
    xt, yt = data.images[split.test], labels[split.test]
    rows = _eval_rows(model, xt, yt, classes, prep, device, temperature, cfg.eval_robustness, cfg.seed)
    raw = classification_metrics(yt, softmax(rows["as_is"]["logits"]), classes)
    evaluation = {k: _strip(v) for k, v in rows.items()}
    evaluation["as_is"]["ece_uncalibrated"] = raw["ece"]
    subjects = [data.subjects[i] for i in split.test] if data.subjects else []  # per patient/donor where known
    if any(subjects):
        evaluation["as_is"]["per_subject"] = per_group_metrics(
            yt, softmax(rows["as_is"]["logits"], temperature), subjects, classes)
    conf_in = softmax(rows["as_is"]["logits"], temperature).max(1)
    if threshold is not None:
        evaluation["as_is"]["uncertain_fraction"] = float((conf_in < threshold).mean())
    yield Progress("test", 3, 3, f"test accuracy {rows['as_is']['accuracy']:.3f}")
    d_in = guard.distances(logits_and_embeddings(model, xt, prep, device)[1])
    guard_info["in_lab_test_flagged"] = float((d_in > guard.threshold).mean())
    if cfg.eval_ood:
        ood = {}
        for name, x_ood in ood_sets(xt, prep, seed=cfg.seed).items():
            lo, em = logits_and_embeddings(model, x_ood, prep, device)
            c_out = softmax(lo, temperature).max(1)
            ood[name] = {"auroc": ood_auroc(conf_in, c_out), "n": int(len(x_ood)),
                         "flagged_uncertain": float((c_out < threshold).mean()) if threshold is not None else None}
            d_out = guard.distances(em)
            flagged = d_out > guard.threshold
            guard_info.setdefault("foreign", {})[name] = {
                "n": int(len(x_ood)), "auroc": ood_auroc(-d_in, -d_out), "flagged": float(flagged.mean()),
                "confident_call": float((~flagged & (c_out >= (threshold or 0.0))).mean())}
        evaluation["ood"] = ood
    if cfg.colour_baseline:
        evaluation["colour_histogram_baseline"] = colour_histogram_baseline(
            data.images[split.train], labels[split.train], xt, yt, classes, seed=cfg.seed)
    return evaluation


def _card_metrics(summary: dict) -> dict:
    ev = summary.get("evaluation", {})
    out = {"split": summary["split"], "calibration": summary.get("calibration", {}),
           "train_seconds": round(summary["train_seconds"], 1), "precision": summary["precision"],
           "device": summary["device"], "best_epoch": summary["best"]["epoch"],
           "epochs_run": len(summary["history"]), "history": summary["history"]}
    for key in ("as_is", "grayscale", "stain_perturbed"):
        if key in ev:
            out[key] = ev[key]
    for key in ("ood", "colour_histogram_baseline"):
        if key in ev:
            out[key] = ev[key]
    return out


def _training_data(cfg: TrainConfig, ds: Dataset, split: Split, train_idx) -> dict:
    return {"source": str(Path(cfg.data).name), "n_images": len(ds), "class_counts": ds.counts(),
            "split": split.describe(), "n_train_used": int(len(train_idx)),
            "train_class_counts": {c: int((ds.labels[train_idx] == i).sum()) for i, c in enumerate(ds.classes)},
            "attribution": data_attribution(cfg), "config": cfg.to_dict()}
