"""The window's File export, Models and Help actions (desktop/actions.py names them), as
parts the window owns. Each gets the controller and the window only as the parent of its
dialogs; database work runs in the pool."""
from __future__ import annotations

from typing import Callable

import logging
import os
import time
from pathlib import Path

from PySide6.QtCore import QObject, QStandardPaths, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QFileDialog, QMessageBox

from core.models.registry import FIELD, get_version, list_versions

from .actions import html_table
from .controller import Controller
from .filter_panel import STATEMENT
from .licences_dialog import LicencesDialog
from .models_panel import ModelsDialog, headline_metrics, version_info
from core.review.cases import case_name
from core.review.export import EXPORTERS
from desktop.report import file_stem, report_data, write_report
from desktop.release import read_for_release, record_and_place, write_signed_pdf
from desktop.retrain_dialog import RetrainDialog
from trainer.retrain import activate
from core.storage import ModelVersion
from core.distribution import hemascan_version
from core.storage.audit import verify_chain
from core.models.package import INTENDED_USE

log = logging.getLogger(__name__)

LAST_SAVE_FOLDER = "export/last_folder"  # QSettings key: the folder the reviewer last saved a CSV or report to
#: The CSV exports the save dialog offers (core.review.export's formats), by the filter that names them.
CSV_FORMATS = {"csv": "Images (one row per image) (*.csv)", "cells": "Cells (one row per cell) (*.csv)"}


