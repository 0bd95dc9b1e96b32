"""The one table of the window's actions: name, menu text, keys, handler, enabled-when.

The menus, the toolbar, the review buttons, the keyboard shortcuts, the Help ▸ Keyboard
shortcuts table and the README's key table all come from ``ACTIONS`` (``python -m
desktop.actions`` prints the README table; a test checks the README against it).
The class keys 1..N follow the active model (``class_specs``).

The table configures whatever window it is given (``build(window)``): a handler is the name
of one of its methods, an enabled-when rule reads its ``folder``, ``job``, ``state`` and
``review`` (``ActionTarget``). It imports nothing of the window.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from core.models.taxonomy import OTHER, OTHER_TITLE
from core.models.taxonomy import TAXONOMIES


class ActionTarget(Protocol):
    """What the enabled-when rules read of the window the table configures."""

    folder: str | None
    job: Any  # the running classify job, or None
    state: Any  # core.review.state.ReviewState
    review: Any  # core.review.session.ReviewSession (can_undo, can_redo)
    cells: Any  # the cell view when it is shown (targets(), can_undo, can_redo), else None
    identity: Any  # core.storage.identity.Identity once read (None until then: acts needing a right wait)


@dataclass(frozen=True)
class ActionSpec:
    name: str  # the window's attribute is a_<name>
    text: str  # menu text (& marks the mnemonic)
    handler: str | None  # the window's method, or its part's ("reviewing.undo"); None: the gallery's keys (help only)
    keys: tuple[str, ...] = ()  # portable key names (QKeySequence's); the first is shown in menus
    menu: str | None = None
    toolbar: bool = False
    icon: str | None = None  # a QStyle standard pixmap name
    tip: str = ""
    enabled: str | None = None  # a key of ENABLED
    live: bool = False  # the key stays live when not enabled and says why; only its button greys
    button: str | None = None  # text of its button in the review bar
    help: str | None = None  # its line in the key tables (None: not listed)
    help_keys: str | None = None  # how the key tables write the keys, when not from ``keys``
    args: tuple = ()
    separator: bool = False  # a separator before it in its menu
    cells_text: str | None = None  # its menu text while the cells view is shown (else ``text``)
    right: str | None = None  # the login's right it needs (core.storage.identity.RIGHTS): else disabled, saying why


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("open", "&Open folder…", "choose_folder", ("Ctrl+O",), "File", True, "SP_DirOpenIcon",
               "Open a folder of smear images and classify it", help="open a folder and classify it"),
    ActionSpec("recent", "Open &recent", None, menu="File"),  # the submenu of recent folders
    ActionSpec("classify", "&Classify", "classify", ("Ctrl+R",), "File", True, "SP_MediaPlay",
               "Classify what the active model has not predicted yet", "idle_folder", separator=True,
               help="classify what the active model has not predicted yet"),
    ActionSpec("image_kind", "&Images in this folder are…", "choose_image_kind", (), "File", enabled="idle_folder",
               tip="Say what this folder's images are: a camera's fields (every white cell counted) or pre-cut "
                   "single cells (the one in the middle only); until told, hemascan judges each image"),
    ActionSpec("cancel", "Cancel", "cancel_job", ("Esc",), "File", True, "SP_MediaStop", enabled="running",
               help="cancel the classification (after the current batch)"),
    ActionSpec("csv", "Export &CSV…", "export_csv", ("Ctrl+E",), "File", True, "SP_DialogSaveButton",
               enabled="folder", separator=True,
               tip="Export the folder's predictions and labels as CSV: one row per image, or one row per cell",
               help="export the folder's predictions and labels as CSV (one row per image or per cell)"),
    ActionSpec("pdf", "Export &PDF report…", "export_pdf", ("Ctrl+P",), "File", True, "SP_FileIcon",
               enabled="folder", help="export the PDF case report"),
    ActionSpec("release", "Re&lease case…", "release_case", (), "File", enabled="folder", right="release",
               tip="Release the case (a supervisor's act): write its signed PDF report and record the release; "
                   "the case is read-only afterwards, and a change is an amendment with a reason"),
    ActionSpec("rename_case", "Re&name case…", "cases.rename", (), "File", enabled="folder",
               tip="Give this case (the open folder: one sample) the name the lab uses; every seat, the exports and "
                   "the PDF report use it"),
    ActionSpec("quit", "&Quit", "close", ("Ctrl+Q",), "File", separator=True),
    # Review: the class keys 1..N come first (class_specs), then these
    ActionSpec("other", f"O  {OTHER_TITLE}", "label_selected", ("O",), "Review", enabled="selection", live=True,
               button=f"O  {OTHER}", args=(OTHER,),
               tip=f"{OTHER_TITLE}: fits none of the classes (another cell type, an artefact, out of focus). "
                   "Never used as a class when retraining.",
               help=f'"{OTHER_TITLE}": no class fits (another cell type, an artefact, out of focus)'),
    ActionSpec("other_note", f"{OTHER_TITLE} with a &note…", "reviewing.label_other_with_note", ("Shift+O",), "Review",
               live=True, help=f'"{OTHER_TITLE}" with a note on what the image shows'),
    # with Shift too: Shift is often still held after a Shift+arrow selection
    ActionSpec("accept", "&Accept prediction", "accept_prediction",
               ("A", "Return", "Enter", "Shift+A", "Shift+Return", "Shift+Enter"), "Review",
               enabled="selection", live=True, button="A  Accept", help="accept the model's prediction, then move on",
               help_keys="`A` or `Enter`"),
    ActionSpec("clear", "C&lear label", "label_selected", ("0",), "Review", live=True, args=(None,),
               help="clear the label"),
    ActionSpec("undo", "&Undo", "undo", ("Ctrl+Z",), "Review", icon="SP_ArrowBack", enabled="can_undo", live=True,
               button="Undo", separator=True, help="undo (a new audit event: nothing is deleted)"),
    ActionSpec("redo", "&Redo", "redo", ("Ctrl+Shift+Z", "Ctrl+Y"), "Review", icon="SP_ArrowForward",
               enabled="can_redo", live=True, button="Redo", help="redo"),
    ActionSpec("next", "&Next image", "move_current", ("Space",), "Review", args=(1,), help="next image",
               cells_text="&Next cell"),
    ActionSpec("prev", "&Previous image", "move_current", ("Shift+Space",), "Review", args=(-1,),
               help="previous image", cells_text="&Previous cell"),
    ActionSpec("navigate", "Move", None, help="move; `Shift`+arrows or `Ctrl`+click select several (one label for all)",
               help_keys="arrows, `PgUp`/`PgDown`, `Home`/`End`"),
    ActionSpec("add_cell", "Add a &missed cell", "add_missed_cell", ("N",), "Review",
               tip="Cells view: drag a box around a white cell the finder missed, on the field",
               help="cells view: add a cell the finder missed (then drag a box on the field)"),
    ActionSpec("reviewer", "Reviewer &name…", "reviewing.ask_reviewer", menu="Review", separator=True),
    ActionSpec("show_images", "&Images", "show_view", ("Ctrl+1",), "View", args=("images",),
               help="the images view (one label per image)"),
    ActionSpec("show_cells", "&Cells", "show_view", ("Ctrl+2",), "View", args=("cells",),
               help="the cells view: the white cells grouped by class, their fields and the differential"),
    ActionSpec("gradcam", "&Grad-CAM overlay", "detail_pane.toggle_gradcam", ("G",), "View", help="Grad-CAM overlay on/off"),
    ActionSpec("zoom_in", "Zoom &in", "zoom", ("Ctrl++",), "View", args=(1.25,), help="zoom in"),
    ActionSpec("zoom_out", "Zoom &out", "zoom", ("Ctrl+-",), "View", args=(0.8,), help="zoom out"),
    ActionSpec("fit", "&Fit image", "fit_image", ("F",), "View", help="fit the image"),
    ActionSpec("models", "Model &versions…", "model_menu.show_models", (), "Models", True, separator=True),
    ActionSpec("retrain", "&Retrain…", "show_retrain", (), "Models",
               tip="Train a new model version from your reviewed labels and compare it"),
    ActionSpec("shortcuts", "&Keyboard shortcuts", "help_menu.show_shortcuts", ("F1",), "Help", help="this list of keys"),
    ActionSpec("log", "Open &log folder", "help_menu.open_log_folder", (), "Help"),
    ActionSpec("about", "&About hemascan", "help_menu.show_about", (), "Help"),
    ActionSpec("licences", "&Licences…", "help_menu.show_licences", (), "Help",
               tip="The licences of hemascan and of every library it bundles"),
)
MENUS = ("File", "Review", "View", "Models", "Help")
HELP_GROUPS = {"Review": 0, None: 1, "View": 2, "File": 3, "Models": 4, "Help": 5}

# enabled-when: the window's state -> whether the action (or, for live keys, its button) can act
ENABLED: dict[str, Callable[[ActionTarget], bool]] = {
    "folder": lambda w: w.folder is not None,
    "idle_folder": lambda w: w.folder is not None and w.job is None,
    "running": lambda w: w.job is not None,
    "selection": lambda w: bool(w.cells.targets() if w.cells is not None else w.state.targets()),
    "can_undo": lambda w: (w.cells if w.cells is not None else w.review).can_undo,
    "can_redo": lambda w: (w.cells if w.cells is not None else w.review).can_redo,
}


def class_specs(classes: list[str]) -> list[ActionSpec]:
    """One action per class of the active model: keys 1..9 (a tenth class has no key)."""
    out = []
    for k, c in enumerate(classes, start=1):
        key = (str(k),) if k <= 9 else ()
        text = f"{k}  {c}" if key else c
        out.append(ActionSpec(f"class_{k}", text, "label_selected", key, "Review", enabled="selection", live=True,
                              button=text, args=(c,), tip=f"Label the selected image(s) or cell(s) {c}"))
    return out


def key_rows(classes: list[str]) -> list[tuple[str, str]]:
    """(keys, what they do), in table order: the Help dialog's and the README's rows."""
    rows = []
    if classes:
        n = min(len(classes), 9)
        rows.append((f"`1`–`{n}`", f"label the selected image(s) {' / '.join(classes[:n])}, then move on "
                                        "(the keys follow the active model's classes)"))
    for a in sorted(ACTIONS, key=lambda a: HELP_GROUPS[a.menu]):  # review keys first
        if a.help is None:
            continue
        rows.append((a.help_keys or " / ".join(f"`{k}`" for k in a.keys), a.help))
    return rows


def markdown_table(classes: list[str]) -> str:
    lines = ["| key | action |", "| --- | --- |"]
    lines += [f"| {k} | {what} |" for k, what in key_rows(classes)]
    return "\n".join(lines)


def html_table(classes: list[str]) -> str:
    import html
    import re

    def keys(md: str) -> str:
        return re.sub(r"`([^`]+)`", r"<b>\1</b>", html.escape(md, quote=False))

    return "<table>" + "".join(f"<tr><td>{keys(k)}</td><td>{keys(what)}</td></tr>"
                               for k, what in key_rows(classes)) + "</table>"


def default_classes() -> list[str]:
    return list(TAXONOMIES["all_subtype"].classes)


# ---------------------------------------------------------------- the Qt side
def _make(window, spec: ActionSpec):
    from PySide6.QtGui import QAction, QKeySequence
    from PySide6.QtWidgets import QStyle

    a = QAction(spec.text, window)
    a.setShortcuts([QKeySequence(k) for k in spec.keys])
    if spec.icon:
        a.setIcon(window.style().standardIcon(getattr(QStyle, spec.icon)))
    if spec.tip:
        a.setStatusTip(spec.tip)
    handler = window
    for name in spec.handler.split("."):  # a method of the window or of one of its parts
        handler = getattr(handler, name)
    a.triggered.connect(lambda _checked=False: handler(*spec.args))
    window.addAction(a)  # shortcuts work whatever has focus in the window
    setattr(window, f"a_{spec.name}", a)
    return a


def _button(window, spec: ActionSpec, action, classes: list[str]):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QKeySequence
    from PySide6.QtWidgets import QPushButton

    from .tiles import class_color  # heavy: imports Qt

    b = QPushButton(spec.button)
    b.setFocusPolicy(Qt.NoFocus)  # a click never takes the keys from the gallery
    keys = action.shortcut().toString(QKeySequence.NativeText)
    b.setToolTip((spec.tip or spec.text.replace("&", "")) + (f" (key {keys})" if keys else ""))
    label = spec.args[0] if spec.args and spec.handler == "label_selected" else None
    if label:
        b.setStyleSheet(f"QPushButton {{ border-left: 6px solid {class_color(label, classes).name()}; "
                        "padding: 4px 8px; }")
    b.clicked.connect(action.trigger)
    return b


def build(window) -> None:
    """The window's menus, toolbar, review buttons and shortcuts, from ACTIONS."""
    from PySide6.QtCore import QSize, Qt

    menus = {m: window.menuBar().addMenu(f"&{m}") for m in MENUS}
    tb = window.addToolBar("Main")
    tb.setObjectName("mainToolbar")
    tb.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
    tb.setIconSize(QSize(18, 18))
    window.review_menu = menus["Review"]
    window.class_anchor = window.review_menu.addSeparator()  # the class keys 1..N go above
    window.specs = {}
    window.review_buttons = {}
    last_tb_menu = None
    for spec in ACTIONS:
        if spec.name == "recent":
            window.recent_menu = menus["File"].addMenu(spec.text)
            continue
        if spec.handler is None:
            continue
        a = _make(window, spec)
        window.specs[spec.name] = (spec, a)
        if spec.menu:
            if spec.separator:
                menus[spec.menu].addSeparator()
            menus[spec.menu].addAction(a)
        if spec.toolbar:
            if last_tb_menu is not None and spec.menu != last_tb_menu:
                tb.addSeparator()
            tb.addAction(a)
            last_tb_menu = spec.menu
        if spec.button:
            window.review_buttons[spec.name] = _button(window, spec, a, [])
    window.class_actions = []
    build_class_actions(window, [])


