"""SQLAlchemy 2 typed ORM. The schema's history lives in resources/migrations (Alembic);
a test checks that these models and the migrations agree."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class AuditChained:
    """The columns of an audit table's hash chain (core/storage/audit.py gives them on insert:
    never set them by hand). The table's name goes into ``core.storage.audit.AUDIT_TABLES``."""

    # NULL only for a moment: a trigger refuses a row without them (an insert around the hook)
    chain_seq: Mapped[int] = mapped_column(BigInteger, nullable=True)  # place in the database's one chain, from 1
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=True)  # the previous event's event_hash
    event_hash: Mapped[str] = mapped_column(String(64), nullable=True)  # SHA-256 of this row's canonical form


class AuditChainHead(Base):
    """The one row naming the chain's last event; locked by every audit write (the chain never forks)."""

    __tablename__ = "audit_chain_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    event_hash: Mapped[str] = mapped_column(String(64))


class Scan(Base):
    """One walk of a folder, with what it found."""

    __tablename__ = "scans"
    id: Mapped[int] = mapped_column(primary_key=True)
    root: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running/completed/cancelled/failed
    n_files: Mapped[int] = mapped_column(Integer, default=0)
    n_new: Mapped[int] = mapped_column(Integer, default=0)
    n_changed: Mapped[int] = mapped_column(Integer, default=0)
    n_unchanged: Mapped[int] = mapped_column(Integer, default=0)
    n_skipped: Mapped[int] = mapped_column(Integer, default=0)
    n_errors: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text)


class Image(Base):
    """An image, identified by the SHA-256 of its content: a moved or renamed file is the
    same image and keeps its labels and predictions."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    phash: Mapped[str] = mapped_column(String(16), index=True)
    format: Mapped[str | None] = mapped_column(String(16))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Fixed train/validation side for retraining, decided once (see retrain issue).
    split: Mapped[str | None] = mapped_column(String(8))

    files: Mapped[list["ImageFile"]] = relationship(back_populates="image")


class ImageFile(Base):
    """A file on disk as last seen by a scan. ``image_id`` is null when the file could not
    be used; ``error`` then says why (recorded, never fatal for the batch)."""

    __tablename__ = "files"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    last_scan_id: Mapped[int | None] = mapped_column(ForeignKey("scans.id"))
    missing: Mapped[bool] = mapped_column(Boolean, default=False)

    image: Mapped[Image | None] = relationship(back_populates="files")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    architecture: Mapped[str] = mapped_column(String(64))
    taxonomy: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    card: Mapped[dict] = mapped_column(JSON)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # active within its input kind: one field model and one cell model can be active at once
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    # what the model looks at (its card's "input"): field (a whole image) or cell (one cut-out cell)
    input_kind: Mapped[str] = mapped_column(String(8), default="field", server_default="field")
    # THE identity of its content: core.storage.audit.package_digest of its files, fixed at registration
    # (None only for a version registered before 0008 whose files were never recorded)
    package_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("image_id", "model_version_id", name="uq_prediction_image_model"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    entropy: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[list] = mapped_column(JSON)
    uncertain: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # how it was computed, e.g. "openvino int8 cpu" or "torch bf16 cuda" (None: before 0003)
    runtime: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the foreign-image guard (core/models/guard.py): True = outside the model's experience; None = the
    # model or engine had no guard (and before 0004). guard_distance: its Mahalanobis distance.
    out_of_distribution: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    guard_distance: Mapped[float | None] = mapped_column(Float, nullable=True)
    # why outside, when not by the guard's distance: a key of core.inference.outcome.OUTSIDE_REASONS
    # ("colour"); None: not flagged, or flagged by the distance (and before 0011)
    outside_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)


class LabelEvent(AuditChained, Base):
    """Append-only audit of labels. Never updated or deleted: the current label of an
    image is its latest event; an undo is a new event."""

    __tablename__ = "label_events"
    __table_args__ = (Index("ix_label_events_image_id_id", "image_id", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    taxonomy: Mapped[str] = mapped_column(String(32))
    label: Mapped[str | None] = mapped_column(String(64))  # None = label cleared
    previous_label: Mapped[str | None] = mapped_column(String(64))
    reviewer: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))  # human / import / dataset
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)
    # issue 24 (0009): the database login that wrote it (on PostgreSQL the session's, checked by
    # a trigger; on SQLite the operating-system account), the prediction the reviewer was shown
    # when labelling (so a correction stays one after a retrain), and an amendment's reason (a
    # change to a released case)
    login: Mapped[str | None] = mapped_column(String(128), nullable=True)
    shown_label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    shown_model_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    amend_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running/completed/failed/cancelled
    architecture: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    parent_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)


class Setting(Base):
    """Small key/value settings that belong with the data (e.g. reviewer defaults)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ModelBlob(Base):
    """The bytes of one file of a model package, by its SHA-256 (content-addressed: a file
    shared by several versions, e.g. an unchanged int8 model, is stored once). Every seat
    that uses this database materialises packages from here (core/models/store.py). The
    bundled packages' files are not stored: every installation ships them."""

    __tablename__ = "model_blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelFile(Base):
    """The files a registered version consists of: name in the package, SHA-256, size."""

    __tablename__ = "model_files"
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class ModelActivation(AuditChained, Base):
    """Append-only log of the active model: every switch, who made it and when, from which
    version to which. Never updated or deleted; ``model_versions.is_active`` follows its
    latest row (core.models.registry.activate_version writes both in one transaction)."""

    __tablename__ = "model_activations"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    action: Mapped[str] = mapped_column(String(16))  # setup / activate / promote / rollback / register / import
    activated_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    login: Mapped[str | None] = mapped_column(String(128), nullable=True)  # 0009: the database login


