"""Gallery tiles: thumbnails made off the GUI thread only for the tiles that are painted
(visible), a bounded LRU cache, class colours, and the delegate drawing each tile
(thumbnail, predicted class colour, confidence, reviewed mark)."""
from __future__ import annotations

import logging
from collections import OrderedDict, deque

import cv2
import numpy as np
from PySide6.QtCore import QObject, QRect, QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import QStyle, QStyledItemDelegate

from core.review import gallery as q
from core.imaging.fspath import to_fs
from core.imaging.images import read_file
from core.models.taxonomy import OTHER, TAXONOMIES

log = logging.getLogger(__name__)

THUMB = 120  # px, logical; drawn at device pixel ratio for HiDPI
TILE = QSize(THUMB + 16, THUMB + 40)

ROW_ROLE = Qt.UserRole + 1
ID_ROLE = Qt.UserRole + 2

_PALETTE = ["#2e7d32", "#1565c0", "#ef6c00", "#8e24aa", "#c62828", "#00838f", "#6d4c41"]
_NAMED = {"Benign": "#2e7d32", "Early Pre-B": "#1565c0", "Pre-B": "#ef6c00", "Pro-B": "#8e24aa",
          "ALL": "#c62828", "Normal": "#2e7d32", OTHER: "#546e7a",
          # the white-cell differential: blasts red as ALL is, nine colours told apart
          "Blast": "#c62828", "Lymphocyte": "#1565c0", "Neutrophil": "#ef6c00", "Monocyte": "#00838f",
          "Eosinophil": "#d81b60", "Basophil": "#8e24aa", "Immature granulocyte": "#6d4c41",
          "Erythroblast": "#2e7d32", "Platelet": "#5e35b1"}
# Outside the model's experience: not a class colour but a dark band with an amber hatch.
OUTSIDE_BAND, OUTSIDE_HATCH = "#37474f", "#ffb300"
OUTSIDE_MARK = q.OUTSIDE_MARK  # ⊘


def class_color(label: str | None, classes: list[str] | None = None) -> QColor:
    if label is None:
        return QColor("#9e9e9e")
    if label in _NAMED:
        return QColor(_NAMED[label])
    if not classes or label not in classes:  # the taxonomy it belongs to: one colour per class in every view
        classes = next((list(t.classes) for t in TAXONOMIES.values() if label in t.classes), None)
    i = classes.index(label) if classes else sum(map(ord, label))  # stable across runs
    return QColor(_PALETTE[i % len(_PALETTE)])


def make_thumbnail(stored_path: str, size: int) -> QImage:
    """Decode (reduced-scale for big files) and shrink to ``size`` px on the long side. Pool thread."""
    data = read_file(to_fs(stored_path))
    flag = cv2.IMREAD_COLOR
    if len(data) > 4 << 20:
        flag = cv2.IMREAD_REDUCED_COLOR_4
    elif len(data) > 400 << 10:
        flag = cv2.IMREAD_REDUCED_COLOR_2
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if bgr is None:
        raise ValueError("cannot decode image")
    h, w = bgr.shape[:2]
    s = size / max(h, w)
    if s < 1:
        bgr = cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888).copy()


class PoolImageCache(QObject):
    """Images by key, made on the worker pool: an LRU cache bounded in bytes; misses are queued
    newest-first (what just scrolled into view) and a long queue forgets its oldest requests.
    A subclass says how one image is made (``make``, on a pool thread)."""

    ready = Signal(int)

    def __init__(self, workers, *, name: str, max_bytes: int, parent=None):
        super().__init__(parent)
        self.workers, self.name, self.max_bytes = workers, name, max_bytes
        self._cache: OrderedDict[int, QImage] = OrderedDict()
        self._bytes = 0
        self._queue: deque[tuple[int, object]] = deque()
        self._pending: set[int] = set()
        self._failed: set[int] = set()
        self.requested: list[int] = []  # every key ever asked of the pool (tests, diagnostics)

    def make(self, item) -> QImage:  # pool thread
        raise NotImplementedError

    def request(self, key: int, item) -> QImage | None:
        img = self._cache.get(key)
        if img is not None:
            self._cache.move_to_end(key)
            return img
        if key not in self._pending and key not in self._failed:
            self._pending.add(key)
            self.requested.append(key)
            self._queue.append((key, item))
            while len(self._queue) > 400:  # scrolled far past: forget the oldest requests
                old, _ = self._queue.popleft()
                self._pending.discard(old)
            self.workers.submit(self._work, name=self.name, on_result=self._done)
        return None

    def failed(self, key: int) -> bool:
        return key in self._failed

    def _work(self):  # pool thread: take the newest request
        try:
            key, item = self._queue.pop()
        except IndexError:
            return None
        try:
            return key, self.make(item)
        except Exception as exc:
            log.info("%s %s failed: %s", self.name, key, exc)
            return key, None

    def _done(self, out) -> None:
        if out is None:
            return
        key, img = out
        self._pending.discard(key)
        if img is None:
            self._failed.add(key)
        else:
            self._cache[key] = img
            self._bytes += img.sizeInBytes()
            while self._bytes > self.max_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._bytes -= old.sizeInBytes()
        self.ready.emit(key)

    def clear(self) -> None:
        self._queue.clear()
        self._pending.clear()
        self._cache.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._cache)


