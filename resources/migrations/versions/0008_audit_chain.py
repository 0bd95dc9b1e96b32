"""the audit record: append-only in the database, and one hash chain; a model version is its content

Revision ID: 0008
Revises: 0007

Every audit table (core.storage.audit.AUDIT_TABLES: label_events, cell_label_events,
model_activations) gets ``chain_seq``, ``prev_hash`` and ``event_hash`` (a trigger refuses a row
without them); the rows already
there are chained tables in registry order, each in id order; the head goes into
``audit_chain_head``; then the tables are made append-only (triggers; on PostgreSQL also
privileges for the application roles that exist). ``model_versions.package_sha256`` is filled
from each version's recorded files (left NULL for a version whose files were never recorded)
and becomes immutable; ``model_files`` becomes append-only. All in the migration's one
transaction: a kill leaves 0007.
"""
from alembic import op
import sqlalchemy as sa

from core.storage.audit import (
    AUDIT_TABLES,
    GENESIS,
    HEAD_TABLE,
    PG_INSERT_FUNCTION,
    PG_TRIGGER_FUNCTION,
    package_digest,
    protect_table,
    protect_version_identity,
    rechain,
    unprotect_table,
    unprotect_version_identity,
)

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# the audit tables as of this revision (a table registered later is chained by its own migration)
TABLES_0008 = ("label_events", "cell_label_events", "model_activations")
assert set(TABLES_0008) <= set(AUDIT_TABLES)


def upgrade() -> None:
    conn = op.get_bind()
    head = op.create_table(
        HEAD_TABLE,
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "event_hash": GENESIS}])
    for table in TABLES_0008:  # (plain ADD COLUMN: no table rebuild on SQLite)
        op.add_column(table, sa.Column("chain_seq", sa.BigInteger(), nullable=True))
        op.add_column(table, sa.Column("prev_hash", sa.String(length=64), nullable=True))
        op.add_column(table, sa.Column("event_hash", sa.String(length=64), nullable=True))
    rechain(conn, TABLES_0008)
    for table in TABLES_0008:  # then append-only, and a row without its chain refused
        protect_table(conn, table)

    op.add_column("model_versions", sa.Column("package_sha256", sa.String(length=64), nullable=True))
    files: dict[int, dict[str, str]] = {}
    for vid, name, sha in conn.execute(sa.text("SELECT model_version_id, name, sha256 FROM model_files")):
        files.setdefault(vid, {})[name] = sha
    for vid, recorded in files.items():
        conn.execute(sa.text("UPDATE model_versions SET package_sha256 = :d WHERE id = :i"),
                     {"d": package_digest(recorded), "i": vid})
    protect_version_identity(conn)


def downgrade() -> None:
    conn = op.get_bind()
    unprotect_version_identity(conn)
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("package_sha256")
    for table in TABLES_0008:
        unprotect_table(conn, table)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("event_hash")
            batch_op.drop_column("prev_hash")
            batch_op.drop_column("chain_seq")
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {PG_TRIGGER_FUNCTION}()")
        conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {PG_INSERT_FUNCTION}()")
    op.drop_table(HEAD_TABLE)
