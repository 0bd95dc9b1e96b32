"""The runtime plan (core/inference/runtime.py) for every combination of host capabilities, with no
hardware needed: a CPU with or without bf16/AMX, GPUs with and without bf16, OpenVINO and a C
compiler present or not. Then the promise that follows from it on this machine: the torch
paths compute in fp32 unless asked, whatever this CPU has."""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import HemascanError
from core.inference.runtime import (
    COMPILE_MIN_IMAGES,
    COMPILE_MIN_IMAGES_WARM,
    PRECISIONS,
    Device,
    GpuInfo,
    HostCapabilities,
    RuntimeRequest,
    plan_runtime,
)

ROOT = Path(__file__).resolve().parent.parent
H100 = GpuInfo("H100", 80.0, bf16=True)
T4 = GpuInfo("Tesla T4", 15.0, bf16=False)  # Turing: fp16 only
SMALL = GpuInfo("GTX 1060", 6.0, bf16=False)

HOSTS = [HostCapabilities(cpu_threads=t, cpu_bf16=b, gpus=g, openvino=o, c_compiler=c)
         for t, b, g, o, c in itertools.product((2, 16), (False, True), ((), (T4,), (H100, T4)),
                                                (False, True), (False, True))]
REQUESTS = [RuntimeRequest(device=d, engine=e, precision=p, purpose=u, int8_shipped=i, compile=c,
                           n_images=n, compile_warm=w)
            for d, e, p, u, i, c, n, w in itertools.product(
                ("auto", "cpu", "cuda", "cuda:1"), ("auto", "torch", "openvino"),
                ("auto", "fp32", "bf16", "fp16", "int8"), ("classify", "evaluate", "train"),
                (False, True), ("auto", "on", "off"), (0, COMPILE_MIN_IMAGES), (False, True))]


def outcome(host: HostCapabilities, req: RuntimeRequest):
    try:
        return plan_runtime(host, req)
    except HemascanError as exc:  # an impossible request: one clear sentence
        return f"error: {exc}"


@pytest.fixture(scope="module")
def every_plan():
    return [(h, r, outcome(h, r)) for h in HOSTS for r in REQUESTS]


def test_a_cpu_with_or_without_bf16_gets_the_same_plan_for_every_request(every_plan):
    by_case = {(replace(h, cpu_bf16=False), r, h.cpu_bf16): o for h, r, o in every_plan}
    differing = [(h, r) for (h, r, bf16), o in by_case.items() if bf16 and by_case[(h, r, False)] != o]
    assert not differing, differing[:3]


def test_every_plan_is_one_the_machine_can_run(every_plan):
    n_plans = 0
    for host, req, plan in every_plan:
        if isinstance(plan, str):
            assert plan.startswith("error: ") and len(plan.splitlines()) == 1
            continue
        n_plans += 1
        assert plan.precision in PRECISIONS[(plan.engine, plan.device.type)]
        if plan.device.type == "cuda":
            assert host.gpus and plan.device.index < len(host.gpus)
        if plan.engine == "openvino":
            assert host.openvino and plan.device.type == "cpu" and req.purpose != "train"
        if plan.precision == "int8":
            assert req.int8_shipped  # only the trainer's checked int8 model
        if plan.compile:
            assert (plan.engine, plan.device.type, req.purpose) == ("torch", "cpu", "classify")
        if req.precision != "auto":
            assert plan.precision == req.precision
        if req.device == "cpu":
            assert plan.device == Device("cpu")
        assert plan.threads == host.cpu_threads
    assert n_plans > len(every_plan) // 4  # most requests are possible somewhere


def test_training_evaluation_and_calibration_are_fp32_on_every_machine_unless_asked(every_plan):
    seen = set()
    for _host, req, plan in every_plan:
        if req.purpose != "classify" and req.precision == "auto" and not isinstance(plan, str):
            assert plan.precision == "fp32"
            assert plan.engine == "torch" or req.engine == "openvino"  # OpenVINO only when asked
            seen.add(plan.device.type)
    assert seen == {"cpu", "cuda"}


