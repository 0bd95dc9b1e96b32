"""Fast paths must not change answers: BN folding, torch.compile, OpenVINO and reduced
precision (bf16, int8) agree with the plain float32 model."""
import glob
import os

import numpy as np
import pytest
import torch

from core.imaging.images import decode_rgb, read_file
from core.inference.runtime import Device
from core.inference.predict import Predictor
from core.models.package import load_model, read_card
from core.models.registry import bundled_default_package

DATASET = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "all-taleqani")


def plain_fp32_probs(batch: np.ndarray) -> np.ndarray:
    model, card = load_model(bundled_default_package())
    out = []
    with torch.inference_mode():
        for i in range(0, len(batch), 64):
            x = card.prep.normalise(torch.from_numpy(batch[i : i + 64]))
            out.append(torch.softmax(model(x) / card.temperature, 1).numpy())
    return np.concatenate(out)


def predict_all(pred: Predictor, batch: np.ndarray, bs: int = 32) -> np.ndarray:
    return np.concatenate([pred.predict(batch[i : i + bs]) for i in range(0, len(batch), bs)])


@pytest.fixture(scope="module")
def real_batch():
    files = sorted(glob.glob(os.path.join(DATASET, "*", "*.jpg")))
    if len(files) != 2770:
        pytest.skip(f"needs the 2,770 images of {DATASET}")
    prep = read_card(bundled_default_package()).prep
    return np.stack([prep.apply(decode_rgb(read_file(f))) for f in files])


@pytest.mark.dataset
@pytest.mark.slow
def test_fp32_fast_paths_match_the_plain_model_on_real_data(real_batch):
    # BN folded + channels-last (torch) and OpenVINO fp32, against the plain model, every 9th image
    subset = slice(0, None, 9)
    ref = plain_fp32_probs(real_batch[subset])
    for engine in ("torch", "openvino"):
        fast32 = predict_all(Predictor(bundled_default_package(), Device("cpu"), precision="fp32", engine=engine),
                             real_batch[subset])
        assert (fast32.argmax(1) == ref.argmax(1)).mean() >= 0.995, engine
        assert np.abs(fast32 - ref).max() < 1e-3, engine


@pytest.mark.dataset
@pytest.mark.parametrize("engine,precision", [("torch", "bf16"), ("openvino", "int8")])
@pytest.mark.slow
def test_reduced_precision_agrees_with_fp32_on_real_data(real_batch, engine, precision):
    fast32 = predict_all(Predictor(bundled_default_package(), Device("cpu"), precision="fp32", engine="torch"), real_batch)
    reduced = Predictor(bundled_default_package(), Device("cpu"), precision=precision, engine=engine)
    assert reduced.precision == precision
    agreement = (predict_all(reduced, real_batch).argmax(1) == fast32.argmax(1)).mean()
    print(f"{engine} {precision} vs fp32 label agreement on {len(real_batch)} real images: {agreement:.4f}")
    assert agreement >= 0.995


def test_cpu_default_is_the_checked_int8_model():
    pred = Predictor(bundled_default_package(), Device("cpu"))
    assert (pred.engine_name, pred.precision) == ("openvino", "int8")
    assert pred.card.int8["agreement"] >= 0.995  # measured by trainer/quantize.py on held-out images


@pytest.mark.slow
def test_compiled_model_matches_eager_including_a_short_last_batch(tmp_path):
    # both paths torch fp32 on the CPU: compiling must not change the arithmetic's result
    rng = np.random.default_rng(0)
    eager = Predictor(bundled_default_package(), Device("cpu"), engine="torch", precision="fp32")
    compiled = Predictor(bundled_default_package(), Device("cpu"), engine="torch", precision="fp32",
                         compile=True, cache_dir=tmp_path)
    assert (eager.precision, compiled.precision) == ("fp32", "fp32")
    s = eager.prep.input_size
    full = rng.integers(0, 255, (32, s, s, 3), dtype=np.uint8)
    short = full[:5]
    assert compiled.compiled
    assert np.allclose(compiled.predict(full), eager.predict(full), atol=1e-4)
    out = compiled.predict(short)
    assert out.shape == (5, 4) and np.allclose(out, eager.predict(short), atol=1e-4)


def test_compile_marker_is_per_model_and_batch(tmp_path):
    from core.inference.engines import compile_marker

    m1 = compile_marker(tmp_path, "a" * 64, 32)
    assert m1 != compile_marker(tmp_path, "b" * 64, 32) and m1 != compile_marker(tmp_path, "a" * 64, 64)
