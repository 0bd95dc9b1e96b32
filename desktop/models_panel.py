"""Model panel: the registry's versions with their kind (field or cell) and card metrics;
switch the active one of a kind (the window asks before re-classifying with a field model; a
cell model changes nothing in the image gallery); Retrain… opens the Retrain dialog."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QHBoxLayout, QHeaderView, QLabel,
                               QMessageBox, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout)

from core.inference.engines import MIN_INT8_AGREEMENT
from core.models.figures import figures_text
from core.models.registry import list_versions
from core.models.registry import CELL, FIELD, KIND_LOOKS, VersionRef
from core.models.store import version_package
from desktop.workers import Workers
from core.review.reviewed import measure_on_validation_side


def version_info(v) -> dict:
    """Plain data from a ModelVersion row (no ORM object leaves its session); ``ref`` is the
    VersionRef a classify job is given, so it predicts with the version shown."""

    card = dict(v.card or {})
    # this seat's copy of the package (materialised from the database when another seat registered it)
    return dict(id=v.id, name=v.name, architecture=v.architecture, taxonomy=v.taxonomy, path=str(version_package(v)),
                classes=list(card.get("classes", [])), card=card, is_active=bool(v.is_active),
                input_kind=v.input_kind,
                created_at=v.created_at.strftime("%Y-%m-%d %H:%M") if v.created_at else "", ref=VersionRef.of(v))


def trained_on(card: dict) -> str:
    """The training data a card names, in words: e.g. 'all-taleqani (2770 images)'."""
    data = card.get("training_data") or {}
    source, n = data.get("source"), data.get("n_images")
    if not source:
        return "another source (the model card does not say)"
    return f"{source} ({n:,} images)" if isinstance(n, int) else str(source)


def metrics_basis(card: dict) -> str:
    """On what the card's own figures were measured, in words: they differ between versions
    (a held-out test set of a public dataset, or a handful of reviewed validation images),
    so a figure is never shown without it."""
    metrics = card.get("metrics") or {}
    data = card.get("training_data") or {}
    split = data.get("split") if isinstance(data.get("split"), dict) else {}
    if isinstance(metrics.get("as_is"), dict) and split.get("n_test"):
        return f"on {split['n_test']:,} held-out test images of {data.get('source', 'its training data')}"
    cmp = metrics.get("comparison") if isinstance(metrics.get("comparison"), dict) else {}
    if cmp.get("n"):
        return f"on {cmp['n']:,} reviewed validation images"
    return "basis not stated on the card"


def headline_metrics(card: dict) -> str:
    """The card's figures in one line, each with its basis: this version's own and, for a
    retrained one, its parent's (the parent's test figures stay beside a few validation
    images'); then how it runs on a CPU (int8, or fp32 and why)."""
    metrics = card.get("metrics") or {}
    parts = []
    figures = figures_text(card)
    if figures and not card.get("placeholder"):
        parts.append(figures)
    else:
        m = dict(metrics)
        for section in ("as_is", "test"):  # the trainer's held-out test metrics, when present
            if isinstance(metrics.get(section), dict):
                m = {**metrics[section], **{k: v for k, v in metrics.items() if not isinstance(v, dict)}}
                break
        for key in ("accuracy", "macro_f1", "balanced_accuracy", "ece", "test_accuracy", "val_accuracy"):
            if isinstance(m.get(key), (int, float)):
                parts.append(f"{key} {m[key]:.3f}")
        if not parts:
            parts = [f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)][:3]
        if parts and not card.get("placeholder"):
            parts.append(metrics_basis(card))
    int8 = card.get("int8") or {}
    if int8.get("files") and float(int8.get("agreement", 0)) >= MIN_INT8_AGREEMENT:
        parts.append(f"CPU int8 (agrees with fp32 on {float(int8['agreement']):.1%})")
    elif int8.get("reason") and not card.get("placeholder"):
        parts.append(f"runs fp32 on CPUs (no int8 model: {int8['reason']})")
    if card.get("placeholder"):
        parts.insert(0, "placeholder (untrained)")
    return ", ".join(parts) or "no metrics"


