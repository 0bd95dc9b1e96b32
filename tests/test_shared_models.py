"""Issue 15.4: a model registered, imported, trained or promoted on one data directory is
available, and active, in every other data directory that uses the same database, with no
file copying; every activation is a row of the append-only ``model_activations`` table.

Two data directories (two workstations) share one database: a SQLite file, and a fresh
PostgreSQL database on the test server.
"""
from __future__ import annotations

import hashlib
import subprocess

import pytest
from sqlalchemy import select, text, update

from core.errors import ModelPackageError
from tests.conftest import hemascan_cmd, subprocess_env, url_arg


@pytest.fixture(scope="module")
def second_package(tmp_path_factory):
    """A second, valid model package (the bundled weights under another name)."""
    from core.models.package import load_model, save_package
    from core.models.registry import bundled_default_package

    model, card = load_model(bundled_default_package())
    card.name, card.parent, card.placeholder = "shared-test-model", card.name, False
    card.notes = "made by tests/test_shared_models.py"
    pkg = tmp_path_factory.mktemp("pkg") / "shared-test-model"
    save_package(pkg, model.state_dict(), card)
    return pkg


def _seat(tmp_path, name: str):
    from core.config import resolve_paths

    return resolve_paths(tmp_path / name).ensure()


def _tree_hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_a_model_promoted_on_one_seat_is_active_on_another(tmp_path, db_url, second_package, sample_folder):
    from core.storage import ModelActivation, ModelBlob
    from core.app.bootstrap import open_database
    from core.models.registry import activation_log, active_version, promote, register_package, require_active_version
    from core.app.bootstrap import setup_models
    from core.models.store import local_package

    a, b = _seat(tmp_path, "seat-a"), _seat(tmp_path, "seat-b")
    db_a = open_database(a, db_url)
    try:
        with db_a.session() as s:
            setup_models(s, a)
            register_package(s, a, second_package)  # registered on seat A only
        promote(db_a, "shared-test-model", who="dr.a")
    finally:
        db_a.dispose()
    assert (a.models / "shared-test-model").is_dir()
    assert not (b.models / "shared-test-model").exists()

    # seat B: nothing copied by hand; the database has it
    db_b = open_database(b, db_url)
    try:
        with db_b.session() as s:
            v = require_active_version(s)  # reads only: nothing is set up by a getter
            assert v.name == "shared-test-model" and active_version(s).name == "shared-test-model"
            assert s.scalar(select(ModelBlob.size).where(ModelBlob.sha256 == v.weights_sha256)) > 0
            local_package(s, v)  # first use on this seat: written from the database, every hash checked
        got = b.models / "shared-test-model"
        assert got.is_dir() and _tree_hashes(got) == _tree_hashes(a.models / "shared-test-model")
        log = activation_log(db_b)
        assert [(e["action"], e["name"], e["by"]) for e in log][-1] == ("promote", "shared-test-model", "dr.a")
        assert log[-1]["previous"] == log[0]["name"] and log[0]["action"] == "setup"
        with db_b.session() as s:
            assert s.scalar(select(ModelActivation.id).order_by(ModelActivation.id.desc()).limit(1)) is not None
    finally:
        db_b.dispose()

    # and seat B classifies with it (a real command, its own process)
    proc = subprocess.run([*hemascan_cmd(), "-q", "--db-url", url_arg(db_url), "classify", str(sample_folder),
                           "--device", "cpu"], env=subprocess_env(b.data_dir), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "predictions by shared-test-model" in proc.stdout


def test_a_damaged_copy_is_refused_a_missing_one_fetched_and_a_tampered_blob_refused(tmp_path, db_url,
                                                                                  second_package):
    from core.storage import ModelBlob, ModelFile
    from core.app.bootstrap import open_database
    from core.models.store import local_package
    from core.models.registry import get_version, register_package
    from core.app.bootstrap import setup_models

    a, b = _seat(tmp_path, "seat-a"), _seat(tmp_path, "seat-b")
    db_a = open_database(a, db_url)
    try:
        with db_a.session() as s:
            setup_models(s, a)
            v = register_package(s, a, second_package)
            sha = v.weights_sha256
    finally:
        db_a.dispose()
    db_b = open_database(b, db_url)
    try:
        with db_b.session() as s:
            v = get_version(s, "shared-test-model")
            pkg = local_package(s, v)  # the session knows its seat (open_database)
            assert pkg == b.models / "shared-test-model"
            weights = pkg / "model.safetensors"
            weights.chmod(0o644)
            with open(weights, "r+b") as fh:  # damage this seat's copy
                fh.seek(200)
                fh.write(b"\0" * 64)
            from core.models.package import verify_package

            with pytest.raises(ModelPackageError, match="copy on this workstation .* no longer hash to the content"):
                local_package(s, v)  # refused before use (issue 24: a version is its content) ...
            with pytest.raises(ModelPackageError, match="do not match their card"):
                verify_package(pkg)  # ... as loading refuses it, and it is never silently repaired
            import shutil

            shutil.rmtree(pkg)  # moved away: the next use fetches the database's copy
            assert local_package(s, v) == pkg
            assert hashlib.sha256(weights.read_bytes()).hexdigest() == sha
        with db_b.session() as s:  # someone altered the stored bytes of the weights ...
            data = bytearray(s.scalar(select(ModelBlob.data).where(ModelBlob.sha256 == sha)))
            data[300] ^= 0xFF
            s.execute(update(ModelBlob).where(ModelBlob.sha256 == sha).values(data=bytes(data)))
        import shutil

        shutil.rmtree(b.models / "shared-test-model")
        with db_b.session() as s:  # ... which are the bundled model's: read from this installation (issue 24)
            assert hashlib.sha256((local_package(s, get_version(s, "shared-test-model")) / "model.safetensors")
                                  .read_bytes()).hexdigest() == sha
            card_sha = s.scalar(select(ModelFile.sha256).where(ModelFile.name == "card.json",
                                                               ModelFile.model_version_id == v.id))
            card = bytearray(s.scalar(select(ModelBlob.data).where(ModelBlob.sha256 == card_sha)))
            card[5] ^= 0x01  # and of its card, which no installation has
            s.execute(update(ModelBlob).where(ModelBlob.sha256 == card_sha).values(data=bytes(card)))
        shutil.rmtree(b.models / "shared-test-model")
        with db_b.session() as s:
            with pytest.raises(ModelPackageError, match="does not match its SHA-256"):
                local_package(s, get_version(s, "shared-test-model"))
        assert not (b.models / "shared-test-model").exists()
        assert not [p for p in b.models.iterdir() if p.name.startswith(".tmp-")]
    finally:
        db_b.dispose()


def test_every_activation_path_writes_one_log_row(tmp_path, db_url, second_package, cli):
    """registry (`models register --activate`, `models activate`/`rollback`), model file import
    (`models import --activate`): each is one row with who/when/from/to; rows are never changed."""
    from core.storage import ModelActivation
    from core.app.bootstrap import open_database

    url = url_arg(db_url)
    assert cli("--db-url", url, "models", "register", second_package, "--activate")[0] == 0
    first = cli("--db-url", url, "models", "list")[1].splitlines()
    bundled_default = next(ln.split()[0] for ln in first if not ln.startswith("*") and "shared-test-model" not in ln)
    assert cli("--db-url", url, "models", "rollback", bundled_default)[0] == 0
    assert cli("--db-url", url, "models", "export", "shared-test-model", tmp_path / "m.hsmodel")[0] == 0
    assert cli("--db-url", url, "models", "activate", "shared-test-model")[0] == 0
    assert cli("--db-url", url, "models", "import", tmp_path / "m.hsmodel", "--activate")[0] == 0

    paths = _seat(tmp_path, "check")
    db = open_database(paths, db_url)
    try:
        with db.session() as s:
            rows = list(s.scalars(select(ModelActivation).order_by(ModelActivation.id)))
            names = dict(s.execute(text("SELECT id, name FROM model_versions")).all())
            kinds = dict(s.execute(text("SELECT id, input_kind FROM model_versions")).all())
            assert [(r.action, kinds[r.model_version_id]) for r in rows[:2]] == [("setup", "field"), ("setup", "cell")]
            rows = [r for r in rows if kinds[r.model_version_id] == "field"]  # the field models' log
            assert [r.action for r in rows] == ["setup", "register", "rollback", "activate", "import"]
            assert [names[r.model_version_id] for r in rows[1:]] == [
                "shared-test-model", bundled_default, "shared-test-model", "shared-test-model"]
            assert all(r.previous_version_id == p.model_version_id for p, r in zip(rows, rows[1:]))
            assert all(r.activated_by and r.created_at is not None for r in rows)
            assert s.execute(text("SELECT count(*) FROM model_versions WHERE is_active")).scalar() == 2  # one per kind
    finally:
        db.dispose()


def test_the_old_activation_log_moves_into_the_table(tmp_path, db_url):
    """A database at 0004 keeps its activation history (a JSON list in settings) as rows."""
    import json

    from core.storage import Database, make_engine, upgrade
    from core.models.registry import activation_log

    engine = make_engine(db_url)
    upgrade(engine, "0004")
    with engine.begin() as c:
        for i, (name, active) in enumerate([("m1", False), ("m2", True)], start=1):
            c.execute(text("INSERT INTO model_versions (id, name, architecture, taxonomy, path, weights_sha256, card, "
                           "created_at, is_active) VALUES (:i, :n, 'se_cnn', 'all_subtype', '/m', :sha, '{}', "
                           "'2026-01-01 00:00:00', :a)"), {"i": i, "n": name, "sha": str(i) * 64, "a": active})
        log = [{"at": "2026-01-02T10:00:00+00:00", "action": "promote", "name": "m2", "previous": "m1", "by": "dr.x"},
               {"at": "2026-01-03T10:00:00+00:00", "action": "activate", "name": "gone", "previous": "m2", "by": "y"}]
        c.execute(text("INSERT INTO settings (key, value) VALUES ('model_activations', :v)"), {"v": json.dumps(log)})
    engine.dispose()
    db = Database(db_url)
    try:
        got = activation_log(db)
        assert [(e["action"], e["name"], e["previous"], e["by"]) for e in got] == [("promote", "m2", "m1", "dr.x")]
        with db.engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM settings WHERE key = 'model_activations'")).scalar() == 0
    finally:
        db.dispose()