class Exports(QObject):
    """CSV export and the PDF case report: read in a worker, written when the data is in."""

    written = Signal(str)  # the file written
    released = Signal(str)  # the case was released with this PDF
    message = Signal(str, int)

    def __init__(self, ctl: Controller, settings, dialog_parent, parent=None, case_fn=lambda: None,
                 preferred_csv=lambda: "csv"):
        super().__init__(parent)
        self.ctl, self.settings, self.dialog_parent = ctl, settings, dialog_parent
        self.case_fn = case_fn  # the case's name as last read (desktop.case_name), or None
        self.preferred_csv = preferred_csv  # the CSV format offered first: the view shown's

    def default_path(self, ext: str, case: str | None = None, kind: str = "") -> str:
        """A new file named after the case (or the folder) and the time, in save_folder()."""
        folder = self.ctl.folder
        stem = file_stem(case or self.case_fn() or Path(folder).name)
        name = f"hemascan-{stem}{'-' + kind if kind else ''}-{time.strftime('%Y%m%d-%H%M')}.{ext}"
        return str(self.save_folder() / name)

    def save_folder(self) -> Path:
        """Where a save dialog opens: the last folder saved to, else the user's documents
        folder, else home; never inside the open image folder (a file written there would
        be scanned with the images, and the lab's image share is no place for reports)."""
        images = Path(self.ctl.folder).resolve() if self.ctl.folder else None

        def usable(p: str) -> bool:
            if not p or not os.path.isdir(p) or not os.access(p, os.W_OK):
                return False
            where = Path(p).resolve()
            return images is None or not (where == images or images in where.parents)

        for candidate in (str(self.settings.value(LAST_SAVE_FOLDER, "") or ""),
                          QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation), str(Path.home())):
            if usable(candidate):
                return Path(candidate)
        return Path.home()

    def _remember_folder(self, path: str) -> None:
        self.settings.setValue(LAST_SAVE_FOLDER, str(Path(path).parent))

    def _failed(self, what: str):
        def failed(err) -> None:
            self.message.emit(f"⚠ {what} failed: {err}", 20000)
        return failed

    def export_csv(self, path: str | None = None, fmt: str | None = None) -> str | None:
        """Export the folder, one row per image (``fmt`` "csv") or per cell ("cells"); without
        a path the save dialog offers both, the view shown's first. Returns the path it will be
        written to (``written`` when it is)."""
        if self.ctl.folder is None:
            return None
        if fmt is not None and fmt not in CSV_FORMATS:
            raise ValueError(f"unknown export format {fmt!r}")
        if path is None:
            first = fmt or self.preferred_csv()
            offered = [first, *[f for f in CSV_FORMATS if f != first]]
            path, chosen = QFileDialog.getSaveFileName(
                self.dialog_parent, "Export CSV", self.default_path("csv", kind="cells" if first == "cells" else ""),
                ";;".join(CSV_FORMATS[f] for f in offered))
            if not path:
                return None
            # the filter chosen (a dialog that gives none back: the first offered)
            fmt = next((f for f in CSV_FORMATS if (chosen or "").startswith(CSV_FORMATS[f])), first)
            self._remember_folder(path)
        fmt = fmt or "csv"
        db, folder = self.ctl.db, self.ctl.folder
        what = "cell" if fmt == "cells" else "image"

        def done(n: int) -> None:
            self.message.emit(f"Exported {n:,} {what} row{'s' if n != 1 else ''} to {path}", 8000)
            self.written.emit(path)

        self.ctl.runner.submit(lambda: EXPORTERS[fmt](db, path, folder=folder), name=f"{what} CSV export",
                               on_result=done, on_error=self._failed("CSV export"))
        return path

    def export_pdf(self, path: str | None = None, case: str | None = None) -> str | None:
        folder = self.ctl.folder
        if folder is None:
            return None
        if path is None:  # titled with the case's name (File ▸ Rename case… changes it)
            path, _f = QFileDialog.getSaveFileName(self.dialog_parent, "Export PDF report",
                                                   self.default_path("pdf", case), "PDF (*.pdf)")
            if not path:
                return None
            self._remember_folder(path)

        version, reviewer = self.ctl.version, self.ctl.state.reviewer or ""

        def render(out) -> None:  # on the GUI thread: Qt's text document and PDF writer
            stored, data = out
            try:
                write_report(None, folder, version, reviewer, path, case=case or stored, data=data)
            except Exception as exc:
                log.exception("PDF report failed")
                return self._failed("PDF report")(exc)
            self.message.emit(f"Report written to {path}", 8000)
            self.written.emit(path)

        self.ctl.read(lambda s: (case_name(s, folder), report_data(s, folder, version)), render, "report data",
                      on_error=self._failed("PDF report"))
        return path


    def release_case(self, path: str | None = None) -> str | None:
        """Release the open case (a supervisor's act): its signed PDF report, then the release
        recorded with the PDF's SHA-256 (desktop/release.py). Read in a worker; the PDF drawn on
        the GUI thread; the release recorded in a worker."""
        folder = self.ctl.folder
        if folder is None:
            return None
        if path is None:
            path, _f = QFileDialog.getSaveFileName(self.dialog_parent, "Release case: its signed PDF report",
                                                   self.default_path("pdf", kind="released"), "PDF (*.pdf)")
            if not path:
                return None
            self._remember_folder(path)
        db, local = self.ctl.db, self.ctl.state.reviewer

        def done(event) -> None:
            self.message.emit(f"Released {event.case_name} by {event.display_name}; report {path}", 12000)
            self.released.emit(path)
            self.written.emit(path)

        def render(read) -> None:  # on the GUI thread: Qt's PDF writer
            try:
                tmp, when = write_signed_pdf(folder, path, read)
            except Exception as exc:
                log.exception("release report failed")
                return self._failed("Release")(exc)
            self.ctl.runner.submit(lambda: record_and_place(db, folder, path, read, tmp, when, local),
                                   name="release", on_result=done, on_error=self._failed("Release"))

        self.ctl.read(lambda s: read_for_release(s, folder, local), render, "release",
                      on_error=self._failed("Release"))
        return path


