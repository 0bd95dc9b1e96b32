"""The Retrain dialog's comparison: the new and the active version on the same validation
images (metrics, bootstrap interval of the accuracy difference, confusion matrices, the
images whose prediction changes)."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QGridLayout, QHeaderView, QLabel, QTableWidget, QTableWidgetItem,
                               QTabWidget, QVBoxLayout, QWidget)


def table(rows: int, cols: int, headers: list[str] | None = None) -> QTableWidget:
    t = QTableWidget(rows, cols)
    if headers:
        t.setHorizontalHeaderLabels(headers)
    t.setEditTriggers(QAbstractItemView.NoEditTriggers)
    t.setSelectionBehavior(QAbstractItemView.SelectRows)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
    t.horizontalHeader().setStretchLastSection(True)
    return t


def set_cell(t: QTableWidget, r: int, c: int, text, align=Qt.AlignRight | Qt.AlignVCenter, bg: QColor | None = None):
    it = QTableWidgetItem(str(text))
    it.setTextAlignment(align)
    if bg is not None:
        it.setBackground(bg)
    t.setItem(r, c, it)


class ComparisonView:
    """The result tabs (``tabs``) and the warning line, filled by ``show``."""

    def __init__(self):
            self.metrics_table = table(0, 3, ["", "active", "new"])
            self.diff_label = QLabel()
            self.diff_label.setWordWrap(True)
            self.warning = QLabel()
            self.warning.setWordWrap(True)
            self.warning.setStyleSheet("color: #a15c00; font-weight: bold")
            self.cm_old = table(0, 0)
            self.cm_new = table(0, 0)
            self.cm_old_title = QLabel("Active version")
            self.cm_new_title = QLabel("New version")
            cm = QGridLayout()
            cm.addWidget(self.cm_old_title, 0, 0)
            cm.addWidget(self.cm_new_title, 0, 1)
            cm.addWidget(self.cm_old, 1, 0)
            cm.addWidget(self.cm_new, 1, 1)
            cm.addWidget(QLabel("Rows: reviewed class; columns: predicted class."), 2, 0, 1, 2)
            cmw = QWidget()
            cmw.setLayout(cm)
            self.changed = table(0, 5, ["Image", "Reviewed", "Active predicts", "New predicts", ""])
            mw = QWidget()
            ml = QVBoxLayout(mw)
            ml.addWidget(self.metrics_table, 1)
            ml.addWidget(self.diff_label)
            ml.addWidget(self.warning)
            self.tabs = QTabWidget()
            self.tabs.addTab(mw, "Comparison")
            self.tabs.addTab(cmw, "Confusion matrices")
            self.tabs.addTab(self.changed, "Changed predictions")
            self.tabs.setEnabled(False)

    def show(self, cmp: dict | None, old_name: str, new_name: str) -> None:
        self.tabs.setEnabled(cmp is not None)
        if cmp is None:
            self.warning.setText("No validation images: the versions cannot be compared. Review more images.")
            return
        classes = cmp["classes"]
        old, new = cmp["old"], cmp["new"]
        self.metrics_table.setHorizontalHeaderLabels(["", f"active: {old_name}", f"new: {new_name}"])
        rows = [("Accuracy", "accuracy"), ("Macro-F1", "macro_f1"), ("Confidence error (lower is better)", "ece")]
        rows += [(f"Recall {c}", ("recall", c)) for c in classes]
        self.metrics_table.setRowCount(len(rows) + 1)
        support = new.get("support") or {}
        for r, (label, key) in enumerate(rows):
            set_cell(self.metrics_table, r, 0, label, Qt.AlignLeft | Qt.AlignVCenter)
            if isinstance(key, tuple) and key[0] == "recall" and not support.get(key[1], 1):
                # no validation image of the class: its recall is not measured, not 0
                for c in (1, 2):
                    set_cell(self.metrics_table, r, c, "n/a")
                    self.metrics_table.item(r, c).setToolTip(f"No validation image is reviewed as {key[1]}")
                continue
            a = old[key[0]][key[1]] if isinstance(key, tuple) else old[key]
            b = new[key[0]][key[1]] if isinstance(key, tuple) else new[key]
            better = (b < a) if key == "ece" else (b > a)
            worse = (b > a) if key == "ece" else (b < a)
            set_cell(self.metrics_table, r, 1, f"{a:.3f}")
            set_cell(self.metrics_table, r, 2, f"{b:.3f}",
                 bg=QColor("#d9f2d9") if better else QColor("#f8d7d7") if worse else None)
        set_cell(self.metrics_table, len(rows), 0, "Validation images", Qt.AlignLeft | Qt.AlignVCenter)
        set_cell(self.metrics_table, len(rows), 1, cmp["n"])
        set_cell(self.metrics_table, len(rows), 2, cmp["n"])
        d = cmp["accuracy_difference"]
        self.diff_label.setText(
            f"Accuracy difference (new − active): {d['difference']:+.3f}, 95% bootstrap interval "
            f"{d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f} over {d['n']} images. The new version fixes "
            f"{d.get('n_fixed', 0)} and breaks {d.get('n_broken', 0)} predictions; {cmp['n_changed']} change.")
        self.warning.setText(cmp.get("warning") or "")
        for t, m, title, name in ((self.cm_old, old, self.cm_old_title, old_name), (self.cm_new, new, self.cm_new_title, new_name)):
            title.setText(name)
            t.setRowCount(len(classes))
            t.setColumnCount(len(classes))
            t.setHorizontalHeaderLabels(classes)
            t.setVerticalHeaderLabels(classes)
            mat = m["confusion_matrix"]
            top = max(1, max(max(r) for r in mat))
            for i, row in enumerate(mat):
                for j, v in enumerate(row):
                    shade = int(255 - 120 * v / top)
                    bg = QColor(shade, 255, shade) if i == j else QColor(255, shade, shade) if v else None
                    set_cell(t, i, j, v, Qt.AlignCenter, bg)
        ch = cmp["changed"]
        self.changed.setRowCount(len(ch))
        for r, c in enumerate(ch):
            right = "fixed" if c["new"] == c["label"] else "broken" if c["old"] == c["label"] else "still wrong"
            set_cell(self.changed, r, 0, Path(c["path"] or "").name, Qt.AlignLeft | Qt.AlignVCenter)
            set_cell(self.changed, r, 1, c["label"], Qt.AlignLeft | Qt.AlignVCenter)
            set_cell(self.changed, r, 2, f"{c['old']} ({c['old_confidence']:.2f})", Qt.AlignLeft | Qt.AlignVCenter)
            set_cell(self.changed, r, 3, f"{c['new']} ({c['new_confidence']:.2f})", Qt.AlignLeft | Qt.AlignVCenter)
            set_cell(self.changed, r, 4, right, Qt.AlignLeft | Qt.AlignVCenter,
                 QColor("#d9f2d9") if right == "fixed" else QColor("#f8d7d7") if right == "broken" else None)
            self.changed.item(r, 0).setToolTip(c["path"] or "")
        self.tabs.setTabText(2, f"Changed predictions ({len(ch)})")
