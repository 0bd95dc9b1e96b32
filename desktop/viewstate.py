"""What the window restores on the next start: the last folder and, per folder, its
filters, sort, selected image and scroll position. Kept in the data directory's
settings file (``desktop.ini``), so ``--data-dir`` / HEMASCAN_DATA_DIR keeps labs and
tests apart. Plain data in, plain data out: the window applies it."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

from PySide6.QtCore import QByteArray, QSettings
from PySide6.QtWidgets import QApplication

from core.cells.finder import IMAGE_KINDS

SETTINGS_FILE = "desktop.ini"
MAX_RECENT = 8


def settings_for(data_dir) -> QSettings:
    from pathlib import Path

    return QSettings(str(Path(data_dir) / SETTINGS_FILE), QSettings.IniFormat)


@dataclass
class FolderView:
    predicted: str | None = None
    reviewed: str | None = None
    uncertain_only: bool = False
    outside_only: bool = False
    disagreement: bool = False
    sort: str | None = None
    image_id: int | None = None
    scroll: int = 0


def _group(folder: str) -> str:
    return "folders/" + hashlib.sha1(folder.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def save_folder_view(settings: QSettings, folder: str, view: FolderView) -> None:
    settings.beginGroup(_group(folder))
    for k, v in asdict(view).items():
        settings.setValue(k, "" if v is None else v)
    settings.endGroup()
    settings.setValue("lastFolder", folder)


def load_folder_view(settings: QSettings, folder: str) -> FolderView | None:
    settings.beginGroup(_group(folder))
    try:
        if not settings.childKeys():
            return None
        out = {}
        for f in fields(FolderView):
            raw = settings.value(f.name, "")
            if f.type == "bool":
                out[f.name] = str(raw).lower() in ("true", "1")
            elif f.type in ("int", "int | None"):
                try:
                    out[f.name] = int(raw)
                except (TypeError, ValueError):
                    out[f.name] = None if f.type == "int | None" else 0
            else:
                out[f.name] = str(raw) if raw not in ("", None) else None
        return FolderView(**out)
    finally:
        settings.endGroup()


# What a folder's images are (IMAGE_KINDS), as the lab said: kept apart from the folder's view,
# whose absence means "never opened".
def save_image_kind(settings: QSettings, folder: str, kind: str) -> None:
    settings.setValue("imageKinds/" + _group(folder).split("/", 1)[1], kind)


def load_image_kind(settings: QSettings, folder: str) -> str | None:
    """The kind said for ``folder``; None when never said (classify then keeps each image's)."""
    kind = str(settings.value("imageKinds/" + _group(folder).split("/", 1)[1], ""))
    return kind if kind in IMAGE_KINDS else None


def last_folder(settings: QSettings) -> str | None:
    v = settings.value("lastFolder", "")
    return str(v) if v else None


TITLE_BAR_ALLOWANCE_PX = 40  # a first start's window leaves this much of the screen for its title bar


class WindowSettings:
    """Geometry, splitters, the Grad-CAM toggle, the recent folders and the open folder's
    view, saved on close and restored at start. ``window`` is the QMainWindow; ``splitter``,
    ``detail`` (the DetailPanel) and ``recent_menu`` are the widgets it saves."""

    def __init__(self, settings: QSettings, window, splitter, detail, open_folder):
        self.settings, self.window, self.splitter, self.detail = settings, window, splitter, detail
        self.open_folder = open_folder  # a recent folder chosen from the menu
        self.recent_menu = None

    def restore(self) -> None:
        s, w = self.settings, self.window
        geo = s.value("geometry")
        if isinstance(geo, QByteArray) and not geo.isEmpty():
            w.restoreGeometry(geo)
        else:
            screen = QApplication.primaryScreen()
            avail = screen.availableGeometry() if screen else None
            if avail is not None:  # the title bar the window manager adds is outside the window's height
                w.resize(min(1360, avail.width()), min(860, avail.height() - TITLE_BAR_ALLOWANCE_PX))
                w.move(avail.topLeft())
        for key, widget in (("windowState", None), ("mainSplitter", self.splitter),
                            ("detailSplitter", self.detail.splitter)):
            v = s.value(key)
            if isinstance(v, QByteArray) and not v.isEmpty():
                (w.restoreState if widget is None else widget.restoreState)(v)
        self.detail.gradcam.setChecked(s.value("gradcam", False, type=bool))

    def save(self, folder: str | None, view: FolderView | None) -> None:
        s, w = self.settings, self.window
        s.setValue("geometry", w.saveGeometry())
        s.setValue("windowState", w.saveState())
        s.setValue("mainSplitter", self.splitter.saveState())
        s.setValue("detailSplitter", self.detail.splitter.saveState())
        s.setValue("gradcam", self.detail.gradcam.isChecked())
        if folder is not None and view is not None:
            save_folder_view(s, folder, view)
        s.sync()

    def recent_folders(self) -> list[str]:
        v = self.settings.value("recentFolders", [])
        if isinstance(v, str):
            v = [v]
        return [str(x) for x in (v or [])]

    def add_recent(self, folder: str) -> None:
        rec = [folder] + [f for f in self.recent_folders() if f != folder]
        self.settings.setValue("recentFolders", rec[:MAX_RECENT])
        self.fill_recent()

    def fill_recent(self) -> None:
        if self.recent_menu is None:
            return
        self.recent_menu.clear()
        rec = self.recent_folders()
        for k, f in enumerate(rec, start=1):
            a = self.recent_menu.addAction(f"&{k} {f}")
            a.triggered.connect(lambda _=False, f=f: self.open_folder(f))
        self.recent_menu.setEnabled(bool(rec))