class ThumbnailLoader(PoolImageCache):
    """Thumbnails of whole images by image id."""

    def __init__(self, workers, size_px: int = THUMB, max_bytes: int = 96 << 20, parent=None):
        super().__init__(workers, name="thumbnail", max_bytes=max_bytes, parent=parent)
        self.size_px = size_px

    def get(self, image_id: int, path: str) -> QImage | None:
        return self.request(image_id, path)

    def make(self, path: str) -> QImage:
        return make_thumbnail(path, self.size_px)


class TileDelegate(QStyledItemDelegate):
    def __init__(self, loader: ThumbnailLoader, classes_fn, parent=None):
        super().__init__(parent)
        self.loader = loader
        self.classes_fn = classes_fn

    def sizeHint(self, option, index) -> QSize:
        return TILE

    def paint(self, p: QPainter, option, index) -> None:
        r: q.GalleryRow = index.data(ROW_ROLE)
        if r is None:
            return
        p.save()
        p.setRenderHint(QPainter.Antialiasing)
        p.setRenderHint(QPainter.SmoothPixmapTransform)
        rect = option.rect.adjusted(3, 3, -3, -3)
        pal = option.palette
        selected = bool(option.state & QStyle.State_Selected)
        p.fillRect(rect, pal.highlight().color().lighter(160) if selected else pal.base().color())
        classes = self.classes_fn()
        color = class_color(r.predicted, classes)
        # thumbnail area
        thumb_rect = QRect(rect.left() + 5, rect.top() + 5, rect.width() - 10, THUMB)
        img = self.loader.get(r.image_id, r.path)
        if img is not None:
            sz = img.size().scaled(thumb_rect.size(), Qt.KeepAspectRatio)
            target = QRect(0, 0, sz.width(), sz.height())
            target.moveCenter(thumb_rect.center())
            p.drawImage(target, img)
        else:
            p.fillRect(thumb_rect, QColor("#e0e0e0"))
            p.setPen(QColor("#757575"))
            p.drawText(thumb_rect, Qt.AlignCenter, "unreadable" if self.loader.failed(r.image_id) else "…")
        # predicted class band: colour + confidence
        band = QRect(rect.left(), thumb_rect.bottom() + 4, rect.width(), rect.bottom() - thumb_rect.bottom() - 4)
        f = QFont(option.font)
        f.setPointSizeF(max(7.0, f.pointSizeF() * 0.85))
        p.setFont(f)
        label = q.tile_caption(r)  # the reviewer's class in words once reviewed (and the model's if different)
        if r.reviewed:
            p.fillRect(band, class_color(r.reviewed, classes))
        elif r.outside:  # the class is not reliable: say so instead of showing its colour
            p.fillRect(band, QColor(OUTSIDE_BAND))
            p.fillRect(band, QBrush(QColor(OUTSIDE_HATCH), Qt.BDiagPattern))
        else:
            p.fillRect(band, color)
        p.setPen(Qt.white)
        if p.fontMetrics().horizontalAdvance(label) > band.width() - 8 and " \u00b7 by " in label:
            label = label.split(" \u00b7 by ")[0]  # who labelled it: in the tooltip and the detail panel
        p.drawText(band.adjusted(4, 0, -4, 0), Qt.AlignVCenter | Qt.AlignLeft,
                   p.fontMetrics().elidedText(label, Qt.ElideRight, band.width() - 8))
        # reviewed mark: a badge in the reviewed class's colour; red frame on disagreement
        if r.reviewed:
            badge = QRect(rect.right() - 26, rect.top() + 2, 24, 24)
            p.setBrush(class_color(r.reviewed, classes))
            p.setPen(QPen(Qt.white, 2))
            p.drawEllipse(badge)
            p.setPen(Qt.white)
            bf = QFont(option.font)
            bf.setBold(True)
            p.setFont(bf)
            p.drawText(badge, Qt.AlignCenter, "O" if r.reviewed == OTHER else "✓" if r.reviewed == r.predicted else "✎")
            if r.predicted and r.reviewed != r.predicted and r.reviewed != OTHER and not r.outside:
                p.setBrush(Qt.NoBrush)
                p.setPen(QPen(QColor("#d32f2f"), 3))
                p.drawRect(rect.adjusted(1, 1, -1, -1))
        if selected:
            p.setBrush(Qt.NoBrush)
            p.setPen(QPen(pal.highlight().color(), 3))
            p.drawRect(rect)
        p.restore()
