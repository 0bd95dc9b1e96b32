"""predictions and cell predictions record why one is outside the model's experience when the
reason is not the guard's distance: ``colour`` (core/imaging/stain.py: its colours are unlike
any stained smear); NULL: not flagged, or flagged by the guard's distance (every row before)

Revision ID: 0011
Revises: 0010

One nullable column per table: plain ADD COLUMN.
"""
from alembic import op
import sqlalchemy as sa

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("outside_reason", sa.String(length=16), nullable=True))
    op.add_column("cell_predictions", sa.Column("outside_reason", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cell_predictions", schema=None) as batch_op:
        batch_op.drop_column("outside_reason")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("outside_reason")
