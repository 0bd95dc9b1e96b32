"""Model packages shared through the database: every seat that uses one database sees every
registered version, with no file copying between machines.

When a version is registered (``hemascan models register``/``import``, training, retrain) its
files are recorded in ``model_files`` (name, SHA-256, size) and their bytes stored once per
content in ``model_blobs``. A seat that needs a version it does not hold (another workstation
registered it) materialises it into its own model registry folder: every file's SHA-256 is
checked against the database's record before it is written, the package is checked as a
whole (card schema, weights hash, outputs) before it is renamed into place, and loading
checks the hashes again as it always did.

The bundled packages' bytes are not stored (every installation ships them in resources/):
a file whose content is not in ``model_blobs`` is looked for among the bundled packages by
its SHA-256.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select, true
from sqlalchemy.orm import Session, object_session

from core.config import Paths, resources_dir
from core.storage import ModelBlob, ModelFile, ModelVersion, utcnow
from core.storage.audit import package_digest
from core.storage.dbutil import insert_ignore
from core.errors import ModelPackageError
from core.models.package import (
    CARD_FILE,
    ModelCard,
    bundled_packages,
    load_json,
    package_files,
    package_path,
    read_card,
    sha256_file,
    verify_package,
)

log = logging.getLogger(__name__)

MATERIALISE_LOCK = ".models.lock"


def _bundled_root() -> Path:
    return (resources_dir() / "models").resolve()


def is_bundled(package: Path) -> bool:
    """A package shipped with hemascan (resources/models): its bytes need not be stored."""
    try:
        return Path(package).resolve().is_relative_to(_bundled_root())
    except OSError:
        return False


@lru_cache(maxsize=1)
def _bundled_content() -> dict[str, Path]:
    """SHA-256 -> file, over every bundled package's files (hashed once per process, and only
    when a file is not found in the database)."""
    out: dict[str, Path] = {}
    for package in bundled_packages():
        try:
            card = read_card(package)
        except ModelPackageError:
            continue
        for name in package_files(card):
            f = package / name
            if f.is_file():
                out[sha256_file(f)] = f
    return out


def store_package(session: Session, version: ModelVersion, package: Path) -> int:
    """Record the files of ``package`` (the registered copy of ``version``) and store the bytes
    the database does not hold yet (none for a bundled package). Returns the bytes stored.
    The caller's transaction commits it together with the version row."""
    package = Path(package)
    card = read_card(package)
    bundled = is_bundled(package)
    stored = 0
    records = []
    for name in package_files(card):
        f = package / name
        if not f.is_file():
            raise ModelPackageError(f"model {version.name}: {f} is missing; cannot share the package")
        data = f.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        records.append(dict(model_version_id=version.id, name=name, sha256=sha, size=len(data)))
        if not bundled and session.scalar(select(ModelBlob.sha256).where(ModelBlob.sha256 == sha)) is None:
            insert_ignore(session, ModelBlob.__table__, [dict(sha256=sha, size=len(data), data=data,
                                                                created_at=utcnow())], ["sha256"])
            stored += len(data)
    insert_ignore(session, ModelFile.__table__, records, ["model_version_id", "name"])
    session.flush()
    if version.package_sha256 is None:  # fixed once: a trigger refuses any change afterwards
        version.package_sha256 = package_digest({n: sha for n, (sha, _size) in files_of(session, version).items()})
        session.flush()
    return stored


def files_of(session: Session, version: ModelVersion) -> dict[str, tuple[str, int]]:
    """name -> (sha256, size) of the version's recorded files ({} for a version registered
    before schema 0005 and not shared yet)."""
    return {n: (sha, size) for n, sha, size in session.execute(
        select(ModelFile.name, ModelFile.sha256, ModelFile.size).where(ModelFile.model_version_id == version.id))}


