"""The audit record: append-only tables enforced by the database, and one hash chain over them.

**Append-only.** The tables in :data:`AUDIT_TABLES` are never updated or deleted: a migration
calls :func:`protect_table` for each (SQLite: ``BEFORE UPDATE``/``BEFORE DELETE`` triggers
that abort; PostgreSQL: a trigger that raises, also on ``TRUNCATE``, and privileges: the
application roles get ``SELECT, INSERT`` and no ``UPDATE, DELETE, TRUNCATE``). A migration
that truly must rewrite one does it inside :func:`rewriting_audit_table`, as the owner, in its
own transaction. A table added later joins with one line in :data:`AUDIT_TABLES`, the
:class:`~core.storage.orm.AuditChained` mixin on its model, and ``protect_table`` in its
migration.

**Hash chain.** Every row of every audit table carries ``chain_seq`` (its place in the one
chain of this database), ``prev_hash`` (the previous event's ``event_hash``) and
``event_hash``: SHA-256 over :func:`canonical` of the row (its table's name and ALL its
columns but ``event_hash``, NULLs left out, so a nullable column added later keeps older
rows' hashes). :func:`chain_new_events` runs before every ORM flush (no writer can forget: a
``BEFORE INSERT`` trigger refuses a row without its chain, so an insert that bypasses it fails), takes the chain's head row
under the database's write lock (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite an
``UPDATE`` of the head first, which takes the database's write lock), gives each new event
its id, place and hashes, and moves the head, all in the event's own transaction: two seats
writing at once queue on the head, so the chain never forks. :func:`verify_chain` walks it.

The serialisation (:func:`canonical`) is part of the stored record: never change it.
"""
from __future__ import annotations

import hashlib
import heapq
import re
import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Iterable, Iterator

from sqlalchemy import Column, MetaData, Table, event, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType

from core.storage.orm import Base

#: THE registry of append-only, hash-chained tables (a table added later: one line here).
AUDIT_TABLES: tuple[str, ...] = ("label_events", "cell_label_events", "model_activations", "release_events")
#: The chain's own columns on every audit table.
CHAIN_COLUMNS = ("chain_seq", "prev_hash", "event_hash")
HEAD_TABLE = "audit_chain_head"
GENESIS = "0" * 64  # the prev_hash of the first event
#: PostgreSQL roles a seat connects as (issue 24's roles): SELECT and INSERT on audit tables, never more.
APPLICATION_ROLES = ("hemascan_reviewer", "hemascan_supervisor")
PG_TRIGGER_FUNCTION = "hemascan_audit_append_only"
PG_INSERT_FUNCTION = "hemascan_audit_chained_only"
TRIGGER = "hemascan_append_only"

REFUSAL = "{table} is part of the audit record: its rows can be added, never changed or removed"