@pytest.mark.parametrize("host,request_,expected", [
    # this project's 2-core workstations, with and without avx512_bf16: the checked int8 model
    (HostCapabilities(2, True, (), True, True), RuntimeRequest(int8_shipped=True), ("cpu", "openvino", "int8", 32, False)),
    (HostCapabilities(2, False, (), True, True), RuntimeRequest(int8_shipped=True), ("cpu", "openvino", "int8", 32, False)),
    (HostCapabilities(2, True, (), True, False), RuntimeRequest(), ("cpu", "openvino", "fp32", 32, False)),
    # no OpenVINO: torch fp32 on the CPU, even where the CPU has bf16
    (HostCapabilities(2, True, (), False, True), RuntimeRequest(), ("cpu", "torch", "fp32", 32, False)),
    (HostCapabilities(2, True, (), False, True), RuntimeRequest(precision="bf16"), ("cpu", "torch", "bf16", 32, False)),
    # GPUs: autocast in bf16 where the GPU has it, else fp16; batch by memory
    (HostCapabilities(16, False, (H100,), True, True), RuntimeRequest(int8_shipped=True), ("cuda", "torch", "bf16", 512, False)),
    (HostCapabilities(16, False, (T4,), True, True), RuntimeRequest(), ("cuda", "torch", "fp16", 256, False)),
    (HostCapabilities(16, False, (SMALL,), True, True), RuntimeRequest(), ("cuda", "torch", "fp16", 128, False)),
    (HostCapabilities(16, False, (H100,), True, True), RuntimeRequest(device="cpu", int8_shipped=True), ("cpu", "openvino", "int8", 32, False)),
    # training and evaluation: torch fp32 on every device
    (HostCapabilities(16, True, (H100,), True, True), RuntimeRequest(purpose="train"), ("cuda", "torch", "fp32", 512, False)),
    (HostCapabilities(2, True, (), True, True), RuntimeRequest(purpose="evaluate"), ("cpu", "torch", "fp32", 64, False)),
    (HostCapabilities(2, True, (), True, True), RuntimeRequest(purpose="train", precision="bf16"), ("cpu", "torch", "bf16", 64, False)),
    # torch.compile: torch on a CPU with a compiler, for large jobs (or warm ones), never on a GPU
    (HostCapabilities(2, False, (), False, True), RuntimeRequest(n_images=COMPILE_MIN_IMAGES), ("cpu", "torch", "fp32", 32, True)),
    (HostCapabilities(2, False, (), False, True), RuntimeRequest(n_images=COMPILE_MIN_IMAGES - 1), ("cpu", "torch", "fp32", 32, False)),
    (HostCapabilities(2, False, (), False, True), RuntimeRequest(n_images=COMPILE_MIN_IMAGES_WARM, compile_warm=True), ("cpu", "torch", "fp32", 32, True)),
    (HostCapabilities(2, False, (), False, True), RuntimeRequest(n_images=COMPILE_MIN_IMAGES_WARM - 1, compile_warm=True), ("cpu", "torch", "fp32", 32, False)),
    (HostCapabilities(2, False, (), False, False), RuntimeRequest(n_images=10**6), ("cpu", "torch", "fp32", 32, False)),
    (HostCapabilities(2, False, (), False, False), RuntimeRequest(compile="on"), ("cpu", "torch", "fp32", 32, True)),
    (HostCapabilities(2, False, (), False, True), RuntimeRequest(n_images=10**6, compile="off"), ("cpu", "torch", "fp32", 32, False)),
    (HostCapabilities(16, False, (T4,), False, True), RuntimeRequest(n_images=10**6, compile="on"), ("cuda", "torch", "fp16", 256, False)),
])
def test_plan(host, request_, expected):
    plan = plan_runtime(host, request_)
    assert (plan.device.type, plan.engine, plan.precision, plan.batch_size, plan.compile) == expected


