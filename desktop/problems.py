"""The files of a folder that could not be used, with the reason for each: opened from the
counts panel, so an unreadable or damaged file is never only in the log."""
from __future__ import annotations

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout

from core.imaging.fspath import display


class ProblemFilesDialog(QDialog):
    def __init__(self, problems: list[tuple[str, str]], folder: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Files that could not be used")
        self.resize(820, 380)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"{len(problems):,} file(s) under {display(folder)} could not be used. They are "
                             "left out of the counts and the report; fix or replace them and classify again."))
        self.table = QTableWidget(len(problems), 2)
        self.table.setHorizontalHeaderLabels(["File", "Reason"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        for r, (path, reason) in enumerate(problems):
            self.table.setItem(r, 0, QTableWidgetItem(display(path)))
            self.table.setItem(r, 1, QTableWidgetItem(reason))
        lay.addWidget(self.table, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
