"""cells: the white cells found in each image (with the scale the finder used), their
predictions and their append-only label events; cases (a folder and the lab's name for it);
each model version's input kind (field or cell)

Revision ID: 0007
Revises: 0006

The ALL-vs-normal taxonomy was learnt on single cells: its versions become cell models.
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CELL_TAXONOMIES = ("all_vs_normal",)


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_kind", sa.String(length=8), server_default="field", nullable=False))
    op.execute(sa.text("UPDATE model_versions SET input_kind = 'cell' WHERE taxonomy IN :t")
               .bindparams(sa.bindparam("t", value=list(CELL_TAXONOMIES), expanding=True)))
    op.create_table(
        "cell_searches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("finder", sa.String(length=32), nullable=False),
        sa.Column("um_per_px", sa.Float(), nullable=False),
        sa.Column("scale_source", sa.String(length=16), nullable=False),
        sa.Column("n_red_cells", sa.Integer(), nullable=False),
        sa.Column("n_cells", sa.Integer(), nullable=False),
        sa.Column("single_cell_crop", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "finder", name="uq_cell_search_image_finder"),
    )
    op.create_table(
        "cells",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("finder", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("x0", sa.Integer(), nullable=False),
        sa.Column("y0", sa.Integer(), nullable=False),
        sa.Column("x1", sa.Integer(), nullable=False),
        sa.Column("y1", sa.Integer(), nullable=False),
        sa.Column("contour", sa.JSON(), nullable=False),
        sa.Column("nucleus_contour", sa.JSON(), nullable=True),
        sa.Column("area_px", sa.Integer(), nullable=False),
        sa.Column("um_per_px", sa.Float(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("added_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "finder", "number", name="uq_cell_image_finder_number"),
    )
    op.create_index("ix_cells_image_id", "cells", ["image_id"], unique=False)
    op.create_table(
        "cell_predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("entropy", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("uncertain", sa.Boolean(), nullable=False),
        sa.Column("out_of_distribution", sa.Boolean(), nullable=True),
        sa.Column("guard_distance", sa.Float(), nullable=True),
        sa.Column("runtime", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["cell_id"], ["cells.id"]),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cell_id", "model_version_id", name="uq_cell_prediction_cell_model"),
    )
    op.create_index("ix_cell_predictions_cell_id", "cell_predictions", ["cell_id"], unique=False)
    op.create_index("ix_cell_predictions_model_version_id", "cell_predictions", ["model_version_id"], unique=False)
    op.create_table(
        "cell_label_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=False),
        sa.Column("taxonomy", sa.String(length=32), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("previous_label", sa.String(length=64), nullable=True),
        sa.Column("reviewer", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["cell_id"], ["cells.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_cell_label_events_cell_id_id", "cell_label_events", ["cell_id", "id"], unique=False)
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("root", sa.Text(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("root"),
    )


def downgrade() -> None:
    op.drop_table("cases")
    op.drop_index("ix_cell_label_events_cell_id_id", table_name="cell_label_events")
    op.drop_table("cell_label_events")
    op.drop_index("ix_cell_predictions_model_version_id", table_name="cell_predictions")
    op.drop_index("ix_cell_predictions_cell_id", table_name="cell_predictions")
    op.drop_table("cell_predictions")
    op.drop_index("ix_cells_image_id", table_name="cells")
    op.drop_table("cells")
    op.drop_table("cell_searches")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("input_kind")