# ---- the hash ------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A column value as the same JSON value on both engines, as written and as read back."""
    if isinstance(value, datetime):
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return value.replace(tzinfo=None).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def canonical(table: str, row: dict[str, Any]) -> bytes:
    """The bytes an event's hash is taken over: its table and every column but ``event_hash``
    (``prev_hash`` and ``chain_seq`` among them), NULLs left out, as sorted compact JSON."""
    content = {k: _plain(v) for k, v in row.items() if k != "event_hash" and v is not None}
    return json.dumps({"table": table, "row": content}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


def event_hash(table: str, row: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(table, row)).hexdigest()


# ---- writing: one hook for every ORM writer --------------------------------------------------

def _lock_head(conn: Connection) -> tuple[int, str]:
    """The chain's head (seq, hash), locked until the transaction ends."""
    if conn.dialect.name == "postgresql":
        row = conn.execute(text(f"SELECT seq, event_hash FROM {HEAD_TABLE} WHERE id = 1 FOR UPDATE")).one_or_none()
    else:  # an UPDATE first: SQLite's write lock before the head is read, so no other writer moved it since
        conn.execute(text(f"UPDATE {HEAD_TABLE} SET seq = seq WHERE id = 1"))
        row = conn.execute(text(f"SELECT seq, event_hash FROM {HEAD_TABLE} WHERE id = 1")).one_or_none()
    if row is None:
        raise RuntimeError(f"the database has no {HEAD_TABLE} row (schema older than 0008?)")
    return int(row[0]), str(row[1])


def _column_default(column) -> Any:
    default = column.default
    if default is None or not getattr(default, "is_scalar", False) and not getattr(default, "is_callable", False):
        return None
    return default.arg(None) if default.is_callable else default.arg


def chain_new_events(session: Session, flush_context=None, instances=None) -> None:
    """``before_flush``: chain the session's new audit rows (ids, places and hashes given here,
    under the head's lock, so ids follow the chain and no two seats take the same place)."""
    new = [o for o in session.new if getattr(o, "__tablename__", None) in AUDIT_TABLES]
    if not new:
        return
    conn = session.connection()
    # PostgreSQL records the database login (migration 0009's trigger fills an empty one with
    # session_user): fill it here, before the hash is taken, or the row would not verify
    if conn.dialect.name == "postgresql" and any(
            "login" in o.__table__.c and getattr(o, "login", None) is None for o in new):
        session_login = conn.execute(text("SELECT session_user")).scalar()
        for o in new:
            if "login" in o.__table__.c and getattr(o, "login", None) is None:
                o.login = session_login
    seq, prev = _lock_head(conn)
    next_id: dict[str, int] = {}
    for obj in new:
        table: Table = obj.__table__
        name = table.name
        if name not in next_id:
            next_id[name] = int(conn.execute(select(table.c.id).order_by(table.c.id.desc()).limit(1)).scalar() or 0)
        row = {}
        for column in table.columns:
            key = column.key
            if column.name == "event_hash":
                continue
            value = getattr(obj, key, None)
            if value is None and key not in CHAIN_COLUMNS and key != "id":
                value = _column_default(column)
            if isinstance(value, datetime):  # stored as UTC on both engines (SQLite drops the zone)
                value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
            if value is not None:
                setattr(obj, key, value)
            row[column.name] = value
        next_id[name] += 1
        seq += 1
        row.update(id=next_id[name], chain_seq=seq, prev_hash=prev)
        obj.id, obj.chain_seq, obj.prev_hash = next_id[name], seq, prev
        prev = obj.event_hash = event_hash(name, row)
    conn.execute(text(f"UPDATE {HEAD_TABLE} SET seq = :s, event_hash = :h WHERE id = 1"), {"s": seq, "h": prev})


event.listen(Session, "before_flush", chain_new_events)


# ---- the database's rules (migrations) -------------------------------------------------------

UNCHAINED = "{table} is part of the audit record: a row must be added through hemascan, which chains it"


def protect_table(conn: Connection, table: str, chained: bool = True) -> None:
    """Make ``table`` append-only in the database (idempotent; a migration calls it as the owner).
    ``chained``: its rows carry the hash chain, and a row without it is refused."""
    refusal = REFUSAL.format(table=table)
    if conn.dialect.name == "sqlite":
        for what in ("UPDATE", "DELETE"):  # (IF NOT EXISTS: each statement counts in the migrations' kill test)
            conn.exec_driver_sql(f"CREATE TRIGGER IF NOT EXISTS {TRIGGER}_{what.lower()}_{table} BEFORE {what} ON {table} "
                                 f"BEGIN SELECT RAISE(ABORT, '{refusal}'); END")
        if chained:
            conn.exec_driver_sql(f"CREATE TRIGGER IF NOT EXISTS {TRIGGER}_insert_{table} BEFORE INSERT ON {table} "
                                 "WHEN NEW.chain_seq IS NULL OR NEW.prev_hash IS NULL OR NEW.event_hash IS NULL "
                                 f"BEGIN SELECT RAISE(ABORT, '{UNCHAINED.format(table=table)}'); END")
        return
    if conn.dialect.name != "postgresql":
        raise NotImplementedError(f"append-only tables on {conn.dialect.name}")
    conn.execute(text(  # text(): it escapes the % of RAISE's format for the driver
        f"CREATE OR REPLACE FUNCTION {PG_TRIGGER_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"RAISE EXCEPTION '% is part of the audit record: its rows can be added, never changed or removed', "
        f"TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege'; END $$"))
    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}")
    conn.exec_driver_sql(f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE OR DELETE ON {table} "
                         f"FOR EACH ROW EXECUTE FUNCTION {PG_TRIGGER_FUNCTION}()")
    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {TRIGGER}_truncate ON {table}")
    conn.exec_driver_sql(f"CREATE TRIGGER {TRIGGER}_truncate BEFORE TRUNCATE ON {table} "
                         f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_TRIGGER_FUNCTION}()")
    if chained:
        conn.execute(text(
            f"CREATE OR REPLACE FUNCTION {PG_INSERT_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.chain_seq IS NULL OR NEW.prev_hash IS NULL OR NEW.event_hash IS NULL THEN "
            "RAISE EXCEPTION '% is part of the audit record: a row must be added through hemascan, which chains it', "
            "TG_TABLE_NAME USING ERRCODE = 'not_null_violation'; END IF; RETURN NEW; END $$"))
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {TRIGGER}_insert ON {table}")
        conn.exec_driver_sql(f"CREATE TRIGGER {TRIGGER}_insert BEFORE INSERT ON {table} "
                             f"FOR EACH ROW EXECUTE FUNCTION {PG_INSERT_FUNCTION}()")
    conn.exec_driver_sql(f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM PUBLIC")
    for role in existing_roles(conn, APPLICATION_ROLES):
        conn.exec_driver_sql(application_grants_sql(table, role))


def existing_roles(conn: Connection, roles: Iterable[str]) -> list[str]:
    wanted = list(roles)
    return list(conn.execute(text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:r) ORDER BY rolname"),
                             {"r": wanted}).scalars())


