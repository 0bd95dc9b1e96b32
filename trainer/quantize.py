"""int8 models for CPUs: post-training quantization of a package with NNCF, checked
against fp32 on held-out images before it is shipped.

The int8 OpenVINO model (``model.int8.xml`` + ``.bin``) goes into the package beside the
safetensors weights, with its SHA-256s, its calibration and its measured label agreement
in the card. The CPU engine uses it only where that agreement is at least 99.5%
(core.inference.engines.MIN_INT8_AGREEMENT); otherwise the package runs in fp32.

On the default model (827 held-out images): fast bias correction agreed on 97.7% of
labels, full bias correction on 99.4%, and full bias correction with the first convolution
kept in fp32 on 99.8% (17 s for 160 calibration images on 2 cores; ~950 images/s).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core.inference.engines import (
    MIN_INT8_AGREEMENT,
    TorchEngine,
    convert_to_openvino,
    save_openvino,
    with_uint8_input,
)
from core.errors import HemascanError
from core.inference.runtime import runtime_plan
from core.models.guard import load_guard
from core.models.package import CARD_FILE, ModelCard, int8_files, sha256_file, verify_package
from trainer.data import compute_hashes, load_images, make_split, scan_class_folders

log = logging.getLogger(__name__)

INT8_XML = "model.int8.xml"
CALIBRATION_IMAGES = 160
BATCH = 32
# Fewer check images cannot show 99.5% agreement (one disagreement in 200 is 99.5%): the
# int8 model is then not shipped and the package runs fp32.
MIN_CHECK_IMAGES = 200


def quantization_available() -> str | None:
    """None when int8 models can be made here, else the reason."""
    import importlib.util

    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    return f"int8 quantization needs {' and '.join(missing)} (pip install {' '.join(missing)})" if missing else None


def _normalised(card: ModelCard, batch_u8: np.ndarray) -> np.ndarray:
    """The float NCHW input the fp32 network takes (the calibration form)."""
    import torch

    return card.prep.normalise(torch.from_numpy(np.ascontiguousarray(batch_u8))).contiguous().numpy()


def _outputs(compiled, batch_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, penultimate embedding or None where the model has no second output)."""
    req = compiled.create_infer_request()
    two = len(compiled.outputs) > 1
    logits, emb = [], []
    for i in range(0, len(batch_u8), BATCH):
        req.infer({0: np.ascontiguousarray(batch_u8[i : i + BATCH])})
        logits.append(np.array(req.get_output_tensor(0).data, copy=True))
        if two:
            emb.append(np.array(req.get_output_tensor(1).data, copy=True))
    if not logits:
        return np.zeros((0, 0), np.float32), None
    return np.concatenate(logits), (np.concatenate(emb) if two else None)


def _logits(compiled, batch_u8: np.ndarray) -> np.ndarray:
    return _outputs(compiled, batch_u8)[0]


def guard_flag_check(package: Path, card: ModelCard, emb_fp32: np.ndarray, emb_int8: np.ndarray | None) -> dict:
    """How the package's foreign-image guard flags the check images from fp32 and from int8
    embeddings: a CPU running int8 must call the same images "outside the model's experience"
    as fp32 does. {} when the package has no guard."""
    guard = load_guard(package, card.guard, len(card.classes))
    if guard is None:
        return {}
    if emb_int8 is None:
        return {"flag_agreement": 0.0, "flag_reason": "the int8 model has no embedding output for the guard"}
    ref = guard.flags(emb_fp32)[1]
    got = guard.flags(emb_int8)[1]
    return {"flag_agreement": round(float((ref == got).mean()), 5), "n_flagged_fp32": int(ref.sum()),
            "n_flagged_int8": int(got.sum())}


