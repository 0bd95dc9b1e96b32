"""CUDA path: runs only where a GPU exists (skipped on CI)."""
import numpy as np
import pytest
import torch

from core.inference import Predictor
from core.registry import bundled_default_package

pytestmark = pytest.mark.cuda


def test_cuda_predictions_agree_with_cpu():
    rng = np.random.default_rng(0)
    cpu = Predictor(bundled_default_package(), torch.device("cpu"))
    gpu = Predictor(bundled_default_package(), torch.device("cuda"))
    s = cpu.prep.input_size
    x = rng.integers(0, 255, (64, s, s, 3), dtype=np.uint8)
    a, b = cpu.predict(x), gpu.predict(x)
    assert gpu.precision in ("fp16", "bf16")
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95
    assert np.abs(a - b).max() < 0.05


def test_cuda_classify_job(db, paths, sample_folder):
    from core.inference import classify
    from core.jobs import run_job

    s = run_job(classify(db, paths, sample_folder, device="cuda"))
    assert s.n_predicted == 16 and s.device.startswith("CUDA GPU")
