"""the image kind a submitted folder was declared with (``submit --images``): the workers find
each image's cells as the lab said its images are (fields, single-cell crops, or auto)

Revision ID: 0010
Revises: 0009

One nullable column (NULL: not said, as every folder submitted before): plain ADD COLUMN.
"""
from alembic import op
import sqlalchemy as sa

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("work_folders", sa.Column("image_kind", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("work_folders") as batch:
        batch.drop_column("image_kind")
