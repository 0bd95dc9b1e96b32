"""Issue 11 defect 5: a process killed in the middle of a migration must leave a database
that the next start opens, brings to head and keeps every label of.

Each case runs the real upgrade (``Database(url)``, as every start does) in a subprocess
that SIGKILLs itself right after its Nth SQL statement (an ``after_cursor_execute`` hook),
for every N from 1 to the number of statements the upgrade executes, from a fresh file and
from databases left at earlier revisions holding images, predictions and label events.
"""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from core.storage import Database, current_revision, make_engine, upgrade

ROOT = Path(__file__).resolve().parent.parent

# Runs the upgrade in a fresh interpreter; kills itself after statement N (N = 0: never)
# and otherwise prints how many statements the upgrade executed.
KILLER = r"""
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

url, n = sys.argv[1], int(sys.argv[2])
count = 0

@event.listens_for(Engine, "after_cursor_execute")
def _count(*_args):
    global count
    count += 1
    if count == n:
        os.kill(os.getpid(), signal.SIGKILL)

from core.storage import Database
Database(url).dispose()
print("STATEMENTS", count)
"""


def _head() -> str:
    from alembic.script import ScriptDirectory

    from core.config import resources_dir

    return ScriptDirectory(str(resources_dir() / "migrations")).get_current_head()


HEAD = _head()

LABELS = [(1, "Pre-B", None, "dr.old"), (2, "Benign", None, "dr.old"), (1, "Pro-B", "Pre-B", "dr.new")]


def _url(path: Path) -> str:
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path)).render_as_string()


def _make_old_database(path, revision: str) -> None:
    """A database at ``revision`` holding two images, a model, a prediction and label events
    (``path``: a SQLite file, or the URL of an empty PostgreSQL database)."""
    engine = make_engine(path if isinstance(path, URL) else _url(path))
    upgrade(engine, revision)
    with engine.begin() as conn:
        for i in (1, 2):
            conn.execute(text(
                "INSERT INTO images (id, sha256, width, height, phash, format, first_seen) "
                "VALUES (:i, :sha, 224, 224, 'ffff000011112222', 'JPEG', '2026-01-01 00:00:00')"),
                {"i": i, "sha": str(i) * 64})
            conn.execute(text("INSERT INTO files (path, size, mtime_ns, image_id, missing) "
                              "VALUES (:p, 10, 1, :i, :no)"), {"p": f"/smears/{i}.jpg", "i": i, "no": False})
        conn.execute(text(
            "INSERT INTO model_versions (id, name, architecture, taxonomy, path, weights_sha256, card, "
            "created_at, is_active) VALUES (1, 'm1', 'se_cnn', 'all_subtype', '/m', :sha, '{}', "
            "'2026-01-01 00:00:00', :yes)"), {"sha": "c" * 64, "yes": True})
        conn.execute(text(
            "INSERT INTO predictions (image_id, model_version_id, label, confidence, entropy, probabilities, "
            "uncertain, created_at) VALUES (1, 1, 'Pre-B', 0.9, 0.1, '[0.1, 0.9]', :no, '2026-01-01 00:00:00')"),
            {"no": False})
        for image_id, label, prev, who in LABELS:
            conn.execute(text(
                "INSERT INTO label_events (image_id, taxonomy, label, previous_label, reviewer, source, created_at) "
                "VALUES (:i, 'all_subtype', :l, :p, :w, 'human', '2026-01-01 00:00:00')"),
                {"i": image_id, "l": label, "p": prev, "w": who})
    engine.dispose()
    if not isinstance(path, URL):
        assert not Path(f"{path}-wal").exists()  # the template is one self-contained file


