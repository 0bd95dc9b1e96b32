"""Detail view: the selected image large (zoom with the wheel or +/-, pan by dragging,
double-click fits), a Grad-CAM overlay toggle, probability bars and the label history."""
from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtCore import QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QGraphicsPixmapItem, QGraphicsScene, QGraphicsView,
                               QHBoxLayout, QHeaderView, QLabel, QScrollArea, QSizePolicy, QSplitter,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

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

    ROW_H = 22
    PERCENT_W = 52  # "100.0%" and a gap
    MIN_BAR_W = 40  # a narrow panel shortens the class names ("…"), never the bars below this

    def __init__(self, parent=None):
        super().__init__(parent)
        self.classes: list[str] = []
        self.probs: list[float] = []
        self.reviewed: str | None = None
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Fixed)

    def set_values(self, classes, probs, reviewed=None) -> None:
        self.classes, self.probs, self.reviewed = list(classes), list(probs), reviewed
        self.setFixedHeight(max(1, len(self.classes)) * self.ROW_H + 4)
        # a narrow panel shortens the names: the pointer shows them whole
        self.setToolTip("\n".join(f"{self._name(c)}: {pr:.1%}" for c, pr in zip(self.classes, self.probs)))
        self.update()

    def _name(self, c: str) -> str:
        return c + (" ✓" if c == self.reviewed else "")

    def row_rects(self, i: int) -> tuple[QRect, QRect, QRect]:
        """Where row i's class name, bar (full length) and percentage are drawn: side by side,
        apart, inside the widget, at any width (the name gives way first)."""
        bold = QFont(self.font())
        bold.setBold(True)
        wanted = max([QFontMetrics(bold).horizontalAdvance(self._name(c)) for c in self.classes] + [60]) + 8
        name_w = max(0, min(wanted, self.width() - self.PERCENT_W - self.MIN_BAR_W))
        bar_w = max(0, self.width() - name_w - self.PERCENT_W)
        y = 2 + i * self.ROW_H
        return (QRect(0, y, name_w, 20), QRect(name_w, y + 3, bar_w, 14),
                QRect(name_w + bar_w + 4, y, self.PERCENT_W - 4, 20))

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        top = int(np.argmax(self.probs)) if self.probs else -1
        for i, c in enumerate(self.classes):
            name, bar, percent = self.row_rects(i)
            pr = self.probs[i] if i < len(self.probs) else 0.0
            f = p.font()
            f.setBold(i == top)
            p.setFont(f)
            p.setPen(self.palette().text().color())
            shown = p.fontMetrics().elidedText(self._name(c), Qt.ElideRight, max(0, name.width() - 8))
            p.drawText(name, Qt.AlignVCenter | Qt.AlignLeft, shown)
            p.fillRect(bar, QColor("#e0e0e0"))
            p.fillRect(QRect(bar.left(), bar.top(), int(bar.width() * pr), bar.height()), class_color(c, self.classes))
            p.drawText(percent, Qt.AlignVCenter | Qt.AlignRight, f"{pr:.1%}")
        p.end()


class HistoryTable(QTableWidget):
    """The label history: asks for room for its header and a few events only, so that the scroll
    area around the side panel does not scroll the bars and the note away for an empty table; it
    takes whatever height is left over and scrolls its own rows."""

    SHOWN_ROWS = 3

    def sizeHint(self) -> QSize:  # noqa: N802  (Qt's name)
        rows = self.SHOWN_ROWS * self.verticalHeader().defaultSectionSize()
        return QSize(super().sizeHint().width(), self.horizontalHeader().sizeHint().height() + rows
                     + 2 * self.frameWidth() + self.horizontalScrollBar().sizeHint().height())


def no_break(name: str | None) -> str | None:
    """A class name as displayed: its hyphens non-breaking (U+2011), so "Pre-B" never wraps as "Pre-" / "B"."""
    return name.replace("-", "\u2011") if name else name


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

    def text(self) -> str:  # the whole line; the screen shows it shortened where narrow (shown())
        return self.full

    def shown(self) -> str:
        return super().text()

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
        self.history = HistoryTable(0, 5)
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
        self.history_title = QLabel("Label history")
        info = QWidget()
        il = QVBoxLayout(info)
        il.setContentsMargins(0, 0, 0, 0)
        il.addWidget(self.bars)
        il.addWidget(self.summary)
        il.addWidget(self.history_title)
        il.addWidget(self.history, 1)
        # A splitter knows nothing of a wrapped label's height for its width: it gave this part less
        # height than the fixed bars and the wrapped note need, and the layout laid the note over the
        # bars. In a scroll area the part always gets its full height, and scrolls when the pane is short.
        self.info_scroll = QScrollArea()
        self.info_scroll.setWidget(info)
        self.info_scroll.setWidgetResizable(True)
        self.info_scroll.setFrameShape(QScrollArea.NoFrame)
        self.info_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # the note wraps, the bars shrink
        self.splitter = QSplitter(Qt.Vertical)
        self.splitter.setObjectName("detailSplitter")
        self.splitter.addWidget(self.view)
        self.splitter.addWidget(self.info_scroll)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        # shares of the first height: a 4:3 field at the panel's width still fits above, and below
        # the four bars, the outside-experience note and three history rows fit without scrolling at 1280 x 760
        self.splitter.setSizes([450, 550])
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
                 f"(<b>{no_break(row.predicted)}</b>, {row.confidence:.1%}) is not reliable")
        elif row.predicted:
            s = f"Predicted <b>{no_break(row.predicted)}</b> ({row.confidence:.1%}, entropy {row.entropy:.2f})"
            if row.uncertain:
                s += " — <i>uncertain</i>"
        else:
            s = "Not predicted by the active model"
        shown = OTHER_TITLE if row.reviewed == OTHER else row.reviewed
        s += f"<br>Reviewed: <b>{no_break(shown)}</b> by {row.reviewer}" if row.reviewed else "<br>Not reviewed"
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
