"""Alembic environment.

hemascan hands in a connection already inside one transaction (core.storage.upgrade, at every
start): on SQLite that transaction covers the DDL too (core.storage.migration_transaction), so an
upgrade is all or nothing. Run by hand (``alembic`` with a config holding sqlalchemy.url),
the same transactional connection is made here.
"""
from alembic import context

from core.storage import make_engine, migration_transaction
from core.storage.orm import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    # transactional_ddl: every migration and the version table update share the caller's
    # transaction (Alembic assumes SQLite cannot, and would otherwise not wrap them).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with migration_transaction(engine) as conn:
            _run(conn)
    finally:
        engine.dispose()


run_migrations()