class WorkFolder(Base):
    """A folder queued for the classify workers (``hemascan submit``) with the model version
    to predict with. Submitting it again adds no row (unique root + version)."""

    __tablename__ = "work_folders"
    __table_args__ = (UniqueConstraint("root", "model_version_id", name="uq_work_folder_root_model"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    # the folder's stored-path prefix (absolute, trailing separator: core.imaging.scan.folder_prefix)
    root: Mapped[str] = mapped_column(Text)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    submitted_by: Mapped[str] = mapped_column(String(128))
    # 0010: what the lab said the folder's images are (core/cells/finder.py IMAGE_KINDS); None: not
    # said (each image keeps the kind it was searched with, new ones "auto")
    image_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)


class WorkItem(Base):
    """One image to predict with one model version: the classify workers' queue.

    ``status``: queued -> running (claimed by ``worker`` under ``claim_token`` until
    ``lease_until``; a worker that dies leaves its lease to expire, and the item is claimed
    again) -> done or failed (``error``). Unique per image and version, as a prediction is."""

    __tablename__ = "work_items"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version_id", name="uq_work_item_image_model"),
        Index("ix_work_items_status_id", "status", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("work_folders.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued/running/done/failed
    worker: Mapped[str | None] = mapped_column(String(128))
    claim_token: Mapped[str | None] = mapped_column(String(32), index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


# ---- cells (issue 22): the white cells found in an image, their predictions and labels ----

class CellSearch(Base):
    """One run of the cell finder (``finder``: its method's name, core.cells.finder.FINDER_NAME)
    on one image: the physical scale it used and how many cells it found. Written in the same
    transaction as the image's cells, also when it found none, so a re-run skips the image."""

    __tablename__ = "cell_searches"
    __table_args__ = (UniqueConstraint("image_id", "finder", name="uq_cell_search_image_finder"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    finder: Mapped[str] = mapped_column(String(32))
    um_per_px: Mapped[float] = mapped_column(Float)  # micrometres per pixel of the original image
    scale_source: Mapped[str] = mapped_column(String(16))  # red_cells (measured) / default (fallback)
    n_red_cells: Mapped[int] = mapped_column(Integer, default=0)
    n_cells: Mapped[int] = mapped_column(Integer, default=0)
    single_cell_crop: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Cell(Base):
    """A white cell in an image: box and outline in the original pixel grid. Identity is the
    image's content hash, the finder and the cell's number in it, so a re-run adds nothing.
    ``source``: found (by ``finder``) or added (a reviewer marked a cell the finder missed;
    ``finder`` is then "reviewer" and ``added_by`` names who)."""

    __tablename__ = "cells"
    __table_args__ = (
        UniqueConstraint("image_id", "finder", "number", name="uq_cell_image_finder_number"),
        Index("ix_cells_image_id", "image_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    finder: Mapped[str] = mapped_column(String(32))
    number: Mapped[int] = mapped_column(Integer)  # 0-based, reading order within the image
    x0: Mapped[int] = mapped_column(Integer)
    y0: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)  # exclusive
    y1: Mapped[int] = mapped_column(Integer)  # exclusive
    contour: Mapped[list] = mapped_column(JSON)  # [[x, y], ...] original pixel grid
    nucleus_contour: Mapped[list | None] = mapped_column(JSON, nullable=True)
    area_px: Mapped[int] = mapped_column(Integer)
    um_per_px: Mapped[float] = mapped_column(Float)
    flags: Mapped[list] = mapped_column(JSON)  # subset of core.cells.finder.CELL_FLAGS
    source: Mapped[str] = mapped_column(String(16), default="found")  # found / added
    added_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CellPrediction(Base):
    """What a cell model said about one cell's cut-out: as :class:`Prediction` for images."""

    __tablename__ = "cell_predictions"
    __table_args__ = (UniqueConstraint("cell_id", "model_version_id", name="uq_cell_prediction_cell_model"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    entropy: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[list] = mapped_column(JSON)
    uncertain: Mapped[bool] = mapped_column(Boolean, default=False)
    out_of_distribution: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    guard_distance: Mapped[float | None] = mapped_column(Float, nullable=True)
    outside_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)  # as Prediction's
    runtime: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CellLabelEvent(AuditChained, Base):
    """Append-only audit of cell labels, with the same rules as :class:`LabelEvent`: never
    updated or deleted; a cell's current label is its latest event; an undo is a new event."""

    __tablename__ = "cell_label_events"
    __table_args__ = (Index("ix_cell_label_events_cell_id_id", "cell_id", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id"))
    taxonomy: Mapped[str] = mapped_column(String(32))
    label: Mapped[str | None] = mapped_column(String(64))  # None = label cleared
    previous_label: Mapped[str | None] = mapped_column(String(64))
    reviewer: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))  # human / import / dataset
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)
    # issue 24 (0009): the database login that wrote it (on PostgreSQL the session's, checked by
    # a trigger; on SQLite the operating-system account), the prediction the reviewer was shown
    # when labelling (so a correction stays one after a retrain), and an amendment's reason (a
    # change to a released case)
    login: Mapped[str | None] = mapped_column(String(128), nullable=True)
    shown_label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    shown_model_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    amend_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Case(Base):
    """A case is a folder (one sample); ``name`` is what the lab calls it (renamable)."""

    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(primary_key=True)
    # the folder's stored-path prefix (absolute, trailing separator: core.imaging.scan.folder_prefix)
    root: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# ---- identities and release (issue 24, migration 0009) ----

class Login(Base):
    """A database login's display name (PostgreSQL: the lab's technologists each have a login;
    the name shown in reports is a property of the login, not typed per seat)."""

    __tablename__ = "logins"
    login: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReleaseEvent(AuditChained, Base):
    """Append-only: a supervisor released a case (a folder, ``case_root`` its stored-path
    prefix): who, when, the SHA-256 of the exact PDF produced and of the case's label state
    (core/review/release.py). A released case takes only amendments (a label event with a reason)."""

    __tablename__ = "release_events"
    __table_args__ = (Index("ix_release_events_case_root", "case_root"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    case_root: Mapped[str] = mapped_column(Text)
    case_name: Mapped[str] = mapped_column(String(200))
    login: Mapped[str | None] = mapped_column(String(128), nullable=True)
    display_name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    pdf_sha256: Mapped[str] = mapped_column(String(64))
    labels_sha256: Mapped[str] = mapped_column(String(64))
