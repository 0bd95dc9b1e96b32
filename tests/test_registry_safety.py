"""Issue 11, defects 3 and 4: model names cannot reach outside the registry, and model
cards are validated (a schema) on register, import and load.

Every attack starts from a real package (a copy of the bundled default) whose card.json is
edited the way a mailed or hand-edited file could be; the weights stay as they are, so the
weights hash in the card still matches and only the card check can stop it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.storage import ModelVersion
from core.errors import ModelPackageError
from core.models.archive import FORMAT, FORMAT_VERSION, MANIFEST, import_model
from core.models.package import (
    CARD_FILE,
    MAX_CARD_BYTES,
    WEIGHTS_FILE,
    ModelCard,
    load_model,
    read_card,
    save_package,
    validate_model_name,
    verify_package,
)
from core.app.bootstrap import setup_models
from core.models.registry import (
    bundled_default_package,
    bundled_packages,
    list_versions,
    register_package,
)
from core.models.taxonomy import TAXONOMIES

ROOT = Path(__file__).resolve().parent.parent
SUBTYPES = list(TAXONOMIES["all_subtype"].classes)


# ---- helpers ---------------------------------------------------------------------------------


def copy_default(tmp_path: Path, name: str = "pkg") -> Path:
    dest = tmp_path / name
    shutil.copytree(bundled_default_package(), dest)
    return dest


def card_of(pkg: Path) -> dict:
    return json.loads((pkg / CARD_FILE).read_text(encoding="utf-8"))


def write_card(pkg: Path, card: dict) -> None:
    (pkg / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")  # NaN/Infinity as Python writes them


def edited(tmp_path: Path, **changes) -> Path:
    """A copy of the default package whose card has ``changes`` (dotted keys reach into
    ``preprocessing``: ``prep__input_size``)."""
    pkg = copy_default(tmp_path)
    card = card_of(pkg)
    for key, value in changes.items():
        if key.startswith("prep__"):
            card["preprocessing"][key[len("prep__"):]] = value
        else:
            card[key] = value
    write_card(pkg, card)
    return pkg


def sentinel(tmp_path: Path, name: str = "victim") -> Path:
    """A directory outside the models directory that nothing may delete."""
    d = tmp_path / name
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    return d


def assert_intact(d: Path) -> None:
    assert (d / "precious.txt").read_text() == "keep me", f"{d} was modified or deleted"


def model_file(pkg: Path, dest: Path) -> Path:
    """A model file as ``models export`` writes it, built from the package's files as they
    are (so an attacker's card gets a manifest whose hashes match)."""
    card = card_of(pkg)
    guard = (card.get("guard") or {}).get("file")
    names = [CARD_FILE, WEIGHTS_FILE, *sorted((card.get("int8") or {}).get("files") or {}), *([guard] if guard else [])]
    members = {n: (pkg / n).read_bytes() for n in names}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": str(card.get("name")),
                "files": {n: hashlib.sha256(b).hexdigest() for n, b in members.items()}}
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(MANIFEST, json.dumps(manifest))
        for n, b in members.items():
            z.writestr(n, b)
    return dest


def registry_is_clean(db, paths) -> None:
    """Nothing but the bundled packages was registered or copied into the models directory."""
    bundled = [read_card(p).name for p in bundled_packages()]
    with db.session() as s:
        assert [v.name for v in list_versions(s)] == bundled
    leftovers = sorted(p.name for p in paths.models.iterdir())
    assert leftovers == sorted(bundled), leftovers


def one_sentence(message: str) -> None:
    assert "Traceback" not in message and "\n" not in message.strip(), message
    assert len(message) < 400, message


# ---- defect 3: names that are paths ----------------------------------------------------------


@pytest.mark.parametrize("bad", ["../../victim", "ABSOLUTE"])
def test_register_refuses_a_name_that_is_a_path_and_deletes_nothing(tmp_path, db, paths, bad):
    victim = sentinel(tmp_path)
    name = str(victim) if bad == "ABSOLUTE" else bad
    assert (paths.models / name).resolve() == victim.resolve()  # the attack really aims at it
    pkg = edited(tmp_path, name=name)
    with db.session() as s:
        setup_models(s, paths)
    with pytest.raises(ModelPackageError, match="name") as err, db.session() as s:
        register_package(s, paths, pkg, activate=True)
    assert_intact(victim)
    one_sentence(str(err.value))
    registry_is_clean(db, paths)