def _run_killer(db_path, n: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    url = db_path.render_as_string(hide_password=False) if isinstance(db_path, URL) else _url(db_path)
    return subprocess.run([sys.executable, "-c", KILLER, url, str(n)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _check_reopens(db_path, with_data: bool) -> None:
    db = Database(db_path if isinstance(db_path, URL) else _url(db_path))  # a normal start
    try:
        assert current_revision(db.engine) == HEAD
        with db.engine.connect() as conn:
            if db.engine.dialect.name == "sqlite":
                assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
            got = conn.execute(text(
                "SELECT image_id, label, previous_label, reviewer FROM label_events ORDER BY id")).all()
            if with_data:
                assert [tuple(r) for r in got] == LABELS
                assert conn.execute(text("SELECT count(*) FROM images")).scalar() == 2
                assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
            else:
                assert got == []
    finally:
        db.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("start", [None, "0001", "0002", "0003", "0004", "0005"],
                         ids=["fresh", "from-0001", "from-0002", "from-0003", "from-0004", "from-0005"])
def test_kill_after_every_migration_statement_leaves_an_openable_database(tmp_path, start):
    template = tmp_path / "template.sqlite3"
    if start is not None:
        _make_old_database(template, start)

    def prepare(n: int) -> Path:
        case = tmp_path / f"case{n}"
        case.mkdir()
        db_path = case / "hemascan.sqlite3"
        if start is not None:
            shutil.copyfile(template, db_path)
        return db_path

    # How many statements the whole upgrade executes (no kill).
    probe = _run_killer(prepare(0), 0)
    assert probe.returncode == 0, probe.stderr
    total = int(probe.stdout.split("STATEMENTS")[-1])
    assert total >= 5  # sanity: the upgrade really ran statements

    def one(n: int):
        db_path = prepare(n)
        proc = _run_killer(db_path, n)
        return n, db_path, proc

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(1, total + 1)))
    failures = []
    for n, db_path, proc in results:
        assert proc.returncode == -signal.SIGKILL, f"statement {n}: not killed: {proc.returncode} {proc.stderr[-500:]}"
        try:
            _check_reopens(db_path, with_data=start is not None)
        except Exception as exc:  # collect every kill point that bricks the database
            failures.append(f"kill after statement {n} of {total}: {type(exc).__name__}: {str(exc)[:200]}")
    assert not failures, f"{len(failures)} of {total} kill points leave a broken database:\n" + "\n".join(failures)
    print(f"{start or 'fresh'}: {total} kill points, all reopen at {HEAD}")


PG_STARTS = [None, "0001", "0004"]


@pytest.mark.slow
@pytest.mark.parametrize("start", PG_STARTS, ids=["fresh", "from-0001", "from-0004"])
def test_kill_after_every_migration_statement_on_postgresql(pg_server, start):
    """The same on PostgreSQL (transactional DDL of its own): each kill point on a new
    database, copied from a template database holding the old revision's data."""
    from tests.pgserver import drop_pg_database, new_pg_database

    template = new_pg_database(pg_server, "hemascan_tpl")
    made = [template]
    try:
        if start is not None:
            _make_old_database(template, start)

        def prepare(n: int) -> URL:
            url = new_pg_database(pg_server, "hemascan_kill", template=template.database)
            made.append(url)
            return url

        probe = _run_killer(prepare(0), 0)
        assert probe.returncode == 0, probe.stderr
        total = int(probe.stdout.split("STATEMENTS")[-1])
        assert total >= 5
        cases = [(n, prepare(n)) for n in range(1, total + 1)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda c: (c[0], c[1], _run_killer(c[1], c[0])), cases))
        failures = []
        for n, url, proc in results:
            assert proc.returncode == -signal.SIGKILL, f"statement {n}: not killed: {proc.returncode} {proc.stderr[-500:]}"
            try:
                _check_reopens(url, with_data=start is not None)
            except Exception as exc:
                failures.append(f"kill after statement {n} of {total}: {type(exc).__name__}: {str(exc)[:200]}")
        assert not failures, f"{len(failures)} of {total} kill points leave a broken database:\n" + "\n".join(failures)
        print(f"postgresql {start or 'fresh'}: {total} kill points, all reopen at {HEAD}")
    finally:
        for url in made:
            drop_pg_database(pg_server, url)


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    """A migration statement that fails (disk full, a bug) rolls the whole upgrade back:
    the database stays at its old revision with its data, and the next start can retry."""
    db_path = tmp_path / "old.sqlite3"
    _make_old_database(db_path, "0002")
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    calls = {"n": 0}

    def fail_on_alter(conn, cursor, statement, *args):
        calls["n"] += 1
        if "ALTER TABLE predictions ADD COLUMN out_of_distribution" in statement:
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(Engine, "before_cursor_execute", fail_on_alter)
    try:
        with pytest.raises(Exception):
            Database(_url(db_path))
    finally:
        event.remove(Engine, "before_cursor_execute", fail_on_alter)
    con = sqlite3.connect(db_path)
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone() == ("0002",)
        cols = [r[1] for r in con.execute("PRAGMA table_info(predictions)")]
        assert "runtime" not in cols  # 0003 ran in the same transaction and was rolled back too
        assert con.execute("SELECT count(*) FROM label_events").fetchone() == (3,)
    finally:
        con.close()
    _check_reopens(db_path, with_data=True)
