"""Detail view: the selected image large (zoom with the wheel or +/-, pan by dragging,
double-click fits), a Grad-CAM overlay toggle, probability bars and the label history."""
from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QGraphicsPixmapItem, QGraphicsScene, QGraphicsView,
                               QHBoxLayout, QHeaderView, QLabel, QSizePolicy, QSplitter, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from core.models.taxonomy import OTHER, OTHER_TITLE

from .tiles import class_color

GRADCAM_OUTSIDE_TIP = ("This image is outside the model's experience: a Grad-CAM map shows where the network "
                       "looked, which is not meaningful when its answer is not reliable.")


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888).copy()


def heatmap_rgba(cam: np.ndarray, size: int, alpha: float = 0.6) -> QImage:
    """Grad-CAM map in [0, 1] -> a translucent JET-coloured RGBA QImage of size x size."""
    cam = cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    u8 = np.clip(cam * 255, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    a = (np.clip(cam, 0, 1) ** 1.5 * 255 * alpha).astype(np.uint8)  # cool regions stay see-through
    rgba = np.ascontiguousarray(np.dstack([rgb, a]))
    return QImage(rgba.data, size, size, 4 * size, QImage.Format_RGBA8888).copy()


class ImageView(QGraphicsView):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHints(QPainter.Antialiasing | QPainter.SmoothPixmapTransform)
        self.setDragMode(QGraphicsView.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        self.setBackgroundBrush(QColor("#303030"))
        self.setFocusPolicy(Qt.NoFocus)  # keys stay with the gallery (review shortcuts)
        self._pix = QGraphicsPixmapItem()
        self._pix.setTransformationMode(Qt.SmoothTransformation)
        self._overlay = QGraphicsPixmapItem()
        self._overlay.setZValue(1)
        self.scene().addItem(self._pix)
        self.scene().addItem(self._overlay)
        self._fit = True
        self.setMinimumSize(QSize(200, 200))

    def set_image(self, img: QImage | None) -> None:
        self._pix.setPixmap(QPixmap.fromImage(img) if img is not None else QPixmap())
        self._overlay.setPixmap(QPixmap())
        self.scene().setSceneRect(QRectF(self._pix.pixmap().rect()))
        self._fit = True
        self.fit()

    def set_overlay(self, img: QImage | None, offset=(0, 0)) -> None:
        self._overlay.setPixmap(QPixmap.fromImage(img) if img is not None else QPixmap())
        self._overlay.setPos(*offset)

    def has_overlay(self) -> bool:
        return not self._overlay.pixmap().isNull()

    def fit(self) -> None:
        if not self._pix.pixmap().isNull():
            self.fitInView(self._pix, Qt.KeepAspectRatio)
            self._fit = True

    def zoom(self, factor: float) -> None:
        self._fit = False
        self.scale(factor, factor)

    def wheelEvent(self, e) -> None:
        self.zoom(1.25 if e.angleDelta().y() > 0 else 0.8)

    def mouseDoubleClickEvent(self, e) -> None:
        self.fit()

    def resizeEvent(self, e) -> None:
        super().resizeEvent(e)
        if self._fit:
            self.fit()


class ProbabilityBars(QWidget):
    """One horizontal bar per class with its probability; the predicted class bold."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.classes: list[str] = []
        self.probs: list[float] = []
        self.reviewed: str | None = None
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Fixed)

    def set_values(self, classes, probs, reviewed=None) -> None:
        self.classes, self.probs, self.reviewed = list(classes), list(probs), reviewed
        self.setFixedHeight(max(1, len(self.classes)) * 22 + 4)
        self.update()

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        fm = p.fontMetrics()
        name_w = max([fm.horizontalAdvance(c + " ✓") for c in self.classes] + [60]) + 8
        top = int(np.argmax(self.probs)) if self.probs else -1
        for i, c in enumerate(self.classes):
            y = 2 + i * 22
            pr = self.probs[i] if i < len(self.probs) else 0.0
            f = p.font()
            f.setBold(i == top)
            p.setFont(f)
            p.setPen(self.palette().text().color())
            p.drawText(0, y, name_w, 20, Qt.AlignVCenter | Qt.AlignLeft, c + (" ✓" if c == self.reviewed else ""))
            bar_w = self.width() - name_w - 52
            p.fillRect(name_w, y + 3, bar_w, 14, QColor("#e0e0e0"))
            p.fillRect(name_w, y + 3, int(bar_w * pr), 14, class_color(c, self.classes))
            p.drawText(name_w + bar_w + 4, y, 48, 20, Qt.AlignVCenter | Qt.AlignRight, f"{pr:.1%}")
        p.end()


class ElidedLabel(QLabel):
    """One line of plain text that never asks for more width than it is given: a long file
    name is shortened with "…" (the whole name in the tooltip) instead of widening the window."""

    def __init__(self, text: str = "", parent=None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.full = ""
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802  (Qt's name)
        self.full = text
        self.setToolTip(text)
        self._elide()

    def resizeEvent(self, e) -> None:  # noqa: N802
        super().resizeEvent(e)
        self._elide()

    def _elide(self) -> None:
        super().setText(self.fontMetrics().elidedText(self.full, Qt.ElideMiddle, max(20, self.width())))


class DetailPanel(QWidget):
    gradcamToggled = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = ElidedLabel("No image selected")
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.gradcam = QCheckBox("Grad-CAM (G)")
        self.gradcam.setToolTip("Overlay where the model looked (Grad-CAM of the predicted class).\n"
                                "It is computed from the fp32 weights; on a CPU the label may come from the "
                                "package's int8 model, which gives the same label on >= 99.5% of held-out images.")
        self._gradcam_tip = self.gradcam.toolTip()
        self.trained_on = ""  # the training data named on the active model's card
        self.gradcam.setFocusPolicy(Qt.NoFocus)
        self.gradcam.toggled.connect(self.gradcamToggled)
        # the first map of a model takes seconds (the explainer is built): say it is coming
        self.gradcam_busy = QLabel("Computing the heat map…")
        self.gradcam_busy.setStyleSheet("color: #555; font-style: italic")
        self.gradcam_busy.setVisible(False)
        self.view = ImageView()
        self.bars = ProbabilityBars()
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.history = QTableWidget(0, 5)
        self.history.setHorizontalHeaderLabels(["When (local time)", "Reviewer", "From", "To", "Source / note"])
        self.history.verticalHeader().setVisible(False)
        self.history.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.history.setFocusPolicy(Qt.NoFocus)
        self.history.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.history.horizontalHeader().setStretchLastSection(True)

        head = QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.gradcam_busy)
        head.addWidget(self.gradcam)
        info = QWidget()
        il = QVBoxLayout(info)
        il.setContentsMargins(0, 0, 0, 0)
        il.addWidget(self.bars)
        il.addWidget(self.summary)
        il.addWidget(QLabel("Label history"))
        il.addWidget(self.history, 1)
        self.splitter = QSplitter(Qt.Vertical)
        self.splitter.setObjectName("detailSplitter")
        self.splitter.addWidget(self.view)
        self.splitter.addWidget(info)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([440, 260])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(head)
        lay.addWidget(self.splitter, 1)

    def set_gradcam_busy(self, busy: bool) -> None:
        """Show (or hide) that a heat map is being computed for the image shown."""
        self.gradcam_busy.setVisible(busy)

    def show_gradcam_class(self, cls: str) -> None:
        """Which class the overlay shown explains (below the summary, not over the status line)."""
        if "Grad-CAM of class" not in self.summary.text():
            self.summary.setText(f"{self.summary.text()}<br><small>Grad-CAM of class <b>{cls}</b></small>")

    def set_trained_on(self, source: str) -> None:
        """Name the active model's training data (from its card) for the outside-experience note."""
        self.trained_on = source

    def show_row(self, row, classes) -> None:
        if row is None:
            self.title.setText("No image selected")
            self.bars.set_values(classes, [0.0] * len(classes))
            self.summary.setText("")
            self.history.setRowCount(0)
            self.view.set_image(None)
            return
        self.title.setText(row.name)
        self.title.setToolTip(row.path)
        self.bars.set_values(classes, row.probabilities or [0.0] * len(classes), row.reviewed)
        if row.predicted and row.outside:
            s = (f"<span style='color:#b26a00'><b>\u2298 Outside this model's experience</b></span>: its training "
                 f"images came from {self.trained_on or 'another source'}; the class shown "
                 f"(<b>{row.predicted}</b>, {row.confidence:.1%}) is not reliable")
        elif row.predicted:
            s = f"Predicted <b>{row.predicted}</b> ({row.confidence:.1%}, entropy {row.entropy:.2f})"
            if row.uncertain:
                s += " — <i>uncertain</i>"
        else:
            s = "Not predicted by the active model"
        shown = OTHER_TITLE if row.reviewed == OTHER else row.reviewed
        s += f"<br>Reviewed: <b>{shown}</b> by {row.reviewer}" if row.reviewed else "<br>Not reviewed"
        self.summary.setText(s)
        if row.outside:  # said in the summary, which wraps: a longer check box would widen the window
            s += "<br><i>Grad-CAM is not meaningful here.</i>"
            self.summary.setText(s)
        self.gradcam.setText("Grad-CAM (G)")
        self.gradcam.setToolTip(GRADCAM_OUTSIDE_TIP if row.outside else self._gradcam_tip)

    def show_history(self, events: list[dict]) -> None:
        self.history.setRowCount(len(events))
        for r, ev in enumerate(events):
            vals = [ev["when"], ev["reviewer"], ev["from"] or "—", ev["to"] or "(cleared)",
                    ev["source"] + (f": {ev['note']}" if ev["note"] else "")]
            for c, v in enumerate(vals):
                item = QTableWidgetItem(v if len(v) <= 24 or c == 4 else v[:23] + "…")  # a long name stays narrow
                item.setToolTip(v)
                self.history.setItem(r, c, item)
        self.history.scrollToBottom()
