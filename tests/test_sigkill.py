"""Kill -9 in the middle of classify, run again: the job finishes, no duplicate rows,
integrity_check ok, and labels given before the kill are all still there."""
import signal
import sqlite3
import subprocess
import time

import pytest

from core.app.sample import generate
from tests.conftest import hemascan_cmd, subprocess_env


def count(db_path, sql):
    if not db_path.exists():
        return 0
    con = sqlite3.connect(db_path, timeout=5)
    try:
        return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0
    finally:
        con.close()


@pytest.mark.slow
def test_sigkill_mid_classify_then_rerun(tmp_path, data_dir):
    folder = tmp_path / "big"
    n = 600
    generate(folder, n_per_class=n // 4, seed=11, size=96)
    env = subprocess_env(data_dir)
    db_path = data_dir / "hemascan.sqlite3"

    # labels a person gave before the run must survive the kill
    subprocess.run([*hemascan_cmd(), "-q", "import-labels", str(folder / "Pro")], env=env, check=True,
                   capture_output=True, timeout=300)
    labels_before = count(db_path, "SELECT count(*) FROM label_events")
    assert labels_before == n // 4

    proc = subprocess.Popen([*hemascan_cmd(), "-q", "classify", str(folder), "--batch-size", "4"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while count(db_path, "SELECT count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field')") < 40:
        assert proc.poll() is None, f"classify ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no predictions appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = count(db_path, "SELECT count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field')")
    assert 0 < partial < n, "the kill should land mid-job"

    rerun = subprocess.run([*hemascan_cmd(), "-q", "classify", str(folder)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field')").fetchone()[0] == n
    assert con.execute(
        "SELECT count(*) FROM (SELECT image_id, model_version_id FROM predictions "
        "GROUP BY 1, 2 HAVING count(*) > 1)").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == n
    assert con.execute("SELECT count(*) FROM files").fetchone()[0] == n
    assert con.execute("SELECT count(*) FROM label_events").fetchone()[0] == labels_before
    con.close()


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_keeps_work(tmp_path, data_dir):
    folder = tmp_path / "ctrlc"
    n = 400
    generate(folder, n_per_class=n // 4, seed=12, size=96)
    env = subprocess_env(data_dir)
    db_path = data_dir / "hemascan.sqlite3"
    proc = subprocess.Popen([*hemascan_cmd(), "-q", "classify", str(folder), "--batch-size", "4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while count(db_path, "SELECT count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field')") < 20:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in out and "Traceback" not in err
    kept = count(db_path, "SELECT count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field')")
    assert 0 < kept < n
    con = sqlite3.connect(db_path)
    scan_status = con.execute("SELECT status FROM scans ORDER BY id DESC").fetchone()[0]
    con.close()
    assert scan_status == "completed"  # the scan had finished; classification was cut short
    subprocess.run([*hemascan_cmd(), "-q", "classify", str(folder)], env=env, check=True,
                   capture_output=True, timeout=300)
    assert count(db_path, "SELECT count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field')") == n
