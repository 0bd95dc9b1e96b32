"""Model version registry: packages copied into the data directory, tracked in the
``model_versions`` table, their files shared through the database (core/models/store.py),
one active per input kind: a field model (it looks at a whole image) and a cell model (it looks
at one cut-out cell) can be active at once. Every switch of an active version goes through
:func:`activate_version`, which appends a row to ``model_activations`` (who, when, from,
to: both of the same kind) in the same transaction."""
from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, aliased

from core.config import Paths, default_reviewer
from core.storage import ModelActivation, ModelVersion
from core.storage.identity import reviewer_for
from core.errors import ModelPackageError
from core.models.taxonomy import TAXONOMIES
from core.models.package import (  # noqa: F401  (bundled_packages: patched by tests through this module)
    bundled_default_package,
    bundled_packages,
    package_files,
    package_path,
    read_card,
    verify_package,
)
from core.models.store import local_package
from core.models.store import store_package

log = logging.getLogger(__name__)

FIELD, CELL = "field", "cell"
INPUT_KINDS = (FIELD, CELL)  # what one input of a model is: a whole image, or one cut-out cell
KIND_LOOKS = {FIELD: "it looks at whole images", CELL: "it looks at single cells"}  # each kind, in words


def input_kind_of(card) -> str:
    """THE rule for a model's input kind, from its card (a ModelCard, or a card dict as stored in
    ``model_versions.card``): cell when the card says ``"input": "cell"`` or its taxonomy was
    learnt on single cells (the taxonomies migration 0007 made cell models); else field. A card
    without ``input`` reads as "field" (the card's default), so an older card of a cell
    taxonomy (ALL-vs-normal before issue 22, or a retrain of it) stays a cell model."""
    declared = card.get("input") if isinstance(card, dict) else getattr(card, "input", None)
    taxonomy = card.get("taxonomy") if isinstance(card, dict) else getattr(card, "taxonomy", None)
    tax = TAXONOMIES.get(taxonomy)
    return CELL if declared == CELL or (tax is not None and tax.input_kind == CELL) else FIELD


def _check_kind(kind: str) -> str:
    if kind not in INPUT_KINDS:
        raise ValueError(f"unknown model input kind {kind!r}; known: {', '.join(INPUT_KINDS)}")
    return kind


@dataclass(frozen=True)
class VersionRef:
    """THE reference to a model version outside a database session (CLI, window, trainer, work
    queue): plain values, safe to hand between threads and to put in a Qt signal. A job given
    one predicts with exactly that version, whatever another seat activates meanwhile."""

    id: int
    name: str
    taxonomy: str
    input_kind: str  # "field" or "cell" (input_kind_of)
    weights_sha256: str

    @classmethod
    def of(cls, version: ModelVersion) -> "VersionRef":
        return cls(version.id, version.name, version.taxonomy, version.input_kind or input_kind_of(version.card or {}),
                   version.weights_sha256)

    def row(self, session: Session) -> ModelVersion:
        """This version's row in ``session``; one sentence when it is no longer registered."""
        version = session.get(ModelVersion, self.id)
        if version is None or version.weights_sha256 != self.weights_sha256:
            raise ModelPackageError(f"model version {self.name!r} (#{self.id}) is no longer registered in this "
                                    "database; choose another with 'hemascan models list'")
        return version


def version_ref(session: Session, name: str | None = None, kind: str = FIELD) -> VersionRef:
    """The version named ``name``, or the active one of input ``kind``, as a :class:`VersionRef`
    (one sentence when there is no such version, or none is active). Only reads."""
    return VersionRef.of(get_version(session, name) if name else require_active_version(session, kind))


