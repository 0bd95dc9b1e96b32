import sqlite3

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from core.db import Base, Database, current_revision, make_engine, upgrade


def _head() -> str:
    from alembic.script import ScriptDirectory

    from core.config import resources_dir

    return ScriptDirectory(str(resources_dir() / "migrations")).get_current_head()


HEAD = _head()


def test_models_and_migrations_agree(db):
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_sqlite_is_wal_with_busy_timeout(db):
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() > 0
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_older_schema_upgrades_in_place_keeping_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = make_engine(url)
    upgrade(engine, "0001")  # the first released schema
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO images (id, sha256, width, height, phash, format, first_seen) "
            "VALUES (1, :sha, 224, 224, 'ffff000011112222', 'JPEG', '2026-01-01 00:00:00')"), {"sha": "a" * 64})
        conn.execute(text(
            "INSERT INTO label_events (image_id, taxonomy, label, previous_label, reviewer, source, created_at) "
            "VALUES (1, 'all_subtype', 'Pre-B', NULL, 'dr.old', 'human', '2026-01-01 00:00:00')"))
        cols = [r[1] for r in conn.execute(text("PRAGMA table_info(images)"))]
        assert "split" not in cols
    engine.dispose()

    db = Database(url)  # opening migrates to head
    assert current_revision(db.engine) == HEAD
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT label, reviewer FROM label_events")).one() == ("Pre-B", "dr.old")
        assert conn.execute(text("SELECT sha256 FROM images")).scalar() == "a" * 64
        assert "split" in [r[1] for r in conn.execute(text("PRAGMA table_info(images)"))]
        assert "training_runs" in db.table_names()
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    db.dispose()


def test_reopening_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    Database(url).dispose()
    db = Database(url)
    assert current_revision(db.engine) == HEAD
    db.dispose()
    assert sqlite3.connect(tmp_path / "x.sqlite3").execute("PRAGMA integrity_check").fetchone() == ("ok",)
