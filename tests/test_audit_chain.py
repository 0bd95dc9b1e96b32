"""Issue 24, items 1 and 2: the audit tables are append-only in the database, and one hash
chain over them shows any edit made around the database's rules (owner, superuser, a copied
file) to ``hemascan audit verify``."""
from __future__ import annotations

import contextlib
import itertools
import threading

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from core.errors import EXIT_AUDIT_BROKEN
from core.storage import (
    Cell,
    CellLabelEvent,
    Database,
    Image,
    LabelEvent,
    ReleaseEvent,
    ModelActivation,
    ModelVersion,
    make_engine,
    migration_transaction,
    upgrade,
)
from core.storage.audit import AUDIT_TABLES, GENESIS, HEAD_TABLE, verify_chain
from core.storage.orm import Base
from tests.conftest import url_arg


_IMAGES = itertools.count(1)


def _image(s, n: int) -> Image:
    img = Image(sha256=f"{next(_IMAGES):064x}", width=10, height=10, phash="0" * 16, format="PNG")
    s.add(img)
    s.flush()
    return img


def _version(s, name: str = "audit-test-model") -> ModelVersion:
    v = s.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if v is None:
        v = ModelVersion(name=name, architecture="a", taxonomy="all_subtype", path="/x", weights_sha256="0" * 64,
                         card={})
        s.add(v)
        s.flush()
    return v


def _label_event(s, n: int = 1) -> LabelEvent:
    return LabelEvent(image_id=_image(s, n).id, taxonomy="all_subtype", label="Pre-B", previous_label=None,
                      reviewer="dr.a", source="human", note="=cmd|' /C calc'!A0")


def _cell_label_event(s, n: int = 1) -> CellLabelEvent:
    cell = Cell(image_id=_image(s, 10_000 + n).id, finder="f", number=0, x0=0, y0=0, x1=1, y1=1, contour=[[0, 0]],
                area_px=1, um_per_px=0.1, flags=[])
    s.add(cell)
    s.flush()
    return CellLabelEvent(cell_id=cell.id, taxonomy="wbc", label="Neutrophil", previous_label=None,
                          reviewer="dr.b", source="human")


def _activation(s, n: int = 1) -> ModelActivation:
    return ModelActivation(model_version_id=_version(s).id, previous_version_id=None, action="activate",
                           activated_by=f"dr.c{n}")


#: One row of each audit table. A table added to AUDIT_TABLES needs its row here (a test below says so).
def _release(s, n: int = 1) -> ReleaseEvent:
    return ReleaseEvent(case_root=f"/lab/case-{n}/", case_name=f"Case {n}", display_name="Dr. Supervisor",
                        pdf_sha256="a" * 64, labels_sha256="b" * 64)


ROWS = {"label_events": _label_event, "cell_label_events": _cell_label_event, "model_activations": _activation,
        "release_events": _release}


def test_every_audit_table_has_a_row_maker_and_no_server_default():
    """A server default would be filled after the hash is taken: the row would not verify."""
    assert set(AUDIT_TABLES) <= set(ROWS), "add a row maker for the new audit table to ROWS"
    for name in AUDIT_TABLES:
        table = Base.metadata.tables[name]
        assert {"chain_seq", "prev_hash", "event_hash"} <= set(table.c.keys())
        assert [c.name for c in table.columns if c.server_default is not None] == []


def _one_of_each(db: Database) -> dict[str, int]:
    ids = {}
    with db.session() as s:
        for name in AUDIT_TABLES:
            row = ROWS[name](s)
            s.add(row)
            s.flush()
            ids[name] = row.id
    return ids


def _report(db: Database):
    with db.session() as s:
        return verify_chain(s)


@pytest.mark.parametrize("table", AUDIT_TABLES)
def test_an_audit_row_cannot_be_updated_or_deleted(db_url, table):
    db = Database(db_url)
    try:
        ids = _one_of_each(db)
        for sql in (f"UPDATE {table} SET chain_seq = chain_seq WHERE id = :i", f"DELETE FROM {table} WHERE id = :i"):
            with pytest.raises(DBAPIError, match="part of the audit record: its rows can be added, never changed"):
                with db.engine.begin() as c:
                    c.execute(text(sql), {"i": ids[table]})
        if db.engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="part of the audit record"):
                with db.engine.begin() as c:
                    c.execute(text(f"TRUNCATE {table} CASCADE"))
        with db.engine.connect() as c:
            assert c.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1
        assert _report(db).whole
    finally:
        db.dispose()