def version_ref_by_id(session: Session, version_id: int) -> VersionRef:
    """The version with id ``version_id`` (e.g. the one a queued folder was submitted for)."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise ModelPackageError(f"model version #{version_id} is not registered in this database")
    return VersionRef.of(version)


def version_package(session: Session, version: VersionRef, paths: Paths | None = None) -> Path:
    """The folder of ``version``'s package on this seat (fetched from the database when it is
    not here: core/models/store.py)."""

    return local_package(session, version.row(session), paths)


def register_package(session: Session, paths: Paths, package: Path, activate: bool = False,
                     action: str = "register", who: str | None = None) -> ModelVersion:
    """Verify a package, copy it into the registry (if not already there) and record it, its
    files shared through the database. Registering the same package twice returns the
    existing version. ``activate``: make it the active one (``action`` and ``who`` go into
    the activation log)."""
    package = Path(package)
    card = verify_package(package)  # the card's schema (a safe name among it), hashes, outputs
    existing = session.scalar(select(ModelVersion).where(ModelVersion.name == card.name))
    if existing is not None:
        if existing.weights_sha256 != card.weights_sha256:
            raise ModelPackageError(
                f"a different model named {card.name!r} is already registered; rename one of them"
            )
        if activate:
            activate_version(session, existing, action, who)
        return existing
    dest = package_path(paths, card.name)
    if dest.resolve() != package.resolve():
        paths.models.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=paths.models))
        try:
            for name in package_files(card):  # the package's own files, nothing else it may hold
                if (package / name).is_file():
                    shutil.copyfile(package / name, tmp / name)
                    (tmp / name).chmod(0o644)  # shared read-only data, as save_package writes it
            tmp.chmod(0o755)
            verify_package(tmp)  # what was copied is what was checked
            if dest.exists():  # left by a register killed before its commit: not a registered version
                shutil.rmtree(dest)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    parent_id = None
    if card.parent:
        parent_id = session.scalar(select(ModelVersion.id).where(ModelVersion.name == card.parent))
    version = ModelVersion(
        name=card.name,
        architecture=card.architecture,
        taxonomy=card.taxonomy,
        path=str(dest),
        weights_sha256=card.weights_sha256,
        card=asdict(read_card(dest)),
        parent_id=parent_id,
        input_kind=input_kind_of(card),
    )
    session.add(version)
    session.flush()

    store_package(session, version, dest)  # every seat on this database can use it
    if activate:
        activate_version(session, version, action, who)
    return version


# pg_advisory_xact_lock key serialising activations ("hemaactv" in ASCII): two seats
# switching the model at once never leave two versions active.
PG_ACTIVATION_LOCK_KEY = int.from_bytes(b"hemaactv", "big") & 0x7FFF_FFFF_FFFF_FFFF
ACTIONS = ("setup", "activate", "promote", "rollback", "register", "import", "train")


def activate_version(session: Session, version: ModelVersion, action: str = "activate",
                     who: str | None = None) -> ModelActivation:
    """THE way a version becomes active (registry, model file import, trainer, model panel):
    appends who/when/from/to to ``model_activations`` and moves ``is_active`` among the versions
    of the same input kind (the active model of the other kind stays), in the caller's
    transaction. Returns the new log row."""
    if action not in ACTIONS:
        raise ValueError(f"unknown activation action {action!r}; known: {', '.join(ACTIONS)}")
    if session.get_bind().dialect.name == "postgresql":  # one activation at a time across seats
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_ACTIVATION_LOCK_KEY})
    kind = version.input_kind or input_kind_of(version.card or {})
    previous = active_version(session, kind)
    session.execute(update(ModelVersion).where(ModelVersion.id != version.id, ModelVersion.is_active.is_(True),
                                               ModelVersion.input_kind == kind)
                    .values(is_active=False))
    version.is_active = True
    login, by = reviewer_for(session, None, who or default_reviewer())  # on PostgreSQL: the login's name
    row = ModelActivation(model_version_id=version.id, previous_version_id=previous.id if previous else None,
                          action=action, activated_by=by[:128], login=login)
    session.add(row)
    session.flush()
    return row


def active_version(session: Session, kind: str = FIELD) -> ModelVersion | None:
    """The active version of input ``kind`` ("field" or "cell"), or None. Only reads."""
    return session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True),
                                                     ModelVersion.input_kind == _check_kind(kind)))


# Prefixes of the temporary files and folders that atomic writes leave only when the
# process was killed mid-write (save_package, register_package, model files, quantize, the
# OpenVINO cache). They are removed once they are older than any write can take.
TEMP_PREFIXES = (".tmp-", ".import-")
STALE_AFTER_S = 6 * 3600


WRITER_LOCK = ".writer.lock"  # held by the process writing a package folder (package_workdir)


def _writer_gone(folder: Path) -> bool:
    """The folder is a package being written (it holds WRITER_LOCK) and its writer is gone:
    the OS released the writer's lock when it died, however it died."""
    lock_file = folder / WRITER_LOCK
    lock = FileLock(str(lock_file), is_singleton=False)
    try:
        if not lock_file.is_file():
            return False
        lock.acquire(timeout=0)
    except Timeout:
        return False  # a write in progress
    except OSError:
        return False  # another user's private folder (a shared data directory): its own start tidies it
    lock.release()
    return True


