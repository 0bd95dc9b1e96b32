"""Inference engines: which runtime runs a package, the int8 model's checks, the OpenVINO
fp32 cache, and trainer/quantize.py writing (or withholding) an int8 model."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.models.architectures import build
from core.inference.engines import int8_ready
from core.errors import HemascanError, ModelPackageError
from core.inference.predict import Predictor, select_device
from core.inference.runtime import Device
from core.models.package import ModelCard, read_card, save_package
from core.models.registry import bundled_default_package
from core.models.taxonomy import TAXONOMIES

CPU = Device("cpu")


def copy_default(tmp_path: Path) -> Path:
    dest = tmp_path / "pkg"
    shutil.copytree(bundled_default_package(), dest)
    return dest


def test_cpu_device_is_chosen_without_importing_torch_when_there_is_no_driver():
    import subprocess
    import sys

    code = ("import sys, core.inference.runtime as r; r.cuda_driver_present = lambda: False; "
            "from core.inference.predict import select_device; print(select_device('auto'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cpu", "False"]
    with pytest.raises(HemascanError, match="unknown device"):
        select_device("tpu")


def test_predictor_runs_the_planned_engine_and_precision():
    from core.config import Settings

    pred = Predictor(bundled_default_package(), CPU)
    assert (pred.engine_name, pred.precision, pred.runtime) == ("openvino", "int8", "openvino int8 cpu")
    pred = Predictor(bundled_default_package(), CPU, settings=Settings(engine="torch"))  # HEMASCAN_ENGINE=torch
    assert (pred.engine_name, pred.precision) == ("torch", "fp32")  # never bf16 unasked, whatever the CPU


def test_tampered_int8_model_is_refused(tmp_path):
    pkg = copy_default(tmp_path)
    data = bytearray((pkg / "model.int8.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / "model.int8.bin").write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="does not match its card"):
        Predictor(pkg, CPU)
    (pkg / "model.int8.xml").unlink()
    with pytest.raises(ModelPackageError, match="int8 model file missing"):
        Predictor(pkg, CPU)


def test_int8_without_enough_agreement_is_not_used(tmp_path):
    pkg = copy_default(tmp_path)
    card = json.loads((pkg / "card.json").read_text())
    card["int8"]["agreement"] = 0.99  # below the 99.5% bar
    (pkg / "card.json").write_text(json.dumps(card))
    assert not int8_ready(read_card(pkg))
    pred = Predictor(pkg, CPU)
    assert (pred.engine_name, pred.precision) == ("openvino", "fp32")


@pytest.mark.slow
def test_openvino_fp32_matches_torch_and_is_cached(tmp_path):
    rng = np.random.default_rng(0)
    s = read_card(bundled_default_package()).prep.input_size
    x = rng.integers(0, 255, (5, s, s, 3), dtype=np.uint8)
    ref = Predictor(bundled_default_package(), CPU, precision="fp32", engine="torch").predict(x)
    first = Predictor(bundled_default_package(), CPU, precision="fp32", cache_dir=tmp_path)
    cached = list((tmp_path / "openvino").glob("*-fp32*.xml"))
    assert len(cached) == 1 and cached[0].with_suffix(".bin").is_file()
    assert np.abs(first.predict(x) - ref).max() < 1e-4
    cached[0].write_text("damaged")  # a broken cache is rebuilt, not fatal
    again = Predictor(bundled_default_package(), CPU, precision="fp32", cache_dir=tmp_path)
    assert np.abs(again.predict(x) - ref).max() < 1e-4
    assert "damaged" not in cached[0].read_text()[:100]


@pytest.mark.slow
def test_a_swapped_openvino_cache_file_is_detected_and_rebuilt(tmp_path):
    """The cached IR is checked like the weights: a valid IR of another model put in its place
    (here the package's int8 IR: same interface, other answers) is converted again, not used."""
    import shutil

    import openvino as ov

    pkg = bundled_default_package()
    s = read_card(pkg).prep.input_size
    x = np.random.default_rng(3).integers(0, 255, (8, s, s, 3), dtype=np.uint8)
    ref = Predictor(pkg, CPU, precision="fp32", engine="torch").predict(x)
    Predictor(pkg, CPU, precision="fp32", cache_dir=tmp_path)
    (xml,) = (tmp_path / "openvino").glob("*-fp32*.xml")
    shutil.copy(pkg / "model.int8.xml", xml)
    shutil.copy(pkg / "model.int8.bin", xml.with_suffix(".bin"))
    assert ov.Core().read_model(str(xml)) is not None  # the swapped file is a loadable model
    swapped = Predictor(pkg, CPU, precision="fp32", cache_dir=tmp_path)
    assert np.abs(swapped.predict(x) - ref).max() < 1e-4
    assert xml.read_bytes() != (pkg / "model.int8.xml").read_bytes()  # rebuilt in place


def small_package(tmp: Path) -> Path:
    torch.manual_seed(0)
    classes = list(TAXONOMIES["all_subtype"].classes)
    card = ModelCard(name="small-v1", architecture="seed_cnn3", taxonomy="all_subtype", classes=classes,
                     preprocessing={"input_size": 48, "interpolation": "area"}, notes="test model")
    save_package(tmp / "small-v1", build("seed_cnn3", 4).state_dict(), card)
    return tmp / "small-v1"


def test_quantize_adds_a_checked_int8_model_or_withholds_it(tmp_path, capfd):
    from trainer.quantize import INT8_XML, quantize_package

    pkg = small_package(tmp_path)
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 255, (64, 48, 48, 3), dtype=np.uint8)
    check = rng.integers(0, 255, (40, 48, 48, 3), dtype=np.uint8)
    card_before = (pkg / "card.json").read_bytes()

    rejected = quantize_package(pkg, calib, check, "random test images", min_agreement=1.01, min_check=0)  # unreachable bar
    assert not rejected["accepted"] and 0.0 <= rejected["agreement"] <= 1.0
    assert (pkg / "card.json").read_bytes() == card_before and not (pkg / INT8_XML).exists()

    accepted = quantize_package(pkg, calib, check, "random test images", min_agreement=0.0, min_check=0)
    assert accepted["accepted"] and accepted["n_checked"] == 40
    card = read_card(pkg)
    assert set(card.int8["files"]) == {"model.int8.xml", "model.int8.bin"}
    assert card.int8["calibration"]["images"] == 64 and card.int8["agreement"] == accepted["agreement"]
    assert not list(pkg.glob(".tmp-*"))  # nothing half-written left behind
    pred = Predictor(pkg, CPU, precision="int8")
    out = pred.predict(check[:7])
    assert out.shape == (7, 4) and np.allclose(out.sum(1), 1, atol=1e-5)
    printed = capfd.readouterr().out  # the quantiser's own INFO lines and bars stay off the terminal
    assert "nncf" not in printed.lower() and "Statistics collection" not in printed, printed[:500]
    # agreement recorded is what the package actually does
    fp32 = Predictor(pkg, CPU, precision="fp32", engine="torch").predict(check)
    measured = (Predictor(pkg, CPU, precision="int8").predict(check).argmax(1) == fp32.argmax(1)).mean()
    assert measured == pytest.approx(accepted["agreement"], abs=1e-4)