def build_class_actions(window, classes: list[str]) -> None:
    """Keys, menu entries and buttons 1..N for the active model's classes; called again when a
    model of another taxonomy becomes active."""
    for a in window.class_actions:
        window.removeAction(a)
        a.deleteLater()
    for name in [n for n in window.specs if n.startswith("class_")]:
        old = window.review_buttons.pop(name)
        # hidden and detached now: deleteLater waits for this event loop level, and a question
        # asked right after (a nested loop) would draw the old buttons over the new ones
        old.hide()
        old.setParent(None)
        old.deleteLater()
        del window.specs[name]
    bar = window.review_bar
    while bar.count():  # the bar is laid out again: classes, then the table's buttons
        bar.takeAt(0)
    window.class_actions = []
    for spec in class_specs(classes):
        a = _make(window, spec)
        window.review_menu.insertAction(window.class_anchor, a)
        window.specs[spec.name] = (spec, a)
        window.class_actions.append(a)
        window.review_buttons[spec.name] = _button(window, spec, a, classes)
    order = [n for n in window.specs if n.startswith("class_")] + [
        n for n in window.review_buttons if not n.startswith("class_")]
    for n in order:
        bar.addWidget(window.review_buttons[n])
        if bar.parentWidget() is not None:  # shown now, not when the event loop gets to it
            window.review_buttons[n].setVisible(True)
    bar.addStretch(1)
    bar.activate()  # laid out now: nothing half-built is drawn if a question opens next
    window.class_buttons = [window.review_buttons[n] for n in order if n.startswith("class_") or n == "other"]
    window.label_actions = [*window.class_actions, window.a_other, window.a_other_note]


def update_enabled(window) -> None:
    """Enabled-when, for every action of the table and its button; the menu texts of the view
    shown (the cells view speaks of cells)."""
    in_cells = getattr(window, "cells", None) is not None
    for spec, a in window.specs.values():
        if spec.cells_text is not None:
            text = spec.cells_text if in_cells else spec.text
            if a.text() != text:
                a.setText(text)
        if spec.enabled is None:
            continue
        ok = ENABLED[spec.enabled](window)
        if spec.right is not None:  # the login's roles: disabled with the reason as its tip
            ident = getattr(window, "identity", None)
            why = "checking this login's rights…" if ident is None else ident.why_not(spec.right)
            ok = ok and why is None
            tip = spec.tip if why is None else f"{spec.tip.split(':')[0]}: not possible: {why}"
            if a.toolTip() != tip:
                a.setToolTip(tip)
                a.setStatusTip(tip)
        if not spec.live:
            a.setEnabled(ok)
        b = window.review_buttons.get(spec.name)
        if b is not None:
            b.setEnabled(ok)


if __name__ == "__main__":  # the README's key table
    sys.stdout.write(markdown_table(default_classes()) + "\n")
