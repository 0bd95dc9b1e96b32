"""predictions record the foreign-image guard's verdict: outside the model's experience

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("out_of_distribution", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("guard_distance", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("guard_distance")
        batch_op.drop_column("out_of_distribution")