def _figures(side: dict) -> str:
    out = f"accuracy {side['accuracy']:.3f}"
    if isinstance(side.get("macro_f1"), (int, float)):
        out += f", macro F1 {side['macro_f1']:.3f}"
    return out


def retrain_measured(versions: list[dict]) -> dict[str, str]:
    """What each retrain measured on its validation images, in words, for the new version and
    for its parent (both run on the same images): name -> text. A parent measured by several
    retrains shows the latest (versions are in registry order)."""
    out: dict[str, str] = {}
    for v in versions:
        cmp = ((v.get("card") or {}).get("metrics") or {}).get("comparison")
        if not isinstance(cmp, dict) or not cmp.get("n"):
            continue
        new, old = cmp.get("new") or {}, cmp.get("old") or {}
        parent = cmp.get("old_name") or (v.get("card") or {}).get("parent")
        if isinstance(new.get("accuracy"), (int, float)):
            out[v["name"]] = (f"{_figures(new)} on the {cmp['n']:,} validation images of the retrain that made it"
                              + (f" (the same images as {parent})" if parent else ""))
        if parent and isinstance(old.get("accuracy"), (int, float)):
            out[parent] = (f"{_figures(old)} on the same {cmp['n']:,} validation images "
                           f"(measured by the retrain that made {v['name']})")
    return out


def same_basis_text(m: dict | None, retrain_text: str | None = None) -> str:
    """The figures of the "On your validation images" column: measured by "Measure on the same
    images"; else what a retrain measured on its validation images; else how to measure."""
    if m is None:
        return retrain_text or "not measured yet (press Measure on the same images)"
    if not m.get("n"):
        return "no validation images yet (the first retrain sets them aside)"
    return f"accuracy {m['accuracy']:.3f}, macro recall {m['macro_recall']:.3f} (n={m['n']})"


KIND_TITLES = {FIELD: "whole images", CELL: "single cells"}  # the "Looks at" column


def active_models_text(versions: list[dict]) -> str:
    """The active field model and the active cell model, in one line for the dialog."""
    active = {v.get("input_kind", FIELD): v["name"] for v in versions if v["is_active"]}
    return (f"Active field model ({KIND_LOOKS[FIELD]}, shown in the image gallery): {active.get(FIELD, 'none')}. "
            f"Active cell model ({KIND_LOOKS[CELL]} found in each image): {active.get(CELL, 'none')}.")


