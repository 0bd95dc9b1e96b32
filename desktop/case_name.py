"""The case's name (core.review.cases: a case is the open folder, one sample): read in the pool
when a folder opens, shown in the window's title and over the cells view's differential, and
renamed from File ▸ Rename case… (checked here, written in the pool; every seat, the exports
and the PDF report then use it)."""
from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QInputDialog

from core.review.cases import case_name, case_name_problem, default_case_name, rename_case

from .controller import Controller


def as_sentence(problem: str) -> str:
    """core.review.cases' reason, as the sentence the reviewer reads."""
    return problem[:1].upper() + problem[1:].rstrip(".") + "."


class CaseName(QObject):
    """``named(name)`` when the open folder's case name is known (read, or renamed here)."""

    named = Signal(str)
    renamed = Signal(str)  # a rename here was stored
    message = Signal(str, int)

    def __init__(self, ctl: Controller, dialog_parent, parent=None):
        super().__init__(parent)
        self.ctl, self.dialog_parent = ctl, dialog_parent
        self.name: str | None = None

    def load(self) -> None:
        """The open folder's name at once (the folder's own), the stored one when read."""
        folder = self.ctl.folder
        if folder is None:
            self.name = None
            return
        self._show(folder, default_case_name(folder))
        self.ctl.read(lambda s: case_name(s, folder), lambda name: self._show(folder, name), "case name")

    def _show(self, folder: str, name: str) -> None:
        if folder != self.ctl.folder:
            return  # another folder was opened meanwhile
        self.name = name
        self.named.emit(name)

    def rename(self, name: str | None = None) -> None:
        """Ask for the case's new name (``name``: without asking); a name it cannot have is
        said in one sentence (and asked again)."""
        folder = self.ctl.folder
        if folder is None:
            return self.message.emit("⚠ Open a folder first: a case is a folder of one sample's images.", 6000)
        ask, problem = name is None, None
        while True:
            if ask:
                prompt = "Case / sample name (every seat, the exports and the PDF report use it):"
                if problem:
                    prompt = f"⚠ {as_sentence(problem)}\n\n{prompt}"
                name, ok = QInputDialog.getText(self.dialog_parent, "Rename case", prompt,
                                                text=name if problem else (self.name or ""))
                if not ok:
                    return
            problem = case_name_problem(name)
            if problem is None:
                break
            self.message.emit(f"⚠ {as_sentence(problem)}", 10000)
            if not ask:
                return

        def stored(new: str) -> None:
            self._show(folder, new)
            self.message.emit(f"The case is now called {new}.", 6000)
            self.renamed.emit(new)

        self.ctl.read(lambda s: rename_case(s, folder, name), stored, "rename case",
                      on_error=lambda err: self.message.emit(f"⚠ The case was not renamed: {err}", 20000))
