"""Issue 20: a ``model_files`` row is written by anyone with the lab login, and its name
becomes a path on every seat that materialises the version. A name that is not one of the
package's own plain file names is refused with one sentence, and nothing is written,
neither outside the model registry nor inside it.

Two seats (data directories) share one database, on SQLite and on PostgreSQL.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert, select

from core.errors import ModelPackageError
from tests.test_shared_models import _seat


@pytest.fixture(scope="module")
def second_package(tmp_path_factory):
    """A second, valid model package (the bundled weights under another name)."""
    from core.models.package import load_model, save_package
    from core.models.registry import bundled_default_package

    model, card = load_model(bundled_default_package())
    card.name, card.parent, card.placeholder = "row-test-model", card.name, False
    pkg = tmp_path_factory.mktemp("pkg") / "row-test-model"
    save_package(pkg, model.state_dict(), card)
    return pkg


def _files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _register_on_seat_a(tmp_path, db_url, second_package, crafted_name: str, activate: bool = False) -> None:
    """Seat A registers the package; then someone adds a ``model_files`` row named
    ``crafted_name`` whose content (the weights' blob) the database holds."""
    from core.app.bootstrap import open_database, setup_models
    from core.models.registry import register_package
    from core.storage import ModelFile

    a = _seat(tmp_path, "seat-a")
    db_a = open_database(a, db_url)
    try:
        with db_a.session() as s:
            setup_models(s, a)
            v = register_package(s, a, second_package, activate=activate)
            sha, size = s.execute(select(ModelFile.sha256, ModelFile.size).where(
                ModelFile.model_version_id == v.id, ModelFile.name == "model.safetensors")).one()
            s.execute(insert(ModelFile).values(model_version_id=v.id, name=crafted_name, sha256=sha, size=size))
    finally:
        db_a.dispose()


@pytest.mark.parametrize("crafted", ["../../x", "/abs/x", "sub/x", "..", "notes.py"])
def test_a_crafted_file_row_is_refused_and_nothing_is_written(tmp_path, db_url, second_package, crafted):
    from core.app.bootstrap import open_database
    from core.models.registry import get_version
    from core.models.store import local_package

    if crafted.startswith("/"):  # an absolute path this test can look at
        crafted = str(tmp_path / "abs" / "x")
    _register_on_seat_a(tmp_path, db_url, second_package, crafted)
    b = _seat(tmp_path, "seat-b")
    before = _files_under(tmp_path)
    db_b = open_database(b, db_url)
    try:
        with db_b.session() as s:
            with pytest.raises(ModelPackageError) as info:
                local_package(s, get_version(s, "row-test-model"))
    finally:
        db_b.dispose()
    message = str(info.value)
    assert "row-test-model" in message and "refusing to write" in message and "\n" not in message
    assert repr(crafted) in message
    # nothing anywhere: not the crafted file, not the package, not a temporary folder
    new = set(_files_under(tmp_path)) - set(before)
    assert not [f for f in new if not f.startswith("hemascan.sqlite3") and not Path(f).name.startswith(".")], new
    assert not (tmp_path / "abs").exists() and not (tmp_path / "x").exists() and not (b.data_dir / "x").exists()
    assert not (b.models / "row-test-model").exists()
    assert not [p for p in b.models.iterdir() if p.name.startswith(".tmp-")]


def test_classify_on_a_fresh_seat_refuses_a_crafted_active_version(tmp_path, db_url, second_package, cli, data_dir,
                                                                    sample_folder):
    """The seat that activates it (here: classify with it, as the GPU worker does) says so in one
    sentence and exits 2; no file is written."""
    from tests.conftest import url_arg

    _register_on_seat_a(tmp_path, db_url, second_package, "../../../escaped.py", activate=True)
    rc, out, err = cli("--db-url", url_arg(db_url), "classify", sample_folder, "--device", "cpu")
    assert rc == 2, (out, err)
    assert "'../../../escaped.py'" in err and "refusing to write" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("escaped.py"))
    assert not (data_dir / "models" / "row-test-model").exists()


def test_a_version_name_from_the_database_is_checked_too(tmp_path, db_url, second_package):
    """The version's name becomes ``models/<name>``: a renamed row cannot lead out either."""
    from sqlalchemy import update

    from core.app.bootstrap import open_database
    from core.models.store import local_package
    from core.storage import ModelVersion

    _register_on_seat_a(tmp_path, db_url, second_package, "model.safetensors.extra")
    b = _seat(tmp_path, "seat-b")
    db_b = open_database(b, db_url)
    try:
        with db_b.session() as s:
            s.execute(update(ModelVersion).where(ModelVersion.name == "row-test-model").values(name="../outside"))
        with db_b.session() as s:
            v = s.scalar(select(ModelVersion).where(ModelVersion.name == "../outside"))
            with pytest.raises(ModelPackageError, match="model name '../outside' is not allowed"):
                local_package(s, v)
    finally:
        db_b.dispose()
    assert not (b.data_dir / "outside").exists() and not (tmp_path / "outside").exists()


def test_a_weights_hash_from_the_database_never_becomes_a_path(tmp_path):
    """compile_marker names a file after the version's weights hash, a database value."""
    from core.errors import ModelPackageError
    from core.inference.engines import compile_marker

    ok = compile_marker(tmp_path, "ab" * 32, 8)
    assert ok.parent == tmp_path / "compiled" and ok.name.startswith("abababababababab-")
    for bad in ("../../../../../x", "/abs/x/aaaaaaaaaaaaaaa", "short"):
        with pytest.raises(ModelPackageError, match="not a SHA-256 digest"):
            compile_marker(tmp_path, bad, 8)
