"""One settings object (core/config.py): every HEMASCAN_* variable is a validated field, read
once at start and passed down; no other module reads the environment; the README's table is
the object's."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config import Settings, SettingsError, load_settings, resolve_paths

ROOT = Path(__file__).resolve().parents[1]

# Reads of the environment outside core/config.py, each with why it is not a setting.
ENVIRONMENT_EXCEPTIONS = {
    # hands torch's own cache variable on to torch (a library that reads it), not a hemascan setting
    "core/inference/engines.py": "TORCHINDUCTOR_CACHE_DIR",
    # asks what Qt itself will read (QT_QPA_PLATFORM, DISPLAY, WAYLAND_DISPLAY) before Qt can abort the process
    "desktop/qtcheck.py": "QT_QPA_PLATFORM",
    # `release` writes its PDF without a display: tells Qt (which reads it) to draw offscreen
    "desktop/cli.py": "QT_QPA_PLATFORM",
}
ENV_READ = re.compile(r"os\.environ|getenv|from os import[^\n]*environ|os\.putenv")


def test_no_module_but_the_settings_reads_the_environment():
    readers = {}
    for package in ("core", "trainer", "desktop"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != "core/config.py" and ENV_READ.search(path.read_text(encoding="utf-8")):
                readers[rel] = path.read_text(encoding="utf-8")
    unexplained = sorted(set(readers) - set(ENVIRONMENT_EXCEPTIONS))
    assert not unexplained, f"these modules read the environment themselves (use the settings object): {unexplained}"
    for rel, why in ENVIRONMENT_EXCEPTIONS.items():  # an exception that is no longer needed goes
        assert rel in readers and why in readers[rel], rel
    hemascan_vars = {m for text in readers.values() for m in re.findall(r"HEMASCAN_[A-Z_]+", text)}
    assert not hemascan_vars, f"HEMASCAN_* read outside core/config.py: {hemascan_vars}"


def test_readme_settings_table_is_the_settings_object():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- settings:[^>]*-->\n(.*?)\n<!-- /settings -->", readme, re.S)
    assert m, "README lost its generated settings table"
    assert m.group(1).strip() == Settings.markdown_table(), \
        "README's settings table differs from core/config.py: paste `python -m core.config`"
    for name, info in Settings.model_fields.items():  # every field documented
        assert info.description, name


def test_defaults_are_the_old_ones_and_need_no_environment(monkeypatch):
    monkeypatch.setenv("HEMASCAN_WORKER_LEASE_S", "7")
    d = Settings.defaults()  # a library caller's: the environment is not read
    assert (d.data_dir, d.db_url, d.busy_timeout_ms, d.setup_lock_timeout_s, d.reconnect_attempts,
            d.reconnect_pause_s, d.worker_lease_s, d.worker_retry_max_s, d.engine, d.compile,
            d.compile_min_images, d.compile_min_images_warm, d.max_file_bytes) == \
        (None, None, 15000, 600.0, 6, 0.5, 120.0, 60.0, None, None, 10_000, 3_000, 256 * 1024**2)
    assert load_settings().worker_lease_s == 7.0


# per variable: a value that must be refused (exit 2 at start), one that is taken, and what it becomes
CASES = {
    "DATA_DIR": (None, "/srv/hemascan", Path("/srv/hemascan")),
    "DB_URL": ("postgresql+psycopg://u@[::1", "postgresql+psycopg://u@[::1]/lab", "postgresql+psycopg://u@[::1]/lab"),
    "BUSY_TIMEOUT_MS": ("0", "300", 300),
    "SETUP_LOCK_TIMEOUT_S": ("inf", "30", 30.0),
    "RECONNECT_ATTEMPTS": ("2.5", "3", 3),
    "RECONNECT_PAUSE_S": ("-1", "0.1", 0.1),
    "WORKER_LEASE_S": ("nan", "1e3", 1000.0),
    "WORKER_RETRY_MAX_S": ("abc", "1", 1.0),
    "ENGINE": ("gpu", "Torch", "torch"),
    "COMPILE": ("maybe", "OFF", "off"),
    "COMPILE_MIN_IMAGES": ("lots", "5", 5),
    "COMPILE_MIN_IMAGES_WARM": ("-3", "0", 0),
    "MAX_FILE_MB": ("0", "0.125", 0.125),
    "BLAST_THRESHOLD_PCT": ("100", "10", 10.0),
}


def test_every_variable_has_a_case():
    assert set(CASES) == {n.upper() for n in Settings.model_fields}


@pytest.mark.parametrize("var", sorted(CASES))
def test_each_variable_is_validated(monkeypatch, var):
    bad, good, parsed = CASES[var]
    monkeypatch.setenv(f"HEMASCAN_{var}", good)
    assert getattr(load_settings(), var.lower()) == parsed
    if bad is not None:
        monkeypatch.setenv(f"HEMASCAN_{var}", bad)
        with pytest.raises(SettingsError) as info:
            load_settings()
        message = str(info.value)
        assert f"HEMASCAN_{var}={bad!r}" in message and "\n" not in message and info.value.exit_code == 2
    monkeypatch.setenv(f"HEMASCAN_{var}", "")  # set but empty: the default, as before
    assert getattr(load_settings(), var.lower()) == getattr(Settings.defaults(), var.lower())


def test_bad_variable_is_one_sentence_and_exit_2_before_any_work(cli, monkeypatch, data_dir):
    monkeypatch.setenv("HEMASCAN_WORKER_LEASE_S", "nan")
    rc, out, err = cli("worker", "--once")
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == "hemascan: error: the environment variable HEMASCAN_WORKER_LEASE_S='nan' cannot be used: " \
                          "must be a finite number"
    assert not (data_dir / "hemascan.sqlite3").exists()  # refused before any work


def test_desktop_start_refuses_a_bad_variable(monkeypatch, capsys):
    from desktop.app import main

    monkeypatch.setenv("HEMASCAN_ENGINE", "gpu")
    assert main([]) == 2
    assert "HEMASCAN_ENGINE='gpu'" in capsys.readouterr().err


def test_options_win_over_variables(cli, tmp_path, monkeypatch):
    env_dir, opt_dir = tmp_path / "from-env", tmp_path / "from-option"
    monkeypatch.setenv("HEMASCAN_DATA_DIR", str(env_dir))
    assert cli("--data-dir", opt_dir, "queue")[0] == 0
    assert (opt_dir / "hemascan.sqlite3").exists() and not env_dir.exists()
    env_db, opt_db = tmp_path / "env.sqlite3", tmp_path / "option.sqlite3"
    monkeypatch.setenv("HEMASCAN_DB_URL", f"sqlite:///{env_db}")
    assert cli("--db-url", f"sqlite:///{opt_db}", "queue")[0] == 0
    assert opt_db.exists() and not env_db.exists()
    assert cli("queue")[0] == 0 and env_db.exists()  # without the option, the variable


def test_settings_travel_to_where_they_are_used(cli, monkeypatch, tmp_path):
    """The worker's lease and retry ceiling, the SQLite busy timeout and the reconnect policy
    come from the settings read at start, not from the environment at the place of use."""
    from sqlalchemy import text

    from core.app import commands
    from core.app.bootstrap import open_database
    from core.errors import HemascanError

    seen = {}

    def fake_run_worker(db, paths, cancel, **kw):
        seen.update(lease=kw["lease_s"], retry_max=paths.settings.worker_retry_max_s, db_settings=db.settings)
        raise HemascanError("stop here")

    monkeypatch.setattr(commands, "run_worker", fake_run_worker)  # the worker command calls it
    monkeypatch.setenv("HEMASCAN_WORKER_LEASE_S", "7")
    monkeypatch.setenv("HEMASCAN_WORKER_RETRY_MAX_S", "3")
    assert cli("worker", "--once")[0] == 2
    assert seen["lease"] == 7.0 and seen["retry_max"] == 3.0 and seen["db_settings"].worker_lease_s == 7.0
    assert cli("worker", "--once", "--lease", "9")[0] == 2 and seen["lease"] == 9.0  # the option wins

    monkeypatch.setenv("HEMASCAN_BUSY_TIMEOUT_MS", "1234")
    db = open_database(resolve_paths(tmp_path / "busy", load_settings()).ensure())
    try:
        with db.engine.connect() as c:
            assert c.execute(text("PRAGMA busy_timeout")).scalar() == 1234
    finally:
        db.dispose()


def test_reconnect_policy_comes_from_the_settings():
    from sqlalchemy.exc import DBAPIError

    from core.storage.dbutil import with_reconnect

    calls = []

    def lost():
        calls.append(1)
        raise DBAPIError("INSERT", {}, Exception("server closed the connection"), connection_invalidated=True)

    with pytest.raises(DBAPIError):
        with_reconnect(lost, "a test batch", Settings(reconnect_attempts=2, reconnect_pause_s=0.01))
    assert len(calls) == 2


def test_a_misspelt_variable_is_said_not_ignored(cli, monkeypatch):
    """HEMASCAN_DATADIR (for HEMASCAN_DATA_DIR) was ignored without a word: the default data
    directory was set up instead."""
    from core.config import unknown_variables

    assert unknown_variables({"HEMASCAN_DATADIR": "/x", "HEMASCAN_DB_URL": "sqlite://", "HEMASCAN_TEST_PG_URL": "x",
                              "PATH": "/bin"}) == [
        "HEMASCAN_DATADIR is not a hemascan setting and is ignored (did you mean HEMASCAN_DATA_DIR?)"]
    monkeypatch.setenv("HEMASCAN_WORKER_LEASE", "30")
    code, out, err = cli("queue")
    assert code == 0 and "HEMASCAN_WORKER_LEASE is not a hemascan setting" in err and "HEMASCAN_WORKER_LEASE_S" in err
