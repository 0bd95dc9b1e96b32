"""Issue 24, item 6: a version is its content. One hash over its whole package (card, weights,
int8, guard) is fixed in its row at registration and cannot be changed; every seat checks the
database's record and its own copy against it before use; a bundled version whose stored
bytes are damaged loads from the installation's own files."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from core.app.bootstrap import open_database
from core.config import resolve_paths
from core.errors import ModelPackageError
from core.models.package import CARD_FILE
from core.models.registry import bundled_default_package, get_version, register_package
from core.models.store import local_package
from core.storage import ModelBlob, ModelFile, ModelVersion, utcnow
from core.storage.audit import package_digest


def _seat(tmp_path, name: str):
    return resolve_paths(tmp_path / name).ensure()


def _package(tmp_path, name: str = "identity-test-model"):
    pkg = tmp_path / "pkg" / name
    shutil.copytree(bundled_default_package(), pkg)
    card = json.loads((pkg / CARD_FILE).read_text(encoding="utf-8"))
    card["name"], card["parent"], card["placeholder"] = name, None, False
    (pkg / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    return pkg


def _around_the_rules(db, sql: str, params: dict, tables=("model_files",)) -> None:
    """What the owner (PostgreSQL) or anyone holding the file (SQLite) can do: lift the triggers, edit, restore."""
    from core.storage.audit import protect_version_identity, unprotect_version_identity

    with db.engine.begin() as c:
        if c.dialect.name == "postgresql":
            for t in tables:
                c.execute(text(f"ALTER TABLE {t} DISABLE TRIGGER USER"))
            c.execute(text(sql), params)
            for t in tables:
                c.execute(text(f"ALTER TABLE {t} ENABLE TRIGGER USER"))
        else:
            unprotect_version_identity(c)
            c.execute(text(sql), params)
            protect_version_identity(c)


def _hostile_card(db, version_name: str) -> str:
    """Store a hostile card.json blob for ``version_name`` (as the issue's: other preprocessing, a
    clinical claim); returns its SHA-256."""
    with db.session() as s:
        v = get_version(s, version_name)
        sha = s.scalar(select(ModelFile.sha256).where(ModelFile.model_version_id == v.id, ModelFile.name == CARD_FILE))
        card = json.loads(s.scalar(select(ModelBlob.data).where(ModelBlob.sha256 == sha)))
        card.setdefault("preprocessing", {})["input_size"] = 64
        card["intended_use"] = "Validated for clinical diagnosis"
        data = json.dumps(card).encode()
        hostile = hashlib.sha256(data).hexdigest()
        s.add(ModelBlob(sha256=hostile, size=len(data), data=data, created_at=utcnow()))
        return hostile


def test_the_package_hash_is_fixed_at_registration_and_cannot_change(tmp_path, db_url):
    a = _seat(tmp_path, "a")
    db = open_database(a, db_url)
    try:
        with db.session() as s:
            v = register_package(s, a, _package(tmp_path))
            files = {n: sha for n, sha in s.execute(select(ModelFile.name, ModelFile.sha256)
                                                    .where(ModelFile.model_version_id == v.id))}
            assert v.package_sha256 == package_digest(files) and len(files) >= 2
            vid = v.id
            # every bundled version has one too
            assert s.scalar(select(ModelVersion.id).where(ModelVersion.package_sha256.is_(None))) is None
        for sql in ("UPDATE model_versions SET package_sha256 = :h WHERE id = :i",):
            with pytest.raises(DBAPIError, match="content of a model version is fixed when it is registered"):
                with db.engine.begin() as c:
                    c.execute(text(sql), {"h": "f" * 64, "i": vid})
        for sql in ("UPDATE model_files SET sha256 = :h WHERE model_version_id = :i",
                    "DELETE FROM model_files WHERE model_version_id = :i"):
            with pytest.raises(DBAPIError, match="model_files is part of the audit record"):
                with db.engine.begin() as c:
                    c.execute(text(sql), {"h": "f" * 64, "i": vid})
        with db.engine.begin() as c:  # the rest of the row is as before (the active flag moves)
            c.execute(text("UPDATE model_versions SET is_active = is_active WHERE id = :i"), {"i": vid})
    finally:
        db.dispose()


def test_a_swapped_card_is_refused_on_every_seat_cached_or_not(tmp_path, db_url):
    """The issue's attack: a new card blob, and the version's card.json pointed at it."""
    a, b = _seat(tmp_path, "a"), _seat(tmp_path, "b")
    name = "identity-test-model"
    db_a = open_database(a, db_url)
    try:
        with db_a.session() as s:
            register_package(s, a, _package(tmp_path, name))
            local_package(s, get_version(s, name))  # seat A holds the package
        hostile = _hostile_card(db_a, name)
        with db_a.session() as s:
            vid = get_version(s, name).id
        point = "UPDATE model_files SET sha256 = :h WHERE model_version_id = :i AND name = 'card.json'"
        with pytest.raises(DBAPIError, match="part of the audit record"):  # the database refuses it ...
            with db_a.engine.begin() as c:
                c.execute(text(point), {"h": hostile, "i": vid})
        _around_the_rules(db_a, point, {"h": hostile, "i": vid})  # ... so it is done around its rules
        with db_a.session() as s:  # seat A, package cached
            with pytest.raises(ModelPackageError, match=f"model {name}: the files the database lists for it no "
                               "longer hash to the content it was registered with"):
                local_package(s, get_version(s, name))
    finally:
        db_a.dispose()
    db_b = open_database(b, db_url)  # a fresh seat
    try:
        with db_b.session() as s:
            with pytest.raises(ModelPackageError, match="no longer hash to the content it was registered with"):
                local_package(s, get_version(s, name))
        assert not (b.models / name).exists()
        # and when the version's hash is rewritten too, a seat holding the registered content refuses
        # (a seat without a copy then takes the database's word: the honest limit of a database anyone owns)
        with db_b.session() as s:
            files = {n: sha for n, sha in s.execute(select(ModelFile.name, ModelFile.sha256)
                                                    .where(ModelFile.model_version_id == vid))}
        _around_the_rules(db_b, "UPDATE model_versions SET package_sha256 = :h WHERE id = :i",
                          {"h": package_digest(files), "i": vid}, tables=("model_versions",))
    finally:
        db_b.dispose()
    db_a = open_database(a, db_url)
    try:
        with db_a.session() as s:
            with pytest.raises(ModelPackageError, match="the files of its copy on this workstation"):
                local_package(s, get_version(s, name))
    finally:
        db_a.dispose()


def test_a_bundled_version_whose_stored_bytes_are_damaged_loads_from_the_installation(tmp_path, db_url):
    """One bad ``model_blobs`` row of the default model's weights no longer blocks a new seat."""
    a, b = _seat(tmp_path, "a"), _seat(tmp_path, "b")
    db_a = open_database(a, db_url)
    try:
        with db_a.session() as s:
            v = get_version(s, json.loads((bundled_default_package() / CARD_FILE).read_text())["name"])
            name, sha = v.name, v.weights_sha256
            damaged = bytearray((bundled_default_package() / "model.safetensors").read_bytes())
            damaged[300] ^= 0xFF
            s.merge(ModelBlob(sha256=sha, size=len(damaged), data=bytes(damaged), created_at=utcnow()))
    finally:
        db_a.dispose()
    db_b = open_database(b, db_url)  # a new seat, its registry empty
    try:
        with db_b.session() as s:
            pkg = local_package(s, get_version(s, name))
        assert hashlib.sha256((pkg / "model.safetensors").read_bytes()).hexdigest() == sha
    finally:
        db_b.dispose()