class ModelMenu(QObject):
    """Model versions, retrain, switching the version this window shows."""

    switched = Signal(object, object)  # version_info dict, reclassify (True / False / None: ask)
    cell_switched = Signal(object)  # version_info of the cell model made active here (the gallery keeps its own)
    activating = Signal(int)  # a version this window is making active (its log row is not another seat's)
    message = Signal(str, int)
    notice = Signal(object)  # a sentence for the model panel (rich text), or None

    def __init__(self, ctl: Controller, dialog_parent, parent=None):
        super().__init__(parent)
        self.ctl, self.dialog_parent = ctl, dialog_parent
        self.retrain_dialog = None
        self.identity = None  # this seat's login and roles, once the window has read them
        # the cell model the Cells view shows while it is the current view (plain data), else None: set by the window
        self.cell_version: Callable[[], dict | None] = lambda: None

    def models_dialog(self) -> ModelsDialog:
        """The Model versions dialog, wired to this window: its table is read again once an
        activation asked from it has landed (or failed), since the activation runs in a worker."""
        dlg = ModelsDialog(self.ctl.db, self.dialog_parent)
        dlg.activateRequested.connect(lambda vid: self.activate_version(vid, ask=True))
        dlg.retrainRequested.connect(lambda: (dlg.accept(), self.show_retrain()))
        landed = lambda *_: dlg.refresh()  # noqa: E731
        self.switched.connect(landed)
        self.message.connect(landed)

        def unwire(_=None) -> None:
            self.switched.disconnect(landed)
            self.message.disconnect(landed)

        dlg.finished.connect(unwire)
        return dlg

    def show_models(self) -> None:
        self.models_dialog().exec()

    def show_retrain(self):
        """The modeless Retrain dialog (one at a time); the window stays usable while it trains."""

        if self.retrain_dialog is None:
            # from the Cells view: the cell model it shows; else the version the gallery shows
            version = self.cell_version() or self.ctl.version
            self.retrain_dialog = RetrainDialog(self.ctl.db, self.ctl.paths, self.dialog_parent,
                                                device=self.ctl.device, folder=self.ctl.folder,
                                                version=version, reviewer=self.ctl.state.reviewer)
            self.retrain_dialog.promoting.connect(self.activating.emit)
            # The dialog has made the version active (one log row, the reviewer's): show it.
            self.retrain_dialog.promoted.connect(lambda vid, re: self.use_version(vid, reclassify=bool(re)))
            self.retrain_dialog.finished.connect(lambda _=None: setattr(self, "retrain_dialog", None))
            self.retrain_dialog.setAttribute(Qt.WA_DeleteOnClose)
        self.retrain_dialog.show()
        self.retrain_dialog.raise_()
        return self.retrain_dialog

    def activate_version(self, version_id: int, ask: bool = True, reclassify: bool | None = None) -> None:
        """Make ``version_id`` the active one of its kind (logged as `models activate`). A field
        model is then shown; a cell model leaves the image gallery's field model as it is."""

        why = self.identity.why_not("activate") if self.identity is not None else None
        if why:  # the database would refuse it too (its privileges): said before asking it
            self.message.emit(f"⚠ {why[0].upper()}{why[1:]}", 20000)
            return
        self.ctl.read(lambda s: getattr(s.get(ModelVersion, version_id), "input_kind", FIELD),
                      lambda kind: self._activate(version_id, kind, ask, reclassify), "model version")

    def _activate(self, version_id: int, kind: str, ask: bool, reclassify: bool | None) -> None:
        db, who = self.ctl.db, self.ctl.state.reviewer
        if kind == FIELD:  # the activation watch follows the field model: this row is the window's own
            self.activating.emit(version_id)

        def work():
            with db.session() as s:
                name = next(v.name for v in list_versions(s) if v.id == version_id)
            activate(db, name, who)  # recorded in the activation log, as `models activate`
            with db.session() as s:
                return version_info(get_version(s, name))

        def done(info: dict) -> None:
            if info["input_kind"] != FIELD:
                shown = self.ctl.version["name"] if self.ctl.version else "none"
                self.cell_switched.emit(info)
                self.message.emit(f"{info['name']} is now the active cell model (it classifies the cells found in "
                                  f"each image); the image gallery still shows {shown}.", 10000)
                return
            self.switched.emit(info, None if ask and reclassify is None else bool(reclassify))

        self.ctl.runner.submit(work, name="activate model", on_error=lambda e: self.message.emit(f"⚠ {e}", 20000),
                               on_result=done)

    def use_version(self, version_id: int, reclassify: bool | None = None) -> None:
        """Show (and classify with) ``version_id``, already made active (by another seat, or by
        the Retrain dialog's Promote): nothing more is logged."""

        self.ctl.read(lambda s: version_info(s.get(ModelVersion, version_id)),
                      lambda info: self.switched.emit(info, reclassify), "model version")


    def activated_elsewhere(self, a) -> None:
        """Another seat made another version active (desktop.peers.Activation): say so, and keep
        showing and classifying with the version shown until the reviewer chooses to switch."""
        shown = self.ctl.version["name"] if self.ctl.version else "?"
        text = (f"Model {a.name} was made active by {a.by} ({a.at}), not in this window. This window still "
                f"shows and classifies with {shown}.")
        self.notice.emit(f"<span style='color:#b26a00'>⚠ {text}</span> <a href='use'>Use {a.name}</a>")
        self.message.emit(f"⚠ {text} 'Use {a.name}' under Model (left) switches.", 0)

    def use_active(self, a) -> None:
        if a is not None:
            self.use_version(a.version_id)


