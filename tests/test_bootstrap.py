"""Setup once (core/app/bootstrap.py): a first start or an upgrade sets the database up under
the cross-process locks; afterwards nothing that reads the active model registers, shares or
cleans anything."""
from __future__ import annotations

import json

import pytest

from core.app import bootstrap
from core.app.bootstrap import needs_setup, open_database
from core.errors import ModelPackageError
from core.models import registry
from core.models.package import bundled_default_package, bundled_packages
from core.models.registry import active_version, list_versions, require_active_version
from core.storage import Database
from tests.test_bundled_models import _renamed_copy


def test_first_start_sets_up_and_the_next_start_takes_no_lock(paths, monkeypatch):
    db = open_database(paths)
    try:
        assert not needs_setup(db)
        with db.session() as s:
            assert active_version(s).name == json.loads((bundled_default_package() / "card.json").read_text())["name"]
            assert len(list_versions(s)) == len(bundled_packages())
    finally:
        db.dispose()

    def no_lock(*a, **k):
        raise AssertionError("a set-up database took the setup lock")

    monkeypatch.setattr(bootstrap, "data_dir_lock", no_lock)
    open_database(paths).dispose()


def test_an_update_that_ships_a_model_registers_it_on_the_next_start(paths, tmp_path, monkeypatch):
    open_database(paths).dispose()
    extra = _renamed_copy(tmp_path, "shipped-later-v1")
    monkeypatch.setattr(registry, "bundled_packages", lambda: [bundled_default_package(), extra])
    monkeypatch.setattr(bootstrap, "bundled_packages", lambda: [bundled_default_package(), extra])
    db = open_database(paths)
    try:
        with db.session() as s:
            assert "shipped-later-v1" in {v.name for v in list_versions(s)}
            assert active_version(s).name != "shipped-later-v1"  # registered, not activated
    finally:
        db.dispose()


def test_reading_the_active_model_sets_nothing_up(paths):
    """A database that was never set up (migrated only): the getter says so in one sentence
    and registers nothing (it used to register the bundled models on every classify)."""
    db = Database(paths.db_url())
    try:
        with db.session() as s:
            with pytest.raises(ModelPackageError, match="no field model is active"):
                require_active_version(s)
            assert list_versions(s) == []
        assert needs_setup(db)
    finally:
        db.dispose()
