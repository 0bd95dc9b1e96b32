"""Issue 22.3: two kinds of model. A card declares its input (field or cell); the registry keeps
one active model per input kind, on both engines; setup makes one of each active, also on a
database upgraded from 0006 whose active model was the (now cell) ALL-vs-normal one; the CLI's
`models` lists the kind and the active version of each."""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil

import pytest
from sqlalchemy import select, text

from core.models.package import resources_dir
from core.models.registry import bundled_default_package, bundled_packages, read_card
from core.storage import ModelActivation, ModelVersion

from .conftest import url_arg

CELL_PACKAGE = next((p for p in bundled_packages() if read_card(p).taxonomy == "all_vs_normal"), None)
# the bundled cell model a first start makes active (the white-cell differential, issue 23)
FIRST_CELL_PACKAGE = next((p for p in bundled_packages() if p.name == "wbc-differential"), CELL_PACKAGE)
pytestmark = pytest.mark.skipif(CELL_PACKAGE is None, reason="no ALL-vs-normal package under resources/models")


def _renamed_copy(src, dest, name):
    shutil.copytree(src, dest)
    card = json.loads((dest / "card.json").read_text())
    card["name"] = name
    (dest / "card.json").write_text(json.dumps(card))
    return dest


def _open(tmp_path, db_url, seat="seat"):
    from core.app.bootstrap import open_database
    from core.config import resolve_paths

    paths = resolve_paths(tmp_path / seat).ensure()
    return paths, open_database(paths, db_url)


def _actives(db) -> dict[str, str]:
    with db.session() as s:
        return {v.input_kind: v.name for v in s.scalars(select(ModelVersion).where(ModelVersion.is_active.is_(True)))}


def test_the_input_kind_is_the_cards_else_the_taxonomys():
    from core.models.registry import input_kind_of

    assert input_kind_of({"taxonomy": "all_subtype"}) == "field"
    assert input_kind_of({"taxonomy": "all_vs_normal"}) == "cell"
    assert input_kind_of({"taxonomy": "all_subtype", "input": "cell"}) == "cell"  # a cell model of any taxonomy
    # "field" is the card's default: a card of a taxonomy learnt on cells stays a cell model
    assert input_kind_of({"taxonomy": "all_vs_normal", "input": "field"}) == "cell"
    assert input_kind_of({"taxonomy": "all_subtype", "input": "field"}) == "field"
    assert input_kind_of(read_card(CELL_PACKAGE)) == "cell"
    assert input_kind_of(read_card(bundled_default_package())) == "field"
    # the fallback is the rule migration 0007 applied to the versions already registered
    spec = importlib.util.spec_from_file_location(
        "m0007", resources_dir() / "migrations" / "versions" / "0007_cells.py")
    m0007 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m0007)
    # for the taxonomies there were when it ran (later ones, e.g. wbc_differential, came with their cards)
    at_0007 = ("all_subtype", "all_vs_normal")
    assert {t for t in at_0007 if input_kind_of({"taxonomy": t}) == "cell"} == set(m0007.CELL_TAXONOMIES)
    assert input_kind_of({"taxonomy": "wbc_differential"}) == "cell"


def test_activating_one_kind_keeps_the_other_kinds_active_model(tmp_path, db_url):
    from core.models.registry import (activate, activation_log, activations_since, active_version, register_package,
                                      require_active_version, version_ref)

    paths, db = _open(tmp_path, db_url)
    try:
        first = _actives(db)
        assert first == {"field": read_card(bundled_default_package()).name, "cell": read_card(FIRST_CELL_PACKAGE).name}
        field2 = _renamed_copy(bundled_default_package(), tmp_path / "f2", "field-two-v1")
        cell2 = _renamed_copy(CELL_PACKAGE, tmp_path / "c2", "cell-two-v1")
        with db.session() as s:
            assert register_package(s, paths, field2).input_kind == "field"
            assert register_package(s, paths, cell2).input_kind == "cell"
            since = max(s.scalars(select(ModelActivation.id)))

        done = activate(db, "cell-two-v1", who="dr.c")
        assert (done["input_kind"], done["previous"]) == ("cell", first["cell"])  # from the cell model it replaced
        assert _actives(db) == {"field": first["field"], "cell": "cell-two-v1"}
        done = activate(db, "field-two-v1", who="dr.f")
        assert (done["input_kind"], done["previous"]) == ("field", first["field"])
        assert _actives(db) == {"field": "field-two-v1", "cell": "cell-two-v1"}
        activate(db, first["cell"], who="dr.c")  # back again: the field model still stays
        assert _actives(db) == {"field": "field-two-v1", "cell": first["cell"]}

        with db.session() as s:
            assert active_version(s).name == "field-two-v1"  # field is the default kind
            assert require_active_version(s, "cell").name == first["cell"]
            assert version_ref(s).input_kind == "field" and version_ref(s).name == "field-two-v1"
            ref = version_ref(s, kind="cell")
            assert (ref.name, ref.input_kind) == (first["cell"], "cell")
            assert version_ref(s, "cell-two-v1").input_kind == "cell"
            # the activation log per kind: each row's "from" is the same kind's previous model
            cells = activations_since(s, since, kind="cell")
            fields = activations_since(s, since, kind="field")
            assert [a.version.name for a in cells] == ["cell-two-v1", first["cell"]]
            assert [a.version.name for a in fields] == ["field-two-v1"]
            assert len(activations_since(s, since)) == 3
            with pytest.raises(ValueError, match="unknown model input kind"):
                active_version(s, "tissue")
        log = activation_log(db)
        assert [(e["name"], e["previous"], e["input_kind"]) for e in log[-3:]] == [
            ("cell-two-v1", first["cell"], "cell"), ("field-two-v1", first["field"], "field"),
            (first["cell"], "cell-two-v1", "cell")]
    finally:
        db.dispose()


