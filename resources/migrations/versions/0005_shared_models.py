"""shared models: package files in the database (content-addressed), and the activation log
as an append-only table

Revision ID: 0005
Revises: 0004

The activation log used to be a JSON list in ``settings`` (key ``model_activations``); its
entries become rows of ``model_activations`` (entries naming a version this database does
not know are dropped), then the settings key is removed. When the log does not end at the
active version (a database whose first activation was never logged), a row records it.
"""
import json

from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LEGACY_KEY = "model_activations"


def upgrade() -> None:
    op.create_table(
        "model_blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "model_files",
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("model_version_id", "name"),
    )
    with op.batch_alter_table("model_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_files_sha256"), ["sha256"], unique=False)
    activations = op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("previous_version_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("activated_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.ForeignKeyConstraint(["previous_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )

    conn = op.get_bind()
    from datetime import datetime, timezone

    ids = {name: i for i, name in conn.execute(sa.text("SELECT id, name FROM model_versions"))}
    raw = conn.execute(sa.text("SELECT value FROM settings WHERE key = :k"), {"k": LEGACY_KEY}).scalar()
    try:
        legacy = json.loads(raw) if raw else []
    except ValueError:
        legacy = []
    rows = []
    for e in legacy if isinstance(legacy, list) else []:
        if not isinstance(e, dict) or e.get("name") not in ids:
            continue
        try:
            at = datetime.fromisoformat(str(e.get("at")))
        except ValueError:
            at = datetime.now(timezone.utc)
        rows.append({"model_version_id": ids[e["name"]], "previous_version_id": ids.get(e.get("previous")),
                     "action": str(e.get("action") or "activate")[:16], "activated_by": str(e.get("by") or "unknown")[:128],
                     "created_at": at if at.tzinfo else at.replace(tzinfo=timezone.utc)})
    active = conn.execute(sa.text("SELECT id FROM model_versions WHERE is_active ORDER BY id DESC")).scalar()
    if active is not None and (not rows or rows[-1]["model_version_id"] != active):
        rows.append({"model_version_id": active, "previous_version_id": rows[-1]["model_version_id"] if rows else None,
                     "action": "setup", "activated_by": "hemascan (schema 0005)", "created_at": datetime.now(timezone.utc)})
    if rows:
        op.bulk_insert(activations, rows)
    conn.execute(sa.text("DELETE FROM settings WHERE key = :k"), {"k": LEGACY_KEY})


def downgrade() -> None:
    op.drop_table("model_activations")
    with op.batch_alter_table("model_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_files_sha256"))
    op.drop_table("model_files")
    op.drop_table("model_blobs")
