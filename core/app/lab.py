"""``hemascan lab setup-roles``: the PostgreSQL roles of a lab and what each may do.

hemascan_reviewer (classify, label, export), hemascan_supervisor (also activate, promote and
roll back models, release and amend cases), hemascan_admin (migrations, roles: the owner of the
tables, which runs the upgrades). Each technologist logs in with a login of their own, member
of one role: ``CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE hemascan_reviewer``.

What the privileges cannot say, the database checks row by row (migration 0009): an event's
login is the session's; a label on a released case is an amendment, with a reason, by a
supervisor; a login sets only its own display name (a row-level policy on ``logins``)."""
from __future__ import annotations

import argparse

from sqlalchemy import text

from core.app.command import App, command
from core.errors import HemascanError
from core.storage.audit import HEAD_TABLE, SUPERVISOR_ONLY
from core.storage.identity import ADMIN, REVIEWER, SUPERVISOR
from core.storage.orm import Base

#: Append-only for everyone: read and add, never change (the audit's tables).
APPEND_ONLY = ("label_events", "cell_label_events")
#: Only a supervisor adds to these (a reviewer reads them).
SUPERVISOR_ADDS = SUPERVISOR_ONLY
#: The audit chain's head: every audit write moves it; nobody adds or removes its one row.
CHAIN_HEAD = (HEAD_TABLE,)
#: Model versions and their files: a reviewer may add one (a retrain's candidate), only a
#: supervisor changes one (is_active follows an activation).
MODEL_TABLES = ("model_versions", "model_files", "model_blobs")
READ_ONLY = ("alembic_version",)
OWN_ROW = ("logins",)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def roles_sql(database: str, tables: list[str] | None = None) -> list[str]:
    """The statements, in order; safe to run again (after an upgrade adds tables: run it again)."""
    tables = sorted(tables if tables is not None else Base.metadata.tables)
    special = set(APPEND_ONLY) | set(SUPERVISOR_ADDS) | set(MODEL_TABLES) | set(READ_ONLY) | set(OWN_ROW) | set(CHAIN_HEAD)
    working = [t for t in tables if t not in special]

    def listed(names) -> str:
        return ", ".join(_quote(t) for t in names if t in tables or t in READ_ONLY)

    create = "".join(
        f"  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}') THEN CREATE ROLE {r} NOLOGIN; END IF;\n"
        for r in (REVIEWER, SUPERVISOR, ADMIN))
    out = [
        f"DO $$\nBEGIN\n{create}END\n$$",
        f"GRANT {REVIEWER} TO {SUPERVISOR}",
        f"GRANT {SUPERVISOR} TO {ADMIN}",
        f"GRANT CONNECT ON DATABASE {_quote(database)} TO {REVIEWER}",
        f"GRANT USAGE ON SCHEMA public TO {REVIEWER}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {REVIEWER}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {listed(working)} TO {REVIEWER}",
        f"GRANT SELECT, INSERT ON {listed(APPEND_ONLY)} TO {REVIEWER}",
        f"GRANT SELECT ON {listed(SUPERVISOR_ADDS + READ_ONLY)} TO {REVIEWER}",
        # a migration run before the roles were set up may have granted more: take it back
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {listed(SUPERVISOR_ADDS + APPEND_ONLY)} FROM {REVIEWER}",
        f"GRANT SELECT, INSERT ON {listed(APPEND_ONLY)} TO {REVIEWER}",
        f"GRANT SELECT, UPDATE ON {listed(CHAIN_HEAD)} TO {REVIEWER}",
        f"REVOKE INSERT, DELETE, TRUNCATE ON {listed(CHAIN_HEAD)} FROM {REVIEWER}",
        f"GRANT SELECT, INSERT ON {listed(MODEL_TABLES)} TO {REVIEWER}",
        f"GRANT INSERT ON {listed(SUPERVISOR_ADDS)} TO {SUPERVISOR}",
        f"GRANT UPDATE ON {listed(MODEL_TABLES)} TO {SUPERVISOR}",
        f"GRANT SELECT, INSERT, UPDATE ON {listed(OWN_ROW)} TO {REVIEWER}",
        "ALTER TABLE logins ENABLE ROW LEVEL SECURITY",
        "DROP POLICY IF EXISTS logins_read ON logins",
        "CREATE POLICY logins_read ON logins FOR SELECT USING (true)",
        "DROP POLICY IF EXISTS logins_own_insert ON logins",
        "CREATE POLICY logins_own_insert ON logins FOR INSERT WITH CHECK (login = session_user)",
        "DROP POLICY IF EXISTS logins_own_update ON logins",
        "CREATE POLICY logins_own_update ON logins FOR UPDATE USING (login = session_user) "
        "WITH CHECK (login = session_user)",
    ]
    return out


def _lab_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", help="setup-roles: the SQL of the lab's roles")
    s = sub.add_parser("setup-roles", help="print the SQL that sets up the lab's roles on PostgreSQL "
                                           "(or run it with --apply, as the connecting administrator)")
    s.add_argument("--apply", action="store_true", help="run it now on --db-url's database")


@command("lab", "the lab's PostgreSQL roles: reviewer, supervisor, admin (setup-roles)", _lab_args)
def cmd_lab(args, app: App) -> int:
    if getattr(args, "action", None) != "setup-roles":
        raise HemascanError("say what to do: hemascan lab setup-roles [--apply]")
    url = app.db.url
    if url.get_backend_name() != "postgresql":
        raise HemascanError("roles are for a lab's PostgreSQL server (--db-url postgresql+psycopg://...); "
                            "a SQLite database is one workstation's, with one user")
    statements = roles_sql(url.database or "postgres", app.db.table_names())
    if not args.apply:
        for statement in statements:
            app.echo(statement + ";")
        app.echo("-- then one login per person, e.g.:")
        app.echo(f"-- CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE {REVIEWER};")
        app.echo(f"-- CREATE ROLE bob LOGIN PASSWORD '...' IN ROLE {SUPERVISOR};")
        return 0
    with app.db.session() as s:
        for statement in statements:
            s.execute(text(statement))
    app.echo(f"the roles {REVIEWER}, {SUPERVISOR} and {ADMIN} are set up on {app.db.describe()}")
    return 0
