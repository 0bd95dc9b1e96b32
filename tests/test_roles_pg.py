"""Issue 24 (items 3 and 4) on a real PostgreSQL server: two logins of the lab's roles. A
reviewer labels (the label records the login, not a typed name) but cannot activate a model or
release a case: the database refuses, the command line says so in one sentence (exit 8); a
supervisor can. The database's own checks hold against a seat that bypasses hemascan."""
from __future__ import annotations

import itertools
import os

import pytest
from sqlalchemy import create_engine, select, text

from core.errors import EXIT_REFUSED
from tests.conftest import url_arg

_n = itertools.count()


@pytest.fixture
def lab(pg_server, pg_url, sample_folder, tmp_path, cli):
    """A lab database set up by its administrator (the superuser here): migrated, the bundled
    models registered, the roles applied, a case's labels imported; alice (reviewer) and bob
    (supervisor) logins."""
    rc, out, err = cli("--db-url", url_arg(pg_url), "--data-dir", tmp_path / "admin", "import-labels", sample_folder)
    assert rc == 0, err
    rc, out, err = cli("--db-url", url_arg(pg_url), "--data-dir", tmp_path / "admin", "lab", "setup-roles", "--apply")
    assert rc == 0, err
    k = f"{os.getpid()}_{next(_n)}"
    alice, bob = f"alice_{k}", f"bob_{k}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE ROLE {alice} LOGIN PASSWORD 'a-pw' IN ROLE hemascan_reviewer"))
        c.execute(text(f"CREATE ROLE {bob} LOGIN PASSWORD 'b-pw' IN ROLE hemascan_supervisor"))
    urls = {"alice": pg_url.set(username=alice, password="a-pw"), "bob": pg_url.set(username=bob, password="b-pw"),
            "admin": pg_url}
    yield urls, alice, bob
    admin.dispose()


def _as(cli, tmp_path, urls, who, *argv):
    return cli("--db-url", url_arg(urls[who]), "--data-dir", tmp_path / who, *argv)


def test_printed_roles_sql_names_the_roles(pg_url, cli, tmp_path):
    rc, out, err = cli("--db-url", url_arg(pg_url), "--data-dir", tmp_path / "d", "lab", "setup-roles")
    assert rc == 0, err
    assert "GRANT INSERT ON \"model_activations\", \"release_events\" TO hemascan_supervisor;" in out
    assert "IN ROLE hemascan_reviewer" in out


def _label(engine, image_id: int, label: str = "Benign", **kw) -> None:
    """A label event written by a seat itself, chained as hemascan chains it (core/storage/audit.py)."""
    from sqlalchemy.orm import Session

    from core.storage import LabelEvent

    with Session(engine) as s, s.begin():
        s.add(LabelEvent(image_id=image_id, taxonomy="all_subtype", label=label, reviewer="x", source="human", **kw))


