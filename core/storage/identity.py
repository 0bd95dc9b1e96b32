"""Who is at this seat, as the database knows it, and what that login may do.

On PostgreSQL a seat's reviewer is its database login (``session_user``): each technologist
connects with a login of their own, member of one of the lab's roles (``hemascan lab
setup-roles``); the name shown in reports is the login's display name (the ``logins`` table).
The database checks it: a trigger refuses an event recorded under another login, and the
privileges refuse what the role may not do. On SQLite (one workstation) the login is the
operating-system account and the display name the one given at first start; one user may do
everything, as before.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.config import default_reviewer
from core.errors import NotPermittedError
from core.storage.dbutil import upsert
from core.storage.orm import Login, utcnow

REVIEWER, SUPERVISOR, ADMIN = "hemascan_reviewer", "hemascan_supervisor", "hemascan_admin"
ROLES = (REVIEWER, SUPERVISOR, ADMIN)

#: What each act needs (the least role); the database enforces the same with its privileges.
RIGHTS = {
    "classify": REVIEWER, "label": REVIEWER, "export": REVIEWER,
    "activate": SUPERVISOR, "promote": SUPERVISOR, "rollback": SUPERVISOR,
    "release": SUPERVISOR, "amend": SUPERVISOR,
    "migrate": ADMIN, "roles": ADMIN,
}
#: The acts in words, for "this login may not ..." sentences.
ACTS = {
    "activate": "activate, promote or roll back a model", "promote": "promote a model",
    "rollback": "roll back a model", "release": "release a case", "amend": "amend a released case",
    "label": "label", "classify": "classify", "export": "export", "migrate": "upgrade the database",
    "roles": "set up the lab's roles",
}


@dataclass(frozen=True)
class Identity:
    login: str
    display_name: str
    roles: frozenset[str]  # the hemascan roles it holds (every one on SQLite and for a superuser)
    on_server: bool  # PostgreSQL: the login is the database's
    # the login is a person's, member of the lab's roles (``hemascan lab setup-roles``): the reviewer
    # is then the login. A superuser or a shared login in a database without the roles keeps the
    # name typed at the seat (the login is recorded beside it all the same).
    personal: bool = False

    def may(self, act: str) -> bool:
        return RIGHTS[act] in self.roles

    def why_not(self, act: str) -> str | None:
        """One sentence saying why this login may not do ``act``, or None when it may."""
        if self.may(act):
            return None
        return (f"the login {self.login} may not {ACTS.get(act, act)}: that needs the role "
                f"{RIGHTS[act]} (ask the lab's administrator)")

    def check(self, act: str) -> None:
        why = self.why_not(act)
        if why:
            raise NotPermittedError(why)


def on_server(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def session_login(session: Session) -> str:
    """The login this session writes as: PostgreSQL's ``session_user``, else the OS account."""
    if on_server(session):
        return session.scalar(text("SELECT session_user"))
    return default_reviewer()


def _server_roles(session: Session) -> tuple[frozenset[str], bool]:
    """(the hemascan roles this login holds, whether it is a person's login in the lab's roles)."""
    superuser = session.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = session_user"))
    existing = list(session.scalars(text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:r)"), {"r": list(ROLES)}))
    if superuser or not existing:  # a superuser, or a lab that has set up no roles: nothing is withheld
        return frozenset(ROLES), False
    held = frozenset(session.scalars(text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:r) "
                                          "AND pg_has_role(session_user, oid, 'MEMBER')"), {"r": existing}))
    return held, bool(held)


def current_identity(session: Session, local_name: str | None = None) -> Identity:
    """This seat's identity. ``local_name``: on SQLite, the display name given at first start
    (default: the OS account)."""
    login = session_login(session)
    if not on_server(session):
        return Identity(login, (local_name or "").strip() or login, frozenset(ROLES), False)
    shown = session.scalar(select(Login.display_name).where(Login.login == login))
    roles, personal = _server_roles(session)
    return Identity(login, shown or (local_name or "").strip() or login, roles, True, personal)


def reviewer_for(session: Session, requested: str | None, local_default: str | None = None) -> tuple[str, str]:
    """(login, name stored as the reviewer) for a label written by this seat.

    On PostgreSQL with the lab's roles set up the reviewer is the login: a ``requested`` name that is neither the login nor
    its display name is refused (labelling as someone else is what logins are there to stop;
    ignoring it silently would store a name the user did not expect). On SQLite: the name
    asked for, else the first-start name, else the OS account."""
    login = session_login(session)
    if not on_server(session):
        return login, (requested or local_default or login).strip()
    ident = current_identity(session)
    if not ident.personal:  # a shared or superuser login: the seat's name, beside the login
        return login, (requested or local_default or ident.display_name).strip()
    if requested and requested.strip() not in (ident.login, ident.display_name):
        raise NotPermittedError(f"on a lab server the reviewer is the database login ({ident.login}); "
                                f"'{requested.strip()}' cannot be given as the reviewer: connect as that "
                                "person's own login to label in their name")
    return login, ident.display_name


def set_display_name(session: Session, name: str) -> None:
    """The display name of this session's login (PostgreSQL: a row-level policy lets a login
    set only its own)."""
    upsert(session, Login.__table__, [{"login": session_login(session), "display_name": name.strip()[:128],
                                       "updated_at": utcnow()}], ["login"], ["display_name", "updated_at"])
