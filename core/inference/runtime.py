"""The runtime plan: which device, engine, precision, batch size and compile setting run a model.

Two parts, kept apart so that every machine can be planned for on any machine:

    probe_host()    the only code in hemascan that reads the hardware: CPU threads and bf16
                    flags, CUDA GPUs, whether OpenVINO and a C compiler are installed.
    plan_runtime()  a pure function of those capabilities and the user's request.

Precision policy. Training, evaluation, calibration and the int8 check compute in fp32
unless the user asks otherwise, on every device, so that what a model card records never
depends on the machine it was made on. ``classify`` on a CPU runs the package's int8 model
(checked against fp32 by the trainer) through OpenVINO, or fp32; the host's bf16 support
never changes a plan, so two CPUs give the same answers. On a CUDA GPU ``classify`` uses
autocast (bf16 where the GPU has it, else fp16), which the precision tests hold to >= 99.5%
label agreement with fp32.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from core.config import Settings
from core.errors import HemascanError

PURPOSES = ("classify", "evaluate", "train")
DEVICES = ("auto", "cpu", "cuda")
ENGINE_NAMES = ("torch", "openvino")
# What each engine can compute in, per device type.
PRECISIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "cpu"): ("fp32", "bf16"),
    ("torch", "cuda"): ("fp32", "bf16", "fp16"),
    ("openvino", "cpu"): ("fp32", "int8"),
}
CPU_BATCH = 32  # beat 64 and 128 on a 2-core CPU (cache-friendly)
EVAL_BATCH = 64
# torch.compile costs ~35-50 s on a 2-core CPU the first time (~10 s once cached); measured
# break-even on the share: ~10,000 images cold, ~3,000 warm (docs/benchmarks.md).
COMPILE_MIN_IMAGES = Settings.defaults().compile_min_images
COMPILE_MIN_IMAGES_WARM = Settings.defaults().compile_min_images_warm


@dataclass(frozen=True)
class Device:
    """A device named without importing torch (a 2-10 s import a CPU-only run may not need)."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_gib: float
    bf16: bool


@dataclass(frozen=True)
class HostCapabilities:
    """What a machine offers. Built by :func:`probe_host`, or by hand in tests."""

    cpu_threads: int = 1
    cpu_bf16: bool = False  # native bf16 math (AVX512-BF16 or AMX); informative only
    gpus: tuple[GpuInfo, ...] = ()
    openvino: bool = False
    c_compiler: bool = False
    cpu_name: str = ""  # for reports and benchmarks