@pytest.mark.parametrize("bad", ["../../victim", "ABSOLUTE"])
def test_import_refuses_a_name_that_is_a_path_and_deletes_nothing(tmp_path, db, paths, bad):
    victim = sentinel(tmp_path)
    name = str(victim) if bad == "ABSOLUTE" else bad
    file = model_file(edited(tmp_path, name=name), tmp_path / "mailed.hsmodel")
    with db.session() as s:
        setup_models(s, paths)
    with pytest.raises(ModelPackageError, match="name") as err:
        import_model(db, paths, file, activate=True)
    assert_intact(victim)
    one_sentence(str(err.value))
    registry_is_clean(db, paths)
    assert not [p for p in paths.models.iterdir() if p.name.startswith(".import-")]  # its temp dir is gone


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", "/etc", "C:evil", ".hidden", ".tmp-x", "", " x",
                                  "x" * 101, "nul", "CON", "with space", "tab\tname", "new\nline", "é-model"])
def test_unsafe_model_names_are_refused(name):
    with pytest.raises(ModelPackageError, match="name"):
        validate_model_name(name)


@pytest.mark.parametrize("name", ["all-subtype-effnet-lite0-v2", "placeholder-untrained-v0", "timing-effnet_lite0",
                                  "effnet-lite0-retrain12-20261123-190945", "v1.2", "A"])
def test_names_the_trainer_writes_are_accepted(name):
    assert validate_model_name(name) == name


def test_register_does_not_follow_a_symlink_out_of_the_models_directory(tmp_path, db, paths):
    """An entry in the models directory that links elsewhere is never deleted through."""
    victim = sentinel(tmp_path)
    pkg = edited(tmp_path, name="linked-v1")
    (paths.models / "linked-v1").symlink_to(victim, target_is_directory=True)
    with pytest.raises(ModelPackageError, match="outside"), db.session() as s:
        register_package(s, paths, pkg)
    assert_intact(victim)


def test_cli_register_with_a_path_name_exits_2_with_one_line(tmp_path):
    victim = sentinel(tmp_path)
    pkg = edited(tmp_path, name="../../victim")
    data = tmp_path / "lab"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "core", "-q", "--data-dir", str(data), "models", "register", str(pkg)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("hemascan: error:") and "name" in r.stderr, r.stderr
    one_sentence(r.stderr)
    assert_intact(victim)


def test_cli_import_of_a_bad_card_exits_2_with_one_line(tmp_path):
    file = model_file(edited(tmp_path, temperature=-1.0), tmp_path / "mailed.hsmodel")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "core", "-q", "--data-dir", str(tmp_path / "lab"), "models", "import", str(file)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "temperature" in r.stderr
    one_sentence(r.stderr)


# ---- defect 4: cards trusted blindly ---------------------------------------------------------

