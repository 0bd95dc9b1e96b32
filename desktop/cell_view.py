"""The cell view: the folder's white cells cut out of their fields, in galleries grouped by the
cell model's predicted class under a heading with the count, least confident first (the order
of a CellaVision verification screen); the selected cell's field beside them with every cell
outlined and the selected one highlighted (zoom, pan, fit as the detail view); the case's
differential (core.review.differential: N, each class's % with its 95% interval, the blast
line and how many more cells to count, what is counted apart, the reviewers' agreement): its
counts follow a key at once, from the rows in memory, and the database's answer (other seats'
labels, the agreement) after the save; a cell the finder missed added by dragging a box on
the field.

The decisions are core.review.state's (a ReviewState over the cells' own undo stack), the
rows core.review.cells'; labels go through the window's LabelWriter (its cell writes). Every
read, decode and cut-out runs on the pool; the GUI thread keeps the rows in memory."""
from __future__ import annotations

import dataclasses
import html
import threading
from collections import OrderedDict

from PySide6.QtCore import QAbstractListModel, QItemSelectionModel, QModelIndex, QObject, QPointF, QRect, QRectF, \
    QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPalette, QPen, QPolygonF
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QCheckBox, QComboBox, QCompleter, QGraphicsPolygonItem,
                               QGraphicsRectItem,
                               QGraphicsView,
                               QHBoxLayout, QHeaderView, QLabel, QListView, QSplitter, QStyle, QStyledItemDelegate,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from core.cells.finder import DEFAULT_UM_PER_PX, cut_out, decode_for_cells
from core.cells.records import add_cell, cell_title
from core.imaging.fspath import to_fs
from core.imaging.images import read_file
from core.models.taxonomy import OTHER, OTHER_TITLE
from core.models.taxonomy import blast_class
from core.review.cells import CellRow, FieldRow, active_cell_version, current_cell_labels, disagreeing_cells, \
    OUTSIDE_GROUP, folder_cells, folder_fields, image_scale
from core.review.differential import INTERVAL_NOTE, CaseCell, Differential, case_differential, summarise
from core.review.labels import CELL, LabelWriter
from core.review.session import ReviewSession
from core.review.state import OUTSIDE, UNSURE, Outcome, ReviewState, class_keys

from .controller import Controller
from .detail import ElidedLabel, ImageView, rgb_to_qimage
from .detail_view import decode_full
from .flow_layout import FlowLayout
from .tiles import PoolImageCache, class_color


CELL_THUMB = 96  # px, logical
CELL_SIDE_UM = 18.0  # the cut-out's side: a cell with a rim of its surroundings
CELL_TILE = QSize(CELL_THUMB + 12, CELL_THUMB + 28)
ROW_ROLE = Qt.UserRole + 1
HEADING_HEIGHT = 26


def in_cell_words(sentence: str) -> str:
    """The review state's sentences speak of images; here they are about cells."""
    return sentence.replace("images", "cells").replace("image", "cell")


class QueuedCellReview(ReviewSession):
    """Review actions on cells with undo/redo, written through the window's LabelWriter (its
    cell writes: never blocking a key). What a cell is labelled before an action is what the
    view shows, with the writer's queue on top."""

    def __init__(self, db, writer: LabelWriter, shown):
        super().__init__(db, "")
        self.writer, self.shown = writer, shown

    def _write(self, targets: dict[int, str | None], note: str) -> None:
        self.writer.write_cells(targets, self.reviewer, self.taxonomy, note)

    def label(self, cell_ids, label: str | None, note: str | None = None):
        ids = list(dict.fromkeys(cell_ids))  # the description is what an undo's note repeats
        return self.apply({i: label for i in ids}, f"label {len(ids)} cell(s) as {label}", note)

    def current(self, cell_ids) -> dict[int, str | None]:
        got = self.shown(cell_ids)
        pending = self.writer.pending_labels(self.taxonomy, kind=CELL)
        return {i: pending[i] if i in pending else got[i] for i in got}


# ---------------------------------------------------------------- the gallery's model
@dataclasses.dataclass(frozen=True)
class Heading:
    group: str
    count: int
    labelled: int = 0  # cells of an outside-experience group a reviewer labelled: counted in their class


def _heading(group: str, rows) -> Heading:
    """A group's heading. The outside-experience group counts its unlabelled cells, as the
    differential does (a labelled cell counts in its class there), and says how many it still
    shows labelled: the tile stays where the reviewer found it."""
    mine = [r for r in rows if r.group == group]
    if group != OUTSIDE_GROUP:
        return Heading(group, len(mine))
    labelled = sum(1 for r in mine if r.reviewed)
    return Heading(group, len(mine) - labelled, labelled)