@contextmanager
def package_workdir(paths: Paths):
    """A private folder in the registry to write a whole package in (a retrain's weights,
    guard and int8 model), removed when the block ends, however it ends. Its lock tells the
    next start's :func:`remove_stale_temporaries` at once that a killed writer left it."""
    paths.models.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".tmp-write-", dir=paths.models))
    lock = FileLock(str(folder / WRITER_LOCK), is_singleton=False)
    lock.acquire(timeout=0)
    try:
        yield folder
    finally:
        lock.release()
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_temporaries(paths: Paths, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete leftovers of killed writes under the model registry and the cache: a package
    folder whose writer is gone at once, anything else once older than ``older_than_s`` (a
    write in progress is left alone). Returns what was removed."""
    import time

    removed: list[Path] = []
    now = time.time()
    roots = [paths.models, *(p for p in paths.models.iterdir() if p.is_dir() and not p.name.startswith("."))] \
        if paths.models.is_dir() else []
    roots += [paths.cache / "openvino"]
    for root in roots:
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            if not entry.name.startswith(TEMP_PREFIXES):
                continue
            try:
                abandoned = entry.is_dir() and not entry.is_symlink() and _writer_gone(entry)
                if not abandoned and now - entry.lstat().st_mtime < older_than_s:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
            except OSError:
                continue  # another process got there first, or not ours to remove
    return removed


def require_active_version(session: Session, kind: str = FIELD) -> ModelVersion:
    """The active version of input ``kind``, or one sentence saying there is none (setup could
    not register the bundled model: core/app/bootstrap.py). Only reads."""
    version = active_version(session, kind)
    if version is None:
        raise ModelPackageError(f"no {kind} model is active: the bundled {kind} model could not be registered "
                                "when this data directory was set up (see the log); register one with "
                                f"'hemascan models register PACKAGE --activate' (a {kind} model: {KIND_LOOKS[kind]})")
    return version




def register_bundled(session: Session, paths: Paths) -> list[str]:
    """Register the bundled packages this database does not know yet (a new data directory, or
    a hemascan update that ships a new model); none is activated here. Returns their names."""
    known = set(session.scalars(select(ModelVersion.name)))
    added = []
    for package in bundled_packages():
        try:
            name = read_card(package).name
            if name not in known:
                register_package(session, paths, package, activate=False)
                added.append(name)
        except ModelPackageError as exc:  # one damaged bundled package never blocks the others
            log.warning("bundled model %s not registered: %s", package.name, exc)
    return added


def get_version(session: Session, name: str) -> ModelVersion:
    version = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if version is None:
        names = session.scalars(select(ModelVersion.name)).all()
        raise ModelPackageError(f"no model version {name!r}; registered: {', '.join(names) or 'none'}")
    return version


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


# ---- activation log: every switch of the active version, who and when ----------------------

def activation_log(db) -> list[dict]:
    """The ``model_activations`` rows, oldest first: at, action, name, previous, by, id."""
    prev = aliased(ModelVersion)
    with db.session() as s:
        q = (select(ModelActivation, ModelVersion.name, prev.name, ModelVersion.input_kind)
             .join(ModelVersion, ModelVersion.id == ModelActivation.model_version_id)
             .outerjoin(prev, prev.id == ModelActivation.previous_version_id)
             .order_by(ModelActivation.id))
        return [{"at": a.created_at.isoformat(timespec="seconds") if a.created_at else None, "action": a.action,
                 "name": name, "previous": previous, "by": a.activated_by, "id": a.model_version_id,
                 "input_kind": kind}
                for a, name, previous, kind in s.execute(q)]


def _activate(db, name: str, action: str, who: str | None = None) -> dict:
    with db.session() as s:
        v = get_version(s, name)
        row = activate_version(s, v, action, who)
        prev = s.get(ModelVersion, row.previous_version_id) if row.previous_version_id else None
        return {"at": row.created_at.isoformat(timespec="seconds") if row.created_at else None, "action": action,
                "name": v.name, "previous": prev.name if prev else None, "by": row.activated_by, "id": v.id,
                "input_kind": v.input_kind}


def activate(db, name: str, who: str | None = None) -> dict:
    """Make any registered version active (model panel, `models activate`); logged too."""
    return _activate(db, name, "activate", who)


def promote(db, name: str, who: str | None = None) -> dict:
    """Make the (new) version ``name`` active; recorded in the activation log."""
    return _activate(db, name, "promote", who)


def rollback(db, name: str, who: str | None = None) -> dict:
    """Make an earlier version active again; recorded in the activation log."""
    return _activate(db, name, "rollback", who)


def lineage(db) -> list[dict]:
    """Every registered version with its parent, training-data summary and metrics."""
    with db.session() as s:
        vs = list_versions(s)
        by_id = {v.id: v.name for v in vs}
        return [{"id": v.id, "name": v.name, "parent": by_id.get(v.parent_id), "active": bool(v.is_active),
                 "input_kind": v.input_kind,
                 "architecture": v.architecture, "created_at": v.created_at.isoformat() if v.created_at else None,
                 "training_data": (v.card or {}).get("training_data", {}), "metrics": (v.card or {}).get("metrics", {})}
                for v in vs]


# ---- another seat's activation: what a window polls for -------------------------------------

@dataclass(frozen=True)
class Activation:
    """One ``model_activations`` row, as a window's poller shows it."""

    id: int
    version: VersionRef  # the version made active
    previous_version_id: int | None
    action: str
    by: str
    at: datetime | None


def last_activation_id(session: Session) -> int:
    """The newest activation's id (0 when there is none): where a window starts polling."""
    return session.scalar(select(func.max(ModelActivation.id))) or 0


def activations_since(session: Session, after_id: int, kind: str | None = None) -> list[Activation]:
    """The activations logged after ``after_id`` (by any seat), oldest first, of input ``kind``
    only when given; the last one of a kind's ``version`` is the active one of that kind now.
    Qt-free, one indexed query: cheap enough for a timer.
    No look-back is needed (unlike label events): activations hold a server-wide lock from
    before their id is taken until their commit (:func:`activate_version`), so they become
    visible in id order."""
    q = (select(ModelActivation, ModelVersion).join(ModelVersion, ModelVersion.id == ModelActivation.model_version_id)
         .where(ModelActivation.id > after_id).order_by(ModelActivation.id))
    if kind is not None:
        q = q.where(ModelVersion.input_kind == _check_kind(kind))
    return [Activation(a.id, VersionRef.of(v), a.previous_version_id, a.action, a.activated_by, a.created_at)
            for a, v in session.execute(q)]