def _content(session: Session, sha: str, version: ModelVersion, name: str) -> bytes:
    """The bytes of one file by its SHA-256: from the database, else (missing or damaged there)
    from this installation's bundled models, so one bad blob never blocks a bundled version."""
    data = session.scalar(select(ModelBlob.data).where(ModelBlob.sha256 == sha))
    if data is not None and hashlib.sha256(bytes(data)).hexdigest() == sha:
        return bytes(data)
    f = _bundled_content().get(sha)
    if f is not None:
        installed = f.read_bytes()
        if hashlib.sha256(installed).hexdigest() == sha:
            if data is not None:
                log.warning("model %s: the database's copy of %s is damaged; using this installation's own file %s",
                            version.name, name, f)
            return installed
    if data is None:
        raise ModelPackageError(
            f"model {version.name}: its file {name} (SHA-256 {sha[:12]}...) is neither in the database nor "
            "among this installation's bundled models; update hemascan on this workstation, or register the "
            "model again from a workstation that holds it")
    raise ModelPackageError(f"model {version.name}: the stored {name} does not match its SHA-256 "
                            f"({sha[:12]}...); refusing to use a modified model")


def _refused_content(version: ModelVersion, where: str) -> ModelPackageError:
    return ModelPackageError(f"model {version.name}: {where} no longer hash to the content it was registered with "
                             f"(package SHA-256 {str(version.package_sha256)[:12]}...); refusing to use it (a changed "
                             "model is a new version: register it under a new name)")


RACY_NS = 3_000_000_000
_local_digests: dict[tuple, str] = {}  # (folder, (name, size, mtime_ns)...) -> digest: a seat hashes its copy once