BAD_CARDS = {
    "temperature -1": (dict(temperature=-1.0), "temperature"),
    "temperature 0": (dict(temperature=0), "temperature"),
    "temperature NaN": (dict(temperature=math.nan), "temperature"),
    "temperature inf": (dict(temperature=math.inf), "temperature"),
    "temperature string": (dict(temperature="1.2"), "temperature"),
    "threshold 1.5": (dict(uncertain_threshold=1.5), "uncertain_threshold"),
    "threshold -0.1": (dict(uncertain_threshold=-0.1), "uncertain_threshold"),
    "threshold NaN": (dict(uncertain_threshold=math.nan), "uncertain_threshold"),
    # the classes of a real taxonomy, but not as many as the weights have outputs (4)
    "2 classes for 4 outputs": (dict(taxonomy="all_vs_normal", classes=["ALL", "Normal"]), "classes"),
    "5 classes, made-up taxonomy": (dict(taxonomy="mine", classes=[*SUBTYPES, "Blast"]), "taxonomy"),
    "3 classes, made-up taxonomy": (dict(taxonomy="mine", classes=SUBTYPES[:3]), "taxonomy"),
    "classes reordered": (dict(classes=[SUBTYPES[1], SUBTYPES[0], *SUBTYPES[2:]]), "classes"),
    "classes renamed": (dict(classes=[*SUBTYPES[:3], "Blast"]), "classes"),
    "input_size -5": (dict(prep__input_size=-5), "input_size"),
    "input_size 20000": (dict(prep__input_size=20000), "input_size"),
    "input_size 0": (dict(prep__input_size=0), "input_size"),
    "input_size 128.5": (dict(prep__input_size=128.5), "input_size"),
    "input_size true": (dict(prep__input_size=True), "input_size"),
    "std 0": (dict(prep__std=[0.2, 0.0, 0.2]), "std"),
    "mean NaN": (dict(prep__mean=[0.4, math.nan, 0.4]), "mean"),
    "corner mask whole image": (dict(prep__corner_mask=[1.0, 1.0]), "corner_mask"),
    "unknown interpolation": (dict(prep__interpolation="lanczos9"), "interpolation"),
    "unknown preprocessing step": (dict(prep__gamma=2.2), "gamma"),
    "unknown architecture": (dict(architecture="resnet9000"), "architecture"),
    "architecture not a string": (dict(architecture=["effnet_lite0"]), "architecture"),
    "arch_params nested": (dict(arch_params={"width": {"a": 1}}), "arch_params"),
    "newer card format": (dict(format_version=99), "format_version"),
    "weights hash not hex": (dict(weights_sha256="../../etc/passwd"), "weights_sha256"),
    "int8 file with a path": (dict(int8={"files": {"../model.int8.xml": "0" * 64}}), "int8"),
    "classes not a list": (dict(classes="Benign"), "classes"),
    "metrics not an object": (dict(metrics=[1, 2]), "metrics"),
}


@pytest.mark.parametrize("case", sorted(BAD_CARDS))
def test_bad_card_is_refused_on_read_with_the_field_named(tmp_path, case):
    changes, field = BAD_CARDS[case]
    pkg = edited(tmp_path, **changes)
    with pytest.raises(ModelPackageError, match=field) as err:
        verify_package(pkg)
    one_sentence(str(err.value))


@pytest.mark.parametrize("case", ["temperature -1", "temperature NaN", "threshold 1.5", "2 classes for 4 outputs",
                                  "5 classes, made-up taxonomy", "3 classes, made-up taxonomy", "input_size -5",
                                  "input_size 20000", "unknown architecture"])
def test_bad_card_is_refused_by_register_and_import_and_leaves_nothing(tmp_path, db, paths, case):
    changes, field = BAD_CARDS[case]
    pkg = edited(tmp_path, name="mailed-v1", **changes)
    with db.session() as s:
        setup_models(s, paths)
    with pytest.raises(ModelPackageError, match=field), db.session() as s:
        register_package(s, paths, pkg, activate=True)
    registry_is_clean(db, paths)
    with pytest.raises(ModelPackageError, match=field):
        import_model(db, paths, model_file(pkg, tmp_path / "mailed.hsmodel"), activate=True)
    registry_is_clean(db, paths)


def test_a_card_edited_after_registration_is_refused_on_load(tmp_path, db, paths):
    """Load validates too: a registered package whose card is changed on disk afterwards
    (by hand, by another tool) is refused before a single image is classified."""
    with db.session() as s:
        pkg = Path(setup_models(s, paths).path)
    card = card_of(pkg)
    card["temperature"] = -1.0
    os.chmod(pkg / CARD_FILE, 0o644)
    write_card(pkg, card)
    with pytest.raises(ModelPackageError, match="temperature"):
        load_model(pkg)
    from core.inference.predict import Predictor  # the classify path (OpenVINO or torch)

    with pytest.raises(ModelPackageError, match="temperature"):
        Predictor(pkg)


