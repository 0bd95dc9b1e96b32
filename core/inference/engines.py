"""Inference engines: the runtimes that can execute a model package, chosen per device.

    torch     CUDA GPUs (autocast, pinned memory), and CPUs where OpenVINO is not installed
              (BatchNorm folded, channels-last, bf16 where the CPU has it, optional torch.compile)
    openvino  CPUs: the OpenVINO runtime, needing no compiler on the workstation. fp32 is
              converted from the package's weights (and cached); int8 is the IR the trainer
              shipped in the package after checking it agrees with fp32 (see trainer/quantize.py).

Every engine takes preprocessed uint8 images (N, S, S, 3) and returns float32 logits (N, C).
On the 2-core benchmark CPU, EfficientNet-Lite0 at 128 px: torch eager fp32 77 images/s,
folded + channels-last 132, torch.compile 254, OpenVINO fp32 ~400, OpenVINO int8 ~1,000.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.errors import HemascanError, ModelPackageError
from core.models.package import ModelCard, int8_files, sha256_file
from core.models.guard import ForeignImageGuard
from core.inference.runtime import CPU_BATCH, RuntimePlan  # noqa: F401  (CPU_BATCH re-exported)
from core.models.package import load_model

#: (logits, distance to the nearest class centre, to the nearest "Other" centre, to the nearest of
#: the reviewed lab's centres); the last three None where the package has no such guard part
GuardScores = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]

log = logging.getLogger(__name__)

# The int8 model is used only where the trainer measured it agreeing with fp32 on at least
# this share of held-out labels (the same bar as every reduced-precision path).
MIN_INT8_AGREEMENT = 0.995


def int8_ready(card: ModelCard) -> bool:
    """The package ships an int8 model whose agreement with fp32 was measured and is enough."""
    info = card.int8 or {}
    return (bool(info.get("files")) and float(info.get("agreement", 0.0)) >= MIN_INT8_AGREEMENT
            and info.get("weights_sha256") == card.weights_sha256)  # made from these weights


# --- torch -------------------------------------------------------------------------------


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


def compile_marker(cache_dir: Path, weights_sha256: str, batch_size: int) -> Path:
    """A file that says this model was compiled before in this cache (so it is warm). The hash
    comes from the database: only hex digits become part of a file name."""
    import torch  # heavy: imports torch

    digest = str(weights_sha256)[:16]
    if len(digest) != 16 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise ModelPackageError(f"the model's weights hash {digest!r} is not a SHA-256 digest")
    return Path(cache_dir) / "compiled" / f"{digest.lower()}-torch{torch.__version__}-b{int(batch_size)}.ok"


def load_folded_model(package: Path, card: ModelCard):
    """The package's torch model in eval mode with BatchNorm folded (on the CPU)."""

    model, _ = load_model(Path(package), "cpu")
    return fold_batchnorm(model, card.prep.input_size)