def local_digest(folder: Path, names: list[str]) -> str | None:
    """:func:`package_digest` of the files ``names`` in ``folder`` (None when one is missing)."""
    try:
        stats = tuple((n, (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns) for n in names)
    except OSError:
        return None
    key = (str(folder), stats)
    if key in _local_digests:
        return _local_digests[key]
    digest = package_digest({n: sha256_file(folder / n) for n in names})
    # a file changed within the file system's clock tick of its last hashing keeps its mtime: as git's
    # "racily clean" rule, only files older than that are remembered by their stat
    if all(time.time_ns() - mtime > RACY_NS for _n, _size, mtime in stats):
        _local_digests[key] = digest
    return digest


def check_identity(session: Session, version: ModelVersion, folder: Path | None,
                   files: dict[str, tuple[str, int]] | None = None) -> None:
    """THE check every seat makes before using a version: the database's record of its files,
    and this seat's copy of them (``folder``, when there), hash to the ``package_sha256`` fixed
    at registration; one sentence otherwise. A version registered before 0008 whose files were
    never recorded has none, and is checked by its weights' hash as before."""
    if version.package_sha256 is None:
        return
    files = files_of(session, version) if files is None else files
    if files and package_digest({n: sha for n, (sha, _size) in files.items()}) != version.package_sha256:
        raise _refused_content(version, "the files the database lists for it")
    if folder is not None and folder.is_dir():
        try:
            names = package_files(read_card(folder))
        except ModelPackageError:
            names = sorted(files)
        if local_digest(folder, names) != version.package_sha256:
            raise _refused_content(version, f"the files of its copy on this workstation ({folder})")


def _refused_name(version: ModelVersion, name: str, why: str) -> ModelPackageError:
    shown = repr(name) if len(name) <= 130 else repr(name[:127]) + "..."
    return ModelPackageError(f"model {version.name}: the database lists a file {shown} for it, {why}; refusing to "
                             "write any of its files (was the database altered? register the model again from a "
                             "workstation that holds it)")


def _checked_contents(session: Session, version: ModelVersion, files: dict[str, tuple[str, int]]) -> dict[str, bytes]:
    """name -> bytes of the version's files, each checked against its SHA-256, after checking
    that the names are exactly those its card makes a package of (:func:`package_files`: the
    card's schema allows only plain file names for the int8 and guard files). A ``model_files``
    row is written by anyone with the lab login, and every name here becomes a path on
    every seat: a name such as ``../../x`` or ``/abs/x`` must never reach the file system."""
    if CARD_FILE not in files:
        odd = sorted(files)[0]
        raise _refused_name(version, odd, f"but no {CARD_FILE}")
    card_bytes = _content(session, files[CARD_FILE][0], version, CARD_FILE)
    card = ModelCard.from_dict(load_json(card_bytes, f"model card of {version.name} in the database"),
                               f"model card of {version.name} in the database")
    expected = package_files(card)
    unexpected = sorted(set(files) - set(expected))
    if unexpected:
        raise _refused_name(version, unexpected[0], "which is not one of the files its card makes a package of "
                            f"({', '.join(expected)})")
    missing = [n for n in expected if n not in files]
    if missing:
        raise ModelPackageError(f"model {version.name}: its file {missing[0]} is not in the database; register "
                                "the model again from a workstation that holds it")
    return {name: card_bytes if name == CARD_FILE else _content(session, files[name][0], version, name)
            for name in expected}


def _inside(folder: Path, name: str, version: ModelVersion) -> Path:
    """``folder / name`` when that is a plain entry of ``folder`` (a second check, after the
    card's: the path cannot lead anywhere else, whatever the name)."""
    target = folder / name
    if Path(name).name != name or name in (".", "..") or target.resolve().parent != folder.resolve():
        raise _refused_name(version, name, "which is not a plain file name inside its package")
    return target


def local_package(session: Session, version: ModelVersion, paths: Paths | None = None) -> Path:
    """The folder of ``version``'s package on this seat, materialised from the database when
    it is not here (under a lock in the data directory; every file's hash checked against the
    database's record, then the package as a whole). A copy that is here is used when its files hash to the
    version's ``package_sha256`` (:func:`check_identity`: on every seat, every time), else refused
    in one sentence (never silently repaired: removing the folder makes the next use fetch the
    database's copy). ``paths`` defaults to the data directory of the
    database the session belongs to (core.storage.open_database); without one, the path stored
    with the version."""
    if paths is None:
        paths = session.info.get("paths")
    files = files_of(session, version)
    if paths is None or not files:
        stored = Path(version.path)
        if not files and not stored.is_dir():
            raise ModelPackageError(f"model {version.name}: its package is not at {stored} and its files are not in "
                                    "the database (registered by an older hemascan elsewhere); register it again "
                                    "on the workstation that has it")
        check_identity(session, version, stored, files)
        return stored
    dest = package_path(paths, version.name)
    if dest.is_dir():  # here already (materialised atomically): its content is the version's, as registered
        check_identity(session, version, dest, files)
        return dest
    from filelock import FileLock

    paths.models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(paths.models / MATERIALISE_LOCK), mode=0o664):  # shared data directories: any user
        if dest.is_dir():  # another process did it meanwhile
            check_identity(session, version, dest, files)
            return dest
        contents = _checked_contents(session, version, files)  # before anything is written
        if version.package_sha256 is not None and package_digest(
                {n: hashlib.sha256(d).hexdigest() for n, d in contents.items()}) != version.package_sha256:
            raise _refused_content(version, "the files the database holds for it")
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=paths.models))
        try:
            for name, data in contents.items():
                target = _inside(tmp, name, version)
                target.write_bytes(data)
                os.chmod(target, 0o644)
            os.chmod(tmp, 0o755)
            verify_package(tmp)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("model %s materialised from the database into %s", version.name, dest)
    return dest


def version_package(version: ModelVersion) -> Path:
    """:func:`local_package` for a version row still attached to its session."""
    session = object_session(version)
    if session is None:
        return Path(version.path)
    return local_package(session, version)


def share_unshared(session: Session) -> list[str]:
    """Store the files of versions registered before schema 0005 whose package is on this seat
    (so other seats can use them); a version whose package is elsewhere is left. Returns
    the names shared."""
    done = set(session.scalars(select(ModelFile.model_version_id).distinct()))
    shared = []
    for v in session.scalars(select(ModelVersion).where(ModelVersion.id.not_in(done) if done else true())):
        package = Path(v.path)
        try:
            card = verify_package(package)
            if card.weights_sha256 != v.weights_sha256:
                continue
            store_package(session, v, package)
            shared.append(v.name)
        except (ModelPackageError, OSError):
            continue  # not here: the seat that registered it shares it
    return shared
