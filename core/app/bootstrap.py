"""Setup once: what a first start or an upgrade does, in one place.

:func:`open_database` opens the database of a data directory; when it is new or older than this
hemascan (schema not at head, no model active, a bundled model not registered yet) it runs
:func:`setup` under the data directory's file lock and, on PostgreSQL, the server-wide advisory
lock, so several processes (and seats) may start at once. Everything after that only reads:
:func:`core.models.registry.active_version` never registers, shares or cleans anything.

Setup is: migrations; the bundled model packages registered (and shared through the database);
versions registered before schema 0005 shared; the bundled default made active when no version
is. Every start also removes this seat's leftovers of killed model writes (older than any write
takes, so no lock is needed).
"""
from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.config import Paths
from core.errors import HemascanError, ModelPackageError
from core.models.package import bundled_default_package, bundled_packages, read_card
from core.models.registry import active_version, register_bundled, register_package, remove_stale_temporaries
from core.models.store import share_unshared
from core.storage import Database, ModelVersion, data_dir_lock, server_setup_lock, to_url
from core.storage.errors import user_error
from core.storage.fileidentity import mark_created

log = logging.getLogger(__name__)


def _bundled_model_names() -> set[str]:
    names = set()
    for package in bundled_packages():
        try:
            names.add(read_card(package).name)
        except ModelPackageError:  # damaged: registration skips it with a warning, so do we
            continue
    return names


def needs_setup(db: Database) -> bool:
    """True when the schema is not at head, no model version is active yet, or a bundled
    model package is not registered (a new data directory, or an update shipping one)."""
    if not db.at_head():
        return True
    with db.engine.connect() as conn:
        if conn.execute(select(ModelVersion.id).where(ModelVersion.is_active.is_(True)).limit(1)).first() is None:
            return True
        known = set(conn.scalars(select(ModelVersion.name)))
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
    registered, older versions shared, the bundled default made active when none is.
    Returns the active version."""
    register_bundled(session, paths)
    for name in share_unshared(session):
        log.info("model %s: its files are now in the database, for every seat", name)
    version = active_version(session)
    if version is None:
        version = register_package(session, paths, bundled_default_package(), activate=True, action="setup",
                                   who="hemascan (first start)")
    return version


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