def test_a_reviewer_labels_but_cannot_activate_or_release_a_supervisor_can(lab, cli, tmp_path, sample_folder):
    urls, alice, bob = lab
    # alice labels: the event records her login, whatever name is typed is refused
    rc, out, err = _as(cli, tmp_path, urls, "alice", "import-labels", sample_folder, "--reviewer", "Someone Else")
    assert rc == EXIT_REFUSED and "database login" in err and "Traceback" not in err
    engine = create_engine(urls["alice"])
    with engine.begin() as c:  # a seat that bypasses hemascan: another login's name is refused by the database
        image_id = c.execute(text("SELECT min(id) FROM images")).scalar()
    # (label events are chained: a seat writing them itself goes through the ORM, as hemascan does)
    with pytest.raises(Exception, match="may not record an event as"):
        _label(engine, image_id, login=bob)
    _label(engine, image_id, label="Pre-B")  # no login given: her own is recorded
    with engine.begin() as c:
        assert c.execute(text("SELECT login FROM label_events ORDER BY id DESC LIMIT 1")).scalar() == alice
        with pytest.raises(Exception, match="permission denied"):  # append-only for her: no UPDATE privilege
            with c.begin_nested():
                c.execute(text("UPDATE label_events SET label = 'Benign'"))
    # alice may not activate a model: refused by the database, one sentence
    rc, out, err = _as(cli, tmp_path, urls, "admin", "models", "list")
    target = next(line.split()[1] for line in out.splitlines() if line.startswith("*"))  # activating is a new row
    rc, out, err = _as(cli, tmp_path, urls, "alice", "models", "activate", target)
    assert rc == EXIT_REFUSED, (out, err)
    assert "refused" in err and "hemascan_supervisor" in err and "Traceback" not in err
    with engine.begin() as c, pytest.raises(Exception, match="permission denied"):
        c.execute(text("INSERT INTO model_activations (model_version_id, action, activated_by, created_at) "
                       "SELECT id, 'activate', 'x', now() FROM model_versions LIMIT 1"))
    with engine.begin() as c, pytest.raises(Exception, match="only a supervisor"):  # nor a version inserted active
        c.execute(text("INSERT INTO model_versions (name, architecture, taxonomy, path, weights_sha256, card, "
                       "created_at, is_active, input_kind) VALUES ('hostile', 'a', 'all_subtype', 'p', 'h', '{}', "
                       "now(), true, 'field')"))
    # alice may not release; bob may
    rc, out, err = _as(cli, tmp_path, urls, "alice", "release", sample_folder, "--report", tmp_path / "a.pdf")
    assert rc == EXIT_REFUSED and "hemascan_supervisor" in err
    assert not (tmp_path / "a.pdf").exists()
    with engine.begin() as c, pytest.raises(Exception, match="permission denied"):
        c.execute(text("INSERT INTO release_events (case_root, case_name, display_name, created_at, pdf_sha256, "
                       "labels_sha256) VALUES ('/x/', 'x', 'x', now(), 'a', 'b')"))
    rc, out, err = _as(cli, tmp_path, urls, "bob", "models", "activate", target)
    assert rc == 0, err
    rc, out, err = _as(cli, tmp_path, urls, "bob", "release", sample_folder, "--report", tmp_path / "b.pdf")
    assert rc == 0, err
    assert f"login {bob}" in out
    # the released case: a plain label refused by the database too, even bypassing hemascan
    with pytest.raises(Exception, match="released"):
        _label(engine, image_id)
    with pytest.raises(Exception, match="only a supervisor"):  # an amendment is a supervisor's
        _label(engine, image_id, amend_reason="why")
    engine.dispose()
    bob_engine = create_engine(urls["bob"])
    _label(bob_engine, image_id, amend_reason="a typo")
    with bob_engine.begin() as c:
        assert c.execute(select(text("login")).select_from(text("label_events")).where(
            text("amend_reason = 'a typo'"))).scalar() == bob
    bob_engine.dispose()
    # every event above (logins filled, releases, amendments) still verifies: the login is part of the hash
    rc, out, err = _as(cli, tmp_path, urls, "admin", "audit", "verify")
    assert rc == 0, out + err


def test_a_login_sets_its_own_display_name_only(lab):
    from core.storage import Database, Login
    from core.storage.identity import current_identity, reviewer_for, set_display_name

    urls, alice, bob = lab
    db = Database(urls["alice"], migrate=False)
    try:
        with db.session() as s:
            set_display_name(s, "Alice Martin")
        with db.session() as s:
            ident = current_identity(s)
            assert (ident.login, ident.display_name, ident.personal) == (alice, "Alice Martin", True)
            assert not ident.may("release") and ident.may("label")
            assert reviewer_for(s, "Alice Martin") == (alice, "Alice Martin")
        with pytest.raises(Exception, match="row-level security"), db.session() as s:
            s.add(Login(login=bob, display_name="not Bob"))
    finally:
        db.dispose()