class CellModel(QAbstractListModel):
    """The cells in review order, a heading item before each group (not selectable)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.items: list[CellRow | Heading] = []
        self._pos: dict[int, int] = {}

    def set_rows(self, rows: list[CellRow]) -> None:
        self.beginResetModel()
        self.items = []
        for row in rows:
            if not self.items or self._group_of_last() != row.group:
                self.items.append(_heading(row.group, rows))
            self.items.append(row)
        self._pos = {it.cell_id: k for k, it in enumerate(self.items) if isinstance(it, CellRow)}
        self.endResetModel()

    def _group_of_last(self) -> str | None:
        for it in reversed(self.items):
            return it.group
        return None

    def rows(self) -> list[CellRow]:
        return [it for it in self.items if isinstance(it, CellRow)]

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.items)

    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid() or index.row() >= len(self.items):
            return None
        it = self.items[index.row()]
        if role == ROW_ROLE:
            return it
        if role in (Qt.DisplayRole, Qt.AccessibleTextRole):
            return heading_text(it) if isinstance(it, Heading) else tile_caption(it)
        if role == Qt.ToolTipRole and isinstance(it, CellRow):
            return f"{cell_title(it.name, it.number)}\n{tile_caption(it)}" + (
                f"\nreviewed by {it.reviewer}" if it.reviewer else "")
        return None

    def flags(self, index):
        if not index.isValid():
            return Qt.NoItemFlags
        return Qt.NoItemFlags if isinstance(self.items[index.row()], Heading) else Qt.ItemIsEnabled | Qt.ItemIsSelectable

    def row_of(self, cell_id: int) -> int | None:
        return self._pos.get(cell_id)

    def cell_at(self, row: int) -> CellRow | None:
        it = self.items[row] if 0 <= row < len(self.items) else None
        return it if isinstance(it, CellRow) else None

    def labels_of(self, cell_ids) -> dict[int, str | None]:
        return {i: self.items[self._pos[i]].reviewed if i in self._pos else None for i in cell_ids}

    def set_labels(self, labels: dict[int, str | None], reviewer: str | None) -> None:
        self.set_reviewed({i: (label, reviewer) for i, label in labels.items()})

    def set_reviewed(self, labels: dict[int, tuple[str | None, str | None]]) -> None:
        """cell id -> (label, its reviewer): the labels shown."""
        for i, (label, reviewer) in labels.items():
            at = self._pos.get(i)
            if at is None:
                continue
            self.items[at] = dataclasses.replace(self.items[at], reviewed=label,
                                                 reviewer=reviewer if label is not None else None)
            self.dataChanged.emit(self.index(at), self.index(at))
        rows = self.rows()
        for k, it in enumerate(self.items):  # the headings follow the labels
            if isinstance(it, Heading) and it.group == OUTSIDE_GROUP:
                self.items[k] = _heading(it.group, rows)
                self.dataChanged.emit(self.index(k), self.index(k))

    def cell_ready(self, cell_id: int) -> None:
        at = self._pos.get(cell_id)
        if at is not None:
            self.dataChanged.emit(self.index(at), self.index(at), [Qt.DecorationRole])


def heading_text(h: Heading) -> str:
    text = f"{h.group} — {h.count} cell{'s' if h.count != 1 else ''}"
    return text + (f" · {h.labelled} labelled" if h.labelled else "")


def tile_caption(r: CellRow) -> str:
    """What a cell's tile says: the reviewer's class once reviewed, else the model's (with "?"
    when unsure), and "added" for a cell a reviewer marked."""
    added = " · added" if r.source == "added" else ""
    if r.reviewed:
        shown = OTHER_TITLE if r.reviewed == OTHER else r.reviewed
        mark = "\u2713" if r.reviewed == r.predicted and not r.outside else "\u270e"
        return f"{mark} {shown}{added}"
    if r.predicted is None:
        return f"not classified{added}"
    if r.outside:
        return f"\u2298 outside{added}"
    return ("? " if r.uncertain else "") + f"{r.predicted} {r.confidence:.0%}{added}"


class ElidedCombo(QComboBox):
    """The Field box: a long file name is shortened in the middle while the box is not being
    typed in (the whole name in the tooltip), instead of showing only its end."""

    help = ""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.currentIndexChanged.connect(lambda _i: self.elide())

    def elide(self) -> None:
        edit = self.lineEdit()
        if edit is None or edit.hasFocus():
            return
        full = self.itemText(self.currentIndex()) if self.currentIndex() >= 0 else ""
        self.setToolTip(f"{full}\n\n{self.help}" if full else self.help)
        room = edit.width() - 2 * edit.fontMetrics().horizontalAdvance("x")
        edit.setText(edit.fontMetrics().elidedText(full, Qt.ElideMiddle, max(40, room)))
        edit.setCursorPosition(0)

    def resizeEvent(self, e) -> None:  # noqa: N802
        super().resizeEvent(e)
        self.elide()

    def focusOutEvent(self, e) -> None:  # noqa: N802
        super().focusOutEvent(e)
        self.elide()


# ---------------------------------------------------------------- cut-outs, off the GUI thread
class CellThumbs(PoolImageCache):
    """Cut-outs by cell id; each field decoded once for all its cells (a small cache of
    decoded fields, on the pool side)."""

    def __init__(self, workers, size_px: int, max_items: int = 3000, parent=None):
        super().__init__(workers, name="cell cut-out", max_bytes=max_items * size_px * size_px * 4, parent=parent)
        self.size_px = size_px
        self._fields: OrderedDict[str, tuple] = OrderedDict()  # path -> (rgb, reduced_by), pool side
        self._lock = threading.Lock()

    def get(self, row: CellRow):
        return self.request(row.cell_id, row)

    def _field(self, path: str):
        with self._lock:
            hit = self._fields.get(path)
            if hit is not None:
                self._fields.move_to_end(path)
                return hit
        field = decode_for_cells(read_file(to_fs(path)))
        with self._lock:
            self._fields[path] = field
            while len(self._fields) > 6:
                self._fields.popitem(last=False)
        return field

    def make(self, row: CellRow):  # pool thread
        rgb, reduced_by = self._field(row.path)
        cut = cut_out(rgb, row, row.um_per_px, side_um=CELL_SIDE_UM, out_px=self.size_px, reduced_by=reduced_by)
        return rgb_to_qimage(cut)

    def clear(self) -> None:
        super().clear()
        with self._lock:
            self._fields.clear()


class CellDelegate(QStyledItemDelegate):
    def __init__(self, thumbs: CellThumbs, classes_fn, view: QListView, parent=None):
        super().__init__(parent)
        self.thumbs, self.classes_fn, self.view = thumbs, classes_fn, view

    def sizeHint(self, option, index) -> QSize:  # noqa: N802
        if isinstance(index.data(ROW_ROLE), Heading):  # a whole line: the next group starts below it
            return QSize(max(CELL_TILE.width(), self.view.viewport().width() - 12), HEADING_HEIGHT)
        return CELL_TILE

    def paint(self, p: QPainter, option, index) -> None:
        it = index.data(ROW_ROLE)
        if it is None:
            return
        p.save()
        classes = self.classes_fn()
        if isinstance(it, Heading):
            f = QFont(option.font)
            f.setBold(True)
            p.setFont(f)
            color = QColor("#546e7a") if it.group not in classes else class_color(it.group, classes)
            p.fillRect(option.rect.adjusted(0, HEADING_HEIGHT - 4, 0, 0), color)
            p.setPen(option.palette.color(QPalette.Active, QPalette.WindowText))  # a heading is not a greyed item
            room = option.rect.adjusted(4, 0, -4, -4)
            p.drawText(room, Qt.AlignLeft | Qt.AlignVCenter,
                       p.fontMetrics().elidedText(heading_text(it), Qt.ElideRight, room.width()))
            p.restore()
            return
        r: CellRow = it
        rect = option.rect.adjusted(2, 2, -2, -2)
        selected = bool(option.state & QStyle.State_Selected)
        pal = option.palette
        p.fillRect(rect, pal.highlight().color().lighter(160) if selected else pal.base().color())
        thumb = QRect(rect.left() + 4, rect.top() + 4, rect.width() - 8, CELL_THUMB)
        img = self.thumbs.get(r)
        if img is not None:
            p.drawImage(thumb, img)
        else:
            p.fillRect(thumb, QColor("#e0e0e0"))
            p.setPen(QColor("#757575"))
            p.drawText(thumb, Qt.AlignCenter, "unreadable" if self.thumbs.failed(r.cell_id) else "…")
        band = QRect(rect.left(), thumb.bottom() + 3, rect.width(), rect.bottom() - thumb.bottom() - 3)
        if r.reviewed:
            p.fillRect(band, class_color(r.reviewed, classes))
        elif r.outside or r.predicted is None:
            p.fillRect(band, QColor("#37474f"))
        else:
            p.fillRect(band, class_color(r.predicted, classes))
        f = QFont(option.font)
        f.setPointSizeF(max(7.0, f.pointSizeF() * 0.8))
        p.setFont(f)
        p.setPen(Qt.white)
        p.drawText(band.adjusted(3, 0, -3, 0), Qt.AlignVCenter | Qt.AlignLeft,
                   p.fontMetrics().elidedText(tile_caption(r), Qt.ElideRight, band.width() - 6))
        if r.reviewed and r.predicted and r.reviewed != r.predicted and r.reviewed != OTHER and not r.outside:
            p.setPen(QPen(QColor("#d32f2f"), 3))  # a correction, as on the image tiles
            p.setBrush(Qt.NoBrush)
            p.drawRect(rect.adjusted(1, 1, -1, -1))
        if selected:
            p.setBrush(Qt.NoBrush)
            p.setPen(QPen(pal.highlight().color(), 3))
            p.drawRect(rect)
        p.restore()


class CellList(QListView):
    """The cell tiles; a move without Shift or Ctrl leaves one cell selected."""

    def keyboardSearch(self, search: str) -> None:  # noqa: N802  (a letter is a review key, not a search)
        return None

    def moveCursor(self, action, modifiers):  # noqa: N802
        # Home/End: the first/last cell, not row 0/the last row (a class heading is not a cell,
        # and Qt's Home on a heading left the selection where it was)
        if action in (QAbstractItemView.MoveHome, QAbstractItemView.MoveEnd):
            model = self.model()
            rows = range(model.rowCount()) if action == QAbstractItemView.MoveHome else \
                range(model.rowCount() - 1, -1, -1)
            for r in rows:
                index = model.index(r, 0)
                if model.flags(index) & Qt.ItemIsSelectable:
                    return index
        return super().moveCursor(action, modifiers)

    def keyPressEvent(self, e) -> None:  # noqa: N802
        mods = e.modifiers() & ~Qt.KeypadModifier
        super().keyPressEvent(e)
        moves = {Qt.Key_Up, Qt.Key_Down, Qt.Key_Left, Qt.Key_Right, Qt.Key_Home, Qt.Key_End, Qt.Key_PageUp,
                 Qt.Key_PageDown}
        if e.key() in moves and not (mods & (Qt.ShiftModifier | Qt.ControlModifier)):
            self.selectionModel().setCurrentIndex(self.currentIndex(), QItemSelectionModel.ClearAndSelect)

    def resizeEvent(self, e) -> None:  # noqa: N802  (headings span the width: lay out again)
        super().resizeEvent(e)
        self.doItemsLayout()


# ---------------------------------------------------------------- the field with its cells
class FieldView(ImageView):
    """The selected cell's field: every cell outlined, the selected one highlighted. In adding
    mode a drag draws a box: ``boxDrawn(x0, y0, x1, y1)`` in the image's pixels."""

    boxDrawn = Signal(int, int, int, int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.outlines: dict[int, QGraphicsPolygonItem] = {}
        self.adding = False
        self._start: QPointF | None = None
        self._rubber = QGraphicsRectItem()
        self._rubber.setPen(QPen(QColor("#ffeb3b"), 0, Qt.DashLine))
        self._rubber.setZValue(3)
        self._rubber.setVisible(False)
        self.scene().addItem(self._rubber)

    def show_cells(self, rows: list[CellRow], selected: int | None) -> None:
        for item in self.outlines.values():
            self.scene().removeItem(item)
        self.outlines = {}
        for r in rows:
            poly = QPolygonF([QPointF(x, y) for x, y in r.contour] or
                             [QPointF(r.box[0], r.box[1]), QPointF(r.box[2], r.box[1]), QPointF(r.box[2], r.box[3]),
                              QPointF(r.box[0], r.box[3])])
            item = QGraphicsPolygonItem(poly)
            item.setZValue(2)
            self.scene().addItem(item)
            self.outlines[r.cell_id] = item
        self.highlight(selected)

    def highlight(self, cell_id: int | None) -> None:
        for cid, item in self.outlines.items():
            pen = QPen(QColor("#ffeb3b"), 3) if cid == cell_id else QPen(QColor("#00e5ff"), 1.5)
            pen.setCosmetic(True)  # the same width at any zoom
            item.setPen(pen)
            item.setZValue(2.5 if cid == cell_id else 2)

    def set_adding(self, on: bool) -> None:
        self.adding = on
        self.setDragMode(QGraphicsView.NoDrag if on else QGraphicsView.ScrollHandDrag)
        self.setCursor(Qt.CrossCursor if on else Qt.ArrowCursor)
        self._rubber.setVisible(False)

    def mousePressEvent(self, e) -> None:  # noqa: N802
        if self.adding and e.button() == Qt.LeftButton:
            self._start = self.mapToScene(e.position().toPoint())
            self._rubber.setRect(QRectF(self._start, self._start))
            self._rubber.setVisible(True)
            return
        super().mousePressEvent(e)

    def mouseMoveEvent(self, e) -> None:  # noqa: N802
        if self.adding and self._start is not None:
            self._rubber.setRect(QRectF(self._start, self.mapToScene(e.position().toPoint())).normalized())
            return
        super().mouseMoveEvent(e)

    def mouseReleaseEvent(self, e) -> None:  # noqa: N802
        if self.adding and self._start is not None:
            rect = QRectF(self._start, self.mapToScene(e.position().toPoint())).normalized()
            self._start = None
            self._rubber.setVisible(False)
            bounds = self.scene().sceneRect()
            rect = rect.intersected(bounds)
            if rect.width() >= 2 and rect.height() >= 2:
                self.boxDrawn.emit(int(rect.left()), int(rect.top()), int(rect.right()), int(rect.bottom()))
            return
        super().mouseReleaseEvent(e)


# ---------------------------------------------------------------- the pane
class CellPane(QObject):
    """The Cells tab: differential | cell galleries | field. Keys reach it through the window's
    action table when the tab is shown (``label_selected``, ``accept_prediction``, ``undo`` ...)."""

    message = Signal(str, int)
    enabledChanged = Signal()
    loaded = Signal()  # a reload's rows are on screen
    fieldShown = Signal(int)  # image id whose field (with outlines) is shown
    cellAdded = Signal(int)  # cell id
    labelsChanged = Signal(list)  # cell ids
    cellsSaved = Signal(list, int)  # cell ids written, writes still pending (the LabelWriter's thread)
    differentialRead = Signal()  # the database's differential is shown
    labelsRefreshed = Signal(list)  # cell ids whose labels were read again (another seat labelled them)

    def __init__(self, ctl: Controller, workers, writer: LabelWriter, reviewer_ready, parent=None):
        super().__init__(parent)
        self.ctl, self.workers, self.writer = ctl, workers, writer
        self.reviewer_ready = reviewer_ready  # () -> whether the window has a reviewer (asks once)
        self.version: dict | None = None  # the active cell model (plain data)
        self.all_rows: list[CellRow] = []
        self.fields: list[FieldRow] = []  # every field of the case, also those without a cell
        self.disagree: set[int] = set()
        self._generation = 0
        self.loading = False
        self.shown_image: int | None = None
        self.case_name: str | None = None  # what the lab calls the case (the window reads it)
        self.shown_differential: Differential | None = None
        self._agreement: list = []  # the reviewers' agreement, as last read
        self._diff_generation = 0
        self.model = CellModel(self)
        self.review = QueuedCellReview(ctl.db, writer, self.model.labels_of)
        self.state = ReviewState(self.review)
        app = QApplication.instance()
        dpr = max(1.0, app.devicePixelRatio()) if app else 1.0
        self.thumbs = CellThumbs(workers, int(CELL_THUMB * min(dpr, 3.0)), parent=self)
        self.thumbs.ready.connect(self.model.cell_ready)

        self.view = v = CellList()
        v.setObjectName("cellGallery")
        v.setViewMode(QListView.IconMode)
        v.setResizeMode(QListView.Adjust)
        v.setMovement(QListView.Static)
        v.setWrapping(True)
        v.setSpacing(2)
        v.setSelectionMode(QAbstractItemView.ExtendedSelection)
        v.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        v.setModel(self.model)
        v.setItemDelegate(CellDelegate(self.thumbs, lambda: self.classes, v))
        v.selectionModel().currentChanged.connect(self._current_changed)
        v.selectionModel().selectionChanged.connect(lambda *_: (self.sync_state(), self._show_position(),
                                                                self.enabledChanged.emit()))
        self.review_bar = FlowLayout()  # the action table's buttons while this tab is shown; wraps when narrow
        self.review_bar.setSpacing(4)
        self.disagree_box = QCheckBox("Reviewers disagree")
        self.disagree_box.setToolTip("Only the cells two reviewers gave different classes")
        self.disagree_box.setFocusPolicy(Qt.NoFocus)
        self.disagree_box.toggled.connect(lambda _on: self.reload())
        self.info = ElidedLabel("")  # never wider than given: a longer line must not move the split
        head = QHBoxLayout()
        head.addWidget(self.info, 1)
        head.addWidget(self.disagree_box)
        middle = QWidget()
        ml = QVBoxLayout(middle)
        ml.setContentsMargins(0, 4, 0, 0)
        ml.addLayout(self.review_bar)
        ml.addLayout(head)
        ml.addWidget(v, 1)

        self.field = FieldView()
        self.field.boxDrawn.connect(self._box_drawn)
        self.field_title = ElidedLabel("No cell selected")
        # every field, also one where the finder found no cell: there too a missed cell can be added
        self.field_box = ElidedCombo()
        self.field_box.setObjectName("cellFields")
        # a case can have thousands of fields: type any part of a file name to find one; the box takes
        # the keys only when clicked, and gives them back to the gallery once a field is chosen
        self.field_box.setEditable(True)
        self.field_box.setInsertPolicy(QComboBox.NoInsert)
        self.field_box.setFocusPolicy(Qt.ClickFocus)
        self.field_box.lineEdit().setPlaceholderText("type part of a file name")
        finder = QCompleter(self.field_box.model(), self.field_box)
        finder.setFilterMode(Qt.MatchContains)
        finder.setCaseSensitivity(Qt.CaseInsensitive)
        finder.setCompletionMode(QCompleter.PopupCompletion)
        finder.activated[str].connect(lambda text: self._field_chosen(self.field_box.findText(text)))
        self.field_box.setCompleter(finder)
        self.field_box.setMaxVisibleItems(20)
        self.field_box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.field_box.setMinimumContentsLength(24)
        self.field_box.help = ("Every field of the case, also those where no cell was found: pick one to see it "
                                  "and add a cell the finder missed (N, then drag a box)")
        self.field_box.activated.connect(self._field_chosen)
        self.fields_note = QLabel("")  # how many fields have no cell
        fields_row = QHBoxLayout()
        fields_row.addWidget(QLabel("Field:"))
        fields_row.addWidget(self.field_box, 1)
        fields_row.addWidget(self.fields_note)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(4, 4, 4, 4)
        rl.addLayout(fields_row)
        rl.addWidget(self.field_title)
        rl.addWidget(self.field, 1)

        self.differential = QTableWidget(0, 5)
        self.differential.setObjectName("cellDifferential")
        self.differential.setHorizontalHeaderLabels(["Class", "Cells", "%", "95% interval", "Reviewed"])
        self.differential.horizontalHeaderItem(3).setToolTip(INTERVAL_NOTE)
        self.differential.verticalHeader().setVisible(False)
        self.differential.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.differential.setFocusPolicy(Qt.NoFocus)
        self.differential.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.differential.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)  # every column shows
        self.diff_title = QLabel("<b>Differential of this case</b>")
        self.diff_title.setWordWrap(True)
        self.diff_head = QLabel("")  # N, reviewed vs predicted
        self.blast_label = QLabel("")  # the blast percentage and what to do about it
        self.diff_note = QLabel("")  # what is counted apart; the reviewers' agreement
        self.diff_small = QLabel("")  # how the intervals are computed; not a diagnosis
        small = QFont(self.diff_small.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))
        self.diff_small.setFont(small)
        for label in (self.diff_head, self.blast_label, self.diff_note, self.diff_small):
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(4, 4, 4, 4)
        ll.addWidget(self.diff_title)
        ll.addWidget(self.diff_head)
        ll.addWidget(self.differential)
        ll.addWidget(self.blast_label)
        ll.addWidget(self.diff_note)
        ll.addWidget(self.diff_small)
        ll.addStretch(1)  # the table as tall as its rows, the sentences right under it

        self.widget = QSplitter(Qt.Horizontal)
        self.widget.setObjectName("cellSplitter")
        for w in (left, middle, right):
            self.widget.addWidget(w)
        self.widget.setStretchFactor(1, 3)
        self.widget.setStretchFactor(2, 2)
        self.widget.setSizes([340, 540, 450])
        self.cellsSaved.connect(self._cells_saved)  # a bound method: run on the GUI thread (queued)
        self._show_position()

    # ---------------------------------------------------------------- what the rows are
    @property
    def classes(self) -> list[str]:
        return list(self.version["classes"]) if self.version else []

    @property
    def busy(self) -> bool:
        return self.loading

    def reload(self, keep_id: int | None = None) -> None:
        """Read the folder's cells (and the active cell model) again; ``keep_id`` (else the
        current cell) stays current if it is still in view."""
        folder = self.ctl.folder
        self._generation += 1
        gen = self._generation
        cur = self.current_row()
        keep = keep_id if keep_id is not None else (cur.cell_id if cur else None)
        if folder is None:
            self._landed(gen, keep, (None, [], set(), []))
            return
        self.loading = True

        def query(s):
            v = active_cell_version(s)
            rows = folder_cells(s, folder, v["id"] if v else None)
            return (v, rows, disagreeing_cells(s, [r.cell_id for r in rows], v["taxonomy"] if v else None),
                    folder_fields(s, folder))

        def failed(err):
            if gen == self._generation:
                self.loading = False
            self.message.emit(f"⚠ {err}", 20000)

        self.ctl.read(query, lambda out: self._landed(gen, keep, out), "cells", on_error=failed)

    def _landed(self, gen: int, keep: int | None, out) -> None:
        if gen != self._generation:
            return
        self.version, self.all_rows, self.disagree, self.fields = out
        if self.state.folder != self.ctl.folder:
            self.state.open_folder(self.ctl.folder)
        self.state.folder = self.ctl.folder
        self.review.taxonomy = self.version["taxonomy"] if self.version else "all_vs_normal"
        self.review.shown = self.model.labels_of
        pending = self.writer.pending_labels(self.review.taxonomy, kind=CELL)
        rows = [dataclasses.replace(r, reviewed=pending[r.cell_id]) if r.cell_id in pending else r
                for r in self.all_rows]
        self.all_rows = rows
        if self.disagree_box.isChecked():
            rows = [r for r in rows if r.cell_id in self.disagree]
        self.model.set_rows(rows)
        self.loading = False
        self._fill_fields()
        row = self.model.row_of(keep) if keep is not None else None
        if row is None:
            row = next((k for k in range(self.model.rowCount()) if self.model.cell_at(k) is not None), None)
        if row is not None:
            self._go(row)
        else:
            self.view.selectionModel().clear()
            self._current_changed(QModelIndex())
        self.sync_state()
        self._show_position()
        self.update_differential()
        self.refresh_differential()
        self.enabledChanged.emit()
        self.loaded.emit()

    def current_row(self) -> CellRow | None:
        cur = self.view.currentIndex()
        it = cur.data(ROW_ROLE) if cur.isValid() else None
        return it if isinstance(it, CellRow) else None

    def sync_state(self) -> None:
        st, cur = self.state, self.current_row()
        st.set_current(self.view.currentIndex().row() if cur else None, cur.cell_id if cur else None)
        rows = sorted(ix.row() for ix in self.view.selectionModel().selectedIndexes())
        st.selected = tuple(c.cell_id for c in map(self.model.cell_at, rows) if c is not None)
        st.n_in_view = len(self.model.rows()) if self.ctl.folder is not None else 0
        st.reviewer = self.review.reviewer = self.ctl.state.reviewer or ""
        if not st.reviewer:
            st.reviewer = None

    def targets(self) -> list[int]:
        self.sync_state()
        return self.state.targets()

    can_undo = property(lambda self: self.review.can_undo)
    can_redo = property(lambda self: self.review.can_redo)

    def _show_position(self) -> None:
        st = self.state
        if self.ctl.folder is None:
            text = "Open a folder of smear images (File ▸ Open, Ctrl+O)."
        elif not self.all_rows:
            text = ("No cells found in this folder yet: classify it (Ctrl+R) with a cell model active"
                    + (", or pick a field in the Field list to add its cells by hand (N)." if self.fields else ".")
                    if not self.loading else "Reading the cells…")
        elif not st.n_in_view:
            text = "No cell matches (reviewers agree on every cell)."
        else:
            many = len(set(st.selected))
            at = self.current_row()
            n = [r.cell_id for r in self.model.rows()].index(at.cell_id) + 1 if at else None
            text = (f"Cell {n:,} of {st.n_in_view:,}" if n else f"{st.n_in_view:,} cells") + (
                f" · {many:,} selected" if many > 1 else "") + (
                f" · model: {self.version['name']}" if self.version else " · no cell model active")
        if self.ctl.folder is not None:  # what the finder was told (File ▸ Images in this folder are…)
            text += f" · {self.ctl.image_kind_words()}"
        self.info.setText(text)

    def show_image_kind(self) -> None:
        """The folder's declared image kind changed: the line above the cells says it."""
        self._show_position()

    # ---------------------------------------------------------------- the fields
    def _fill_fields(self) -> None:
        """The field list: each field with its number of cells; how many have none."""
        per_image: dict[int, int] = {}
        for r in self.all_rows:
            per_image[r.image_id] = per_image.get(r.image_id, 0) + 1
        box = self.field_box
        box.blockSignals(True)
        box.clear()
        for f in self.fields:
            n = per_image.get(f.image_id, 0)
            box.addItem(f"{f.name} — {n} cell{'s' if n != 1 else ''}" if n else f"{f.name} — no cell found",
                        f.image_id)
        box.blockSignals(False)
        self._show_field_in_box()
        empty = sum(1 for f in self.fields if f.image_id not in per_image)
        self.fields_note.setText(f"Fields without cells: {empty:,}" if empty else "")
        self.fields_note.setVisible(bool(empty))

    def _show_field_in_box(self) -> None:
        at = self.field_box.findData(self.shown_image) if self.shown_image is not None else -1
        self.field_box.blockSignals(True)
        self.field_box.setCurrentIndex(at)
        self.field_box.blockSignals(False)
        self.field_box.elide()

    def show_field(self, image_id: int) -> bool:
        """Show a field of the case: its first cell in view selected, or, where it has none (the
        finder found none, or the filter hides them), the field alone, to add a missed cell."""
        field = next((f for f in self.fields if f.image_id == image_id), None)
        if field is None:
            return False
        in_view = [r for r in self.model.rows() if r.image_id == image_id]
        if in_view:
            return self.select_cell(min(in_view, key=lambda r: r.number).cell_id)
        self.view.selectionModel().clear()  # no cell selected: the field alone
        self._current_changed(QModelIndex())
        self.shown_image = image_id
        self.field_title.setText(f"{field.name}: no cell shown here; press N and drag a box around a cell "
                                 "the finder missed")
        self._show_field_in_box()
        self.workers.submit(lambda p=field.path: (image_id, decode_full(p)), name="field",
                            on_result=self._field_loaded, on_error=lambda e: self.message.emit(f"⚠ {e}", 20000),
                            priority=1)
        return True

    def _field_chosen(self, index: int) -> None:
        image_id = self.field_box.itemData(index) if index >= 0 else None
        if image_id is not None:
            self.show_field(int(image_id))
        self.view.setFocus(Qt.OtherFocusReason)
        QTimer.singleShot(0, self.field_box.elide)  # after the completer has put the whole name back

    # ---------------------------------------------------------------- moving
    def _go(self, row: int) -> None:
        ix = self.model.index(row)
        self.view.selectionModel().setCurrentIndex(ix, QItemSelectionModel.ClearAndSelect)
        self.view.scrollTo(ix)

    def select_cell(self, cell_id: int) -> bool:
        row = self.model.row_of(cell_id)
        if row is None:
            return False
        self._go(row)
        return True

    def move_current(self, step: int, after_rows: list[int] | None = None) -> None:
        cells = [k for k in range(self.model.rowCount()) if self.model.cell_at(k) is not None]
        if not cells:
            return self.message.emit("⚠ No cell in view.", 6000)
        cur = self.view.currentIndex().row() if self.current_row() else -1
        base = max(after_rows) if after_rows and step > 0 else cur
        nxt = [k for k in cells if (k > base if step > 0 else k < base)]
        if not nxt:
            if step > 0:
                self.message.emit(f"End of the cells: this was the last of the {len(cells):,} in this view.", 8000)
            return
        self._go(nxt[0] if step > 0 else nxt[-1])

    def _current_changed(self, cur, _prev=None) -> None:
        self.sync_state()
        self._show_position()
        row = self.current_row()
        if row is None:
            self.shown_image = None
            self.field_title.setText("No cell selected")
            self.field.set_image(None)
            self.field.show_cells([], None)
            return
        self.field_title.setText(cell_title(row.name, row.number)
                                 + (" (added by a reviewer)" if row.source == "added" else ""))
        if row.image_id != self.shown_image:
            self.shown_image = row.image_id
            self._show_field_in_box()
            self.workers.submit(lambda r=row: (r.image_id, decode_full(r.path)), name="field",
                                on_result=self._field_loaded, on_error=lambda e: self.message.emit(f"⚠ {e}", 20000),
                                priority=1)
        elif row.cell_id not in self.field.outlines:
            self._outline_field()  # a cell added on this field since it was outlined
        else:
            self.field.highlight(row.cell_id)

    def _field_loaded(self, out) -> None:
        image_id, img = out
        if image_id != self.shown_image:
            return  # the reviewer has moved on
        self.field.set_image(img)
        self._outline_field()
        self.fieldShown.emit(image_id)

    def _outline_field(self) -> None:
        cur = self.current_row()
        self.field.show_cells([r for r in self.all_rows if r.image_id == self.shown_image],
                              cur.cell_id if cur else None)

    # ---------------------------------------------------------------- review keys
    def _ready(self) -> bool:
        self.sync_state()
        why = self.state.refusal()
        if why and self.state.reviewer is None and self.reviewer_ready():
            self.sync_state()
            why = self.state.refusal()
        if why is None and self.version is None:
            why = "No cell model is active: the cells have no classes to review yet (Models ▸ Model versions…)."
        if why:
            self.message.emit(f"⚠ {in_cell_words(why)}", 6000)
        return why is None

    def label_selected(self, label: str | None, note: str | None = None) -> None:
        if not self._ready():
            return
        if label is not None and label != OTHER and label not in self.classes:
            return self.message.emit(f"⚠ {label} is not a class of the cell model {self.version['name']}.", 6000)
        rows = [self.model.row_of(i) for i in self.state.targets()]
        self._after(self.state.label(label, note), advance=label is not None, rows_before=[r for r in rows if r is not None])

    def accept_prediction(self) -> None:
        if not self._ready():
            return
        shown = [self.model.items[self.model.row_of(i)] for i in self.state.targets() if self.model.row_of(i) is not None]
        predicted = {r.cell_id: r.predicted for r in shown}
        hidden = {r.cell_id: OUTSIDE if r.outside else UNSURE for r in shown if r.outside or r.uncertain}
        rows = [self.model.row_of(r.cell_id) for r in shown]
        self._after(self.state.accept(predicted, hidden, class_keys(self.classes)), advance=True, rows_before=rows)

    def undo(self) -> None:
        self.sync_state()
        out = self.state.undo(self._name_of)
        self._after(out, advance=False, undone=True)
        if out.action is not None:
            self.select_cell(out.action.changes[0][0])

    def redo(self) -> None:
        self.sync_state()
        self._after(self.state.redo(self._name_of), advance=False)

    def _name_of(self, cell_id: int) -> str | None:
        row = self.model.row_of(cell_id)
        r = self.model.cell_at(row) if row is not None else None
        return cell_title(r.name, r.number) if r else None

    def _after(self, out: Outcome, advance: bool, rows_before: list[int] | None = None, undone: bool = False) -> None:
        if out.refused:
            return self.message.emit(f"⚠ {in_cell_words(out.message)}", 6000)
        self.message.emit(in_cell_words(out.message), 4000)
        if out.action is not None:
            # an undone action's cells are back to their labels before it
            changes = {i: before if undone else after for i, before, after in out.action.changes}
            self.model.set_labels(changes, self.state.reviewer)
            self.all_rows = [dataclasses.replace(r, reviewed=changes[r.cell_id],
                                                 reviewer=self.state.reviewer if changes[r.cell_id] else None)
                             if r.cell_id in changes else r for r in self.all_rows]
            self.update_differential()
            self.labelsChanged.emit(list(changes))
        if advance and out.action is not None:
            self.move_current(1, rows_before)
        self.enabledChanged.emit()

    # ---------------------------------------------------------------- the differential
    def counts(self) -> dict[str, tuple[int, int]]:
        """class -> (cells counted in it, of which reviewed): the reviewer's class where given,
        else the model's; a cell outside the model's experience or unclassified counts only
        once reviewed; Other apart."""
        out: dict[str, list[int]] = {c: [0, 0] for c in [*self.classes, OTHER]}
        for r in self.all_rows:
            cls = r.reviewed or (r.predicted if not r.outside else None)
            if cls is None:
                continue
            slot = out.setdefault(cls, [0, 0])
            slot[0] += 1
            slot[1] += 1 if r.reviewed else 0
        return {c: (n, rv) for c, (n, rv) in out.items()}

    def _case_cells(self) -> list[CaseCell]:
        return [CaseCell(r.cell_id, r.image_id, r.path, r.box, r.um_per_px, r.flags, r.predicted, r.confidence,
                         r.uncertain, bool(r.outside), r.reviewed, r.reviewer, r.number) for r in self.all_rows]

    def update_differential(self) -> None:
        """The differential of the rows in memory, at once (arithmetic only, no database): what a
        key changed shows before it is saved; the reviewers' agreement as last read."""
        taxonomy = self.version["taxonomy"] if self.version else None
        classes = self.classes or sorted({r.reviewed for r in self.all_rows if r.reviewed not in (None, OTHER)})
        d = summarise(self._case_cells(), classes, blast_class(taxonomy), case=self.case_name or "",
                      folder=self.ctl.folder or "", model=self.version["name"] if self.version else None,
                      taxonomy=taxonomy)
        self.show_differential(dataclasses.replace(d, agreement=list(self._agreement)))

    def _cells_saved(self, _cell_ids: list, _pending: int) -> None:
        self.refresh_differential()

    def refresh_differential(self) -> None:
        """The case's differential read from the database in the pool (after a save, a reload,
        another seat's labels): with every seat's labels and the reviewers' agreement."""
        folder = self.ctl.folder
        if folder is None:
            return
        vid = self.version["id"] if self.version else None
        self._diff_generation += 1
        gen = self._diff_generation
        self.ctl.read(lambda s: case_differential(s, folder, vid), lambda d: self._differential_read(gen, folder, d),
                      "differential", on_error=lambda err: self.message.emit(f"⚠ The differential: {err}", 20000))

    def _differential_read(self, gen: int, folder: str, d: Differential) -> None:
        if gen != self._diff_generation or folder != self.ctl.folder:
            return  # a newer read is on its way, or another folder is open
        self._agreement = list(d.agreement)
        if self.writer.pending_labels(self.review.taxonomy, kind=CELL):
            return  # read before a key's label was saved: its save brings another read
        self.show_differential(d)
        self.differentialRead.emit()

    def show_differential(self, d: Differential) -> None:
        self.shown_differential = d
        counted = d.total > 0
        blast = d.blast.label if d.blast is not None else None
        self.differential.setRowCount(len(d.classes))
        for k, c in enumerate(d.classes):
            texts = [c.label, f"{c.n:,}", f"{c.pct:.1f}" if counted else "—",
                     f"{c.low_pct:.1f}–{c.high_pct:.1f}" if counted else "—", f"{c.reviewed:,}"]
            for col, text in enumerate(texts):
                item = QTableWidgetItem(text)
                if col:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if c.label == blast:
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                self.differential.setItem(k, col, item)
        t = self.differential
        t.resizeRowsToContents()
        t.setFixedHeight(t.horizontalHeader().height() + sum(t.rowHeight(r) for r in range(t.rowCount()))
                         + 2 * t.frameWidth() + 2)
        self.diff_title.setText(f"<b>Differential of {html.escape(self.case_name or 'this case')}</b>")
        self.diff_head.setText(f"N = {d.total:,} white cells counted: {d.n_reviewed:,} reviewed, "
                               f"{d.n_predicted:,} as the model classed them.")
        if d.blast is not None:
            color = "#c62828" if d.blast.verdict == "above" else "#b26a00" if d.blast.verdict != "below" else ""
            text = html.escape(d.blast.as_text())
            self.blast_label.setText(f"<b style='color:{color}'>{text}</b>" if color else f"<b>{text}</b>")
        elif blast_class(d.taxonomy):
            self.blast_label.setText("No white cell counted yet: no blast percentage.")
        else:
            self.blast_label.setText("")
        self.blast_label.setVisible(bool(self.blast_label.text()))
        agree = " ".join(
            f"{a.first} and {a.second} agree on {a.n_agree:,} of the {a.n_cells:,} cells both labelled (Cohen's kappa "
            f"{'undefined: one answer throughout' if a.kappa is None else format(a.kappa, '.2f')})."
            for a in d.agreement)
        self.diff_note.setText(
            f"Counted apart, not in N: {d.n_outside:,} outside the model's experience, {d.n_uncertain:,} the model "
            f"is unsure of (review them), {d.n_other:,} {OTHER_TITLE}, {d.n_unclassified:,} not classified yet." + (f"\n{agree}" if agree else ""))
        self.diff_small.setText(f"{INTERVAL_NOTE} {d.disclaimer}")

    def set_case_name(self, name: str | None) -> None:
        self.case_name = name
        self.diff_title.setText(f"<b>Differential of {html.escape(name or 'this case')}</b>")

    # ---------------------------------------------------------------- other seats' labels
    def labels_elsewhere(self, cell_ids: list) -> None:
        """Cells labelled since the last look (another seat, the command line, or this one):
        their labels read again in the pool, then the differential."""
        listed = {r.cell_id for r in self.all_rows}
        known = [i for i in cell_ids if i in listed]
        if not known:
            return
        taxonomy, gen = self.review.taxonomy, self._generation
        self.ctl.read(lambda s: current_cell_labels(s, known, taxonomy), lambda out: self._labels_read(gen, out),
                      "cell labels")

    def _labels_read(self, gen: int, out) -> None:
        if gen != self._generation:
            return  # a reload has read every cell since
        labels, disagree = out
        pending = self.writer.pending_labels(self.review.taxonomy, kind=CELL)
        labels = {i: v for i, v in labels.items() if i not in pending}  # this seat's unsaved key wins
        self.disagree = (self.disagree - set(labels)) | (disagree & set(labels))
        self.model.set_reviewed(labels)
        self.all_rows = [dataclasses.replace(r, reviewed=labels[r.cell_id][0], reviewer=labels[r.cell_id][1])
                         if r.cell_id in labels else r for r in self.all_rows]
        self.update_differential()
        self.refresh_differential()
        self.enabledChanged.emit()
        self.labelsRefreshed.emit(list(labels))

    # ---------------------------------------------------------------- a cell the finder missed
    def start_adding(self) -> None:
        if self.shown_image is None:
            return self.message.emit("⚠ Select a cell, or a field in the Field list, first: the field shown is where "
                                     "the missed cell is added.", 6000)
        self.sync_state()
        if self.state.reviewer is None and not self.reviewer_ready():
            return
        self.field.set_adding(True)
        self.message.emit("Drag a box around the missed cell on the field (Esc: cancel).", 10000)

    def cancel_adding(self) -> bool:
        if not self.field.adding:
            return False
        self.field.set_adding(False)
        self.message.emit("No cell added.", 4000)
        return True

    def _box_drawn(self, x0: int, y0: int, x1: int, y1: int) -> None:
        self.field.set_adding(False)
        image_id, who = self.shown_image, self.ctl.state.reviewer
        if image_id is None or not who:
            return
        box = (x0, y0, x1 + 1, y1 + 1)

        def add(s):  # one transaction
            return add_cell(s, image_id, box, image_scale(s, image_id) or DEFAULT_UM_PER_PX, who)

        def added(cell_id):
            self.message.emit(f"Cell added ({x1 - x0 + 1}×{y1 - y0 + 1} px); it is listed under "
                              "“Not classified” until a cell model classifies it.", 8000)
            self.cellAdded.emit(cell_id)
            self.reload(keep_id=cell_id)

        self.ctl.read(add, added, "add a cell")

    # ---------------------------------------------------------------- view keys
    def zoom(self, factor: float) -> None:
        self.field.zoom(factor)

    def fit(self) -> None:
        self.field.fit()
