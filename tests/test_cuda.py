"""CUDA path: runs only where a GPU exists (skipped on CI and on machines without one).
The reference is torch fp32 on the CPU, never the CPU's int8 default."""
import glob

import numpy as np
import pytest

from core.imaging.images import decode_rgb, read_file
from core.inference.predict import Predictor
from core.models.registry import bundled_default_package
from core.app.sample import generate

from .conftest import DATASET

pytestmark = pytest.mark.cuda


def _images(tmp_path, prep) -> np.ndarray:
    files = sorted(glob.glob(str(DATASET / "*" / "*.jpg")))[::10]  # real smears where ../shared is present
    if len(files) < 64:
        files = [str(p) for p in generate(tmp_path / "s", n_per_class=32)]
    return np.stack([prep.apply(decode_rgb(read_file(f))) for f in files])


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_cuda_predictions_agree_with_torch_fp32_on_the_cpu(tmp_path, precision):
    cpu = Predictor(bundled_default_package(), "cpu", engine="torch", precision="fp32")
    gpu = Predictor(bundled_default_package(), "cuda", precision=precision)
    assert gpu.device.type == "cuda" and cpu.precision == "fp32"
    assert gpu.precision == "fp32" if precision == "fp32" else gpu.precision in ("bf16", "fp16")
    x = _images(tmp_path, cpu.prep)
    a, b = cpu.predict(x), gpu.predict(x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.995
    assert np.abs(a - b).max() < (1e-3 if precision == "fp32" else 0.05)


def test_cuda_classify_job(db, paths, sample_folder):
    from core.inference.predict import classify
    from core.jobs import run_job

    s = run_job(classify(db, paths, sample_folder, device="cuda"))
    assert s.n_predicted == 16 and s.device.startswith("CUDA GPU")