def test_deeply_nested_json_is_refused_without_recursion_error(tmp_path):
    pkg = copy_default(tmp_path)
    text = (pkg / CARD_FILE).read_text(encoding="utf-8")
    depth = 100_000
    nested = "[" * depth + "]" * depth
    (pkg / CARD_FILE).write_text(text.replace('"metrics": {', f'"deep": {nested}, "metrics": {{', 1), encoding="utf-8")
    assert (pkg / CARD_FILE).stat().st_size < MAX_CARD_BYTES  # the depth is what is refused, not the size
    with pytest.raises(ModelPackageError, match="nested") as err:
        read_card(pkg)
    one_sentence(str(err.value))


def test_nesting_inside_strings_does_not_count(tmp_path):
    pkg = edited(tmp_path, notes="[[[[" * 1000 + '"{{{{' * 100)
    assert read_card(pkg).notes.startswith("[[[[")


def test_huge_card_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    pkg = copy_default(tmp_path)
    card = card_of(pkg)
    card["notes"] = "x" * (MAX_CARD_BYTES + 10)
    write_card(pkg, card)
    with pytest.raises(ModelPackageError, match="too large") as err:
        read_card(pkg)
    one_sentence(str(err.value))


def test_huge_card_in_a_model_file_is_refused(tmp_path, db, paths):
    pkg = copy_default(tmp_path)
    card = card_of(pkg)
    card["notes"] = "x" * (MAX_CARD_BYTES + 10)
    write_card(pkg, card)
    with pytest.raises(ModelPackageError, match="large"):
        import_model(db, paths, model_file(pkg, tmp_path / "big.hsmodel"))


def test_card_that_is_not_an_object_or_not_utf8_is_refused(tmp_path):
    pkg = copy_default(tmp_path)
    for content in (b"[1, 2]", b"\xff\xfe{}", b"", b"null"):
        (pkg / CARD_FILE).write_bytes(content)
        with pytest.raises(ModelPackageError, match="model card") as err:
            read_card(pkg)
        one_sentence(str(err.value))


# ---- what must keep working ------------------------------------------------------------------


def test_bundled_card_validates_unchanged():
    before = (bundled_default_package() / CARD_FILE).read_bytes()
    card = verify_package(bundled_default_package())
    assert card.classes == SUBTYPES and 0 < card.temperature and 0 <= card.uncertain_threshold <= 1
    assert card.prep.input_size == json.loads(before)["preprocessing"]["input_size"]
    assert (bundled_default_package() / CARD_FILE).read_bytes() == before


def test_a_card_the_trainer_writes_round_trips(tmp_path):
    """save_package validates what it writes, so the trainer cannot write a card that
    load would refuse; a valid one reads back equal."""
    from dataclasses import asdict

    from core.models.architectures import build
    from core.imaging.preprocessing import Preprocessing

    card = ModelCard(name="tiny-v1", architecture="seed_baseline", taxonomy="all_subtype", classes=SUBTYPES,
                     preprocessing=Preprocessing(input_size=40, interpolation="area").to_dict(),
                     temperature=0.87, uncertain_threshold=0.61, metrics={"ece": math.nan}, notes="test")
    saved = save_package(tmp_path / "tiny-v1", build("seed_baseline", 4).state_dict(), card)
    assert json.dumps(asdict(read_card(tmp_path / "tiny-v1"))) == json.dumps(asdict(saved))  # NaN != NaN
    _, loaded = load_model(tmp_path / "tiny-v1")
    assert loaded.prep.input_size == 40


