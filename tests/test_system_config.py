"""One workstation, several users (issue 25): a system-wide configuration file, and a shared
data directory whose files stay writable by its group."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import core.config as config
from core.app.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def system_file(tmp_path, monkeypatch):
    path = tmp_path / "etc" / "hemascan.toml"
    path.parent.mkdir()
    monkeypatch.setattr(config, "SYSTEM_CONFIG", path)
    for k in list(os.environ):
        if k.startswith("HEMASCAN_") and not k.startswith(config.NOT_SETTINGS_PREFIXES):
            monkeypatch.delenv(k)
    return path


def test_the_file_sets_what_the_environment_does_not(system_file, tmp_path, monkeypatch):
    system_file.write_text(f'data_dir = "{tmp_path / "shared"}"\nblast_threshold_pct = 10\n')
    s = config.load_settings()
    assert s.data_dir == tmp_path / "shared" and s.blast_threshold_pct == 10
    assert config.resolve_paths(None, s).data_dir == (tmp_path / "shared").resolve()
    monkeypatch.setenv("HEMASCAN_BLAST_THRESHOLD_PCT", "25")  # a variable wins over the file
    assert config.load_settings().blast_threshold_pct == 25
    assert config.Settings.defaults().data_dir is None  # library callers: no file, no environment


def test_no_file_changes_nothing(system_file):
    assert not system_file.exists() and config.load_settings().data_dir is None


@pytest.mark.parametrize("text, said", [
    ("worker_lease_s = nan\n", "worker_lease_s=nan in the system-wide configuration"),
    ("data_dir = [\n", "is not valid TOML"),
])
def test_a_bad_file_is_one_sentence_and_exit_2(system_file, capsys, text, said):
    system_file.write_text(text)
    assert main(["models", "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and str(system_file) in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_an_unknown_key_is_named(system_file, capsys, tmp_path):
    system_file.write_text('datadir = "/srv/hemascan"\n')
    assert config.unknown_config_keys() == [f"datadir in {system_file} is not a hemascan setting and is ignored"]


def _start(data_dir: Path) -> subprocess.CompletedProcess:
    """A first start in ``data_dir`` by a process whose umask keeps files private to their owner."""
    code = "import sys; from core.app.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMASCAN_")}
    return subprocess.run([sys.executable, "-c", code, "--data-dir", str(data_dir), "models", "list"], cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(0o022))


def _made_files(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_file() and "models" not in p.relative_to(data_dir).parts[:1]]


@pytest.mark.skipif(os.name != "posix", reason="group permissions are POSIX modes")
def test_files_in_a_group_writable_data_dir_are_group_writable(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)  # as the README's `install -d -m 2775 -g hemascan`
    r = _start(shared)
    assert r.returncode == 0, r.stderr
    made = _made_files(shared)
    names = {p.name for p in made}
    assert {"hemascan.sqlite3", "hemascan.log"} <= names, names
    private = [str(p) for p in made if not p.stat().st_mode & stat.S_IWGRP]
    assert private == []
    dirs = [d for d in shared.rglob("*") if d.is_dir() and not d.name.startswith(".tmp")]
    assert dirs and all(d.stat().st_mode & stat.S_IWGRP for d in dirs if d.parent == shared)


@pytest.mark.skipif(os.name != "posix", reason="group permissions are POSIX modes")
def test_a_private_data_dir_stays_private(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    own.chmod(0o755)
    r = _start(own)
    assert r.returncode == 0, r.stderr
    assert not (own / "hemascan.sqlite3").stat().st_mode & stat.S_IWGRP
