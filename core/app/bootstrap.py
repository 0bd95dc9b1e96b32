"""Setup once: what a first start or an upgrade does, in one place.

:func:`open_database` opens the database of a data directory; when it is new or older than this
hemascan (schema not at head, no model active, a bundled model not registered yet) it runs
:func:`setup` under the data directory's file lock and, on PostgreSQL, the server-wide advisory
lock, so several processes (and seats) may start at once. Everything after that only reads:
:func:`core.models.registry.active_version` never registers, shares or cleans anything.

Setup is: migrations; the bundled model packages registered (and shared through the database);
versions registered before schema 0005 shared; one active model per input kind: the bundled
default field model made active when no field model is (on an upgraded database that has field
versions, the newest of them), the bundled cell model when no cell model is. Every start also removes this seat's leftovers of killed model writes (older than any write
takes, so no lock is needed).
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sqlalchemy import exists, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.config import Paths, share_with_group
from core.errors import HemascanError, ModelPackageError
from core.models.package import DEFAULT_CELL_MODEL_DIR, bundled_default_package, bundled_packages, read_card
from core.models.registry import (CELL, FIELD, activate_version, active_version, input_kind_of, register_bundled,
                                  register_package, remove_stale_temporaries)
from core.models.store import share_unshared
from core.storage import Database, ModelActivation, ModelVersion, data_dir_lock, server_setup_lock, to_url
from core.storage.errors import user_error
from core.storage.fileidentity import MARKER_SUFFIX, created_marker, mark_created

log = logging.getLogger(__name__)


def _bundled_cards() -> list:
    cards = []
    for package in bundled_packages():
        try:
            cards.append((package, read_card(package)))
        except ModelPackageError:  # damaged: registration skips it with a warning, so do we
            continue
    return cards


def _bundled_model_names() -> set[str]:
    return {card.name for _, card in _bundled_cards()}


def bundled_cell_package():
    """The bundled cell model made active on a first start: the white-cell differential
    (DEFAULT_CELL_MODEL_DIR) where it is bundled, else the first bundled cell model; or None."""
    cells = [package for package, card in _bundled_cards() if input_kind_of(card) == CELL]
    return next((p for p in cells if p.name == DEFAULT_CELL_MODEL_DIR), cells[0] if cells else None)


def _active_kinds(conn) -> set[str]:
    return set(conn.scalars(select(ModelVersion.input_kind).where(ModelVersion.is_active.is_(True))))


def needs_setup(db: Database) -> bool:
    """True when the schema is not at head, no field model is active yet, no cell model is while
    one is bundled, or a bundled model package is not registered (a new data directory, or an
    update shipping one)."""
    if not db.at_head():
        return True
    with db.engine.connect() as conn:
        kinds = _active_kinds(conn)
        known = set(conn.scalars(select(ModelVersion.name)))
    if FIELD not in kinds or (CELL not in kinds and bundled_cell_package() is not None):
        return True
    return bool(_bundled_model_names() - known)


def clean_temporaries(paths: Paths) -> None:
    """This seat's leftovers of killed model writes (core.models.registry.remove_stale_temporaries)."""
    try:
        for p in remove_stale_temporaries(paths):
            log.info("removed a leftover of an interrupted write: %s", p)
    except OSError as exc:  # never in the way of starting
        log.warning("could not clean temporary model files: %s", exc)


def setup_models(session: Session, paths: Paths) -> ModelVersion:
    """The model registry's part of setup, in the caller's transaction: bundled packages
    registered, older versions shared, one model of each input kind made active when none is.
    Returns the active field version."""
    used_before = session.scalar(select(exists().where(ModelActivation.id.isnot(None))))
    register_bundled(session, paths)
    for name in share_unshared(session):
        log.info("model %s: its files are now in the database, for every seat", name)
    version = active_version(session, FIELD)
    newest_field = session.scalar(select(ModelVersion).where(ModelVersion.input_kind == FIELD)
                                  .order_by(ModelVersion.id.desc()).limit(1))
    if version is None and used_before and newest_field is not None:
        # An upgraded database whose active version became a cell model (migration 0007: the
        # ALL-vs-normal model looks at single cells): classify still needs a field model.
        activate_version(session, newest_field, "setup", "hemascan (upgrade)")
        log.warning("no field model was active (the active model %s looks at single cells): made the newest field "
                    "model, %s, active as well", _name_of(active_version(session, CELL)), newest_field.name)
        version = newest_field
    elif version is None:
        version = register_package(session, paths, bundled_default_package(), activate=True, action="setup",
                                   who="hemascan (first start)")
    cell_package = bundled_cell_package()
    if active_version(session, CELL) is None and cell_package is not None:
        try:
            cell = register_package(session, paths, cell_package, activate=True, action="setup",
                                    who="hemascan (first start)" if not used_before else "hemascan (upgrade)")
            log.info("made the bundled cell model %s active (it classifies the cells found in each field)", cell.name)
        except ModelPackageError as exc:  # checked before anything is written: the field model still is set up
            log.warning("bundled cell model not registered: %s", exc)
    return version


def _name_of(version: ModelVersion | None) -> str:
    return version.name if version is not None else "none"


def register_default_model(db: Database, paths: Paths) -> None:
    """:func:`setup_models` in its own transaction. A package that cannot be registered now
    (damaged, a read-only database, a full disk) is left to the commands that need a model to
    report (scan and export work without one)."""
    try:
        with server_setup_lock(db.engine, db.settings.setup_lock_timeout_s), db.session() as s:
            setup_models(s, paths)
    except (ModelPackageError, SQLAlchemyError, OSError) as exc:
        log.warning("bundled model not registered now: %s", user_error(exc, db.url) or exc)


def setup(db: Database, paths: Paths) -> None:
    """First start or upgrade of ``db`` for the data directory ``paths``: migrations and the
    model registry, under the cross-process locks. Does nothing when nothing is needed."""
    if not needs_setup(db):
        return
    with data_dir_lock(paths):
        db.migrate()
        register_default_model(db, paths)


def share_sqlite_files(url: URL, paths: Paths) -> None:
    """SQLite makes its file readable, not writable, by the group whatever the umask (mode 0644):
    in a data directory shared with a group (core.config.share_with_group) the database and its
    journal files are made group-writable too, so the next user can write (its -wal and -shm
    files take the database's mode). Only the owner can; other users' files are left as they are."""
    if url.get_backend_name() != "sqlite" or not url.database or not share_with_group(paths.data_dir):
        return
    for suffix in ("", "-wal", "-shm", "-journal", MARKER_SUFFIX):
        path = Path(url.database + suffix) if suffix != MARKER_SUFFIX else created_marker(url)
        try:
            if path is not None and path.is_file() and path.stat().st_uid == os.getuid():
                path.chmod(path.stat().st_mode | stat.S_IRGRP | stat.S_IWGRP)
        except OSError:
            pass


def open_database(paths: Paths, url: str | URL | None = None) -> Database:
    """Open (and on first use set up) the database of ``paths``. An existing, set-up database
    takes no lock and is only read on open."""
    clean_temporaries(paths)
    url = to_url(url) if url is not None else paths.db_url()
    db = Database(url, migrate=False, settings=paths.settings)
    db.paths = paths
    db.Session.configure(info={"paths": paths})  # the seat's data directory: where shared models materialise
    try:
        try:
            setup(db, paths)
            mark_created(db.url)
            share_sqlite_files(db.url, paths)
        except HemascanError:
            raise
        except Exception as exc:
            err = user_error(exc, db.url)
            if err is None:
                raise
            raise err from exc
    except BaseException:
        db.dispose()
        raise
    return db