def test_no_active_model_of_a_kind_is_one_sentence_naming_the_kind(paths):
    from core.errors import ModelPackageError
    from core.models.registry import require_active_version
    from core.storage import Database

    db = Database(paths.db_url())  # migrated, never set up
    try:
        with db.session() as s:
            with pytest.raises(ModelPackageError, match="no cell model is active"):
                require_active_version(s, "cell")
            with pytest.raises(ModelPackageError, match="no field model is active"):
                require_active_version(s)
    finally:
        db.dispose()


def test_a_first_start_makes_one_model_of_each_kind_active(tmp_path, db_url):
    paths, db = _open(tmp_path, db_url)
    try:
        with db.session() as s:
            rows = list(s.scalars(select(ModelActivation).order_by(ModelActivation.id)))
            names = {v.id: (v.name, v.input_kind) for v in s.scalars(select(ModelVersion))}
        assert [(r.action, names[r.model_version_id]) for r in rows] == [
            ("setup", (read_card(bundled_default_package()).name, "field")),
            ("setup", (read_card(FIRST_CELL_PACKAGE).name, "cell"))]
        assert all(r.previous_version_id is None for r in rows)
    finally:
        db.dispose()
    _, again = _open(tmp_path, db_url, "seat-2")  # the next start sets nothing up
    try:
        with again.session() as s:
            assert s.scalar(text("SELECT count(*) FROM model_activations")) == 2
    finally:
        again.dispose()


def _to_0006_with_only_the_cell_model_active(tmp_path, db_url) -> str:
    """A database at 0006 (before cells) on which a user had made ALL-vs-normal the one active
    model; returns the newest field version's name."""
    from alembic import command

    from core.models.registry import register_package
    from core.storage import alembic_config, make_engine, migration_transaction

    paths, db = _open(tmp_path, db_url, "old")
    field2 = _renamed_copy(bundled_default_package(), tmp_path / "f2", "retrained-field-v2")
    with db.session() as s:
        register_package(s, paths, field2)
    db.dispose()
    engine = make_engine(db_url)
    try:
        cfg = alembic_config(engine)
        with migration_transaction(engine) as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0006")
        with engine.begin() as c:
            c.execute(text("DELETE FROM model_activations"))
            cell_id = c.execute(text("SELECT id FROM model_versions WHERE name = :n"),
                                {"n": read_card(CELL_PACKAGE).name}).scalar()
            c.execute(text("UPDATE model_versions SET is_active = (id = :i)"), {"i": cell_id})
            c.execute(text("INSERT INTO model_activations (model_version_id, action, activated_by, created_at) "
                           "VALUES (:i, 'activate', 'dr.old', '2026-01-01 00:00:00')"), {"i": cell_id})
    finally:
        engine.dispose()
    return "retrained-field-v2"


def test_an_upgrade_whose_active_model_became_a_cell_model_gets_a_field_model_too(tmp_path, db_url, caplog):
    from core.models.registry import version_ref

    newest_field = _to_0006_with_only_the_cell_model_active(tmp_path, db_url)
    with caplog.at_level(logging.INFO, logger="core.app.bootstrap"):
        _, db = _open(tmp_path, db_url, "upgraded")
    try:
        assert _actives(db) == {"field": newest_field, "cell": read_card(CELL_PACKAGE).name}
        with db.session() as s:
            last = s.scalars(select(ModelActivation).order_by(ModelActivation.id.desc())).first()
            assert (last.action, last.activated_by, last.previous_version_id) == ("setup", "hemascan (upgrade)", None)
            assert s.get(ModelVersion, last.model_version_id).name == newest_field
            assert s.scalar(text("SELECT count(*) FROM model_activations")) == 2  # the user's, then setup's
            assert version_ref(s).name == newest_field  # classify has its field model
        assert any("no field model was active" in r.getMessage() and newest_field in r.getMessage()
                   for r in caplog.records)
    finally:
        db.dispose()


def test_models_lists_the_kind_and_the_active_model_of_each(cli, data_dir, db_url):
    url = url_arg(db_url)
    field, cell = read_card(bundled_default_package()).name, read_card(FIRST_CELL_PACKAGE).name
    rc, out, _ = cli("--db-url", url, "models", "list")
    rows = {ln.lstrip("* ").split()[0]: ln for ln in out.splitlines()}
    assert rc == 0 and rows[field].startswith("*") and rows[cell].startswith("*")  # one active of each kind
    assert rows[field].split()[2] == "field" and rows[cell].split()[2] == "cell"
    rc, _, _ = cli("--db-url", url, "models", "register", "--activate",
                   _renamed_copy(CELL_PACKAGE, data_dir.parent / "c2", "cell-two-v1"))
    assert rc == 0
    rc, out, _ = cli("--db-url", url, "models", "activate", cell)
    assert rc == 0
    said = out.splitlines()[0]
    assert said == (f"{cell} is now the active cell model (it looks at single cells); the active field model, "
                    f"{field}, is unchanged")
    rows = {ln.lstrip("* ").split()[0]: ln for ln in out.splitlines()[1:]}
    assert rows[field].startswith("*") and rows[cell].startswith("*") and not rows["cell-two-v1"].startswith("*")
    rc, out, _ = cli("--db-url", url, "models", "activate", field)
    assert rc == 0 and out.splitlines()[0].startswith(f"{field} is now the active field model")