#: Audit tables only a supervisor adds to (activating a model, releasing a case); a reviewer reads them.
SUPERVISOR_ONLY: tuple[str, ...] = ("model_activations", "release_events")


def application_grants_sql(table: str, role: str) -> str:
    """PostgreSQL: what an application role may do with an audit table (``lab setup-roles`` and
    the migrations): read it, add to it (a reviewer not to :data:`SUPERVISOR_ONLY` tables), never
    change it; move the chain's head (every audit write does)."""
    adds = role != "hemascan_reviewer" or table not in SUPERVISOR_ONLY
    grant = f"GRANT SELECT, INSERT ON {table} TO {role}" if adds else \
        f"GRANT SELECT ON {table} TO {role}; REVOKE INSERT ON {table} FROM {role}"
    return (f"{grant}; REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {role}; "
            f"GRANT SELECT, UPDATE ON {HEAD_TABLE} TO {role}; REVOKE INSERT, DELETE, TRUNCATE ON {HEAD_TABLE} FROM {role}")


def unprotect_table(conn: Connection, table: str) -> None:
    """Remove the table's append-only triggers (a downgrade; :func:`rewriting_audit_table`)."""
    if conn.dialect.name == "sqlite":
        for what in ("update", "delete", "insert"):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {TRIGGER}_{what}_{table}")
        return
    for suffix in ("", "_truncate", "_insert"):
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {TRIGGER}{suffix} ON {table}")


@contextmanager
def rewriting_audit_table(conn: Connection, table: str) -> Iterator[None]:
    """For a migration that must rewrite an audit table (run by the owner, on the migration's
    connection: ``core.storage.migration_transaction``, on SQLite the only transaction that covers
    DDL; pysqlite's own would commit the lifted triggers at once): the triggers are lifted for the block and put back after it; a kill in
    between rolls all of it back. Rewritten rows no longer match their hashes: call
    :func:`rechain` inside the block, with every audit table lifted (it rewrites all their rows),
    and say so in the migration's docstring: a re-chained record proves nothing about before."""
    unprotect_table(conn, table)
    yield
    protect_table(conn, table)


def rechain(conn: Connection, tables: Iterable[str] = AUDIT_TABLES) -> int:
    """Give every row of ``tables`` its place and hashes anew: tables in registry order, each
    in id order (migration 0008 for the rows written before the chain). Returns the events."""
    seq, prev = 0, GENESIS
    for name in tables:
        table = _as_stored(conn, name)
        for row in conn.execute(select(table).order_by(table.c.id)).mappings().all():
            seq += 1
            values = dict(row)
            values.update(chain_seq=seq, prev_hash=prev)
            prev = event_hash(name, values)
            conn.execute(table.update().where(table.c.id == row["id"])
                         .values(chain_seq=seq, prev_hash=values["prev_hash"], event_hash=prev))
    conn.execute(text(f"UPDATE {HEAD_TABLE} SET seq = :s, event_hash = :h WHERE id = 1"), {"s": seq, "h": prev})
    return seq


