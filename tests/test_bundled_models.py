"""Every package shipped in resources/models is registered; the default stays active."""
import json
import shutil

from core.models import registry
from core.models.registry import active_version, bundled_default_package, list_versions
from core.app.bootstrap import setup_models


def _renamed_copy(tmp_path, name):
    dest = tmp_path / name
    shutil.copytree(bundled_default_package(), dest)
    card = json.loads((dest / "card.json").read_text())
    card["name"] = name
    (dest / "card.json").write_text(json.dumps(card))
    return dest


def test_bundled_packages_are_registered_and_the_default_stays_active(db, paths, tmp_path, monkeypatch):
    with db.session() as s:  # the db fixture is set up as at a first start: the shipped packages are there
        shipped = {v.name for v in list_versions(s)}
    second = _renamed_copy(tmp_path, "second-bundled-v1")
    monkeypatch.setattr(registry, "bundled_packages", lambda: [bundled_default_package(), second])
    with db.session() as s:
        active = setup_models(s, paths).name
        names = [v.name for v in list_versions(s)]
    assert active == json.loads((bundled_default_package() / "card.json").read_text())["name"]
    assert set(names) == shipped | {"second-bundled-v1"}
    # an update ships a third model: it appears on the next start, the active one is unchanged
    third = _renamed_copy(tmp_path, "third-bundled-v1")
    broken = _renamed_copy(tmp_path, "broken-bundled-v1")
    (broken / "card.json").write_text("{")  # one damaged package never blocks the others
    monkeypatch.setattr(registry, "bundled_packages", lambda: [bundled_default_package(), second, third, broken])
    with db.session() as s:
        assert setup_models(s, paths).name == active
        assert {v.name for v in list_versions(s)} == shipped | {"second-bundled-v1", "third-bundled-v1"}
        assert active_version(s).name == active


def test_the_shipped_resources_hold_only_valid_packages():
    from core.models.package import verify_package

    pkgs = registry.bundled_packages()
    assert bundled_default_package() in pkgs
    for p in pkgs:
        verify_package(p)
