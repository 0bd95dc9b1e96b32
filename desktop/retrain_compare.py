"""The Retrain dialog's comparison: the new and the active version on the same validation
images (figures, the 95% range of the accuracy difference, confusion matrices, the images
whose prediction changes), in plain words."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QGridLayout, QHeaderView, QLabel, QSizePolicy, QTableWidget,
                               QTableWidgetItem, QTabWidget, QVBoxLayout, QWidget)

from trainer.retrain import difference_range, images_compared, points, recall_or_none


def table(rows: int, cols: int, headers: list[str] | None = None) -> QTableWidget:
    t = QTableWidget(rows, cols)
    if headers:
        t.setHorizontalHeaderLabels(headers)
    t.setEditTriggers(QAbstractItemView.NoEditTriggers)
    t.setSelectionBehavior(QAbstractItemView.SelectRows)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
    t.horizontalHeader().setStretchLastSection(True)
    t.verticalHeader().setVisible(False)  # row numbers say nothing here
    # compact rows: a table of a few rows fits whole (fit_rows) at the dialog's default size
    t.verticalHeader().setDefaultSectionSize(t.fontMetrics().height() + 8)
    return t


def fit_rows(t: QTableWidget) -> None:
    """Make the table as tall as its rows: every row (the Total, each class) is in view, never
    behind a scroll bar; the layout gives the other parts the rest."""
    t.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    height = t.horizontalHeader().height() if t.horizontalHeader().isVisible() else 0
    height += sum(t.rowHeight(r) for r in range(t.rowCount())) + 2 * t.frameWidth()
    if t.horizontalScrollBar().isVisible():
        height += t.horizontalScrollBar().height()
    t.setFixedHeight(max(height, t.horizontalHeader().sizeHint().height() + 2 * t.frameWidth()))
    t.setSizePolicy(t.sizePolicy().horizontalPolicy(), QSizePolicy.Fixed)


def set_cell(t: QTableWidget, r: int, c: int, text, align=Qt.AlignRight | Qt.AlignVCenter, bg: QColor | None = None):
    it = QTableWidgetItem(str(text))
    it.setTextAlignment(align)
    if bg is not None:
        it.setBackground(bg)
    t.setItem(r, c, it)


ROW_TIPS = {
    "accuracy": "The share of the validation images each version classifies as the reviewer did",
    "macro_f1": "Each class's score (how many of its images are found, and how many found are right: "
                "the F1 score), averaged with every class counting the same",
    "ece": "How far the confidence a version states is from how often it is right (calibration error)",
    "recall": "The share of the class's validation images that the version finds",
}


class ComparisonView:
    """The result tabs (``tabs``) with the difference and warning lines below them, all in
    ``widget``; filled by ``show``."""

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
            ml.addWidget(self.metrics_table)
            ml.addStretch(1)
            self.tabs = QTabWidget()
            self.tabs.addTab(mw, "Comparison")
            self.tabs.addTab(cmw, "Confusion matrices")
            self.tabs.addTab(self.changed, "Changed predictions")
            self.tabs.setEnabled(False)
            # the sentences below the tabs, not inside them: a wrapped label in a tab page gets
            # less height than it needs and is drawn over the table
            self.widget = QWidget()
            wl = QVBoxLayout(self.widget)
            wl.setContentsMargins(0, 0, 0, 0)
            wl.addWidget(self.tabs, 1)
            wl.addWidget(self.diff_label)
            wl.addWidget(self.warning)

    def show(self, cmp: dict | None, old_name: str, new_name: str) -> None:
        self.tabs.setEnabled(cmp is not None)
        if cmp is None:
            self.warning.setText("No validation images: the versions cannot be compared. Review more images.")
            return
        classes = cmp["classes"]
        old, new = cmp["old"], cmp["new"]
        self.metrics_table.setHorizontalHeaderLabels(["", old_name, f"new: {new_name}"])
        for c, name in ((1, old_name), (2, new_name)):
            self.metrics_table.horizontalHeaderItem(c).setToolTip(name)
        header = self.metrics_table.horizontalHeader()
        header.setSectionResizeMode(1, QHeaderView.Stretch)  # long version names share the width
        header.setSectionResizeMode(2, QHeaderView.Stretch)
        rows = [("Accuracy", "accuracy"), ("Score averaged over the classes", "macro_f1"),
                ("How far its confidence is off (lower is better)", "ece")]
        rows += [(f"Recall {c}", ("recall", c)) for c in classes]
        self.metrics_table.setRowCount(len(rows) + 1)
        for r, (label, key) in enumerate(rows):
            set_cell(self.metrics_table, r, 0, label, Qt.AlignLeft | Qt.AlignVCenter)
            self.metrics_table.item(r, 0).setToolTip(ROW_TIPS.get(key if isinstance(key, str) else key[0], ""))
            if isinstance(key, tuple) and None in (recall_or_none(new, key[1]), recall_or_none(old, key[1])):
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
        set_cell(self.metrics_table, len(rows), 0, "Images compared" if cmp.get("basis") else "Validation images",
                 Qt.AlignLeft | Qt.AlignVCenter)
        set_cell(self.metrics_table, len(rows), 1, cmp["n"])
        set_cell(self.metrics_table, len(rows), 2, cmp["n"])
        d = cmp["accuracy_difference"]
        self.diff_label.setText(
            f"The new version is right on {points(d['difference'])} points more of the {images_compared(cmp)} "
            f"than the active one ({difference_range(d['ci95'])}). It fixes "
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
        fit_rows(self.metrics_table)