def _as_stored(conn: Connection, name: str) -> Table:
    """``name`` with the columns the database has now (a migration runs before later columns
    exist), typed as the ORM types them (so values read back as they are hashed on insert)."""
    model = Base.metadata.tables.get(name)
    names = list(conn.execute(text(f"SELECT * FROM {name} WHERE 1 = 0")).keys())
    return Table(name, MetaData(), *(Column(n, model.c[n].type if model is not None and n in model.c else NullType(),
                                            primary_key=(n == "id")) for n in names))


# ---- verifying ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_chain` found: ``events`` checked; ``table``/``event_id``/``problem``
    of the first event that does not match (None when the chain is whole)."""

    events: int
    table: str | None = None
    event_id: int | None = None
    problem: str | None = None

    @property
    def whole(self) -> bool:
        return self.problem is None

    def sentence(self) -> str:
        if self.whole:
            return f"the audit record is whole: {self.events} events, each matching its hash and the one before it"
        where = f"{self.table} #{self.event_id}" if self.table else "the chain's head"
        return f"the audit record does not verify at {where}: {self.problem}"


def _rows(session: Session, table: Table) -> Iterator[tuple[int, str, dict]]:
    for row in session.execute(select(table).order_by(table.c.chain_seq, table.c.id)
                               .execution_options(yield_per=2000)).mappings():
        yield (row["chain_seq"] if row["chain_seq"] is not None else -1, table.name, dict(row))


@dataclass(frozen=True)
class ChainAnchor:
    """An event's place and hash written down outside the database (a case report prints the
    head as ``SEQ:SHA256``): the chain must still hold that event with that hash. Without it,
    whoever may rewrite the head row can remove the newest events unseen."""

    seq: int
    event_hash: str  # the whole hash, or a prefix of at least ANCHOR_MIN_HEX hex digits

    def text(self) -> str:
        return f"{self.seq}:{self.event_hash}"


ANCHOR_MIN_HEX = 16
_ANCHOR = re.compile(rf"^\s*(\d+)\s*:\s*([0-9a-fA-F]{{{ANCHOR_MIN_HEX},64}})\s*$")


def parse_anchor(value: str) -> ChainAnchor:
    """``SEQ:HASH`` as a report prints it; ValueError with one sentence otherwise."""
    m = _ANCHOR.match(value or "")
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"{value!r} is not an audit anchor: write it as a report prints it, the event's number, a "
                         f"colon and at least {ANCHOR_MIN_HEX} hex digits of its SHA-256 (e.g. 1234:9f86d081884c7d65)")
    return ChainAnchor(int(m.group(1)), m.group(2).lower())


def chain_head(session: Session) -> ChainAnchor | None:
    """The newest event's place and hash (None before the first event), as a report prints it."""
    head = session.execute(text(f"SELECT seq, event_hash FROM {HEAD_TABLE} WHERE id = 1")).one_or_none()
    if head is None or int(head[0]) < 1:
        return None
    return ChainAnchor(int(head[0]), str(head[1]))