def test_a_normal_history_verifies_and_the_chain_is_one_across_tables(db_url, cli):
    db = Database(db_url)
    try:
        for n in range(1, 4):
            _one_of_each(db)
        with db.session() as s:  # several events of several tables in one flush
            s.add_all([_label_event(s, 50), _activation(s, 50), _cell_label_event(s, 50), _label_event(s, 51)])
        report = _report(db)
        total = 3 * len(AUDIT_TABLES) + 4
        assert report.whole and report.events == total, report.sentence()
        with db.engine.connect() as c:
            seqs = sorted(v for t in AUDIT_TABLES for v in c.execute(text(f"SELECT chain_seq FROM {t}")).scalars())
            assert seqs == list(range(1, total + 1))
            assert c.execute(text(f"SELECT seq FROM {HEAD_TABLE}")).scalar() == total
            first = [c.execute(text(f"SELECT prev_hash FROM {t} WHERE chain_seq = 1")).scalar() for t in AUDIT_TABLES]
            assert GENESIS in first
    finally:
        db.dispose()
    code, out, _ = cli("--db-url", url_arg(db_url), "audit", "verify")
    assert code == 0 and "the audit record is whole: " in out  # (15: the CLI's set-up activated the bundled models)


def _bypassing_triggers(db: Database, table: str, sql: str, params: dict) -> None:
    """What the owner (PostgreSQL) or anyone holding the file (SQLite) can do: lift the rule, edit, restore it."""
    from core.storage.audit import protect_table, unprotect_table

    with db.engine.begin() as c:
        if c.dialect.name == "postgresql":
            c.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            c.execute(text(sql), params)
            c.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        else:
            unprotect_table(c, table)
            c.execute(text(sql), params)
            protect_table(c, table)


@pytest.mark.parametrize("table", AUDIT_TABLES)
def test_an_edit_around_the_triggers_is_named_by_audit_verify(db_url, cli, table):
    db = Database(db_url)
    try:
        _one_of_each(db)
        ids = _one_of_each(db)
        _one_of_each(db)
        column = {"label_events": "reviewer", "cell_label_events": "label", "model_activations": "activated_by",
                  "release_events": "case_name"}[table]
        _bypassing_triggers(db, table, f"UPDATE {table} SET {column} = 'someone else' WHERE id = :i", {"i": ids[table]})
        report = _report(db)
        assert (report.table, report.event_id) == (table, ids[table])
        assert "no longer match its hash" in report.problem
    finally:
        db.dispose()
    code, out, _ = cli("--db-url", url_arg(db_url), "audit", "verify")
    assert code == EXIT_AUDIT_BROKEN
    assert f"does not verify at {table} #{ids[table]}: its stored columns no longer match its hash" in out


def test_a_removed_event_and_a_rewritten_hash_are_named(db_url):
    db = Database(db_url)
    try:
        for _ in range(3):
            _one_of_each(db)
        with db.engine.connect() as c:
            victim = c.execute(text("SELECT id, chain_seq FROM label_events ORDER BY id LIMIT 1 OFFSET 1")).one()
            after = [(t, i) for t in AUDIT_TABLES for i in c.execute(
                text(f"SELECT id FROM {t} WHERE chain_seq = :s"), {"s": victim[1] + 1}).scalars()]
        _bypassing_triggers(db, "label_events", "DELETE FROM label_events WHERE id = :i", {"i": victim[0]})
        report = _report(db)
        assert (report.table, report.event_id) == after[0]
        assert f"event {victim[1]} of the chain, just before it, was removed" in report.problem
    finally:
        db.dispose()


def test_a_recomputed_hash_still_breaks_the_next_link(db_url):
    from core.storage.audit import event_hash

    db = Database(db_url)
    try:
        for _ in range(2):
            _one_of_each(db)
        with db.session() as s:
            row = dict(s.execute(select(ModelActivation.__table__).order_by(ModelActivation.id).limit(1))
                       .mappings().one())
        row["activated_by"] = "someone else"
        new_hash = event_hash("model_activations", row)
        _bypassing_triggers(db, "model_activations",
                            "UPDATE model_activations SET activated_by = 'someone else', event_hash = :h WHERE id = :i",
                            {"h": new_hash, "i": row["id"]})
        report = _report(db)
        assert report.event_id is not None and (report.table, report.event_id) != ("model_activations", row["id"])
        assert "its link to the event before it does not match" in report.problem
    finally:
        db.dispose()


def test_removing_the_newest_events_is_seen_unless_the_head_is_rewritten_too(db_url):
    db = Database(db_url)
    try:
        _one_of_each(db)
        with db.engine.connect() as c:  # the newest event, whichever table it is in
            table, last = max(((t, c.execute(text(f"SELECT max(chain_seq) FROM {t}")).scalar()) for t in AUDIT_TABLES),
                              key=lambda tv: tv[1])
        _bypassing_triggers(db, table, f"DELETE FROM {table} WHERE chain_seq = :i", {"i": last})
        report = _report(db)
        assert not report.whole and "the newest 1 were removed" in report.problem
    finally:
        db.dispose()


