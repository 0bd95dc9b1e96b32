"""Review keys act on the gallery whatever control has focus (as on a CellaVision
verification screen): after a filter drop-down or a check box was used, the arrows, page
keys, Home and End still move through the images instead of changing the filter.

The letter and digit keys are window-wide QAction shortcuts already (the action table);
this filter redirects the navigation keys, which Qt gives to the focused widget."""
from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QAbstractSpinBox, QApplication, QLineEdit, QPlainTextEdit, QTextEdit, QWidget

NAVIGATION_KEYS = frozenset({Qt.Key_Up, Qt.Key_Down, Qt.Key_Left, Qt.Key_Right, Qt.Key_PageUp, Qt.Key_PageDown,
                             Qt.Key_Home, Qt.Key_End})
TEXT_INPUTS = (QLineEdit, QAbstractSpinBox, QTextEdit, QPlainTextEdit)  # where keys edit text: left alone


class GalleryKeys(QObject):
    """Installed on the application while ``window`` is open; sends navigation keys meant
    for ``window`` to ``gallery``."""

    def __init__(self, window: QWidget, gallery: QWidget):
        super().__init__(window)
        self.window, self.gallery = window, gallery
        self._sending = False  # a key the gallery does not use goes up to its parents: never back again
        QApplication.instance().installEventFilter(self)

    def remove(self) -> None:
        QApplication.instance().removeEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802  (Qt's name)
        if self._sending or event.type() != QEvent.KeyPress or event.key() not in NAVIGATION_KEYS:
            return False
        if not isinstance(obj, QWidget) or obj is self.gallery or self.gallery.isAncestorOf(obj):
            return False
        if isinstance(obj, TEXT_INPUTS) or obj.window() is not self.window:
            return False  # a dialog, a popup list, or a text field: not the gallery's keys
        self.gallery.setFocus(Qt.ShortcutFocusReason)
        self._sending = True
        try:
            QApplication.sendEvent(self.gallery, QKeyEvent(event.type(), event.key(), event.modifiers(), event.text()))
        finally:
            self._sending = False
        return True
