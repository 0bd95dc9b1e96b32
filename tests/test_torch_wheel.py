"""The build's torch wheel comes from a named source and must hash to its pin (issue 25)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "packaging/torch_wheel.py"
sys.path.insert(0, str(SCRIPT.parent))
import torch_wheel  # noqa: E402


def run(variant, wheelhouse, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEMASCAN_TORCH_")}
    return subprocess.run([sys.executable, str(SCRIPT), variant, str(wheelhouse)], capture_output=True, text=True,
                          env={**clean, **env}, timeout=300)


def one_sentence(r):
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_every_pinned_torch_has_a_hash():
    for variant in ("cpu", "cuda"):
        version = torch_wheel.pinned_version(variant)
        assert [h for h in torch_wheel.pinned_hashes(version) if h.startswith("sha256:") and len(h) == 71], variant


def test_the_default_sources_are_named():
    assert torch_wheel.DEFAULT_INDEX == {"cpu": "https://download.pytorch.org/whl/cpu", "cuda": "https://pypi.org/simple"}


def test_missing_folder_is_one_sentence(tmp_path):
    r = run("cpu", tmp_path / "wh", HEMASCAN_TORCH_WHEELS=str(tmp_path / "nowhere"))
    assert r.returncode == torch_wheel.EXIT_UNREACHABLE and "HEMASCAN_TORCH_WHEELS" in one_sentence(r)


def test_unreachable_index_is_one_sentence(tmp_path):
    r = run("cpu", tmp_path / "wh", HEMASCAN_TORCH_INDEX="http://127.0.0.1:9/simple")
    assert r.returncode == torch_wheel.EXIT_UNREACHABLE
    assert "cannot reach the torch wheel index http://127.0.0.1:9/simple" in one_sentence(r)


def test_a_different_file_under_the_pinned_name_is_refused(tmp_path):
    version = torch_wheel.pinned_version("cpu")
    fake = tmp_path / "mirror" / f"torch-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
    fake.parent.mkdir()
    fake.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: not the wheel that was pinned
    r = run("cpu", tmp_path / "wh", HEMASCAN_TORCH_WHEELS=str(fake.parent))
    assert r.returncode == torch_wheel.EXIT_UNREACHABLE and "pinned hash" in one_sentence(r)
    assert not list((tmp_path / "wh").glob("*.whl"))


def test_offline_folder_override_fetches_the_pinned_wheel(tmp_path):
    version = torch_wheel.pinned_version("cpu")
    local = Path(os.environ.get("HEMASCAN_TEST_TORCH_WHEELS", "/opt/wheels"))
    if not list(local.glob(f"torch-{version}-*.whl")):
        pytest.skip(f"no torch {version} wheel in {local} (set HEMASCAN_TEST_TORCH_WHEELS to a folder holding it)")
    r = run("cpu", tmp_path / "wh", HEMASCAN_TORCH_WHEELS=str(local))
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "wh").glob("*.whl")] == [f"torch-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"]


def test_build_installs_torch_from_the_fetched_wheelhouse():
    build = (ROOT / "packaging/build.sh").read_text()
    fetch = build.index("packaging/torch_wheel.py")
    assert fetch < build.index('--no-index --find-links "$WHEELHOUSE"') < build.index('-e "$ROOT"')