def test_an_insert_around_hemascan_fails_and_the_chain_stays_whole(db_url):
    """A trigger refuses a row without its chain: a writer that does not go through the ORM hook cannot add one."""
    db = Database(db_url)
    try:
        with db.session() as s:
            version_id = _version(s).id
        with pytest.raises(DBAPIError, match="must be added through hemascan, which chains it"):
            with db.engine.begin() as c:
                c.execute(text("INSERT INTO model_activations (id, model_version_id, action, activated_by, created_at) "
                               "VALUES (999, :v, 'activate', 'x', '2026-01-01 00:00:00')"), {"v": version_id})
        assert _report(db).whole
    finally:
        db.dispose()


def test_rows_written_before_the_chain_are_chained_by_the_migration(db_url):
    engine = make_engine(db_url)
    upgrade(engine, "0007")
    with engine.begin() as c:
        c.execute(text("INSERT INTO images (sha256, width, height, phash, format, first_seen) "
                       "VALUES (:sha, 224, 224, 'ffff000011112222', 'JPEG', '2026-01-01 00:00:00')"), {"sha": "a" * 64})
        image_id = c.execute(text("SELECT id FROM images")).scalar()
        for n in range(3):
            c.execute(text("INSERT INTO label_events (image_id, taxonomy, label, previous_label, reviewer, source, "
                           "created_at) VALUES (:i, 'all_subtype', 'Pre-B', NULL, :r, 'human', '2026-01-01 00:00:00')"),
                      {"r": f"dr.old{n}", "i": image_id})
    engine.dispose()
    db = Database(db_url)
    try:
        assert _report(db).events == 3 and _report(db).whole
        _one_of_each(db)
        report = _report(db)
        assert report.whole and report.events == 3 + len(AUDIT_TABLES)
        with pytest.raises(DBAPIError, match="part of the audit record"):
            with db.engine.begin() as c:
                c.execute(text("DELETE FROM label_events"))
    finally:
        db.dispose()


def test_concurrent_seats_do_not_fork_the_chain(db_url):
    """Two seats (their own engines) writing events at once: one chain, every place taken once."""
    dbs = [Database(db_url), Database(db_url, migrate=False)]
    with dbs[0].session() as s:
        _version(s)
    per_seat = 15
    errors: list[BaseException] = []
    start = threading.Barrier(len(dbs))

    def seat(db: Database, k: int) -> None:
        try:
            start.wait()
            for n in range(per_seat):
                with db.session() as s:
                    s.add(_activation(s, k * 100 + n))
                    s.add(_label_event(s, k * 1000 + n))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=seat, args=(db, k)) for k, db in enumerate(dbs)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        report = _report(dbs[0])
        assert report.whole and report.events == 2 * per_seat * len(dbs), report.sentence()
    finally:
        for db in dbs:
            db.dispose()


def test_postgresql_application_role_may_insert_and_read_but_not_update_or_delete(pg_server, pg_url):
    """The privileges, apart from the triggers: a login in hemascan_reviewer gets 'permission denied'."""
    import secrets

    from sqlalchemy import create_engine

    login, password = f"tech_{secrets.token_hex(4)}", secrets.token_hex(12)
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hemascan_reviewer') "
                       "THEN CREATE ROLE hemascan_reviewer NOLOGIN; END IF; END $$"))
        c.execute(text(f"CREATE ROLE {login} LOGIN PASSWORD '{password}' IN ROLE hemascan_reviewer"))
    admin.dispose()
    db = Database(pg_url)  # migrated by the owner, the role existing: its grants are given
    try:
        with db.session() as s:
            version_id = _version(s).id
            image_id = _image(s, 1).id
        as_tech = Database(pg_url.set(username=login, password=password), migrate=False)
        try:
            with as_tech.session() as s:
                s.add(LabelEvent(image_id=image_id, taxonomy="all_subtype", label="Pre-B", reviewer=login,
                                 source="human"))
            with as_tech.engine.connect() as c:
                assert c.execute(text("SELECT reviewer FROM label_events")).scalar() == login
            for sql in ("UPDATE label_events SET reviewer = 'x'", "DELETE FROM label_events"):
                with pytest.raises(DBAPIError, match="permission denied"):
                    with as_tech.engine.begin() as c:
                        c.execute(text(sql))
            # activating a model is a supervisor's: a reviewer may read the activations, not add one
            with pytest.raises(DBAPIError, match="permission denied"):
                with as_tech.session() as s:
                    s.add(ModelActivation(model_version_id=version_id, action="activate", activated_by=login))
        finally:
            as_tech.dispose()
        assert _report(db).whole
    finally:
        db.dispose()
        admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f"DROP OWNED BY {login}"))
            c.execute(text(f"DROP ROLE {login}"))
        admin.dispose()


