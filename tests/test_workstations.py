"""Issue 15.2/15.3: several workstations on one database, on both engines (a SQLite file,
and a fresh database on a real PostgreSQL server): reviewers labelling the same folder at
once, each seeing the other's labels on the next poll; a label writer or a classify killed
with SIGKILL loses nothing committed; export reads what both wrote.

Every writer is a real process of its own.
"""
from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from tests.conftest import ROOT, hemascan_cmd, subprocess_env, url_arg

# One reviewer at a workstation: a key press per image, each written by the desktop's LabelWriter.
REVIEWER = r"""
import sys, time
from sqlalchemy import select
from core.storage import Database, ImageFile
from core.review.labels import LabelWriter
url, who, label, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
db = Database(url, migrate=False)
with db.session() as s:
    ids = sorted(set(s.scalars(select(ImageFile.image_id).where(ImageFile.image_id.is_not(None)))))
w = LabelWriter(db)
print("READY", flush=True)
sys.stdin.readline()
for r in range(rounds):
    for i in ids:
        w.write({i: label}, who)
left = w.close(timeout=60)
print("LEFT", len(left), "WROTE", rounds * len(ids), flush=True)
"""


def _prepared(db_url, paths, folder) -> list[int]:
    from core.storage import ImageFile
    from core.app.bootstrap import open_database
    from core.jobs import run_job
    from core.imaging.scan import scan

    db = open_database(paths, db_url)
    try:
        run_job(scan(db, folder))
        with db.session() as s:
            return sorted(set(s.scalars(select(ImageFile.image_id).where(ImageFile.image_id.is_not(None)))))
    finally:
        db.dispose()


