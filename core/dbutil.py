"""Dialect-aware bulk upserts (SQLite now, PostgreSQL later): a registry, not if/elif."""
from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def insert_ignore(session: Session, table, rows: Sequence[dict[str, Any]], conflict: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT (conflict) DO NOTHING, so a re-run after a crash never duplicates."""
    if not rows:
        return
    insert = _INSERTS[session.get_bind().dialect.name]
    session.execute(insert(table).on_conflict_do_nothing(index_elements=list(conflict)), list(rows))


def upsert(session: Session, table, rows: Sequence[dict[str, Any]], conflict: Sequence[str], update: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT (conflict) DO UPDATE SET update-columns."""
    if not rows:
        return
    insert = _INSERTS[session.get_bind().dialect.name]
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=list(conflict), set_={c: stmt.excluded[c] for c in update})
    session.execute(stmt, list(rows))