def test_a_migration_rewrites_an_audit_table_only_explicitly_and_rechains_it(db_url):
    """``rewriting_audit_table``: the owner's documented way, inside one transaction; the rules are back after it."""
    from core.storage.audit import rechain, rewriting_audit_table

    db = Database(db_url)
    try:
        for _ in range(2):
            _one_of_each(db)
        # a migration's transaction (on SQLite the one that covers DDL too: pysqlite's own would not)
        with pytest.raises(RuntimeError, match="killed"):  # a migration that dies half-way changes nothing
            with migration_transaction(db.engine) as c:
                with rewriting_audit_table(c, "label_events"):
                    c.execute(text("UPDATE label_events SET note = 'rewritten'"))
                    raise RuntimeError("killed")
        with pytest.raises(DBAPIError, match="part of the audit record"):
            with db.engine.begin() as c:
                c.execute(text("UPDATE label_events SET note = 'rewritten'"))
        with migration_transaction(db.engine) as c, contextlib.ExitStack() as lifted:
            for table in AUDIT_TABLES:  # re-chaining rewrites every audit row
                lifted.enter_context(rewriting_audit_table(c, table))
            c.execute(text("UPDATE label_events SET note = 'rewritten'"))
            assert rechain(c) == 2 * len(AUDIT_TABLES)
        assert _report(db).whole
        with db.engine.connect() as c:
            assert set(c.execute(text("SELECT note FROM label_events")).scalars()) == {"rewritten"}
        with pytest.raises(DBAPIError, match="part of the audit record"):
            with db.engine.begin() as c:
                c.execute(text("DELETE FROM label_events"))
    finally:
        db.dispose()


def _head(db: Database):
    from core.storage.audit import chain_head

    with db.session() as s:
        return chain_head(s)


def test_an_anchor_written_down_finds_the_newest_events_removed_with_the_head_rewritten(db_url, cli):
    """The hole issue 24 left: whoever may rewrite the head row can cut off the newest events
    unseen. A report prints the head (SEQ:SHA256); with it, verify finds the cut."""
    from core.storage.audit import ChainAnchor

    db = Database(db_url)
    try:
        _one_of_each(db)
        early = _head(db)  # printed on a first report
        _one_of_each(db)
        late = _head(db)  # printed on a later report
        assert late.seq == early.seq + len(AUDIT_TABLES)
        with db.engine.connect() as c:
            table, last = max(((t, c.execute(text(f"SELECT max(chain_seq) FROM {t}")).scalar()) for t in AUDIT_TABLES),
                              key=lambda tv: tv[1])
            before = c.execute(text(f"SELECT event_hash FROM {_table_at(c, last - 1)} WHERE chain_seq = :s"),
                               {"s": last - 1}).scalar()
        _bypassing_triggers(db, table, f"DELETE FROM {table} WHERE chain_seq = :i", {"i": last})
        _bypassing_triggers(db, table, f"UPDATE {HEAD_TABLE} SET seq = :s, event_hash = :h WHERE id = 1",
                            {"s": last - 1, "h": before})
        assert _report(db).whole  # without an anchor the cut is not seen
        with db.session() as s:
            assert verify_chain(s, anchors=[early]).whole  # an older anchor still holds
            cut = verify_chain(s, anchors=[early, late])
        assert not cut.whole and f"event {late.seq}, written down with its hash, is gone" in cut.problem
        assert verify_chain_with(db, ChainAnchor(early.seq, late.event_hash[:16])).problem.startswith(
            f"it no longer has the hash written down for event {early.seq}")
    finally:
        db.dispose()
    code, out, _ = cli("--db-url", url_arg(db_url), "audit", "verify", "--anchor", early.text())
    assert code == 0, out
    code, out, _ = cli("--db-url", url_arg(db_url), "audit", "verify", "--anchor", f"{late.seq}:{late.event_hash[:20]}")
    # the CLI's first start activated the bundled models: new events took the removed one's place
    assert code == EXIT_AUDIT_BROKEN and f"no longer has the hash written down for event {late.seq}" in out


def _table_at(c, seq: int) -> str:
    return next(t for t in AUDIT_TABLES if c.execute(text(f"SELECT 1 FROM {t} WHERE chain_seq = :s"), {"s": seq}).first())


def verify_chain_with(db: Database, anchor):
    with db.session() as s:
        return verify_chain(s, anchors=[anchor])


@pytest.mark.parametrize("value", ["12", "12:abc", "x:0123456789abcdef", "0:0123456789abcdef", "12:0123456789abcdeg"])
def test_an_anchor_that_is_not_one_is_refused_in_one_sentence(value):
    from core.storage.audit import parse_anchor

    with pytest.raises(ValueError, match="is not an audit anchor: write it as a report prints it"):
        parse_anchor(value)
    assert parse_anchor(" 12 : 0123456789ABCDEF ").text() == "12:0123456789abcdef"