class ModelsDialog(QDialog):
    activateRequested = Signal(int)  # model version id
    retrainRequested = Signal()
    measured = Signal(dict)  # name -> {n, accuracy, macro_recall}
    listed = Signal()  # the table shows the registry's versions
    KIND, SAME_BASIS, FIGURES = 2, 5, 6  # the kind column; the figures columns

    def __init__(self, db, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Model versions")
        self.resize(1240, 420)
        self.db = db
        self.versions: list[dict] = []
        self.table = QTableWidget(0, 7)
        self.table.setHorizontalHeaderLabels(["Active", "Name", "Looks at", "Architecture", "Created",
                                              "On your validation images", "Card's own figures (each on its own images)"])
        self.table.horizontalHeaderItem(self.KIND).setToolTip(
            "A field model classifies whole images (the image gallery); a cell model classifies each white cell "
            "found in them. One of each kind is active.")
        self.active_text = QLabel("")  # the active model of each kind, in words
        self.active_text.setWordWrap(True)
        self.same_basis: dict[str, dict] = {}
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        # the figures columns wrap (a fixed width, rows as tall as their text): nothing is cut off
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(self.SAME_BASIS, QHeaderView.Interactive)
        header.setSectionResizeMode(self.FIGURES, QHeaderView.Stretch)
        self.table.setColumnWidth(self.SAME_BASIS, 280)
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.ElideNone)
        header.sectionResized.connect(lambda *_: self.table.resizeRowsToContents())
        self.activate = QPushButton("Make active…")
        self.activate.clicked.connect(self._activate)
        self.retrain = QPushButton("Retrain…")
        self.retrain.setToolTip("Train a new version from your reviewed labels and compare it with the active one")
        self.retrain.clicked.connect(self.retrainRequested)
        self.measure = QPushButton("Measure on the same images")
        self.measure.setToolTip("Run every version on your fixed validation images (reviewed, never trained on): "
                                "the only figures that compare versions fairly")
        self.measure.clicked.connect(self.measure_same_basis)

        self.workers = Workers(self)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.activate)
        row.addWidget(self.retrain)
        row.addWidget(self.measure)
        row.addStretch(1)
        row.addWidget(buttons)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Versions in the model registry. Predictions are kept per version; "
                             "switching re-classifies only what the new version has not seen."))
        lay.addWidget(self.active_text)
        lay.addWidget(self.table, 1)
        explain = QLabel("“Measure on the same images” runs every version on your reviewed validation images "
                         "(set aside, never trained on), so their figures compare fairly. Until then, a retrained "
                         "version and its parent show what the retrain measured on its own validation images.")
        explain.setWordWrap(True)
        lay.addWidget(explain)
        lay.addLayout(row)
        self.refresh()

    def refresh(self) -> None:
        """Read the versions in a worker; the table fills when they arrive (``listed``)."""
        db = self.db

        def query():
            with db.session() as s:
                return [version_info(v) for v in list_versions(s)]

        self.workers.submit(query, name="model versions", on_result=self._show_versions,
                            on_error=lambda e: QMessageBox.warning(self, "Model versions", str(e)))

    def _show_versions(self, versions: list[dict]) -> None:
        self.activate.setEnabled(True)
        self.versions = versions
        self.table.setRowCount(len(self.versions))
        measured = retrain_measured(self.versions)
        self.active_text.setText(active_models_text(self.versions))
        for r, v in enumerate(self.versions):
            vals = ["●" if v["is_active"] else "", v["name"], KIND_TITLES.get(v.get("input_kind"), "whole images"),
                    v["architecture"], v["created_at"],
                    same_basis_text(self.same_basis.get(v["name"]), measured.get(v["name"])),
                    headline_metrics(v["card"])]
            for c, val in enumerate(vals):
                it = QTableWidgetItem(val)
                if c == 0:
                    it.setTextAlignment(Qt.AlignCenter)
                self.table.setItem(r, c, it)
            if v["is_active"]:
                self.table.selectRow(r)
        self.table.resizeRowsToContents()
        self.listed.emit()

    def measure_same_basis(self) -> None:
        """Every version on its taxonomy's fixed validation side, in a worker."""

        self.measure.setEnabled(False)
        self.measure.setText("Measuring…")
        versions, db = [dict(v, card=None) for v in self.versions], self.db
        self.workers.submit(lambda: measure_on_validation_side(db, versions), name="same-basis metrics",
                            on_result=self._measured, on_error=self._measure_failed)

    def _measured(self, result: dict) -> None:
        self.same_basis = result
        self.measure.setText("Measure on the same images")
        self.measure.setEnabled(True)
        self._show_versions(self.versions)
        self.measured.emit(result)

    def _measure_failed(self, message) -> None:
        self.measure.setText("Measure on the same images")
        self.measure.setEnabled(True)
        QMessageBox.warning(self, "Could not measure", str(message))

    def closeEvent(self, e) -> None:
        self.workers.cancel_all()
        self.workers.wait(30000)
        super().closeEvent(e)

    def _activate(self) -> None:
        r = self.table.currentRow()
        if 0 <= r < len(self.versions) and not self.versions[r]["is_active"]:
            # the activation runs in a worker: the table is read again when it has landed (the
            # window calls refresh); until then a second click cannot log a second activation
            self.activate.setEnabled(False)
            self.activateRequested.emit(self.versions[r]["id"])