@dataclass(frozen=True)
class RuntimeRequest:
    """What the user (options, environment) and the job ask for."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    engine: str = "auto"  # auto | torch | openvino
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | int8
    purpose: str = "classify"  # classify | evaluate | train
    n_images: int = 0
    int8_shipped: bool = False  # the package carries a checked int8 model made from its weights
    compile: str = "auto"  # auto | on | off (torch engine on a CPU only)
    compile_warm: bool = False  # this model's compiled artefact is already cached
    compile_min_images: int = COMPILE_MIN_IMAGES
    compile_min_images_warm: int = COMPILE_MIN_IMAGES_WARM

    @classmethod
    def from_options(cls, settings: Settings | None = None, **options) -> "RuntimeRequest":
        """A request from explicit options, falling back to the settings (HEMASCAN_ENGINE,
        HEMASCAN_COMPILE, HEMASCAN_COMPILE_MIN_IMAGES(_WARM), validated at start) for what is not
        given (None counts as not given)."""
        settings = settings if settings is not None else Settings.defaults()
        options = {k: v for k, v in options.items() if v is not None}
        options["device"] = str(options.get("device", "auto"))
        for key in ("engine", "compile", "compile_min_images", "compile_min_images_warm"):
            if key not in options and getattr(settings, key) is not None:
                options[key] = getattr(settings, key)
        if isinstance(options.get("compile"), bool):
            options["compile"] = "on" if options["compile"] else "off"
        for key in ("device", "engine", "precision", "purpose", "compile"):
            if key in options:
                options[key] = str(options[key]).strip().lower()
        return cls(**options)


@dataclass(frozen=True)
class RuntimePlan:
    device: Device
    engine: str
    precision: str
    batch_size: int
    compile: bool
    threads: int
    purpose: str = "classify"
    gpu_name: str | None = None

    @property
    def label(self) -> str:
        """How a prediction was computed, stored with it: e.g. 'openvino int8 cpu'."""
        return f"{self.engine} {self.precision} {self.device.type}"

    def describe(self) -> str:
        if self.device.type == "cuda":
            return f"CUDA GPU: {self.gpu_name or self.device} ({self.engine}, {self.precision})"
        engine = "OpenVINO" if self.engine == "openvino" else "torch"
        return (f"CPU ({self.threads} threads, {engine} {self.precision}"
                f"{', compiled' if self.compile else ''})")


def _device(host: HostCapabilities, wanted: str) -> tuple[Device, GpuInfo | None]:
    if wanted == "cpu" or (wanted == "auto" and not host.gpus):
        return Device("cpu"), None
    if wanted == "auto":
        return Device("cuda", 0), host.gpus[0]
    kind, _, index = wanted.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise HemascanError(f"unknown device {wanted!r} (use auto, cpu or cuda)")
    if not host.gpus:
        raise HemascanError("--device cuda was requested but no CUDA GPU is available (use --device cpu or auto)")
    i = int(index or 0)
    if i >= len(host.gpus):
        raise HemascanError(f"--device {wanted} was requested but this machine has {len(host.gpus)} CUDA GPU(s)")
    return Device("cuda", i), host.gpus[i]


def _engine(host: HostCapabilities, req: RuntimeRequest, device: Device) -> str:
    if req.engine not in ("auto", *ENGINE_NAMES):
        raise HemascanError(f"unknown inference engine {req.engine!r} (use auto, {', '.join(ENGINE_NAMES)})")
    if req.engine == "openvino":
        if device.type != "cpu":
            raise HemascanError("the OpenVINO engine runs on the CPU; use --device cpu")
        if req.purpose == "train":
            raise HemascanError("training runs on the torch engine, not OpenVINO")
        if not host.openvino:
            raise HemascanError("the OpenVINO engine was requested but OpenVINO is not installed")
        return "openvino"
    if req.engine == "torch":
        return "torch"
    # auto: OpenVINO runs classify on CPUs; training and the trainer's evaluation use torch.
    return "openvino" if device.type == "cpu" and host.openvino and req.purpose == "classify" else "torch"


def _precision(req: RuntimeRequest, engine: str, device: Device, gpu: GpuInfo | None) -> str:
    allowed = PRECISIONS[(engine, device.type)]
    if req.precision == "auto":
        if req.purpose != "classify":
            return "fp32"  # what a card records must not depend on the machine
        if engine == "openvino":
            return "int8" if req.int8_shipped else "fp32"
        if device.type == "cuda":
            return "bf16" if gpu is not None and gpu.bf16 else "fp16"
        return "fp32"
    if req.precision not in allowed:
        raise HemascanError(f"precision {req.precision!r} is not available with the {engine} engine on "
                            f"{device.type} (use {', '.join(allowed)})")
    if req.precision == "int8" and not req.int8_shipped:
        raise HemascanError("this model has no checked int8 version (make one with: hemascan quantize)")
    if req.precision == "bf16" and device.type == "cuda" and gpu is not None and not gpu.bf16:
        raise HemascanError(f"this GPU ({gpu.name}) has no bf16 support; use --precision fp16 or fp32")
    return req.precision


def _batch_size(device: Device, gpu: GpuInfo | None, purpose: str) -> int:
    if device.type == "cuda" and gpu is not None:
        return 128 if gpu.memory_gib < 8 else 256 if gpu.memory_gib < 24 else 512
    return CPU_BATCH if purpose == "classify" else EVAL_BATCH


def _compile(host: HostCapabilities, req: RuntimeRequest, engine: str, device: Device) -> bool:
    if engine != "torch" or device.type != "cpu" or req.purpose != "classify":
        return False
    if req.compile not in ("auto", "on", "off"):
        raise HemascanError(f"compile must be auto, on or off, not {req.compile!r}")
    if req.compile != "auto":
        return req.compile == "on"
    threshold = req.compile_min_images_warm if req.compile_warm else req.compile_min_images
    return host.c_compiler and req.n_images >= threshold


def plan_runtime(host: HostCapabilities, request: RuntimeRequest) -> RuntimePlan:
    """The runtime plan for ``request`` on a machine with ``host``'s capabilities. Pure: no
    hardware is read here. Impossible requests raise HemascanError with one clear sentence."""
    if request.purpose not in PURPOSES:
        raise HemascanError(f"unknown purpose {request.purpose!r}")
    device, gpu = _device(host, request.device)
    engine = _engine(host, request, device)
    precision = _precision(request, engine, device, gpu)
    return RuntimePlan(device=device, engine=engine, precision=precision,
                       batch_size=_batch_size(device, gpu, request.purpose),
                       compile=_compile(host, request, engine, device), threads=host.cpu_threads,
                       purpose=request.purpose, gpu_name=gpu.name if gpu else None)


# --- the only code that reads the hardware ------------------------------------------------


def cuda_driver_present() -> bool:
    """Cheap pre-check: without the NVIDIA driver library there is no usable CUDA GPU."""
    import ctypes

    if sys.platform == "darwin":
        return False
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # Windows, macOS
        return ""


def _cpu_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown"


def _cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Windows, macOS
        return os.cpu_count() or 1


def _gpus() -> tuple[GpuInfo, ...]:
    if not cuda_driver_present():  # no torch import on machines without the driver
        return ()
    import torch

    if not torch.cuda.is_available():
        return ()
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        major = props.major
        gpus.append(GpuInfo(props.name, props.total_memory / 2**30, major >= 8))  # bf16 from Ampere on
    return tuple(gpus)


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@functools.lru_cache(maxsize=2)
def probe_host(include_cuda: bool = True) -> HostCapabilities:
    """Read this machine's capabilities once per process. ``include_cuda=False`` skips the
    GPU probe (and so the torch import) where the user asked for the CPU."""
    cpuinfo = _cpuinfo()
    return HostCapabilities(
        cpu_threads=_cpu_threads(),
        cpu_bf16=bool(set(cpuinfo.split()) & {"amx_bf16", "avx512_bf16"}),
        cpu_name=_cpu_name(cpuinfo),
        gpus=_gpus() if include_cuda else (),
        openvino=openvino_installed(),
        c_compiler=any(shutil.which(c) for c in ("cc", "gcc", "clang", "cl")),
    )


def runtime_plan(request: RuntimeRequest | None = None, **options) -> RuntimePlan:
    """The plan for this machine: ``runtime_plan(device="cpu", purpose="evaluate")``."""
    req = request if request is not None else RuntimeRequest.from_options(**options)
    if request is not None and options:
        req = replace(req, **options)
    return plan_runtime(probe_host(include_cuda=req.device != "cpu"), req)