def test_model_file_carries_the_int8_model_and_checks_it(tmp_path):
    import zipfile

    from core.models.archive import export_package, unpack

    f = export_package(bundled_default_package(), tmp_path / "default.hsmodel")
    with zipfile.ZipFile(f) as z:
        assert {"model.int8.xml", "model.int8.bin"} <= set(z.namelist())
    pkg = unpack(f, tmp_path / "unpacked")
    assert Predictor(pkg, CPU).precision == "int8"

    def rewrite(name: str, change) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(f) as zin, zipfile.ZipFile(out, "w") as zout:
            for info in zin.infolist():
                zout.writestr(info, change(info.filename, zin.read(info)))
            if name == "extra.hsmodel":
                zout.writestr("evil.so", b"\x7fELF")
        return out

    flipped = rewrite("flipped.hsmodel", lambda n, d: d[:-1] + bytes([d[-1] ^ 1]) if n == "model.int8.bin" else d)
    with pytest.raises(ModelPackageError, match="model.int8.bin does not match"):
        unpack(flipped, tmp_path / "x1")
    with pytest.raises(ModelPackageError, match="do not match its manifest"):
        unpack(rewrite("extra.hsmodel", lambda n, d: d), tmp_path / "x2")


@pytest.mark.slow
def test_int8_of_other_weights_is_never_used(tmp_path):
    import dataclasses

    card = read_card(bundled_default_package())
    model = build(card.architecture, num_classes=len(card.classes), **card.arch_params)
    saved = save_package(tmp_path / "new", model.state_dict(), dataclasses.replace(card, name="new-weights"))
    assert saved.int8 == {} and read_card(tmp_path / "new").int8 == {}  # a copied card loses the int8 record
    pkg = copy_default(tmp_path)
    data = json.loads((pkg / "card.json").read_text())
    data["int8"]["weights_sha256"] = "0" * 64  # made from other weights
    (pkg / "card.json").write_text(json.dumps(data))
    assert not int8_ready(read_card(pkg)) and Predictor(pkg, CPU).precision == "fp32"