class TorchEngine:
    name = "torch"

    def __init__(self, package: Path, card: ModelCard, plan: RuntimePlan, cache_dir: Path | None = None,
                 guard: ForeignImageGuard | None = None):
        import torch

        self.card, self.prep, self.plan, self.guard = card, card.prep, plan, guard
        self.device = torch.device(str(plan.device))
        from core.models.architectures import LogitsAndEmbedding  # heavy: imports torch

        folded = load_folded_model(package, card)
        self.model = LogitsAndEmbedding(folded).to(self.device).to(memory_format=torch.channels_last).eval()
        self.precision = plan.precision
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision)
        self.compiled = False
        if plan.compile and self.device.type == "cpu":
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
        return self.plan.batch_size

    def describe(self) -> str:
        return replace(self.plan, compile=self.compiled).describe()

    def infer(self, batch_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits (N, C), penultimate embedding (N, D)) as float32."""
        import torch

        n = len(batch_u8)
        if self.compiled and n < self.batch_size:  # one static shape: no recompiles for the last batch
            pad = np.zeros((self.batch_size - n, *batch_u8.shape[1:]), batch_u8.dtype)
            batch_u8 = np.concatenate([batch_u8, pad])
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(batch_u8))
            if self.device.type == "cuda":
                t = t.pin_memory().to(self.device, non_blocking=True)
            x = self.prep.normalise(t)
            if self._dtype is not None:
                with torch.autocast(self.device.type, dtype=self._dtype):
                    logits, emb = self.model(x)
            else:
                logits, emb = self.model(x)
            return logits[:n].float().cpu().numpy(), emb[:n].float().cpu().numpy()

    def logits(self, batch_u8: np.ndarray) -> np.ndarray:
        return self.infer(batch_u8)[0]

    def scores(self, batch_u8: np.ndarray) -> GuardScores:
        """(logits, guard distance, distance to the nearest "Other" centre, to the nearest of the
        reviewed lab's centres); None where the package has no such guard part."""
        logits, emb = self.infer(batch_u8)
        if self.guard is None:
            return logits, None, None, None
        return (logits, self.guard.distances(emb), self.guard.other_distances(emb),
                self.guard.lab_distances(emb))


# --- OpenVINO ----------------------------------------------------------------------------


def convert_to_openvino(package: Path, card: ModelCard):
    """The package's fp32 weights as an OpenVINO model taking normalised float NCHW input
    of any batch size (the form the int8 quantizer calibrates). Outputs: logits, and the
    penultimate embedding the foreign-image guard measures."""
    import warnings

    import openvino as ov
    import torch

    from core.models.architectures import LogitsAndEmbedding  # heavy: imports torch

    model = LogitsAndEmbedding(load_folded_model(package, card)).eval()
    example = torch.zeros(1, 3, card.prep.input_size, card.prep.input_size)
    with warnings.catch_warnings(), torch.no_grad():  # tracer notes about shape arithmetic in SAME padding
        warnings.simplefilter("ignore")
        # traced here without the tracer's re-run check (a second and third forward pass: ~1 s of
        # a first start); the converted model's outputs are the same to the bit
        traced = torch.jit.trace(model, example, check_trace=False)
        return ov.convert_model(traced, example_input=example, input=[(-1, *example.shape[1:])])


def _ir_hashes_path(xml_path: Path) -> Path:
    return Path(xml_path).with_suffix(".sha256.json")


def save_openvino(model, xml_path: Path, weights_sha256: str | None = None) -> None:
    """Write an IR (.xml + .bin) atomically; weights stay fp32 (no fp16 compression). With
    ``weights_sha256``, a record of both files' SHA-256 is written beside them, so a cached
    IR is used only while it is the one converted from those weights."""
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=xml_path.parent))
    try:
        ov.save_model(model, str(tmp / "m.xml"), compress_to_fp16=False)
        if weights_sha256 is not None:
            record = {"weights_sha256": weights_sha256, "xml": sha256_file(tmp / "m.xml"),
                      "bin": sha256_file(tmp / "m.bin")}
            (tmp / "m.json").write_text(json.dumps(record))
            _ir_hashes_path(xml_path).unlink(missing_ok=True)  # no stale record beside new files
        os.replace(tmp / "m.bin", xml_path.with_suffix(".bin"))
        os.replace(tmp / "m.xml", xml_path)  # the .xml is what readers look for
        if weights_sha256 is not None:
            os.replace(tmp / "m.json", _ir_hashes_path(xml_path))  # last: vouches for both
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_ir_intact(xml_path: Path, weights_sha256: str) -> bool:
    """The cached IR's files are the ones recorded when it was converted from these weights."""
    try:
        record = json.loads(_ir_hashes_path(xml_path).read_text())
        return (isinstance(record, dict) and record.get("weights_sha256") == weights_sha256
                and sha256_file(xml_path) == record.get("xml")
                and sha256_file(Path(xml_path).with_suffix(".bin")) == record.get("bin"))
    except (OSError, ValueError):
        return False