class HelpMenu(QObject):
    """Keys, log folder, About (with the decision-support statement and the audit record's check)."""

    audit_checked = Signal(str)  # the check's sentence, shown in the About box

    def __init__(self, ctl: Controller, dialog_parent, parent=None):
        super().__init__(parent)
        self.ctl, self.dialog_parent = ctl, dialog_parent
        self.about_box: QMessageBox | None = None

    def show_shortcuts(self) -> None:
        QMessageBox.information(self.dialog_parent, "Keyboard shortcuts", html_table(self.ctl.classes))

    def open_log_folder(self) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.ctl.paths.logs)))

    def show_licences(self) -> None:
        LicencesDialog(self.dialog_parent).exec()

    def about_text(self, audit: str | None = None) -> str:
        """``audit``: the audit record's check in one sentence (None: being checked)."""
        import html
        import platform

        import PySide6
        import sqlalchemy


        hv = hemascan_version()
        try:
            import torch

            tv = torch.__version__
        except Exception:
            tv = "not available"
        v = self.ctl.version or {}
        card = v.get("card") or {}
        paths = self.ctl.paths
        return (f"<h3>hemascan {hv}</h3><p><b>{STATEMENT}</b></p><p>{INTENDED_USE}</p>"
                f"<p>Python {platform.python_version()} · PySide6 {PySide6.__version__} · Qt "
                f"{PySide6.QtCore.qVersion()} · PyTorch {tv} · SQLAlchemy {sqlalchemy.__version__}</p>"
                f"<p><b>Model:</b> {v.get('name', 'none')} ({card.get('architecture', '')}, "
                f"{card.get('taxonomy', '')}); {headline_metrics(card)}<br>"
                f"created {card.get('created_at', '')}; classes: {', '.join(card.get('classes', []))}<br>"
                f"{card.get('notes', '')}</p>"
                f"<p><b>Audit record:</b> {html.escape(audit or 'being checked...')}</p>"
                f"<p><small>Data: {paths.data_dir}<br>Log: {paths.logs / 'hemascan.log'}</small></p>")

    def show_about(self) -> None:
        """The About box at once; the audit record is checked on the workers (it reads every
        event) and its sentence replaces "being checked" when it is done."""
        box = QMessageBox(QMessageBox.Information, "About hemascan", self.about_text(), QMessageBox.Ok,
                          self.dialog_parent)
        box.setTextFormat(Qt.RichText)
        box.setAttribute(Qt.WA_DeleteOnClose)
        box.open()
        self.about_box = box

        def shown(sentence: str) -> None:
            if self.about_box is box:
                try:
                    box.setText(self.about_text(sentence))
                except RuntimeError:  # closed (and deleted) meanwhile
                    self.about_box = None
            self.audit_checked.emit(sentence)

        self.ctl.read(lambda s: verify_chain(s).sentence(), shown, "audit check",
                      on_error=lambda exc: shown(f"could not be checked: {exc}"))
