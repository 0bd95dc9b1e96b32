"""Issue 20: database errors are classified by code and connection state, not by their English
words. PostgreSQL translates its messages (``lc_messages``) and libpq translates its own (the
workstation's language): on a German lab server "Passwort-Authentifizierung ... fehlgeschlagen"
behind psycopg's English "connection failed:" made a wrong password look like a server that is
down, and the worker retried it for ever.

How the words are taken away: the pgserver wheel's PostgreSQL ships no translations (no
``share/locale``) and this machine has no German locale, so ``lc_messages=de_DE.UTF-8`` cannot be
set. Instead each case raises the real exception against a real server, then its message text is
rewritten before it is classified: once into what a German server and workstation say, once
into nonsense. What the classification decides (retry or not, exit code) must not change.
"""
from __future__ import annotations

import socket
import sqlite3

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from core.errors import EXIT_BUSY, EXIT_DATABASE, DatabaseUnavailableError
from core.storage.errors import is_transient, user_error

# What a German server and libpq say for each case (psycopg's own prefix stays English).
GERMAN = {
    "wrong password": 'connection failed: Verbindung zum Server auf »127.0.0.1«, Port 5432 fehlgeschlagen: FATAL:  '
                      'Passwort-Authentifizierung für Benutzer »postgres« fehlgeschlagen',
    "missing database": 'connection failed: Verbindung zum Server auf »127.0.0.1«, Port 5432 fehlgeschlagen: '
                        'FATAL:  Datenbank »gibt_es_nicht« existiert nicht',
    "lock timeout": "storniere Anfrage wegen Zeitüberschreitung einer Sperre",
    "server down": 'connection failed: Verbindung zum Server auf »127.0.0.1«, Port 1 fehlgeschlagen: Verbindung '
                   'verweigert',
    "connection cut": "Verbindung wird abgebrochen aufgrund von Anweisung des Administrators",
}
NONSENSE = "xyzzy plugh 12345"

# case -> (waiting helps, exit code)
EXPECTED = {
    "wrong password": (False, EXIT_DATABASE),
    "missing database": (False, EXIT_DATABASE),
    "lock timeout": (True, EXIT_BUSY),
    "server down": (True, EXIT_DATABASE),
    "connection cut": (True, EXIT_DATABASE),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raised(fn) -> DBAPIError:
    with pytest.raises(DBAPIError) as info:
        fn()
    return info.value


def _connect(url, sql: str = "SELECT 1", **connect_args):
    engine = create_engine(url, connect_args={"connect_timeout": 5, **connect_args})
    try:
        with engine.connect() as c:
            c.execute(text(sql))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def real_errors(pg_server):
    """case -> the SQLAlchemy exception the real server gave."""
    out = {
        "wrong password": _raised(lambda: _connect(pg_server.set(password="not-the-password"))),
        "missing database": _raised(lambda: _connect(pg_server.set(database="gibt_es_nicht"))),
        "server down": _raised(lambda: _connect(pg_server.set(port=_free_port()))),
    }
    admin = create_engine(pg_server)
    try:
        with admin.connect() as holder:
            holder.execute(text("CREATE TABLE IF NOT EXISTS error_codes_held (x int)"))
            holder.commit()
            holder.execute(text("LOCK TABLE error_codes_held IN ACCESS EXCLUSIVE MODE"))
            out["lock timeout"] = _raised(lambda: _connect(pg_server, "SELECT * FROM error_codes_held",
                                                           options="-c lock_timeout=200"))
            holder.rollback()
            holder.execute(text("DROP TABLE error_codes_held"))
            holder.commit()
        victim = create_engine(pg_server)
        with victim.connect() as c:
            pid = c.execute(text("SELECT pg_backend_pid()")).scalar()
            with admin.connect() as a:
                a.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                a.commit()
            out["connection cut"] = _raised(lambda: c.execute(text("SELECT 1")))
        victim.dispose()
    finally:
        admin.dispose()
    return out


def _reworded(exc: DBAPIError, words: str) -> DBAPIError:
    """``exc`` with its message (the driver's and SQLAlchemy's) replaced by ``words``."""
    exc.orig.args = (words,)
    exc.args = (words,)
    assert str(exc.orig) == words
    return exc


@pytest.mark.parametrize("case", list(EXPECTED))
@pytest.mark.parametrize("language", ["english", "german", "nonsense"])
def test_postgresql_errors_are_classified_whatever_their_words(real_errors, case, language):
    exc = real_errors[case]
    saved = exc.args, exc.orig.args
    try:
        if language != "english":
            _reworded(exc, GERMAN[case] if language == "german" else NONSENSE)
        transient, exit_code = EXPECTED[case]
        assert is_transient(exc) is transient, (case, language, str(exc.orig))
        err = user_error(exc)
        assert err is not None and err.exit_code == exit_code, (case, language, err)
        wrapped = DatabaseUnavailableError(str(err))  # as Database() raises it, from the driver's error
        wrapped.__cause__ = exc
        assert is_transient(wrapped) is transient
    finally:
        exc.args, exc.orig.args = saved


def test_the_english_sentences_are_kept(real_errors):
    """Where the server speaks English the sentences say which problem it is, as before."""
    assert "refused the login" in str(user_error(real_errors["wrong password"]))
    assert "does not exist on the server" in str(user_error(real_errors["missing database"]))
    assert "could not reach" in str(user_error(real_errors["server down"]))
    assert "locked by another process" in str(user_error(real_errors["lock timeout"]))


def test_a_refusal_in_another_language_is_one_sentence_naming_what_to_check(tmp_path, pg_server):
    exc = _raised(lambda: _connect(pg_server.set(password="not-the-password")))
    err = user_error(_reworded(exc, GERMAN["wrong password"]))
    assert "refused the connection" in str(err) and "user name, password and database name" in str(err)
    assert "\n" not in str(err)


def _sqlite_error(tmp_path, what: str) -> DBAPIError:
    path = tmp_path / f"{what}.sqlite3"
    if what == "locked":
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("CREATE TABLE t (x int)")
        holder.execute("BEGIN EXCLUSIVE")
        try:
            return _raised(lambda: engine.connect().execute(text("SELECT * FROM t")))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            engine.dispose()
    path.write_bytes(b"this is not a database, only some text " * 100)
    engine = create_engine(f"sqlite:///{path}")
    try:
        return _raised(lambda: engine.connect().execute(text("SELECT * FROM t")))
    finally:
        engine.dispose()


@pytest.mark.parametrize("language", ["english", "nonsense"])
def test_sqlite_errors_are_classified_by_their_result_code(tmp_path, language):
    locked, not_a_db = _sqlite_error(tmp_path, "locked"), _sqlite_error(tmp_path, "notadb")
    if language == "nonsense":
        locked, not_a_db = _reworded(locked, NONSENSE), _reworded(not_a_db, NONSENSE)
    assert is_transient(locked) and user_error(locked).exit_code == EXIT_BUSY
    assert not is_transient(not_a_db)
    assert "is damaged or is not a hemascan database" in str(user_error(not_a_db))
