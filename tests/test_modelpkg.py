import json
import shutil

import numpy as np
import pytest
import torch

from core.errors import ModelPackageError
from core.inference.predict import Predictor
from core.models.package import WEIGHTS_FILE, load_model, read_card, save_package
from core.app.bootstrap import open_database, setup_models
from core.models.registry import (
    active_version,
    bundled_default_package,
    bundled_packages,
    get_version,
    list_versions,
    register_package,
    activate_version,
)


def copy_default(tmp_path):
    dest = tmp_path / "pkg"
    shutil.copytree(bundled_default_package(), dest)
    return dest


def test_bundled_model_loads_and_predicts():
    model, card = load_model(bundled_default_package())
    assert card.taxonomy == "all_subtype" and len(card.classes) == 4
    pred = Predictor(bundled_default_package(), torch.device("cpu"))
    x = np.random.default_rng(0).integers(0, 255, (3, card.prep.input_size, card.prep.input_size, 3), dtype=np.uint8)
    probs = pred.predict(x)
    assert probs.shape == (3, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_bn_folding_does_not_change_outputs():
    model, card = load_model(bundled_default_package())
    pred = Predictor(bundled_default_package(), torch.device("cpu"), engine="torch", precision="fp32")  # fp32 vs fp32
    s = card.prep.input_size
    x = np.random.default_rng(1).integers(0, 255, (4, s, s, 3), dtype=np.uint8)
    with torch.inference_mode():
        ref = torch.softmax(model(card.prep.normalise(torch.from_numpy(x))) / card.temperature, 1).numpy()
    assert np.allclose(pred.predict(x), ref, atol=1e-4)


def test_tampered_weights_are_refused(tmp_path):
    pkg = copy_default(tmp_path)
    data = bytearray((pkg / WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0xFF
    (pkg / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="do not match their card"):
        load_model(pkg)


def test_malformed_cards_are_refused(tmp_path):
    pkg = copy_default(tmp_path)
    card = json.loads((pkg / "card.json").read_text())
    del card["architecture"]
    (pkg / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelPackageError, match="architecture"):
        read_card(pkg)
    (pkg / "card.json").write_text("{not json")
    with pytest.raises(ModelPackageError, match="cannot read model card"):
        read_card(pkg)
    shutil.rmtree(pkg)
    with pytest.raises(ModelPackageError, match="no model card"):
        read_card(pkg)


def test_pickle_files_are_never_loaded(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    load_model(bundled_default_package())
    assert calls == []


def test_save_then_register_and_switch_active(tmp_path, db, paths):
    model, card = load_model(bundled_default_package())
    card.name, card.parent, card.placeholder = "second-model", card.name, False
    pkg = save_package(tmp_path / "second", model.state_dict(), card) and tmp_path / "second"
    with db.session() as s:
        first = setup_models(s, paths)
        second = register_package(s, paths, pkg)
        assert second.parent_id == first.id
        assert active_version(s).id == first.id
        activate_version(s, second, "activate", "dr.test")
    with db.session() as s:
        assert active_version(s).name == "second-model"
        bundled = [read_card(p).name for p in bundled_packages()]
        assert bundled[0] == first.name  # the default is registered first and made active
        assert [v.name for v in list_versions(s)] == [*bundled, "second-model"]
        # one active per input kind: the field model switched, the bundled cell model stays
        assert [v.name for v in list_versions(s) if v.is_active and v.input_kind == "field"] == ["second-model"]
        assert sum(v.is_active for v in list_versions(s)) == 2
        with pytest.raises(ModelPackageError, match="no model version"):
            get_version(s, "nope")
    with pytest.raises(ModelPackageError, match="already exists"):
        save_package(tmp_path / "second", model.state_dict(), card)


@pytest.mark.parametrize("arch", ["seed_cnn3", "effnet_lite0"])
def test_batchnorm_folding_removes_bn_and_keeps_outputs(arch):
    from torch import nn

    from core.models.architectures import build
    from core.inference.engines import fold_batchnorm

    torch.manual_seed(0)
    model = build(arch, num_classes=4).eval()
    for m in model.modules():  # non-trivial statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    folded = fold_batchnorm(model, 64)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), rtol=1e-3, atol=1e-4)


def test_leftovers_of_killed_writes_are_removed_when_old(paths, db):
    import os
    import time

    from core.models.registry import remove_stale_temporaries

    from core.app.bootstrap import setup_models

    with db.session() as s:
        pkg_dir = paths.models / setup_models(s, paths).name
    old_dir = paths.models / ".tmp-abc123"  # save_package killed mid-write
    old_dir.mkdir()
    (old_dir / "model.safetensors").write_bytes(b"half")
    old_card = pkg_dir / ".tmp-card-xyz"  # quantize killed while rewriting the card
    old_card.write_text("{")
    (paths.cache / "openvino").mkdir(parents=True, exist_ok=True)
    old_ir = paths.cache / "openvino" / ".tmp-q1"
    old_ir.mkdir()
    fresh = paths.models / ".tmp-inprogress"  # another process writing right now
    fresh.mkdir()
    keep = paths.models / "notes.tmp-like"  # not ours
    keep.write_text("x")
    stale = time.time() - 7 * 3600
    for p in (old_dir, old_card, old_ir):
        os.utime(p, (stale, stale))
    removed = remove_stale_temporaries(paths)
    assert set(removed) == {old_dir, old_card, old_ir}
    assert fresh.exists() and keep.exists() and (pkg_dir / "card.json").exists()
    os.utime(fresh, (stale, stale))
    open_database(paths).dispose()  # every start cleans (core/app/bootstrap.py)
    assert not fresh.exists()
