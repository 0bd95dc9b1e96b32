"""Help > Licences: hemascan's and every bundled library's licence (core/distribution.py)."""
from __future__ import annotations

from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QHeaderView, QLabel, QPlainTextEdit, QSplitter,
                               QTableWidget, QTableWidgetItem, QVBoxLayout)

from core.distribution import installed_licences, licence_text


class LicencesDialog(QDialog):
    """A table of the bundled distributions (name, version, licence) and the selected one's texts."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Licences")
        self.resize(900, 640)
        self.index, self.folder = installed_licences()
        intro = QLabel(f"hemascan {self.index.hemascan} bundles {len(self.index.entries)} distributions, each "
                       f"under its own licence. {self.index.lgpl_note}")
        intro.setWordWrap(True)
        self.table = QTableWidget(len(self.index.entries), 3)
        self.table.setHorizontalHeaderLabels(["Distribution", "Version", "Licence"])
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setSelectionMode(QTableWidget.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.Stretch)
        for row, e in enumerate(self.index.entries):
            for col, value in enumerate((e.name, e.version, e.licence)):
                self.table.setItem(row, col, QTableWidgetItem(value))
        self.text = QPlainTextEdit(readOnly=True)
        self.text.setLineWrapMode(QPlainTextEdit.NoWrap)
        split = QSplitter()
        split.addWidget(self.table)
        split.addWidget(self.text)
        split.setSizes([420, 480])
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addWidget(split, 1)
        lay.addWidget(buttons)
        self.table.currentCellChanged.connect(lambda row, *_: self.show_entry(row))
        if self.index.entries:
            self.table.selectRow(0)

    def show_entry(self, row: int) -> None:
        if 0 <= row < len(self.index.entries):
            e = self.index.entries[row]
            head = f"{e.name} {e.version}: {e.licence}" + (f"\n({e.note})" if e.note else "")
            self.text.setPlainText(f"{head}\n\n{licence_text(e, self.folder)}")
