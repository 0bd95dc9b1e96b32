"""Review keys act on the gallery whatever control has focus (as on a CellaVision
verification screen): after a filter drop-down or a check box was used, the arrows, page
keys, Home and End still move through the images instead of changing the filter.

The letter and digit keys are window-wide QAction shortcuts already (the action table);
this filter redirects the navigation keys, which Qt gives to the focused widget, says so
when a digit key has no class in the model shown (5 with a four-class model), and keeps a
letter no action took (Shift+X) from a filter drop-down that has the focus, where it would
pick the entry of that name ("Any" for Shift+A) with nobody seeing the filter change."""
from __future__ import annotations

from typing import Callable

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (QAbstractSpinBox, QApplication, QComboBox, QLineEdit, QPlainTextEdit, QTextEdit,
                               QWidget)

NAVIGATION_KEYS = frozenset({Qt.Key_Up, Qt.Key_Down, Qt.Key_Left, Qt.Key_Right, Qt.Key_PageUp, Qt.Key_PageDown,
                             Qt.Key_Home, Qt.Key_End})
TEXT_INPUTS = (QLineEdit, QAbstractSpinBox, QTextEdit, QPlainTextEdit)  # where keys edit text: left alone
DIGITS = {getattr(Qt, f"Key_{k}"): k for k in range(1, 10)}


def no_class_for_key(k: int, classes: list[str]) -> str | None:
    """The sentence for class key ``k`` when the model has no class ``k`` (None: it has)."""
    if k <= len(classes):
        return None
    n = len(classes)
    keys = f"keys 1–{min(n, 9)}" if n > 1 else "key 1" if n else "no class keys"
    return f"⚠ No class for key {k}: this model has {n} classes ({keys}; O for Other)."


class GalleryKeys(QObject):
    """Installed on the application while ``window`` is open; sends navigation keys meant
    for ``window`` to ``gallery``."""

    def __init__(self, window: QWidget, gallery: QWidget, classes: Callable[[], list[str]] | None = None,
                 say: Callable[[str], None] | None = None):
        super().__init__(window)
        self.window, self.gallery = window, gallery
        self.classes, self.say = classes, say  # the model's classes; the status bar
        self._sending = False  # a key the gallery does not use goes up to its parents: never back again
        QApplication.instance().installEventFilter(self)

    def remove(self) -> None:
        QApplication.instance().removeEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802  (Qt's name)
        if self._sending or event.type() != QEvent.KeyPress:
            return False
        if event.key() in DIGITS and self._no_class(obj, event):
            return True
        if self._typed_on_drop_down(obj, event):
            return True
        if event.key() not in NAVIGATION_KEYS:
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

    def _typed_on_drop_down(self, obj, event) -> bool:
        """A printable key on a closed drop-down of the window (its open list is another window
        and still finds entries by typing): no action took it, so it changes nothing."""
        if not isinstance(obj, QComboBox) or obj.isEditable() or obj.window() is not self.window:
            return False
        if event.modifiers() & (Qt.ControlModifier | Qt.AltModifier | Qt.MetaModifier):
            return False
        return bool(event.text()) and event.text().isprintable()

    def _no_class(self, obj, event) -> bool:
        """A digit key with no class (its action would have taken it otherwise): say so, and
        let it do nothing else (a list or a drop-down would jump to an entry of that name)."""
        if self.classes is None or self.say is None or not isinstance(obj, QWidget):
            return False
        if event.modifiers() & ~Qt.KeypadModifier or isinstance(obj, TEXT_INPUTS) or obj.window() is not self.window:
            return False
        why = no_class_for_key(DIGITS[event.key()], self.classes())
        if why is None:
            return False
        self.say(why)
        return True
