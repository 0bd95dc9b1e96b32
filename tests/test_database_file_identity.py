"""Issue 20: a SQLite database file deleted or replaced while hemascan runs. SQLite goes on
writing into the file it opened, which nobody will open again: before this, classify reported
every image predicted and exited 0, and the review window acknowledged every label. Now the
commit after the deletion is refused with one sentence (exit 5), what was not stored is not
claimed, and the review window's label writes wait in the queue for the file to come back.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from core.errors import EXIT_DATABASE, DatabaseUnavailableError

SENTENCE = "was deleted or replaced while hemascan was running; nothing after that was stored"


def _db_file(data_dir: Path) -> Path:
    return data_dir / "hemascan.sqlite3"


def _label_events(path: Path) -> int:
    with sqlite3.connect(path) as c:
        return c.execute("SELECT count(*) FROM label_events").fetchone()[0]


def test_classify_stops_with_exit_5_when_the_database_file_is_deleted_mid_run(cli, data_dir, sample_folder,
                                                                              monkeypatch):
    import core.inference.predict as predict

    assert cli("scan", sample_folder)[0] == 0
    db_file = _db_file(data_dir)
    assert db_file.is_file()
    real = predict.with_reconnect
    writes = []

    def delete_after_the_first_batch(fn, *a, **k):
        if len(writes) == 1:
            db_file.unlink()  # as a person or a cleanup script might, while classify runs
        writes.append(1)
        return real(fn, *a, **k)

    monkeypatch.setattr(predict, "with_reconnect", delete_after_the_first_batch)
    rc, out, err = cli("classify", sample_folder, "--device", "cpu", "--batch-size", "8")
    assert rc == EXIT_DATABASE, (out, err)
    assert f"the database file {db_file} {SENTENCE}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "predicted" not in out  # nothing claimed as stored
    assert len(writes) == 2  # it stopped at the first write after the deletion
    assert not db_file.exists()  # and did not create a new, empty database in its place


def test_record_labels_after_the_file_was_replaced_is_refused_and_the_file_put_back_works(tmp_path, sample_folder):
    from core.imaging.scan import scan
    from core.jobs import run_job
    from core.review.labels import record_labels
    from core.storage import Database, ImageFile, LabelEvent

    path = tmp_path / "hemascan.sqlite3"
    db = Database(URL.create("sqlite", database=str(path)))
    other = Database(URL.create("sqlite", database=str(tmp_path / "other.sqlite3")))  # another hemascan database
    other.dispose()
    try:
        run_job(scan(db, sample_folder))
        with db.session() as s:
            ids = list(s.scalars(select(ImageFile.image_id).limit(3)))
        aside = tmp_path / "aside.sqlite3"
        os.rename(path, aside)
        os.replace(tmp_path / "other.sqlite3", path)  # replaced by another file, same name
        with pytest.raises(DatabaseUnavailableError, match=SENTENCE):
            with db.session() as s:
                record_labels(s, ids, "Benign", "dr.test")
        assert _label_events(path) == 0  # not in the file now at the path ...
        with pytest.raises(DatabaseUnavailableError, match=SENTENCE):  # a new connection is refused too
            db.engine.dispose()
            with db.session() as s:
                s.scalar(select(func.count(LabelEvent.id)))
        os.replace(aside, path)  # the original put back: the same file, usable again
        with db.session() as s:
            assert s.scalar(select(func.count(LabelEvent.id))) == 0  # ... nor in the original
            record_labels(s, ids, "Benign", "dr.test")
        assert _label_events(path) == len(ids)
    finally:
        db.dispose()


def test_a_new_connection_never_creates_an_empty_database_where_the_file_was(tmp_path):
    from core.storage import Database, Setting

    path = tmp_path / "hemascan.sqlite3"
    db = Database(URL.create("sqlite", database=str(path)))
    try:
        path.unlink()
        db.engine.dispose()  # every connection new from here
        with pytest.raises(DatabaseUnavailableError, match=SENTENCE):
            with db.session() as s:
                s.scalar(select(Setting.value).limit(1))
        assert not path.exists()
    finally:
        db.dispose()


def test_the_label_writer_keeps_its_labels_queued_until_the_file_is_back(db, paths, sample_folder):
    from core.imaging.scan import scan
    from core.jobs import run_job
    from core.review.labels import LabelWriter
    from core.storage import ImageFile, LabelEvent

    run_job(scan(db, sample_folder))
    with db.session() as s:
        ids = list(s.scalars(select(ImageFile.image_id).order_by(ImageFile.image_id).limit(4)))
    saved, waiting = [], []
    got_waiting = threading.Event()

    def on_waiting(message, n):
        waiting.append(message)
        got_waiting.set()

    writer = LabelWriter(db, on_saved=lambda ids, n: saved.append(ids), on_waiting=on_waiting)
    db_file = Path(db.url.database)
    aside = db_file.with_name("moved-away.sqlite3")
    try:
        assert writer.write({ids[0]: "Benign"}, "dr.test") is True  # the usual case: written at once
        os.rename(db_file, aside)  # the file goes away under the open window
        assert writer.write({ids[1]: "Pro-B"}, "dr.test") is False  # not acknowledged: queued
        assert writer.write({ids[2]: "Pre-B"}, "dr.test") is False
        assert got_waiting.wait(30)
        assert SENTENCE in waiting[0]
        assert not writer.flush(1.0) and saved == []  # nothing claimed as saved meanwhile ...
        assert writer.pending_labels() == {ids[1]: "Pro-B", ids[2]: "Pre-B"}  # ... and nothing dropped
        assert not db_file.exists()
        os.rename(aside, db_file)  # the file is back: the queue is written, in order
        assert writer.flush(30)
        assert saved == [[ids[1]], [ids[2]]]
    finally:
        assert writer.close() == []
    with db.session() as s:
        labels = dict(s.execute(select(LabelEvent.image_id, LabelEvent.label).order_by(LabelEvent.id)).all())
    assert labels == {ids[0]: "Benign", ids[1]: "Pro-B", ids[2]: "Pre-B"}


def test_an_unchanged_file_costs_one_stat_per_commit(tmp_path, monkeypatch):
    """The check is one os.stat of the database file per commit (and per new connection)."""
    from core.storage import Database, Setting
    from core.storage.fileidentity import DatabaseFileIdentity

    db = Database(URL.create("sqlite", database=str(tmp_path / "hemascan.sqlite3")))
    calls = []
    real = DatabaseFileIdentity._current
    monkeypatch.setattr(DatabaseFileIdentity, "_current", lambda self: calls.append(self.path) or real(self))
    try:
        for i in range(5):
            with db.session() as s:
                s.merge(Setting(key=f"k{i}", value="v"))
    finally:
        db.dispose()
    assert calls == [str(tmp_path / "hemascan.sqlite3")] * 5


def test_a_database_deleted_between_two_runs_is_not_made_anew(paths, tmp_path):
    """Deleted while no hemascan ran: the next start used to create an empty database and every
    command carried on (an export of 0 rows, exit 0). Now one sentence, exit 5, nothing created."""
    from core.app.bootstrap import open_database
    from core.errors import DatabaseUnavailableError

    open_database(paths).dispose()
    marker = paths.database.with_name("." + paths.database.name + ".created")
    assert marker.is_file()
    moved = tmp_path / "moved.sqlite3"
    paths.database.rename(moved)
    for suffix in ("-wal", "-shm"):
        paths.database.with_name(paths.database.name + suffix).unlink(missing_ok=True)
    with pytest.raises(DatabaseUnavailableError, match="is missing, although hemascan created it there") as err:
        open_database(paths)
    assert err.value.exit_code == 5 and not paths.database.exists()
    moved.rename(paths.database)  # put back: it opens as before
    open_database(paths).dispose()


def test_the_cli_stops_on_a_lost_database_and_starts_empty_only_when_asked(cli, paths):
    assert cli("sample", "--per-class", "1", str(paths.data_dir / "s"))[0] == 0
    assert cli("scan", str(paths.data_dir / "s"))[0] == 0
    paths.database.unlink()
    code, out, err = cli("export", "-o", str(paths.data_dir / "x.csv"))
    assert code == 5 and "is missing" in err and "Traceback" not in err
    assert not paths.database.exists() and not (paths.data_dir / "x.csv").exists()
    paths.database.with_name("." + paths.database.name + ".created").unlink()  # the sentence's way to start afresh
    assert cli("export", "-o", str(paths.data_dir / "x.csv"))[0] == 0


def test_an_emptied_database_is_not_taken_for_a_new_one(paths):
    from core.app.bootstrap import open_database
    from core.errors import DatabaseUnavailableError

    open_database(paths).dispose()
    paths.database.write_bytes(b"")  # a failed copy, a sync tool that truncated it
    with pytest.raises(DatabaseUnavailableError, match="is empty, although hemascan created it there"):
        open_database(paths)


def test_a_restored_backup_is_not_damaged_by_the_old_write_ahead_log(paths, tmp_path):
    """The database deleted under a running classify leaves its -wal behind; restoring a backup
    beside it as the message says used to replay that log into the backup ("malformed")."""
    import hashlib
    import shutil

    from core.app.bootstrap import open_database
    from core.errors import DatabaseUnavailableError

    open_database(paths).dispose()
    backup = tmp_path / "backup.sqlite3"
    shutil.copyfile(paths.database, backup)
    paths.database.unlink()
    wal = paths.database.with_name(paths.database.name + "-wal")
    wal.write_bytes(b"\x37\x7f\x06\x82" + bytes(4092))  # the old file's log, left behind
    shutil.copyfile(backup, paths.database)  # restored, as the sentence says
    with pytest.raises(DatabaseUnavailableError, match="write-ahead log beside it"):
        open_database(paths)
    assert hashlib.sha256(paths.database.read_bytes()).digest() == hashlib.sha256(backup.read_bytes()).digest()
    wal.unlink()  # moved away, as this sentence says: the restored file opens, and is the new one
    open_database(paths).dispose()
    open_database(paths).dispose()
