"""Model panel: the registry's versions with their card metrics; switch the active one
(the window asks before re-classifying); Retrain… opens the Retrain dialog."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QHBoxLayout, QHeaderView, QLabel,
                               QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout)

from core.engines import MIN_INT8_AGREEMENT
from core.registry import list_versions


def version_info(v) -> dict:
    """Plain data from a ModelVersion row (no ORM object leaves its session)."""
    card = dict(v.card or {})
    return dict(id=v.id, name=v.name, architecture=v.architecture, taxonomy=v.taxonomy, path=v.path,
                classes=list(card.get("classes", [])), card=card, is_active=bool(v.is_active),
                created_at=v.created_at.strftime("%Y-%m-%d %H:%M") if v.created_at else "")


def trained_on(card: dict) -> str:
    """The training data a card names, in words: e.g. 'all-taleqani (2770 images)'."""
    data = card.get("training_data") or {}
    source, n = data.get("source"), data.get("n_images")
    if not source:
        return "another source (the model card does not say)"
    return f"{source} ({n:,} images)" if isinstance(n, int) else str(source)


def headline_metrics(card: dict) -> str:
    metrics = card.get("metrics") or {}
    m = dict(metrics)
    for section in ("as_is", "test"):  # the trainer's held-out test metrics, when present
        if isinstance(metrics.get(section), dict):
            m = {**metrics[section], **{k: v for k, v in metrics.items() if not isinstance(v, dict)}}
            break
    parts = []
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "ece", "test_accuracy", "val_accuracy"):
        if isinstance(m.get(key), (int, float)):
            parts.append(f"{key} {m[key]:.3f}")
    if not parts:
        parts = [f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)][:3]
    int8 = card.get("int8") or {}
    if int8.get("files") and float(int8.get("agreement", 0)) >= MIN_INT8_AGREEMENT:
        parts.append(f"CPU int8 (agrees with fp32 on {float(int8['agreement']):.1%})")
    if card.get("placeholder"):
        parts.insert(0, "placeholder (untrained)")
    return ", ".join(parts) or "no metrics"


class ModelsDialog(QDialog):
    activateRequested = Signal(int)  # model version id
    retrainRequested = Signal()

    def __init__(self, db, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Model versions")
        self.resize(760, 320)
        self.db = db
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Active", "Name", "Architecture", "Created", "Metrics"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.activate = QPushButton("Make active…")
        self.activate.clicked.connect(self._activate)
        self.retrain = QPushButton("Retrain…")
        self.retrain.setToolTip("Train a new version from your reviewed labels and compare it with the active one")
        self.retrain.clicked.connect(self.retrainRequested)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.activate)
        row.addWidget(self.retrain)
        row.addStretch(1)
        row.addWidget(buttons)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Versions in the model registry. Predictions are kept per version; "
                             "switching re-classifies only what the new version has not seen."))
        lay.addWidget(self.table, 1)
        lay.addLayout(row)
        self.refresh()

    def refresh(self) -> None:
        with self.db.session() as s:
            self.versions = [version_info(v) for v in list_versions(s)]
        self.table.setRowCount(len(self.versions))
        for r, v in enumerate(self.versions):
            vals = ["●" if v["is_active"] else "", v["name"], v["architecture"], v["created_at"],
                    headline_metrics(v["card"])]
            for c, val in enumerate(vals):
                it = QTableWidgetItem(val)
                if c == 0:
                    it.setTextAlignment(Qt.AlignCenter)
                self.table.setItem(r, c, it)
            if v["is_active"]:
                self.table.selectRow(r)

    def _activate(self) -> None:
        r = self.table.currentRow()
        if 0 <= r < len(self.versions) and not self.versions[r]["is_active"]:
            self.activateRequested.emit(self.versions[r]["id"])
            self.refresh()