def verify_chain(session: Session, tables: Iterable[Table] | None = None,
                 anchors: Iterable[ChainAnchor] = ()) -> ChainReport:
    """Walk the chain in order: every event's place follows the one before, its ``prev_hash``
    is that event's hash, its columns hash to its ``event_hash``, and the head names the last;
    each anchor (written down elsewhere) still names an event of the chain with its hash."""
    tables = list(tables) if tables is not None else [Base.metadata.tables[n] for n in AUDIT_TABLES]
    wanted = {a.seq: a for a in anchors}
    expected_seq, prev, n = 1, GENESIS, 0
    for seq, name, row in heapq.merge(*(_rows(session, t) for t in tables), key=lambda r: (r[0], r[1])):
        rid = row.get("id")
        anchor = wanted.pop(seq, None) if seq == expected_seq else None
        if anchor is not None and not str(row.get("event_hash") or "").startswith(anchor.event_hash):
            return ChainReport(n, name, rid, f"it no longer has the hash written down for event {seq} "
                               f"({anchor.event_hash[:ANCHOR_MIN_HEX]}…): the record was rewritten from there on")
        if seq < 0 or row.get("event_hash") is None:
            return ChainReport(n, name, rid, "it has no place in the chain (written around hemascan)")
        if seq < expected_seq:
            return ChainReport(n, name, rid, f"another event already holds its place ({seq}) in the chain")
        if seq > expected_seq:
            missing = f"event {expected_seq}" if seq == expected_seq + 1 else f"events {expected_seq} to {seq - 1}"
            return ChainReport(n, name, rid, f"{missing} of the chain, just before it, was removed")
        if row["prev_hash"] != prev:
            return ChainReport(n, name, rid, "its link to the event before it does not match (that event was "
                               "changed or replaced)")
        if event_hash(name, row) != row["event_hash"]:
            return ChainReport(n, name, rid, "its stored columns no longer match its hash (it was changed after "
                               "it was written)")
        prev, expected_seq, n = row["event_hash"], expected_seq + 1, n + 1
    head = session.execute(text(f"SELECT seq, event_hash FROM {HEAD_TABLE} WHERE id = 1")).one_or_none()
    if head is None:
        return ChainReport(n, None, None, "the chain's head row is missing")
    if int(head[0]) != n or head[1] != prev:
        if int(head[0]) > n:
            return ChainReport(n, None, None, f"it names {int(head[0])} events but {n} remain: the newest "
                               f"{int(head[0]) - n} were removed")
        return ChainReport(n, None, None, "it does not name the last event (the head was altered)")
    if wanted:
        first = min(wanted)
        return ChainReport(n, None, None, f"event {first}, written down with its hash, is gone: the chain now ends at "
                           f"event {n}, so its newest events were removed and its head rewritten")
    return ChainReport(n)


# ---- a model version's identity: one hash over its whole package ------------------------------

def package_digest(files: dict[str, str]) -> str:
    """THE identity of a model package: SHA-256 over its files' names and SHA-256s (card,
    weights, int8, guard: whatever the card makes a package of), sorted by name. Fixed in
    ``model_versions.package_sha256`` at registration; never changed (a trigger refuses)."""
    lines = "".join(f"{name}\t{sha}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


VERSION_IDENTITY_TRIGGER = "hemascan_version_identity"
VERSION_IDENTITY_REFUSAL = ("the content of a model version is fixed when it is registered: its package hash cannot "
                            "be changed (register the changed package as a new version)")


def protect_version_identity(conn: Connection) -> None:
    """``model_versions.package_sha256``, once set, never changes; ``model_files`` is append-only."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            f"CREATE TRIGGER IF NOT EXISTS {VERSION_IDENTITY_TRIGGER} BEFORE UPDATE OF package_sha256 ON model_versions "
            "WHEN OLD.package_sha256 IS NOT NULL AND NEW.package_sha256 IS NOT OLD.package_sha256 "
            f"BEGIN SELECT RAISE(ABORT, '{VERSION_IDENTITY_REFUSAL}'); END")
    else:
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {VERSION_IDENTITY_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF OLD.package_sha256 IS NOT NULL AND NEW.package_sha256 IS DISTINCT FROM OLD.package_sha256 THEN "
            f"RAISE EXCEPTION '{VERSION_IDENTITY_REFUSAL}' USING ERRCODE = 'insufficient_privilege'; END IF; "
            "RETURN NEW; END $$")
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {VERSION_IDENTITY_TRIGGER} ON model_versions")
        conn.exec_driver_sql(f"CREATE TRIGGER {VERSION_IDENTITY_TRIGGER} BEFORE UPDATE ON model_versions "
                             f"FOR EACH ROW EXECUTE FUNCTION {VERSION_IDENTITY_TRIGGER}()")
    protect_table(conn, "model_files", chained=False)


def unprotect_version_identity(conn: Connection) -> None:
    unprotect_table(conn, "model_files")
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {VERSION_IDENTITY_TRIGGER}")
    else:
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {VERSION_IDENTITY_TRIGGER} ON model_versions")
        conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {VERSION_IDENTITY_TRIGGER}()")