def test_two_reviewers_label_the_same_folder_at_once(tmp_path, db_url, paths, sample_folder):
    from core.storage import LabelEvent
    from core.app.bootstrap import open_database
    from core.review.gallery import rows, tile_caption
    from core.review.labels import label_changes_since, last_event_id

    ids = _prepared(db_url, paths, sample_folder)
    db = open_database(paths, db_url)
    with db.session() as s:
        start = last_event_id(s)
    rounds = 3
    seats = [("dr.ana", "Pre-B"), ("dr.ben", "Pro-B")]
    procs = [subprocess.Popen([sys.executable, "-c", REVIEWER, url_arg(db_url), who, label, str(rounds)],
                              cwd=ROOT, env=subprocess_env(tmp_path / f"seat-{who}"), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who, label in seats]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "READY", p.stderr.read()
        for p in procs:  # both start labelling at the same moment
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "LEFT 0" in out, (out, err)
        assert "Traceback" not in err
    try:
        with db.session() as s:
            per_reviewer = dict(s.execute(select(LabelEvent.reviewer, func.count()).group_by(LabelEvent.reviewer)).all())
            assert per_reviewer == {"dr.ana": rounds * len(ids), "dr.ben": rounds * len(ids)}  # every event of both
            # what a window polling since before the session sees: every image, both names
            changes = label_changes_since(s, start, sample_folder)
            assert sorted(changes.image_ids) == ids and set(changes.reviewers) == {"dr.ana", "dr.ben"}
            assert changes.last_event_id == last_event_id(s)
            # nothing new since: only the lookback window's events come back, never an unknown one
            again = label_changes_since(s, changes.last_event_id, sample_folder, lookback_s=0)
            assert again.image_ids == () and again.last_event_id == changes.last_event_id
            # the tile names whoever gave the current label
            got = rows(s, str(sample_folder), None, ids)
            for r in got.values():
                assert r.reviewer in ("dr.ana", "dr.ben") and f"by {r.reviewer}" in tile_caption(r)
    finally:
        db.dispose()


def test_label_changes_since_sees_another_seats_write(db_url, paths, sample_folder, tmp_path):
    from core.config import resolve_paths
    from core.app.bootstrap import open_database
    from core.review.labels import LabelWriter, label_changes_since, last_event_id

    ids = _prepared(db_url, paths, sample_folder)
    other_folder = tmp_path / "elsewhere"
    other_folder.mkdir()
    mine = open_database(paths, db_url)
    other = open_database(resolve_paths(tmp_path / "seat-b").ensure(), db_url)
    try:
        with mine.session() as s:
            mark = last_event_id(s)
            assert not label_changes_since(s, mark, sample_folder, lookback_s=0)
        writer = LabelWriter(other)
        assert writer.write({ids[0]: "Benign", ids[1]: "Pre-B"}, "dr.other") is True
        writer.close()
        with mine.session() as s:
            seen = label_changes_since(s, mark, sample_folder, lookback_s=0)
            assert set(seen.image_ids) == {ids[0], ids[1]} and seen.reviewers == ("dr.other",)
            assert seen.last_event_id > mark
            assert not label_changes_since(s, mark, other_folder, lookback_s=0)  # not under that folder
    finally:
        mine.dispose()
        other.dispose()


_ENGINES: dict = {}


def _count(url, sql: str) -> int:
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as c:
            return c.execute(text(sql)).scalar() or 0
    except Exception:  # tables not there yet
        return 0


@pytest.mark.slow
def test_sigkill_mid_classify_then_rerun_on_both_engines(tmp_path, db_url, data_dir):
    """Classify killed with SIGKILL mid-job on either engine: what was committed stays, the
    rerun finishes, one prediction per image; labels given before are all there."""
    from core.app.sample import generate

    folder = tmp_path / "big"
    n = 480
    generate(folder, n_per_class=n // 4, seed=11, size=96)
    env = subprocess_env(data_dir)
    url = url_arg(db_url)
    base = [*hemascan_cmd(), "-q", "--db-url", url]
    subprocess.run([*base, "import-labels", str(folder / "Pro")], env=env, check=True, capture_output=True, timeout=300)
    labels_before = _count(db_url, "SELECT count(*) FROM label_events")
    assert labels_before == n // 4
    proc = subprocess.Popen([*base, "classify", str(folder), "--batch-size", "4", "--device", "cpu"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _count(db_url, "SELECT count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field')") < 20:
        assert proc.poll() is None, f"classify ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no predictions appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = _count(db_url, "SELECT count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field')")
    assert 0 < partial < n
    rerun = subprocess.run([*base, "classify", str(folder), "--device", "cpu"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _count(db_url, "SELECT count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field')") == n
    assert _count(db_url, "SELECT count(*) FROM (SELECT image_id, model_version_id FROM predictions "
                          "GROUP BY 1, 2 HAVING count(*) > 1) d") == 0
    assert _count(db_url, "SELECT count(*) FROM label_events") == labels_before

    # export reads what was written, on either engine
    out = tmp_path / "export.csv"
    exp = subprocess.run([*base, "export", "--format", "csv", "--output", str(out), "--folder", str(folder)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert exp.returncode == 0, exp.stderr
    with out.open(newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == n and all(r["predicted_label"] for r in got)
    reviewed = [r for r in got if "/Pro/" in r["path"].replace("\\", "/")]
    assert len(reviewed) == n // 4


@pytest.mark.slow
def test_sigkill_mid_label_writes_keeps_every_committed_event(tmp_path, db_url, paths, sample_folder):
    """A reviewer's process killed with SIGKILL while writing: every event it committed is
    there in full (no half action), and the database opens and takes new labels."""
    from core.storage import Database, LabelEvent

    ids = _prepared(db_url, paths, sample_folder)
    proc = subprocess.Popen([sys.executable, "-c", REVIEWER, url_arg(db_url), "dr.killed", "Benign", "1000"], cwd=ROOT,
                            env=subprocess_env(tmp_path / "seat"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 120
    while _count(db_url, "SELECT count(*) FROM label_events") < 3 * len(ids):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    db = Database(db_url)
    try:
        with db.session() as s:
            events = list(s.scalars(select(LabelEvent).order_by(LabelEvent.id)))
            assert len(events) >= 3 * len(ids)
            assert all(e.label == "Benign" and e.reviewer == "dr.killed" and e.created_at for e in events)
            assert [e.image_id for e in events] == [ids[k % len(ids)] for k in range(len(events))]  # in order, none lost
        from core.review.labels import record_labels

        with db.session() as s:
            record_labels(s, ids[:1], "Pro-B", "dr.after")
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(LabelEvent)) == len(events) + 1
    finally:
        db.dispose()


def test_peer_timer_refreshes_the_window_data(qtbot, db_url, paths, sample_folder, tmp_path):
    """desktop/peers.py: the timer's poll reports another seat's labels for the open folder."""
    pytest.importorskip("PySide6")
    from core.config import resolve_paths
    from core.app.bootstrap import open_database
    from core.review.labels import record_labels
    from desktop.peers import PeerLabels
    from desktop.workers import Workers

    ids = _prepared(db_url, paths, sample_folder)
    mine = open_database(paths, db_url)
    other = open_database(resolve_paths(tmp_path / "seat-b").ensure(), db_url)
    try:
        workers = Workers()
        peers = PeerLabels(workers, mine, lambda: sample_folder, interval_ms=50)
        qtbot.waitUntil(lambda: peers.last_event_id is not None, timeout=5000)
        got = []
        peers.changed.connect(lambda image_ids, who: got.append((sorted(image_ids), who)))
        with other.session() as s:
            record_labels(s, ids[2:4], "Pre-B", "dr.b")
        qtbot.waitUntil(lambda: bool(got), timeout=5000)
        assert got[0] == (ids[2:4], ["dr.b"])
        peers.stop()
        workers.wait(5000)
    finally:
        mine.dispose()
        other.dispose()



def test_the_window_shows_another_seats_labels_with_its_name(qtbot, db_url, paths, sample_folder, tmp_path):
    """Two workstations on one database: what seat B labels appears on seat A's open window
    (tile caption with B's reviewer, counts), without A doing anything."""
    pytest.importorskip("PySide6")
    from PySide6.QtCore import QSettings

    from core.config import resolve_paths
    from core.app.bootstrap import open_database
    from core.review.labels import record_labels
    from desktop.mainwindow import MainWindow

    ids = _prepared(db_url, paths, sample_folder)
    settings = QSettings(str(tmp_path / "a.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "dr.ana")
    w = MainWindow(paths, db_url=url_arg(db_url), settings=settings)
    qtbot.addWidget(w)
    w.peer_labels.timer.setInterval(100)
    w.open_folder(sample_folder, classify=False)
    qtbot.waitUntil(lambda: w.model.rowCount() == len(ids) and w.peer_labels.last_event_id is not None,
                    timeout=10000)
    other = open_database(resolve_paths(tmp_path / "seat-b").ensure(), db_url)
    try:
        with other.session() as s:
            record_labels(s, ids[:3], "Pro-B", "dr.ben", source="human", taxonomy=w.version["taxonomy"])
    finally:
        other.dispose()
    from core.review.gallery import tile_caption

    qtbot.waitUntil(lambda: sum("by dr.ben" in tile_caption(w.model.row_at(r)) for r in range(w.model.rowCount()))
                    == 3, timeout=10000)
    qtbot.waitUntil(lambda: f"{100 * 3 / len(ids):.0f}% reviewed" in w.counts.text(), timeout=10000)
    w.close()
