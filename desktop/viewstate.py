"""What the window restores on the next start: the last folder and, per folder, its
filters, sort, selected image and scroll position. Kept in the data directory's
settings file (``desktop.ini``), so ``--data-dir`` / HEMASCAN_DATA_DIR keeps labs and
tests apart. Plain data in, plain data out: the window applies it."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

from PySide6.QtCore import QSettings

SETTINGS_FILE = "desktop.ini"


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


def last_folder(settings: QSettings) -> str | None:
    v = settings.value("lastFolder", "")
    return str(v) if v else None
