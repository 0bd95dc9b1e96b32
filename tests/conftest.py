from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.pgserver import drop_pg_database, new_pg_database

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT.parent / "shared" / "datasets" / "all-taleqani"


def pytest_collection_modifyitems(config, items):
    from core.inference.runtime import probe_host

    has_cuda = bool(probe_host().gpus)  # the runtime plan's view (no torch import without a driver)
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    skip_data = pytest.mark.skip(reason=f"real dataset not found at {DATASET} (../shared is absent)")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "dataset" in item.keywords and not DATASET.is_dir():
            item.add_marker(skip_data)


@pytest.fixture
def dataset_dir() -> Path:
    return DATASET


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "data"
    monkeypatch.setenv("HEMASCAN_DATA_DIR", str(d))
    return d


@pytest.fixture
def paths(data_dir):
    from core.config import resolve_paths

    return resolve_paths(data_dir).ensure()


@pytest.fixture
def db(paths):
    from core.app.bootstrap import open_database

    database = open_database(paths)  # as the app opens it: set up, the bundled models registered
    yield database
    database.dispose()


@pytest.fixture
def sample_folder(tmp_path) -> Path:
    from core.app.sample import generate

    folder = tmp_path / "smears"
    generate(folder, n_per_class=4, seed=3)
    return folder


@pytest.fixture
def cli(data_dir, capsys):
    """Run the hemascan CLI in-process; returns (exit code, stdout, stderr)."""
    from core.app.cli import main

    def run(*argv: str):
        old = signal.getsignal(signal.SIGINT)
        try:
            rc = main(["-q", *map(str, argv)])
        finally:
            signal.signal(signal.SIGINT, old)
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def hemascan_cmd() -> list[str]:
    return [sys.executable, "-m", "core"]


def subprocess_env(data_dir: Path, **extra: str) -> dict:
    env = dict(os.environ, HEMASCAN_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def no_unexpected_reviewer_prompt(monkeypatch):
    """A window whose settings name no reviewer asks for one in a modal dialog; in a test that
    did not expect it (and patch it) that would wait forever: fail at once instead."""
    try:
        from PySide6.QtWidgets import QInputDialog
    except Exception:  # no Qt here: nothing to guard
        return

    def unexpected(*a, **k):
        raise AssertionError("a dialog asked for input the test did not expect (set a reviewer in its settings)")

    monkeypatch.setattr(QInputDialog, "getText", unexpected)


# ---- PostgreSQL: a real server for the whole session, a new database per test ---------------

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_server():
    """The admin URL (a superuser) of a PostgreSQL server: ``HEMASCAN_TEST_PG_URL`` when set,
    else one this session starts (tests/pgserver.py). Skips, saying why, when neither can be had."""
    from sqlalchemy.engine import make_url

    given = os.environ.get("HEMASCAN_TEST_PG_URL")
    if given:
        yield make_url(given)
        return
    from tests import pgserver

    try:
        server = pgserver.start()
        pgserver.wait_ready(server.url())
    except Exception as exc:
        pytest.skip(f"no PostgreSQL server for the tests: {exc}")
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server):
    """A new, empty PostgreSQL database for this test (dropped afterwards)."""
    url = new_pg_database(pg_server)
    yield url
    drop_pg_database(pg_server, url)


@pytest.fixture(params=ENGINES)
def engine_name(request) -> str:
    return request.param


@pytest.fixture
def db_url(engine_name, tmp_path, request):
    """A new, empty database on each engine: a SQLite file, or a fresh PostgreSQL database."""
    from sqlalchemy.engine import URL

    if engine_name == "sqlite":
        return URL.create("sqlite", database=str(tmp_path / "hemascan.sqlite3"))
    return request.getfixturevalue("pg_url")


def url_arg(url) -> str:
    """A URL for a command line or an environment variable (password included)."""
    return url.render_as_string(hide_password=False)


# ---- the desktop's GUI thread never touches the database (issue 20.9) -----------------------

DESKTOP_DIR = str(ROOT / "desktop") + os.sep


def gui_thread_sql(stack_of=None) -> str | None:
    """Where a statement runs, when it runs on the GUI thread for desktop code after the window's
    set-up (desktop.workers.setup_on_main_thread): the desktop frames of the stack; else None."""
    import threading
    import traceback

    if threading.current_thread() is not threading.main_thread() or "PySide6.QtWidgets" not in sys.modules:
        return None
    from PySide6.QtWidgets import QApplication

    if QApplication.instance() is None:
        return None
    from desktop.workers import in_setup

    if in_setup():
        return None
    frames = traceback.extract_stack(stack_of)
    mine = [f for f in frames if f.filename.startswith(DESKTOP_DIR)]
    if not mine:
        return None  # the test itself reads (its own checks), not the window
    return "".join(traceback.format_list(mine[-6:]))


@pytest.fixture(autouse=True)
def no_sql_on_the_gui_thread(request):
    """Fails the test when desktop code runs a SQL statement on the Qt main thread while a
    QApplication exists (after the window's set-up): every read must go through the job runner.
    On every test: only desktop code can trip it."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen: list[str] = []

    def check(conn, cursor, statement, parameters, context, executemany):
        where = gui_thread_sql()
        if where is not None:
            seen.append(f"{statement.split()[0]} on the GUI thread:\n{where}")

    event.listen(Engine, "before_cursor_execute", check)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", check)
    if seen:
        pytest.fail(f"{len(seen)} SQL statement(s) ran on the GUI thread; the first:\n{seen[0]}", pytrace=False)
