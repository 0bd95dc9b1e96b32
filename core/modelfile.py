"""A model version as ONE file, to move it between workstations.

The file is a zip archive (stored, not compressed) with exactly three members:

* ``card.json``          the model card (name, architecture, classes, preprocessing,
                         parent, training-data summary, metrics, weights SHA-256)
* ``model.safetensors``  the weights, byte for byte as in the registry
* ``manifest.json``      format marker and the SHA-256 of the other two members

Import checks the member names and sizes (no paths, no extra members), both hashes, the
card's own weights SHA-256, and that the weights load into the architecture, before
anything is registered. Nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .config import Paths
from .errors import ModelPackageError
from .modelpkg import CARD_FILE, WEIGHTS_FILE, load_model, read_card, verify_package

MANIFEST = "manifest.json"
FORMAT = "hemascan-model"
FORMAT_VERSION = 1
SUFFIX = ".hsmodel"
MAX_WEIGHTS_BYTES = 2 << 30
MAX_CARD_BYTES = 16 << 20


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_package(package: Path, dest: Path) -> Path:
    """Write the package directory ``package`` as a single file ``dest`` (atomically)."""
    package, dest = Path(package), Path(dest)
    card = verify_package(package)
    weights = (package / WEIGHTS_FILE).read_bytes()
    card_bytes = (package / CARD_FILE).read_bytes()
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": card.name,
                "files": {CARD_FILE: _sha(card_bytes), WEIGHTS_FILE: _sha(weights)}}
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=dest.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=1))
            z.writestr(CARD_FILE, card_bytes)
            z.writestr(WEIGHTS_FILE, weights)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def export_model(db, name: str, dest: Path) -> Path:
    """Export the registered version ``name`` to ``dest``."""
    from .registry import get_version

    with db.session() as s:
        path = Path(get_version(s, name).path)
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
        if set(infos) != {MANIFEST, CARD_FILE, WEIGHTS_FILE}:
            raise ModelPackageError(f"{file} is not a hemascan model file (members: {', '.join(sorted(infos)) or 'none'})")
        if infos[WEIGHTS_FILE].file_size > MAX_WEIGHTS_BYTES or max(
                infos[CARD_FILE].file_size, infos[MANIFEST].file_size) > MAX_CARD_BYTES:
            raise ModelPackageError(f"{file}: a member is implausibly large; refusing it")
        try:
            manifest = json.loads(z.read(MANIFEST))
            card_bytes = z.read(CARD_FILE)
            weights = z.read(WEIGHTS_FILE)
        except (ValueError, zipfile.BadZipFile, OSError) as exc:  # includes CRC errors
            raise ModelPackageError(f"{file} is damaged: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelPackageError(f"{file} is not a hemascan model file (no {FORMAT} manifest)")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelPackageError(f"{file} was written by a newer hemascan (format {manifest.get('format_version')})")
    files = manifest.get("files") or {}
    for member, data in ((CARD_FILE, card_bytes), (WEIGHTS_FILE, weights)):
        if files.get(member) != _sha(data):
            raise ModelPackageError(f"{file}: {member} does not match its SHA-256 in the manifest; "
                                    "the file was modified or damaged")
    into = Path(into)
    into.mkdir(parents=True)
    (into / CARD_FILE).write_bytes(card_bytes)
    (into / WEIGHTS_FILE).write_bytes(weights)
    verify_package(into, read_card(into))  # the card's own weights hash
    load_model(into, "cpu")  # the weights fit the architecture (safetensors, no pickle)
    return into


def import_model(db, paths: Paths, file: Path, activate: bool = False) -> str:
    """Check and register a model file; returns the version name. Not activated unless asked."""
    from .registry import register_package

    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=paths.ensure().models))
    try:
        pkg = unpack(file, tmp / "package")
        with db.session() as s:
            v = register_package(s, paths, pkg, activate=activate)
            return v.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
