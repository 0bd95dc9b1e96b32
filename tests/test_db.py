import sqlite3

import pytest

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from core.storage import Base, Database, current_revision, make_engine, upgrade


def _head() -> str:
    from alembic.script import ScriptDirectory

    from core.config import resources_dir

    return ScriptDirectory(str(resources_dir() / "migrations")).get_current_head()


HEAD = _head()


def test_models_and_migrations_agree(db_url):
    """On both engines: the migrations build exactly the ORM's schema."""
    db = Database(db_url)
    try:
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        db.dispose()


def test_sqlite_is_wal_with_busy_timeout(db):
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() > 0
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


@pytest.mark.parametrize("start", ["0001", "0002", "0003", "0004"])
def test_older_schema_upgrades_in_place_keeping_data(db_url, start):
    from sqlalchemy import inspect

    url = db_url
    engine = make_engine(url)
    upgrade(engine, start)  # 0001: the first released schema
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO images (id, sha256, width, height, phash, format, first_seen) "
            "VALUES (1, :sha, 224, 224, 'ffff000011112222', 'JPEG', '2026-01-01 00:00:00')"), {"sha": "a" * 64})
        conn.execute(text(
            "INSERT INTO label_events (image_id, taxonomy, label, previous_label, reviewer, source, created_at) "
            "VALUES (1, 'all_subtype', 'Pre-B', NULL, 'dr.old', 'human', '2026-01-01 00:00:00')"))
        cols = [c["name"] for c in inspect(conn).get_columns("images")]
        assert ("split" in cols) == (start != "0001")
    engine.dispose()

    db = Database(url)  # opening migrates to head
    assert current_revision(db.engine) == HEAD
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT label, reviewer FROM label_events")).one() == ("Pre-B", "dr.old")
        assert conn.execute(text("SELECT sha256 FROM images")).scalar() == "a" * 64
        assert "split" in [c["name"] for c in inspect(conn).get_columns("images")]
        assert {"training_runs", "model_activations", "model_blobs"} <= set(db.table_names())
        if db.engine.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    db.dispose()


def test_reopening_is_idempotent(db_url):
    Database(db_url).dispose()
    db = Database(db_url)
    assert current_revision(db.engine) == HEAD
    db.dispose()
    if db_url.get_backend_name() == "sqlite":
        assert sqlite3.connect(db_url.database).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_label_writer_queues_while_locked_and_loses_nothing(tmp_path):
    """Labels written while another process holds the write lock: the caller never waits
    more than a frame, the writes are kept in order and land once the lock is gone."""
    import time

    from core.review.labels import LabelWriter

    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    # a busy timeout of 10 min: a write that waited on the lock would hang until the test's
    # timeout (pytest-timeout) fails it; no wall-clock assert
    db = Database(url, busy_timeout_ms=600_000)
    with db.engine.begin() as conn:
        for i in (1, 2):
            conn.execute(text("INSERT INTO images (id, sha256, width, height, phash, first_seen) "
                              "VALUES (:i, :s, 1, 1, '0', '2026-01-01')"), {"i": i, "s": str(i) * 64})
    saved, waiting = [], []
    writer = LabelWriter(db, on_saved=lambda ids, n: saved.append((ids, n)),
                         on_waiting=lambda msg, n: waiting.append((msg, n)), retry_busy_ms=50)
    assert writer.write({1: "Benign"}, "dr.a") is True  # the usual case: written at once

    holder = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert writer.write({1: "Pre-B", 2: "Pro-B"}, "dr.a") is False
        assert writer.write({2: None}, "dr.a", note="undo") is False  # behind the first: queued too
        assert writer.pending_labels() == {1: "Pre-B", 2: None}
        deadline = time.monotonic() + 10
        while not waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        assert waiting and "locked" in waiting[0][0] and waiting[0][1] == 2
        assert not writer.flush(0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert writer.flush(10)
    assert writer.close() == []
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT image_id, label, previous_label FROM label_events ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, "Benign", None), (1, "Pre-B", "Benign"), (2, "Pro-B", None),
                                        (2, None, "Pro-B")]
    assert [n for _, n in saved] == [1, 0]
    db.dispose()


def test_label_writer_refuses_bad_labels_at_once(tmp_path):
    import pytest

    from core.review.labels import LabelWriter

    db = Database(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    writer = LabelWriter(db)
    with pytest.raises(ValueError):
        writer.write({1: "Not-a-class"}, "dr.a")
    assert writer.pending() == []
    writer.close()
    db.dispose()


def test_label_writer_on_postgresql_never_waits_on_a_lock_held_elsewhere(pg_url):
    """As on SQLite: while another seat holds a lock on the label table, the review key's
    write returns within a frame (queued), and lands once the lock is gone."""

    from core.review.labels import LabelWriter

    db = Database(pg_url, busy_timeout_ms=600_000)  # a write waiting on the lock would hang: the test's timeout fails it
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO images (id, sha256, width, height, phash, first_seen) "
                          "VALUES (1, :s, 1, 1, '0', '2026-01-01')"), {"s": "1" * 64})
    writer = LabelWriter(db, retry_busy_ms=50)
    assert writer.write({1: "Benign"}, "dr.a") is True
    holder = db.engine.connect()
    trans = holder.begin()
    holder.execute(text("LOCK TABLE label_events IN EXCLUSIVE MODE"))
    try:
        assert writer.write({1: "Pre-B"}, "dr.a") is False
        assert not writer.flush(0.3)  # still locked: still waiting, not dropped
    finally:
        trans.rollback()
        holder.close()
    assert writer.flush(10) and writer.close() == []
    with db.engine.connect() as conn:
        assert [r[0] for r in conn.execute(text("SELECT label FROM label_events ORDER BY id"))] == ["Benign", "Pre-B"]
    db.dispose()