def test_save_package_refuses_a_bad_card_before_writing_anything(tmp_path):
    from core.models.architectures import build

    victim = sentinel(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    bad_name = ModelCard(name="../victim", architecture="seed_baseline", taxonomy="all_subtype", classes=SUBTYPES,
                         preprocessing={"input_size": 40})
    with pytest.raises(ModelPackageError, match="name"):
        save_package(models / "x", build("seed_baseline", 4).state_dict(), bad_name)
    wrong_head = ModelCard(name="wrong-head", architecture="seed_baseline", taxonomy="all_subtype", classes=SUBTYPES,
                           preprocessing={"input_size": 40})
    with pytest.raises(ModelPackageError, match="classes"):
        save_package(models / "wrong-head", build("seed_baseline", 3).state_dict(), wrong_head)
    assert list(models.iterdir()) == []  # no package, no temp dir
    assert_intact(victim)


def test_weights_that_do_not_fit_arch_params_are_refused_before_allocating(tmp_path):
    """arch_params come from the card too: a huge width must not build a huge model."""
    from core.models.architectures import build

    card = ModelCard(name="small-v1", architecture="seed_cnn3", taxonomy="all_subtype", classes=SUBTYPES,
                     preprocessing={"input_size": 48})
    pkg = tmp_path / "small-v1"
    save_package(pkg, build("seed_cnn3", 4).state_dict(), card)
    d = card_of(pkg)
    d["arch_params"] = {"width": 1_000_000}  # seed_cnn3 would allocate ~4 TB of parameters
    write_card(pkg, d)
    with pytest.raises(ModelPackageError, match="do not fit"):  # refused before allocating (else: out of memory)
        load_model(pkg)


def test_models_list_shows_the_bundled_model(cli):
    rc, out, err = cli("models", "list")
    assert rc == 0 and read_card(bundled_default_package()).name in out, err


def test_registering_a_valid_package_still_works(tmp_path, db, paths):
    pkg = edited(tmp_path, name="colleague-v3")
    with db.session() as s:
        setup_models(s, paths)
        v = register_package(s, paths, pkg)
        assert Path(v.path) == paths.models / "colleague-v3"
    with db.session() as s:
        assert s.scalar(select(func.count(ModelVersion.id))) == len(bundled_packages()) + 1
    verify_package(paths.models / "colleague-v3")


def test_classifier_layer_table_covers_every_architecture():
    """The torch-free table the card check reads the weights' output size from names every
    registered architecture and its real final layer (a new architecture must be added)."""
    from core.models.architectures import ARCHITECTURES, build
    from core.models.package import CLASSIFIER_WEIGHTS

    assert set(CLASSIFIER_WEIGHTS) == set(ARCHITECTURES)
    for name, tensor in CLASSIFIER_WEIGHTS.items():
        state = build(name, num_classes=7).state_dict()
        assert state[tensor].shape[0] == 7, name
        assert list(state)[-2] == tensor, f"{name}: {tensor} is not the last layer"


@pytest.mark.parametrize("manifest", [
    '{"format": "hemascan-model", "format_version": "abc", "files": {}}',
    '{"format": "hemascan-model", "format_version": 1, "files": ["card.json"]}',
    '{"format": "hemascan-model", "deep": ' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_a_malformed_manifest_is_one_clear_error(tmp_path, db, paths, manifest):
    file = model_file(copy_default(tmp_path), tmp_path / "m.hsmodel")
    with zipfile.ZipFile(file) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    members[MANIFEST] = manifest.encode()
    with zipfile.ZipFile(file, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ModelPackageError, match="manifest") as err:
        import_model(db, paths, file)
    one_sentence(str(err.value))


def test_guard_record_is_checked_and_its_file_travels_with_the_package(tmp_path, db, paths):
    """The foreign-image guard a card lists (core/models/guard.py) is a package file: a path there is
    refused, and register copies the file along with the weights."""
    pkg = edited(tmp_path, name="guarded-v1", guard={"file": "../guard.safetensors", "sha256": "0" * 64})
    with pytest.raises(ModelPackageError, match="guard"):
        read_card(pkg)
    (pkg / "guard.safetensors").write_bytes(b"guard bytes")
    card = card_of(pkg)
    card["guard"] = {"file": "guard.safetensors", "sha256": hashlib.sha256(b"guard bytes").hexdigest(), "method": "x"}
    write_card(pkg, card)
    (pkg / "unlisted.txt").write_text("not part of the package")
    with db.session() as s:
        setup_models(s, paths)
        v = register_package(s, paths, pkg)
    dest = Path(v.path)
    assert (dest / "guard.safetensors").read_bytes() == b"guard bytes"
    assert not (dest / "unlisted.txt").exists()
    assert read_card(dest).guard["method"] == "x"
