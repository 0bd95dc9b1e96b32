"""A model version as ONE file, to move it between workstations.

The file is a zip archive (stored, not compressed) with these members:

* ``card.json``          the model card (name, architecture, classes, preprocessing,
                         parent, training-data summary, metrics, weights SHA-256)
* ``model.safetensors``  the weights, byte for byte as in the registry
* ``model.int8.xml/bin`` only where the card lists them: the checked int8 CPU model
* ``manifest.json``      format marker and the SHA-256 of every other member

Import checks the member names and sizes (plain names only, nothing the card and manifest
do not list), every hash, the card's own SHA-256s, and that the weights load into the
architecture, before anything is registered. Nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.config import Paths
from core.errors import ModelPackageError
from core.models.package import (
    CARD_FILE,
    MAX_CARD_BYTES,
    WEIGHTS_FILE,
    int8_files,
    load_json,
    load_model,
    package_files,
    read_card,
    verify_package,
)
from core.models.store import local_package
from core.models.registry import get_version
from core.models.registry import register_package

MANIFEST = "manifest.json"
FORMAT = "hemascan-model"
FORMAT_VERSION = 1
SUFFIX = ".hsmodel"
MAX_WEIGHTS_BYTES = 2 << 30


class Manifest(BaseModel):
    """manifest.json of a model file (the card inside is checked by core.models.package.CardSchema)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    format: str
    format_version: Annotated[int, Field(ge=1)] = 1
    files: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _int8_names(card) -> list[str]:
    return sorted(((card.int8 or {}).get("files") or {}))


def export_package(package: Path, dest: Path) -> Path:
    """Write the package directory ``package`` as a single file ``dest`` (atomically)."""
    package, dest = Path(package), Path(dest)
    card = verify_package(package)
    if _int8_names(card):
        int8_files(package, card)  # refuse to export files that do not match the card
    members = {name: (package / name).read_bytes() for name in package_files(card)}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": card.name,
                "files": {name: _sha(data) for name, data in members.items()}}
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=dest.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=1))
            for name, data in members.items():
                z.writestr(name, data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def export_model(db, name: str, dest: Path, paths: Paths | None = None) -> Path:
    """Export the registered version ``name`` to ``dest`` (its package materialised on this
    seat from the database when another seat registered it)."""

    with db.session() as s:
        path = local_package(s, get_version(s, name), paths)
    return export_package(path, dest)


def unpack(file: Path, into: Path) -> Path:
    """Check ``file`` and unpack it as a package directory ``into`` (must not exist)."""
    file = Path(file)
    try:
        z = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelPackageError(f"{file} is not a hemascan model file: {exc}") from None
    with z:
        infos = {i.filename: i for i in z.infolist()}
        if not {MANIFEST, CARD_FILE, WEIGHTS_FILE} <= set(infos):
            raise ModelPackageError(f"{file} is not a hemascan model file (members: {', '.join(sorted(infos)) or 'none'})")
        odd = [n for n in infos if Path(n).name != n or n.startswith(".")]
        if odd:
            raise ModelPackageError(f"{file}: member names with paths are not allowed ({', '.join(sorted(odd))})")
        if sum(i.file_size for i in infos.values()) > MAX_WEIGHTS_BYTES or max(
                infos[CARD_FILE].file_size, infos[MANIFEST].file_size) > MAX_CARD_BYTES:
            raise ModelPackageError(f"{file}: a member is implausibly large; refusing it")
        try:
            raw_manifest = z.read(MANIFEST)
            data = {name: z.read(name) for name in infos if name != MANIFEST}
        except (ValueError, zipfile.BadZipFile, OSError) as exc:  # includes CRC errors
            raise ModelPackageError(f"{file} is damaged: {exc}") from None
    raw = load_json(raw_manifest, f"the manifest of {file}")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelPackageError(f"{file} is not a hemascan model file (no {FORMAT} manifest)")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        raise ModelPackageError(f"{file} has an invalid manifest: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    if manifest.format_version > FORMAT_VERSION:
        raise ModelPackageError(f"{file} was written by a newer hemascan (format {manifest.format_version})")
    files = manifest.files
    if set(files) != set(data):
        raise ModelPackageError(f"{file}: its members do not match its manifest")
    for member, content in data.items():
        if files.get(member) != _sha(content):
            raise ModelPackageError(f"{file}: {member} does not match its SHA-256 in the manifest; "
                                    "the file was modified or damaged")
    into = Path(into)
    into.mkdir(parents=True)
    (into / CARD_FILE).write_bytes(data[CARD_FILE])
    card = read_card(into)
    extra = set(data) - {CARD_FILE, WEIGHTS_FILE}
    listed = set(package_files(card)) - {CARD_FILE, WEIGHTS_FILE}
    if extra != listed:
        raise ModelPackageError(f"{file}: its members are not the files its card lists (missing: "
                                f"{', '.join(sorted(listed - extra)) or 'none'}; not listed: {', '.join(sorted(extra - listed)) or 'none'})")
    for name, content in data.items():
        if name != CARD_FILE:
            (into / name).write_bytes(content)
    verify_package(into, card)  # the card's own weights hash
    if _int8_names(card):
        int8_files(into, card)  # and its int8 hashes
    load_model(into, "cpu")  # the weights fit the architecture (safetensors, no pickle)
    return into


def import_model(db, paths: Paths, file: Path, activate: bool = False) -> str:
    """Check and register a model file; returns the version name. Not activated unless asked."""

    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=paths.ensure().models))
    try:
        pkg = unpack(file, tmp / "package")
        with db.session() as s:
            v = register_package(s, paths, pkg, activate=activate, action="import")
            return v.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