def with_uint8_input(model, prep):
    """Put hemascan's normalisation in front of the model, inside OpenVINO: it then takes
    the uint8 NHWC batch as decoded (4x fewer bytes than float, no numpy pass)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model.clone())  # build() changes the model it is given
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32) \
        .mean([m * 255.0 for m in prep.mean]).scale([s * 255.0 for s in prep.std])
    return ppp.build()


def with_guard_outputs(model, guard: ForeignImageGuard):
    """The model (outputs: logits, embedding) with the guard's distances computed in the graph:
    outputs logits, distance to the nearest class mean, and (with "Other" centres) the distance
    to the nearest of those. The same arithmetic as ForeignImageGuard.distances."""
    import openvino as ov
    from openvino import opset13 as ops

    logits, emb = (r.input_value(0) for r in model.get_results()[:2])  # the producers, not the old Results
    axis = ops.constant(np.array([1], np.int64))
    z = ops.matmul(emb, ops.constant(np.ascontiguousarray(guard.whitening, np.float32)), False, False)
    zz = ops.reduce_sum(ops.multiply(z, z), axis, True)

    def nearest(means: np.ndarray):
        zm = ops.matmul(z, ops.constant(np.ascontiguousarray(means.T, np.float32)), False, False)
        mm = ops.constant(((means.astype(np.float32) ** 2).sum(1))[None, :])
        d = ops.add(ops.subtract(zz, ops.multiply(zm, ops.constant(np.float32(2.0)))), mm)
        return ops.maximum(ops.reduce_min(d, axis, False), ops.constant(np.float32(0.0))).output(0)

    outputs = [logits, nearest(guard.class_means)]
    if guard.has_other:
        outputs.append(nearest(guard.other_means))
    if guard.has_lab:
        outputs.append(nearest(guard.lab_means))
    return ov.Model(outputs, model.get_parameters(), "with-guard")




class OpenVINOEngine:
    name = "openvino"

    def __init__(self, package: Path, card: ModelCard, plan: RuntimePlan, cache_dir: Path | None = None,
                 guard: ForeignImageGuard | None = None):
        import openvino as ov

        if plan.device.type != "cpu":
            raise HemascanError("the OpenVINO engine runs on the CPU")
        self.card, self.prep, self.plan = card, card.prep, plan
        self.compiled = False  # torch.compile does not apply
        core = ov.Core()
        if plan.precision == "int8":
            model = core.read_model(str(int8_files(package, card)))
        elif plan.precision == "fp32":
            model = self._fp32_model(core, package, card, cache_dir)
        else:
            raise HemascanError(f"precision {plan.precision!r} is not available with the OpenVINO engine (fp32, int8)")
        self.precision = plan.precision
        self.threads = plan.threads
        self._has_embedding = len(model.outputs) > 1
        # The guard's arithmetic runs inside the graph, in OpenVINO's own threads: in numpy
        # beside OpenVINO the two thread pools fought and the guard cost ~50% of throughput.
        self.guard = guard if self._has_embedding else None
        if self.guard is not None:
            model = with_guard_outputs(model, self.guard)
        # f32 hint: on AMX CPUs OpenVINO would otherwise run the float parts in bf16 unasked
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads,
                  "INFERENCE_PRECISION_HINT": "f32"}
        self._compiled = core.compile_model(with_uint8_input(model, card.prep), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one caller at a time

    @staticmethod
    def _fp32_model(core, package: Path, card: ModelCard, cache_dir: Path | None):
        import openvino as ov

        cached = None
        if cache_dir is not None:  # converting costs ~4 s and needs torch; reading the IR ~0.1 s
            cached = Path(cache_dir) / "openvino" / f"{card.weights_sha256[:16]}-ov{ov.__version__.split('-')[0]}-fp32-emb.xml"
            if cached_ir_intact(cached, card.weights_sha256):
                try:
                    return core.read_model(str(cached))
                except Exception as exc:  # a damaged cache file is rebuilt, not fatal
                    log.warning("cached OpenVINO model unreadable (%s); converting again", exc)
            elif cached.exists():
                log.warning("cached OpenVINO model %s does not match its recorded hashes; converting again", cached)
        model = convert_to_openvino(package, card)
        if cached is not None:
            try:
                save_openvino(model, cached, card.weights_sha256)
            except OSError as exc:
                log.warning("cannot cache the converted model: %s", exc)
        return model

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    def describe(self) -> str:
        return self.plan.describe()

    def _run(self, batch_u8: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            self._request.infer({0: np.ascontiguousarray(batch_u8)})
            return [np.array(self._request.get_output_tensor(i).data, dtype=np.float32, copy=True)
                    for i in range(len(self._compiled.outputs))]

    def infer(self, batch_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, embedding or None where the model has no embedding output, e.g. an int8
        model made before the guard existed, or where the guard replaced it in the graph)."""
        out = self._run(batch_u8)
        return out[0], (out[1] if self._has_embedding and self.guard is None else None)

    def scores(self, batch_u8: np.ndarray) -> GuardScores:
        """(logits, guard distance, distance to the nearest "Other" centre, to the nearest of the
        reviewed lab's centres); None where the package has no such guard part (outputs in
        with_guard_outputs' order)."""
        out = self._run(batch_u8)
        if self.guard is None:
            return out[0], None, None, None
        rest = iter(out[2:])
        other = next(rest) if self.guard.has_other else None
        lab = next(rest) if self.guard.has_lab else None
        return out[0], out[1], other, lab

    def logits(self, batch_u8: np.ndarray) -> np.ndarray:
        return self.infer(batch_u8)[0]


ENGINES: dict[str, type] = {"torch": TorchEngine, "openvino": OpenVINOEngine}
