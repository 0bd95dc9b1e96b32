"""Inference: load a model package for a device and classify folders as a pipelined job.

Pipeline: a bounded thread pool reads + decodes + preprocesses images (OpenCV releases
the GIL) while the main loop runs the model on the previous batch; each batch's
predictions are written in one transaction. At most ``prefetch`` decoded images are in
memory, whatever the folder size.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select, update

from .config import Paths
from .db import Database, ImageFile, Prediction, utcnow
from .dbutil import insert_ignore
from .errors import HemascanError, ImageError
from .fspath import display, to_fs
from .images import decode_rgb, read_file
from .jobs import Job, Progress, RateMeter
from .modelpkg import ModelCard
from .preprocessing import Preprocessing
from .registry import ensure_active_model, get_version
from .scan import ScanSummary, images_under, scan

log = logging.getLogger(__name__)


def cpu_supports_bf16() -> bool:
    """bf16 pays off on CPUs with AMX or AVX512-BF16; elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "amx_bf16" in flags or "avx512_bf16" in flags


def select_device(preference: str | None = None):
    """'auto'/None: CUDA when available, else CPU. An explicit 'cuda' without a GPU is an error."""
    import torch

    pref = (preference or "auto").lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise HemascanError("--device cuda was requested but no CUDA GPU is available (use --device cpu or auto)")
    try:
        return torch.device(pref)
    except RuntimeError:
        raise HemascanError(f"unknown device {preference!r} (use auto, cpu or cuda)") from None


def describe_device(device) -> str:
    import torch

    if device.type == "cuda":
        return f"CUDA GPU: {torch.cuda.get_device_name(device)}"
    return f"CPU ({torch.get_num_threads()} threads{', bf16' if cpu_supports_bf16() else ''})"


def _conv_bn_pairs(model, example) -> list[tuple[str, str]]:
    """(conv name, bn name) where a BatchNorm2d consumes exactly a Conv2d's output,
    found by watching one forward pass (works for architectures FX cannot trace)."""
    import torch
    from torch import nn

    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, nn.Module] = {}
    keep: list = []  # hold outputs so their ids are not reused during the pass
    pairs: list[tuple[str, str]] = []

    def after_conv(mod, _inp, out):
        produced[id(out)] = mod
        keep.append(out)

    def before_bn(mod, inp):
        conv = produced.get(id(inp[0]))
        if conv is not None:
            pairs.append((names[conv], names[mod]))

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(before_bn) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return pairs


def fold_batchnorm(model, input_size: int):
    """Fold eval-mode BatchNorm into the preceding convolutions (fewer ops per image).
    The folded model is checked against the original on a random batch; if anything
    differs (e.g. a conv output also used elsewhere), the original is kept."""
    import copy

    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    model = model.eval()
    example = torch.randn(2, 3, input_size, input_size)
    try:
        pairs = _conv_bn_pairs(model, example)
        if not pairs:
            return model
        folded = copy.deepcopy(model)
        modules = dict(folded.named_modules())
        for conv_name, bn_name in pairs:
            conv, bn = modules[conv_name], modules[bn_name]
            w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                        bn.eps, bn.weight, bn.bias)
            conv.weight, conv.bias = w, b
            parent_name, _, attr = bn_name.rpartition(".")
            setattr(modules[parent_name] if parent_name else folded, attr, nn.Identity())
        with torch.inference_mode():
            ok = torch.allclose(folded(example), model(example), rtol=1e-3, atol=1e-4)
        if ok:
            return folded
        log.warning("BatchNorm folding changed outputs; keeping the unfolded model")
    except Exception as exc:
        log.info("BatchNorm folding skipped: %s", exc)
    return model


# torch.compile costs ~35-50 s on a 2-core CPU the first time (~10 s once its artefacts
# are in the cache), then the model runs 1.5-2x faster. Measured on the 2,730-image share
# with EfficientNet-Lite0: eager 25.8 s, compiled cold 50.0 s, compiled warm 26.8 s, so
# compiling pays from ~3,000 images warm and ~10,000 cold. HEMASCAN_COMPILE=on/off overrides.
CPU_BATCH = 32  # beat 64 and 128 on a 2-core CPU (cache-friendly)
COMPILE_MIN_IMAGES = int(os.environ.get("HEMASCAN_COMPILE_MIN_IMAGES", "10000"))
COMPILE_MIN_IMAGES_WARM = int(os.environ.get("HEMASCAN_COMPILE_MIN_IMAGES_WARM", "3000"))


