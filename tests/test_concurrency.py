"""Issue 11 defect 7: several hemascan processes started at the same moment on a new data
directory (migrations, registering the bundled model, temporary folders) all succeed.

Real `hemascan classify` subprocesses, started together, round after round on a fresh data
directory each time; every image ends with exactly one prediction.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import threading

import pytest

from tests.conftest import hemascan_cmd, subprocess_env

ROUNDS = int(os.environ.get("HEMASCAN_TEST_CONCURRENCY_ROUNDS", "8"))
PROCESSES = 3


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concurrency") / "smears"
    proc = subprocess.run([*hemascan_cmd(), "-q", "sample", str(folder), "--per-class", "2"],
                          env=subprocess_env(folder.parent / "unused-data"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return folder


def _start_together(argv_env: list[tuple[list[str], dict]]) -> list[subprocess.CompletedProcess]:
    """Start the processes as close to the same moment as possible and wait for all."""
    barrier = threading.Barrier(len(argv_env))
    results: list = [None] * len(argv_env)

    def run(i, argv, env):
        barrier.wait()
        results[i] = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)

    threads = [threading.Thread(target=run, args=(i, a, e)) for i, (a, e) in enumerate(argv_env)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.slow
def test_classify_started_at_once_on_a_new_data_dir(tmp_path, small_folder):
    n_images = sum(1 for p in small_folder.rglob("*") if p.is_file())
    assert n_images >= 8
    failures = []
    for r in range(ROUNDS):
        data_dir = tmp_path / f"round{r}"  # new every round: first-time setup races each time
        env = subprocess_env(data_dir)
        argv = [*hemascan_cmd(), "-q", "classify", str(small_folder), "--device", "cpu"]
        procs = _start_together([(argv, env)] * PROCESSES)
        for p in procs:
            if p.returncode != 0:
                failures.append(f"round {r}: exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
            assert "Traceback" not in p.stderr or p.returncode != 0
        if any(p.returncode != 0 for p in procs):
            continue
        con = sqlite3.connect(data_dir / "hemascan.sqlite3")
        try:
            from core.models.registry import bundled_packages

            assert con.execute("SELECT count(*) FROM model_versions").fetchone() == (len(bundled_packages()),)
            per_image = con.execute("SELECT image_id, count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field') GROUP BY image_id").fetchall()
            assert len(per_image) == n_images and all(c == 1 for _, c in per_image), per_image
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            con.close()
        leftovers = [p.name for p in (data_dir / "models").iterdir() if p.name.startswith(".")]
        assert leftovers == [], leftovers  # no temporary folder left behind by a lost race
    assert not failures, f"{len(failures)} of {ROUNDS * PROCESSES} processes failed:\n" + "\n".join(failures)


PG_ROUNDS = int(os.environ.get("HEMASCAN_TEST_PG_ROUNDS", "3"))


@pytest.mark.slow
def test_classify_started_at_once_on_a_new_postgresql_database(tmp_path, small_folder, pg_server):
    """As above on PostgreSQL, each process with its own data directory (as on several
    machines, where a file lock cannot help): every process exits 0 and every image has
    exactly one prediction, round after round on a brand-new database.
    HEMASCAN_TEST_PG_ROUNDS=20 repeats it 20 times (the issue's figure)."""
    from sqlalchemy import create_engine, text

    from tests.conftest import url_arg
    from tests.pgserver import drop_pg_database, new_pg_database

    n_images = sum(1 for p in small_folder.rglob("*") if p.is_file())
    failures = []
    for r in range(PG_ROUNDS):
        url = new_pg_database(pg_server, "hemascan_race")
        try:
            runs = [([*hemascan_cmd(), "-q", "--db-url", url_arg(url), "classify", str(small_folder), "--device", "cpu"],
                     subprocess_env(tmp_path / f"round{r}-machine{i}")) for i in range(PROCESSES)]
            procs = _start_together(runs)
            failures += [f"round {r}: exit {p.returncode}: {p.stderr.strip().splitlines()[-3:]}"
                         for p in procs if p.returncode != 0]
            assert all("Traceback" not in p.stderr for p in procs), [p.stderr for p in procs]
            if all(p.returncode == 0 for p in procs):
                db = create_engine(url)
                try:
                    with db.connect() as c:
                        assert c.execute(text("SELECT count(*) FROM model_versions WHERE is_active AND input_kind = 'field'")).scalar() == 1
                        per_image = c.execute(text("SELECT image_id, count(*) FROM predictions WHERE model_version_id IN (SELECT id FROM model_versions WHERE input_kind = 'field') GROUP BY image_id")).all()
                        assert len(per_image) == n_images and all(n == 1 for _, n in per_image), per_image
                        assert c.execute(text("SELECT count(*) FROM images")).scalar() == n_images
                finally:
                    db.dispose()
        finally:
            drop_pg_database(pg_server, url)
    print(f"postgresql first-start race: {PG_ROUNDS} rounds x {PROCESSES} processes, {len(failures)} failed")
    assert not failures, f"{len(failures)} of {PG_ROUNDS * PROCESSES} processes failed:\n" + "\n".join(failures)
