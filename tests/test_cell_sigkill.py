"""Kill -9 in the middle of classify's cell stage, run again: the job finishes, and no cell search,
cell or cell prediction is stored twice (the counts equal a clean run's); every committed search
has all its cells, even right after the kill; a further run adds nothing."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import time

import pytest

from tests.cellfields import write_fields
from tests.conftest import hemascan_cmd, subprocess_env
from tests.test_cell_stage import make_cell_model_active

COUNTS = {
    "searches": "SELECT count(*) FROM cell_searches",
    "cells": "SELECT count(*) FROM cells",
    "cell_predictions": "SELECT count(*) FROM cell_predictions",
    "predictions": "SELECT count(*) FROM predictions",
}
# a search whose image has not exactly the cells it says it found (a half-written batch)
INCOMPLETE_SEARCHES = ("SELECT count(*) FROM cell_searches s WHERE s.n_cells != "
                       "(SELECT count(*) FROM cells c WHERE c.image_id = s.image_id AND c.finder = s.finder)")


def query(db_path, sql) -> int:
    if not db_path.exists():
        return 0
    con = sqlite3.connect(db_path, timeout=5)
    try:
        return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # table not there yet, or locked for a moment
        return 0
    finally:
        con.close()


def counts(db_path) -> dict[str, int]:
    return {k: query(db_path, sql) for k, sql in COUNTS.items()}


def prepared(data_dir):
    """A data directory set up with the bundled ALL-vs-normal model as the active cell model."""
    from core.app.bootstrap import open_database
    from core.config import resolve_paths

    db = open_database(resolve_paths(data_dir).ensure())
    make_cell_model_active(db)
    db.dispose()
    return data_dir / "hemascan.sqlite3"


@pytest.mark.slow
def test_sigkill_mid_cell_stage_then_rerun(tmp_path, data_dir):
    n = 160
    folder = tmp_path / "fields"
    write_fields(folder, n, white_per_field=3, seed=5)
    db_path = prepared(data_dir)
    env = subprocess_env(data_dir)

    proc = subprocess.Popen([*hemascan_cmd(), "-q", "classify", str(folder), "--workers", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while query(db_path, COUNTS["searches"]) < 20:
        assert proc.poll() is None, f"classify ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no cells appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = counts(db_path)
    assert 0 < partial["searches"] < n, "the kill should land mid-stage"
    assert query(db_path, INCOMPLETE_SEARCHES) == 0  # a search commits with all its cells, or not at all
    assert partial["cell_predictions"] == partial["cells"]  # ... and with their predictions

    rerun = subprocess.run([*hemascan_cmd(), "-q", "classify", str(folder)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    after = counts(db_path)

    clean_dir = tmp_path / "clean"
    clean_db = prepared(clean_dir)
    clean = subprocess.run([*hemascan_cmd(), "-q", "classify", str(folder)], env=subprocess_env(clean_dir),
                           capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr
    assert after == counts(clean_db)
    assert after["searches"] == n and after["cells"] == after["cell_predictions"] == 3 * n

    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    for table, key in (("cell_searches", "image_id, finder"), ("cells", "image_id, finder, number"),
                       ("cell_predictions", "cell_id, model_version_id")):
        assert con.execute(f"SELECT count(*) FROM (SELECT {key} FROM {table} GROUP BY {key} "
                           "HAVING count(*) > 1)").fetchone()[0] == 0
    con.close()
    assert query(db_path, INCOMPLETE_SEARCHES) == 0

    again = subprocess.run([*hemascan_cmd(), "-q", "classify", str(folder)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert counts(db_path) == after
    assert f"cells: nothing new to find ({after['cells']} cells in {n} images already found)" in again.stdout
