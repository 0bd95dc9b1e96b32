"""identities and release: the database login with every label event, activation and release;
a display name per login; release events (a supervisor's release of a case, with the SHA-256
of the PDF and of the case's label state); an amendment's reason and the prediction the
reviewer was shown, with each label event

Revision ID: 0009
Revises: 0007 (relinked to 0008 at merge)

New columns and tables only (plain ADD COLUMN: no table is rebuilt, so triggers others put
on these tables stay). On PostgreSQL two row checks that privileges cannot say:
- ``aa_login_is_session_user``: an event's ``login`` is the session's login (filled in when
  left empty, refused when it names another), so no seat can write under someone else's name.
  Named to fire first (triggers of one event fire in name order).
- ``ab_released_case_needs_amendment``: a label on an image or cell of a released case needs
  an amendment reason, and only a supervisor may amend.
"""
from alembic import op
import sqlalchemy as sa

from core.storage.audit import protect_table

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

LOGIN_TABLES = ("label_events", "cell_label_events", "model_activations", "release_events")
LABEL_TABLES = ("label_events", "cell_label_events")

PG_LOGIN_FUNCTION = """
CREATE OR REPLACE FUNCTION hemascan_login_is_session_user() RETURNS trigger AS $$
BEGIN
    IF NEW.login IS NULL THEN
        NEW.login := session_user;
    ELSIF NEW.login <> session_user THEN
        RAISE EXCEPTION 'this login (%) may not record an event as %', session_user, NEW.login
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql
"""

# A released case: a release event whose case folder (a stored-path prefix) holds the image.
PG_RELEASE_FUNCTION = """
CREATE OR REPLACE FUNCTION hemascan_released_case_needs_amendment() RETURNS trigger AS $$
DECLARE
    target_image integer;
    is_released boolean;
BEGIN
    IF TG_TABLE_NAME = 'cell_label_events' THEN
        SELECT image_id INTO target_image FROM cells WHERE id = NEW.cell_id;
    ELSE
        target_image := NEW.image_id;
    END IF;
    SELECT EXISTS (SELECT 1 FROM release_events r JOIN files f ON left(f.path, length(r.case_root)) = r.case_root
                   WHERE f.image_id = target_image) INTO is_released;
    IF NOT is_released THEN
        RETURN NEW;
    END IF;
    IF NEW.amend_reason IS NULL OR btrim(NEW.amend_reason) = '' THEN
        RAISE EXCEPTION 'this case has been released: a change is an amendment and needs a reason'
            USING ERRCODE = '42501';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hemascan_supervisor')
       AND NOT pg_has_role(session_user, 'hemascan_supervisor', 'MEMBER')
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        RAISE EXCEPTION 'only a supervisor (hemascan_supervisor) may amend a released case'
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql
-- the owner's rights: the check reads files and cells whatever the writing login may read (it
-- judges session_user, which SECURITY DEFINER does not change); a fixed search path
SECURITY DEFINER SET search_path = public, pg_temp
"""

# Only a supervisor makes a version active: an activation's row is the supervisor's privilege
# (INSERT on model_activations), and this closes the way around it (a new version inserted
# already active, which the INSERT a reviewer has on model_versions would otherwise allow).
PG_ACTIVE_FUNCTION = """
CREATE OR REPLACE FUNCTION hemascan_only_supervisors_activate() RETURNS trigger AS $$
BEGIN
    IF NEW.is_active
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hemascan_supervisor')
       AND NOT pg_has_role(session_user, 'hemascan_supervisor', 'MEMBER')
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        RAISE EXCEPTION 'only a supervisor (hemascan_supervisor) may make a model version active'
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "logins",
        sa.Column("login", sa.String(length=128), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("login"),
    )
    op.create_table(
        "release_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_root", sa.Text(), nullable=False),
        sa.Column("case_name", sa.String(length=200), nullable=False),
        sa.Column("login", sa.String(length=128), nullable=True),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pdf_sha256", sa.String(length=64), nullable=False),
        sa.Column("labels_sha256", sa.String(length=64), nullable=False),
        # the audit chain (core/storage/audit.py, migration 0008): release events are audit events
        sa.Column("chain_seq", sa.BigInteger(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("event_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_release_events_case_root", "release_events", ["case_root"], unique=False)
    for table in LABEL_TABLES:  # plain ADD COLUMN (no batch rebuild: other migrations' triggers stay)
        op.add_column(table, sa.Column("login", sa.String(length=128), nullable=True))
        op.add_column(table, sa.Column("shown_label", sa.String(length=64), nullable=True))
        op.add_column(table, sa.Column("shown_model_version_id", sa.Integer(), nullable=True))
        op.add_column(table, sa.Column("amend_reason", sa.Text(), nullable=True))
    op.add_column("model_activations", sa.Column("login", sa.String(length=128), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_LOGIN_FUNCTION)
        op.execute(PG_RELEASE_FUNCTION)
        for table in LOGIN_TABLES:
            op.execute(f"CREATE TRIGGER aa_login_is_session_user BEFORE INSERT ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION hemascan_login_is_session_user()")
        for table in LABEL_TABLES:
            op.execute(f"CREATE TRIGGER ab_released_case_needs_amendment BEFORE INSERT ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION hemascan_released_case_needs_amendment()")
        op.execute(PG_ACTIVE_FUNCTION)
        op.execute("CREATE TRIGGER ab_only_supervisors_activate BEFORE INSERT ON model_versions "
                   "FOR EACH ROW EXECUTE FUNCTION hemascan_only_supervisors_activate()")
    # append-only and chained like every audit table, on both engines (SQLite: one user, the same rules)
    protect_table(op.get_bind(), "release_events")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in LABEL_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS ab_released_case_needs_amendment ON {table}")
        for table in LOGIN_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS aa_login_is_session_user ON {table}")
        op.execute("DROP TRIGGER IF EXISTS ab_only_supervisors_activate ON model_versions")
        op.execute("DROP FUNCTION IF EXISTS hemascan_only_supervisors_activate()")
        op.execute("DROP FUNCTION IF EXISTS hemascan_released_case_needs_amendment()")
        op.execute("DROP FUNCTION IF EXISTS hemascan_login_is_session_user()")
    op.drop_column("model_activations", "login")
    for table in LABEL_TABLES:
        for column in ("amend_reason", "shown_model_version_id", "shown_label", "login"):
            op.drop_column(table, column)
    op.drop_index("ix_release_events_case_root", table_name="release_events")
    op.drop_table("release_events")
    op.drop_table("logins")