def quantize_package(package: Path, calibration_u8: np.ndarray, check_u8: np.ndarray,
                     calibration_source: str, min_agreement: float = MIN_INT8_AGREEMENT,
                     seed: int = 0, min_check: int = MIN_CHECK_IMAGES) -> dict:
    """Quantize ``package`` on ``calibration_u8`` (preprocessed uint8 training images),
    measure label agreement with the fp32 torch model on ``check_u8`` (held-out images) and
    agreement of the package guard's flags, and add the int8 model to the package when both
    agree on at least ``min_agreement`` of at least ``min_check`` images.
    Returns the record written to (or, when rejected, withheld from) the card."""
    reason = quantization_available()
    if reason:
        raise HemascanError(reason)
    if len(check_u8) == 0:
        raise HemascanError("int8 needs held-out images to check its agreement with fp32")
    if len(check_u8) < min_check:  # it would be refused after quantizing (half a 50-cell retrain's time)
        reason = f"only {len(check_u8)} images to check it on, at least {min_check} needed"
        log.warning("int8 model not made: %s", reason)
        return {"accepted": False, "reason": reason, "n_checked": int(len(check_u8))}
    import nncf
    import openvino as ov

    package = Path(package)
    card = verify_package(package)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(calibration_u8), size=min(CALIBRATION_IMAGES, len(calibration_u8)), replace=False)
    calib = calibration_u8[np.sort(pick)]
    t0 = time.perf_counter()
    fp32 = convert_to_openvino(package, card)
    batches = [_normalised(card, calib[i : i + BATCH]) for i in range(0, len(calib), BATCH)]
    # The first convolution sees raw pixels (3 channels: int8 saves little there and loses
    # fine stain gradients): keeping it fp32 took agreement from 99.39% to 99.76% held out.
    convs = [op.get_friendly_name() for op in fp32.get_ordered_ops() if op.get_type_name() == "Convolution"]
    # NNCF prints its own INFO lines and progress bars on stdout (the terminal of the app or
    # of `retrain`): our progress says what is happening; its warnings still go to the log.
    nncf.set_log_level(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        q = nncf.quantize(fp32, nncf.Dataset(batches), subset_size=len(batches),
                          preset=nncf.QuantizationPreset.PERFORMANCE, fast_bias_correction=False,
                          ignored_scope=nncf.IgnoredScope(names=convs[:1]))
    seconds = time.perf_counter() - t0

    core = ov.Core()
    int8 = core.compile_model(with_uint8_input(q, card.prep), "CPU",
                              {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    reference = TorchEngine(package, card, runtime_plan(device="cpu", engine="torch", precision="fp32", purpose="evaluate"))
    outs = [reference.infer(check_u8[i : i + BATCH]) for i in range(0, len(check_u8), BATCH)]
    ref, ref_emb = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
    got, got_emb = _outputs(int8, check_u8)
    agreement = float((ref.argmax(1) == got.argmax(1)).mean())
    flags = guard_flag_check(package, card, ref_emb, got_emb)
    record = {
        "format": "openvino-ir",
        "weights_sha256": card.weights_sha256,  # the fp32 weights it was made from
        "agreement": round(agreement, 5),
        "n_checked": int(len(check_u8)),
        "agreement_rule": (f"int8 label == fp32 label on held-out images, and the foreign-image guard's flags "
                           f"the same from both; used only if both >= {min_agreement} on at least "
                           f"{MIN_CHECK_IMAGES} images"),
        **flags,
        "calibration": {"images": int(len(calib)), "source": calibration_source,
                        "method": "NNCF post-training quantization, performance preset, full bias correction, "
                                  "first convolution kept fp32"},
        "made_with": {"openvino": ov.__version__, "nncf": nncf.__version__},
        "quantize_seconds": round(seconds, 1),
    }
    reason = None
    if agreement < min_agreement:
        reason = f"its labels agree with fp32 on {agreement:.2%} of {len(check_u8)} images, at least {min_agreement:.1%} needed"
    elif flags and flags["flag_agreement"] < min_agreement:
        reason = flags.get("flag_reason") or (
            f"it flags {flags['n_flagged_int8']} images as outside the model's experience where fp32 flags "
            f"{flags['n_flagged_fp32']}: {flags['flag_agreement']:.2%} agreement on {len(check_u8)} images, "
            f"at least {min_agreement:.1%} needed")
    if reason is not None:
        log.warning("int8 model rejected: %s", reason)
        return {**record, "accepted": False, "reason": reason}
    save_openvino(q, package / INT8_XML)
    record["files"] = {INT8_XML: sha256_file(package / INT8_XML),
                       Path(INT8_XML).with_suffix(".bin").name: sha256_file(package / Path(INT8_XML).with_suffix(".bin"))}
    for name in record["files"]:
        os.chmod(package / name, 0o644)
    card.int8 = record
    _write_card(package, card)
    int8_files(package, card)  # what was written is what the card says
    return {**record, "accepted": True}


def add_int8(package: Path, calibration_u8: np.ndarray, check_u8: np.ndarray, calibration_source: str) -> dict:
    """The checked int8 CPU model for a just-trained package (train and retrain alike).
    Never fatal: without it the package is complete and runs in fp32. Returns the record
    ({"accepted": False, "reason": ...} when it was not made)."""
    reason = quantization_available()
    if reason:
        return {"accepted": False, "reason": reason}
    try:
        return quantize_package(package, calibration_u8, check_u8, calibration_source=calibration_source)
    except Exception as exc:  # noqa: BLE001  (the fp32 package is complete without it)
        log.warning("int8 model not made: %s", exc)
        return {"accepted": False, "reason": f"{type(exc).__name__}: {exc}"}


def _write_card(package: Path, card: ModelCard) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-card-", dir=package)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(card), indent=2))
        os.chmod(tmp, 0o644)
        os.replace(tmp, package / CARD_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_as_trained(card: ModelCard, data: Path, cache_dir: Path | None = None, progress=None):
    """The class folders ``data`` split as the card says the model was trained:
    (dataset, split, preprocessed uint8 images)."""

    split_info = (card.metrics or {}).get("split") or {}
    method = split_info.get("method", "patient")
    method = {"all-but-val": "all"}.get(method, method)
    ds = compute_hashes(scan_class_folders(Path(data), card.taxonomy))
    split = make_split(ds, method, seed=int(split_info.get("seed", 0)), fold=int(split_info.get("fold", 4)))
    return ds, split, load_images(ds, card.prep, cache_dir, progress=progress)


def quantize_from_folder(package: Path, data: Path, cache_dir: Path | None = None, progress=None) -> dict:
    """Quantize a package trained on the class folders ``data``: calibrate on its training
    side of the card's split, check on its validation + test sides."""
    package = Path(package)
    card = verify_package(package)
    _ds, split, images = split_as_trained(card, data, cache_dir, progress)
    held_out = np.concatenate([split.val, split.test]).astype(int)
    return quantize_package(package, images[split.train], images[held_out],
                            calibration_source=f"{len(split.train)} training images of {Path(data).name} ({split.method} split)")