def compile_marker(cache_dir: Path, weights_sha256: str, batch_size: int) -> Path:
    """A file that says this model was compiled before in this cache (so it is warm)."""
    import torch

    return Path(cache_dir) / "compiled" / f"{weights_sha256[:16]}-torch{torch.__version__}-b{batch_size}.ok"


def should_compile(device, n_images: int, warm: bool = False) -> bool:
    import shutil

    mode = os.environ.get("HEMASCAN_COMPILE", "auto").lower()
    if mode in ("on", "off"):
        return mode == "on"
    has_compiler = any(shutil.which(c) for c in ("cc", "gcc", "clang", "cl"))
    return device.type == "cpu" and has_compiler and n_images >= (COMPILE_MIN_IMAGES_WARM if warm else COMPILE_MIN_IMAGES)


class Predictor:
    """A model ready for batched inference on one device."""

    def __init__(self, package: str | os.PathLike, device=None, precision: str = "auto",
                 compile: bool = False, cache_dir: Path | None = None):
        import torch

        from .modelpkg import load_model

        self.device = device if device is not None else select_device(None)
        model, card = load_model(Path(package), "cpu")
        self.card: ModelCard = card
        self.prep: Preprocessing = card.prep
        self.classes = list(card.classes)
        model = fold_batchnorm(model, card.prep.input_size)
        self.model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        if precision == "auto":
            if self.device.type == "cuda":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                precision = "bf16" if cpu_supports_bf16() else "fp32"
        self.precision = precision
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.compiled = False
        if compile:
            self._compile(cache_dir)

    def _compile(self, cache_dir: Path | None) -> None:
        """torch.compile with frozen weights; on any failure keep the eager model."""
        import torch

        if cache_dir is not None:  # reuse compiled artefacts across runs
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
        try:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            self.model = torch.compile(self.model, dynamic=False)
            self.compiled = True
        except Exception as exc:
            log.warning("torch.compile unavailable, running eagerly: %s", exc)

    @property
    def batch_size(self) -> int:
        """Small batches suit CPU caches (32 beat 128 on a 2-core CPU); GPUs want more,
        scaled to their memory."""
        if self.device.type != "cuda":
            return CPU_BATCH
        import torch

        gib = torch.cuda.get_device_properties(self.device).total_memory / 2**30
        return 128 if gib < 8 else 256 if gib < 24 else 512

    def logits(self, batch_u8: np.ndarray):
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(batch_u8)
            if self.device.type == "cuda":
                t = t.pin_memory().to(self.device, non_blocking=True)
            x = self.prep.normalise(t)
            if self._dtype is not None:
                with torch.autocast(self.device.type, dtype=self._dtype):
                    out = self.model(x)
            else:
                out = self.model(x)
            return out.float()

    def predict(self, batch_u8: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> calibrated class probabilities (N, C) as float32 numpy."""
        import torch

        n = len(batch_u8)
        if self.compiled and n < self.batch_size:  # one static shape: no recompiles for the last batch
            pad = np.zeros((self.batch_size - n, *batch_u8.shape[1:]), batch_u8.dtype)
            batch_u8 = np.concatenate([batch_u8, pad])
        logits = self.logits(batch_u8)[:n] / float(self.card.temperature or 1.0)
        return torch.softmax(logits, dim=1).cpu().numpy()

    def load_image(self, path: str) -> np.ndarray:
        return self.prep.apply(decode_rgb(read_file(to_fs(path))))


def _import_torch() -> None:
    import torch  # noqa: F401


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


@dataclass
class ClassifySummary:
    scan: ScanSummary
    model: str
    device: str
    n_todo: int = 0
    n_predicted: int = 0
    n_errors: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n_predicted / self.seconds if self.seconds > 0 else 0.0


def _prediction_rows(ids: list[int], probs: np.ndarray, version_id: int, card: ModelCard) -> list[dict]:
    conf = probs.max(axis=1)
    top = probs.argmax(axis=1)
    ent = entropy(probs)
    thr = card.uncertain_threshold
    now = utcnow()
    return [
        dict(image_id=i, model_version_id=version_id, label=card.classes[int(k)], confidence=float(c),
             entropy=float(e), probabilities=[round(float(x), 6) for x in p],
             uncertain=bool(thr is not None and c < thr), created_at=now)
        for i, p, k, c, e in zip(ids, probs, top, conf, ent)
    ]


def classify(
    db: Database,
    paths: Paths,
    folder: str | os.PathLike,
    device: str | None = None,
    cancel: threading.Event | None = None,
    model_name: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
) -> Job[ClassifySummary]:
    """Scan ``folder`` and predict every image not yet predicted by the model version.
    Yields Progress; returns ClassifySummary. Safe to kill at any moment and re-run."""
    cancel = cancel or threading.Event()
    # Import torch in the background while the scan runs: the first prediction comes sooner.
    warm = threading.Thread(target=_import_torch, name="hemascan-warm-torch", daemon=True)
    warm.start()
    scan_summary = yield from scan(db, folder, cancel)
    warm.join()
    with db.session() as s:
        version = get_version(s, model_name) if model_name else ensure_active_model(s, paths)
        version_id, version_name, package = version.id, version.name, version.path
        version_sha = version.weights_sha256
        done_ids = set(s.scalars(select(Prediction.image_id).where(Prediction.model_version_id == version_id)))
        todo = [(i, p) for i, p in images_under(s, folder) if i not in done_ids]
    dev = select_device(device)
    summary = ClassifySummary(scan_summary, version_name, describe_device(dev), n_todo=len(todo))
    if scan_summary.cancelled or not todo:
        summary.cancelled = scan_summary.cancelled
        return summary

    marker = compile_marker(paths.cache, version_sha, CPU_BATCH)  # compiling is a CPU-only path
    compile_now = should_compile(dev, len(todo), warm=marker.exists())
    predictor = Predictor(package, dev, compile=compile_now, cache_dir=paths.cache)
    bs = batch_size or predictor.batch_size
    if predictor.compiled:
        bs = predictor.batch_size  # compiled for one static batch shape
        yield Progress("classify", 0, len(todo), "preparing the model for this large job"
                       + ("" if marker.exists() else " (first time: about a minute)"))
    workers = workers or min(8 if dev.type == "cuda" else 2, os.cpu_count() or 2)
    prefetch = bs * 4  # bound on decoded images held in memory
    meter = RateMeter()
    yield Progress("classify", 0, len(todo), summary.device)

    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the decode pool, not from inside OpenCV

    def load(item: tuple[int, str]):
        try:
            return item, predictor.load_image(item[1]), None
        except ImageError as exc:
            return item, None, str(exc)
        except Exception as exc:  # one bad file never stops the batch
            log.exception("unexpected error decoding %s", display(item[1]))
            return item, None, f"unexpected error: {exc}"

    with ThreadPoolExecutor(workers, thread_name_prefix="hemascan-decode") as pool:
        pending: deque[Future] = deque()
        it = iter(todo)
        exhausted = False
        while True:
            while not exhausted and len(pending) < prefetch:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                else:
                    pending.append(pool.submit(load, nxt))
            if not pending:
                break
            ids, arrays, failed = [], [], []
            while pending and len(ids) < bs:
                (image_id, path), arr, err = pending.popleft().result()
                if err is None:
                    ids.append(image_id)
                    arrays.append(arr)
                else:
                    failed.append((path, err))
            if ids:
                probs = predictor.predict(np.stack(arrays))
            with db.session() as s:
                if ids:
                    insert_ignore(s, Prediction.__table__, _prediction_rows(ids, probs, version_id, predictor.card),
                                  ["image_id", "model_version_id"])
                for path, err in failed:
                    s.execute(update(ImageFile).where(ImageFile.path == path).values(error=err))
            if predictor.compiled and ids and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            summary.n_predicted += len(ids)
            summary.n_errors += len(failed)
            summary.errors.extend((display(p), e) for p, e in failed[: max(0, 200 - len(summary.errors))])
            done = summary.n_predicted + summary.n_errors
            rate = meter.rate(done)
            eta = meter.eta(done, len(todo))
            yield Progress("classify", done, len(todo), f"{rate:.0f} img/s",
                           extra={"rate": rate, "eta_s": eta, "device": summary.device})
            if cancel.is_set():
                summary.cancelled = True
                for f in pending:
                    f.cancel()
                break
    summary.seconds = meter.elapsed()
    return summary
