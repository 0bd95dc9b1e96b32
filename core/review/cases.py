"""Cases: a case is a folder (one sample); its name is what the lab calls it. A folder nobody
has named is called by the folder's own name; a rename is stored against the folder's path
prefix (core.imaging.scan.folder_prefix), so every seat sees the same name."""
from __future__ import annotations

import os

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.imaging.fspath import display
from core.imaging.scan import folder_prefix
from core.storage import Case, utcnow
from core.storage.dbutil import upsert

#: The longest case name (the ``cases.name`` column).
CASE_NAME_MAX = 200


def case_name_problem(name: str | None) -> str | None:
    """Why ``name`` cannot be a case's name (one sentence), or None."""
    name = (name or "").strip()
    if not name:
        return "a case name is needed: it cannot be empty"
    if len(name) > CASE_NAME_MAX:
        return f"a case name is at most {CASE_NAME_MAX} characters (this one has {len(name)})"
    if not name.isprintable():
        return "a case name must be printable characters only (no line breaks or control characters)"
    return None


def default_case_name(folder: str | os.PathLike) -> str:
    """The folder's own name (its full path for a drive's or file system's root)."""
    prefix = folder_prefix(folder)
    return os.path.basename(os.path.dirname(prefix)) or display(prefix)


def case_name(session: Session, folder: str | os.PathLike) -> str:
    """What the lab calls the case in ``folder``: its stored name, else the folder's name."""
    stored = session.scalar(select(Case.name).where(Case.root == folder_prefix(folder)))
    return stored if stored is not None else default_case_name(folder)


def rename_case(session: Session, folder: str | os.PathLike, name: str) -> str:
    """Give the case in ``folder`` a name (ValueError, one sentence, for one it cannot have);
    returns the name stored. The caller's transaction commits."""
    why = case_name_problem(name)
    if why:
        raise ValueError(why)
    name = name.strip()
    now = utcnow()
    # one statement, so two seats naming a new case at once do not collide on the unique root
    upsert(session, Case.__table__, [{"root": folder_prefix(folder), "name": name, "created_at": now,
                                      "updated_at": now}], ["root"], ["name", "updated_at"])
    return name
