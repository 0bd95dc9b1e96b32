"""The window's left side: filter and sort, counts per class, the active model."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout, QWidget

from core.review import gallery as q
from core.review.state import disagreement_possible
from core.models.taxonomy import OTHER, OTHER_TITLE

from .tiles import OUTSIDE_HATCH, OUTSIDE_MARK, class_color
from .models_panel import headline_metrics
from .viewstate import FolderView

STATEMENT = "hemascan supports and does not replace diagnosis: it is not a diagnostic device."
SORTS = (("Confidence (least first)", "confidence"), ("Entropy (highest first)", "entropy"), ("Name", "name"),
         ("Time", "time"))


class FilterPanel(QWidget):
    changed = Signal()  # the user changed a filter or the sort
    problemsRequested = Signal()  # the link to the files that could not be used
    modelsRequested = Signal()
    useActiveRequested = Signal()  # the link to the version another seat made active

    def __init__(self, parent=None):
        super().__init__(parent)
        self.f_pred, self.f_rev, self.sort = QComboBox(), QComboBox(), QComboBox()
        self.f_uncertain = QCheckBox("Uncertain only")
        self.f_outside = QCheckBox(f"{OUTSIDE_MARK} Outside the model's experience only")
        self.f_outside.setToolTip("Images unlike anything the model was trained on (foreign-image guard):\n"
                                  "their predicted class is not reliable")
        self.f_disagree = QCheckBox("Disagreement (reviewed ≠ predicted)")
        for label, key in SORTS:
            self.sort.addItem(label, key)
        self.fill_classes([])
        for w in (self.f_pred, self.f_rev, self.sort):
            w.currentIndexChanged.connect(self._changed)
            w.setFocusPolicy(Qt.ClickFocus)  # the review keys stay with the gallery (desktop/keys.py)
        for w in (self.f_uncertain, self.f_outside, self.f_disagree):
            w.toggled.connect(self._changed)
            w.setFocusPolicy(Qt.ClickFocus)
        fbox = QGroupBox("Filter and sort")
        fl = QFormLayout(fbox)
        fl.addRow("Predicted", self.f_pred)
        fl.addRow("Reviewed", self.f_rev)
        for w in (self.f_uncertain, self.f_outside, self.f_disagree):
            fl.addRow(w)
        fl.addRow("Sort", self.sort)
        self.counts = QLabel()
        self.counts.setTextFormat(Qt.RichText)
        self.counts.setWordWrap(True)  # a long line (copies, problem files) wraps instead of widening the panel
        self.counts.setTextInteractionFlags(Qt.TextSelectableByMouse | Qt.LinksAccessibleByMouse)
        self.counts.linkActivated.connect(lambda _link: self.problemsRequested.emit())
        cbox = QGroupBox("Counts per class")
        QVBoxLayout(cbox).addWidget(self.counts)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        mbox = QGroupBox("Model")
        ml = QVBoxLayout(mbox)
        ml.addWidget(self.model_label)
        self.model_notice = QLabel()  # another seat made another version active (desktop/peers.py)
        self.model_notice.setWordWrap(True)
        self.model_notice.setTextFormat(Qt.RichText)
        self.model_notice.setVisible(False)
        self.model_notice.linkActivated.connect(lambda _link: self.useActiveRequested.emit())
        ml.addWidget(self.model_notice)
        models_btn = QPushButton("Model versions…")
        models_btn.clicked.connect(self.modelsRequested)
        ml.addWidget(models_btn)
        ll = QVBoxLayout(self)
        ll.setContentsMargins(4, 4, 4, 4)
        for box in (fbox, cbox, mbox):
            ll.addWidget(box)
        ll.addStretch(1)
        note = QLabel(f"<small>{STATEMENT}</small>")
        note.setWordWrap(True)
        ll.addWidget(note)

    # ---------------------------------------------------------------- filter
    def fill_classes(self, classes: list[str]) -> None:
        """The class choices of the active model (and "Other" for the reviewed class)."""
        for combo, extra in ((self.f_pred, []), (self.f_rev, [("Unreviewed only", q.UNREVIEWED)])):
            combo.blockSignals(True)
            combo.clear()
            combo.addItem("Any", None)
            for label, data in extra:
                combo.addItem(label, data)
            for c in classes:
                combo.addItem(c, c)
            if combo is self.f_rev:
                combo.addItem(OTHER_TITLE, OTHER)
            combo.blockSignals(False)

    def filter(self) -> q.GalleryFilter:
        return q.GalleryFilter(predicted=self.f_pred.currentData(), reviewed=self.f_rev.currentData(),
                               uncertain_only=self.f_uncertain.isChecked(), outside_only=self.f_outside.isChecked(),
                               disagreement=self.f_disagree.isChecked(), sort=self.sort.currentData())

    def show_filter(self, f: q.GalleryFilter | FolderView) -> list[tuple[str, str]]:
        """Show ``f`` without emitting ``changed`` (a restored, kept or normalised filter).
        Returns what could not be shown, as ("Predicted", "Benign"): a class the model shown
        lacks (that one filter shows Any; the others stay)."""
        lost = []
        for name, combo, value in (("Predicted", self.f_pred, f.predicted), ("Reviewed", self.f_rev, f.reviewed),
                                   ("Sort", self.sort, f.sort)):
            at = combo.findData(value)
            if at < 0 and value is not None:
                lost.append((name, value))
            combo.blockSignals(True)
            combo.setCurrentIndex(max(0, at))  # a class the model no longer has: Any
            combo.blockSignals(False)
        for box, value in ((self.f_uncertain, f.uncertain_only), (self.f_outside, f.outside_only),
                           (self.f_disagree, f.disagreement)):
            box.blockSignals(True)
            box.setChecked(value)
            box.blockSignals(False)
        self._show_possible()
        return lost

    def _show_possible(self) -> None:
        possible = disagreement_possible(self.filter())
        self.f_disagree.setEnabled(possible)
        self.f_disagree.setToolTip("Images whose reviewed class differs from the prediction" if possible else
                                   "Not with the Reviewed filter chosen: those images cannot disagree")

    def _changed(self, *_) -> None:
        self._show_possible()
        self.changed.emit()

    # ---------------------------------------------------------------- counts, model
    def show_model(self, v: dict | None) -> None:
        if v is not None:
            self.model_label.setText(f"<b>{v['name']}</b><br><small>{v['architecture']} · "
                                     f"{headline_metrics(v['card'])}</small>")

    def show_notice(self, text: str | None) -> None:
        """A sentence under the model (with a link to use the active version); None hides it."""
        self.model_notice.setText(text or "")
        self.model_notice.setVisible(bool(text))

    def show_counts(self, c: q.ClassCounts | None, classes: list[str], files: q.FolderFiles | None = None) -> None:
        if c is None:
            self.counts.setText("<i>No folder open.</i>")
            return
        classes = classes or sorted(set(c.predicted) | set(c.reviewed))
        rows = ["<tr><th align='left'>Class</th><th align='right'>&nbsp;Predicted</th>"
                "<th align='right'>&nbsp;Reviewed</th></tr>"]
        for cl in classes:
            pn, rn = c.predicted.get(cl, 0), c.reviewed.get(cl, 0)
            rows.append(f"<tr><td><span style='color:{class_color(cl, classes).name()}'>■</span> {cl}</td>"
                        f"<td align='right'>{pn:,} ({c.pct(pn, c.n_classified):.0f}%)</td>"
                        f"<td align='right'>{rn:,} ({c.pct(rn, c.n_reviewed_classes):.0f}%)</td></tr>")
        # not classes: their own rows, outside the percentages above
        rows.append(f"<tr><td><span style='color:{OUTSIDE_HATCH}'>{OUTSIDE_MARK}</span> Outside experience</td>"
                    f"<td align='right'>{c.n_outside:,}</td><td align='right'></td></tr>")
        rows.append(f"<tr><td><span style='color:{class_color(OTHER).name()}'>■</span> {OTHER_TITLE}</td>"
                    f"<td align='right'></td><td align='right'>{c.reviewed.get(OTHER, 0):,}</td></tr>")
        rows.append(f"<tr><td><b>All</b></td><td align='right'><b>{c.n_predicted:,}</b></td>"
                    f"<td align='right'><b>{c.n_reviewed:,}</b></td></tr>")
        extra = ""
        if files is not None and (files.n_copies > 0 or files.problems):
            extra = f"<br><small>{files.summary()}</small>"
        if files is not None and files.problems:
            extra += f"<br><a href='problems'>Show the {len(files.problems):,} file(s) that could not be used…</a>"
        self.counts.setText(f"<table cellspacing='0' cellpadding='2'>{''.join(rows)}</table>"
                            f"<small>{c.total:,} images · {c.pct(c.n_reviewed, c.total):.0f}% reviewed</small>{extra}")