@pytest.mark.parametrize("host,request_,message", [
    (HostCapabilities(2), RuntimeRequest(device="cuda"), "no CUDA GPU is available"),
    (HostCapabilities(16, gpus=(T4,)), RuntimeRequest(device="cuda:1"), "has 1 CUDA GPU"),
    (HostCapabilities(2), RuntimeRequest(device="tpu"), "unknown device"),
    (HostCapabilities(2), RuntimeRequest(device="cuda:x"), "unknown device"),
    (HostCapabilities(2, openvino=True), RuntimeRequest(engine="tensorrt"), "unknown inference engine"),
    (HostCapabilities(16, gpus=(T4,), openvino=True), RuntimeRequest(device="cuda", engine="openvino"), "runs on the CPU"),
    (HostCapabilities(2, openvino=False), RuntimeRequest(engine="openvino"), "not installed"),
    (HostCapabilities(2, openvino=True), RuntimeRequest(precision="int8"), "no checked int8"),
    (HostCapabilities(2, openvino=True), RuntimeRequest(precision="fp16"), "not available with the openvino engine"),
    (HostCapabilities(16, gpus=(T4,)), RuntimeRequest(precision="bf16"), "no bf16 support"),
    (HostCapabilities(2, openvino=True), RuntimeRequest(purpose="train", engine="openvino"), "training runs on the torch"),
])
def test_impossible_requests_are_one_clear_sentence(host, request_, message):
    with pytest.raises(HemascanError, match=message):
        plan_runtime(host, request_)


def test_request_from_options_and_settings(monkeypatch):
    from core.config import load_settings

    monkeypatch.setenv("HEMASCAN_ENGINE", "Torch")
    monkeypatch.setenv("HEMASCAN_COMPILE", "off")
    monkeypatch.setenv("HEMASCAN_COMPILE_MIN_IMAGES", "5")
    settings = load_settings()  # as the CLI reads them at start
    req = RuntimeRequest.from_options(settings, device=None, precision="FP32")
    assert (req.device, req.engine, req.compile, req.compile_min_images, req.precision) == ("auto", "torch", "off", 5, "fp32")
    assert RuntimeRequest.from_options(settings, engine="openvino").engine == "openvino"  # options win
    assert RuntimeRequest.from_options(compile=True).compile == "on"
    assert RuntimeRequest.from_options().engine == "auto"  # no settings given: the defaults, not the environment
    # a bad value (HEMASCAN_COMPILE_MIN_IMAGES=lots) is refused at start: tests/test_settings.py


def test_only_core_runtime_reads_the_hardware():
    readers = ("/proc/cpuinfo", "cuda.is_available", "get_device_properties", "is_bf16_supported",
               "find_spec(\"openvino\")", "libcuda", "sched_getaffinity", "get_device_name")
    offenders = []
    for package in ("core", "trainer", "desktop", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "core" / "inference" / "runtime.py":
                continue
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}: {r}" for r in readers if r in text]
    assert not offenders


# --- on this machine: what the plan promises holds, whatever this CPU has ---------------------

def test_trainer_inference_is_fp32_whatever_the_cpu():
    """On a CPU with avx512_bf16 the trainer used to evaluate and calibrate in bf16 (differences
    ~5e-3); now fp32 unless asked: it matches a plain fp32 forward pass to float rounding."""
    from core.models.architectures import build
    from core.imaging.preprocessing import Preprocessing
    from trainer.engine import predict_logits

    torch.manual_seed(0)
    model = build("seed_cnn3", num_classes=4).eval()
    prep = Preprocessing(input_size=64)
    x = np.random.default_rng(0).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    with torch.inference_mode():
        ref = model(prep.normalise(torch.from_numpy(x))).double().numpy()
    assert np.abs(predict_logits(model, x, prep, "cpu") - ref).max() < 1e-5  # precision: fp32 vs fp32
    bf16 = predict_logits(model, x, prep, "cpu", precision="bf16")
    assert np.abs(bf16 - ref).max() > 1e-5  # asking for bf16 really changes the arithmetic
