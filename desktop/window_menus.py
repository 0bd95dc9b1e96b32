"""The window's File export, Models and Help actions (desktop/actions.py names them)."""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QApplication, QFileDialog, QInputDialog, QMessageBox

from core.models.registry import get_version, list_versions

from .actions import html_table
from .filter_panel import STATEMENT
from .models_panel import ModelsDialog, headline_metrics, version_info

log = logging.getLogger(__name__)


class ExportMixin:
    """Part of MainWindow: CSV export and the PDF case report."""

    def default_export_path(self, ext: str, case: str | None = None) -> str:
        """A new file named after the case (or the folder) and the time, in the folder when it
        is writable, else in the home folder."""
        stem = re.sub(r"[^\w.-]+", "-", case or Path(self.folder).name).strip("-.") or "case"
        name = f"hemascan-{stem}-{time.strftime('%Y%m%d-%H%M')}.{ext}"
        return str(Path(self.folder) / name) if os.access(self.folder, os.W_OK) else str(Path.home() / name)

    def export_csv(self, path: str | None = None) -> str | None:
        if self.folder is None:
            return None
        if path is None:
            path, _f = QFileDialog.getSaveFileName(self, "Export CSV", self.default_export_path("csv"), "CSV (*.csv)")
            if not path:
                return None
        from core.review.export import EXPORTERS

        try:
            n = EXPORTERS["csv"](self.db, path, folder=self.folder)
        except Exception as exc:
            log.exception("CSV export failed")
            self.show_error(f"CSV export failed: {exc}")
            return None
        self.statusBar().showMessage(f"Exported {n:,} rows to {path}", 8000)
        self.reportWritten.emit(path)
        return path

    def export_pdf(self, path: str | None = None, case: str | None = None) -> str | None:
        if self.folder is None:
            return None
        if path is None:
            default = str(self.settings.value(f"case/{Path(self.folder).name}", "") or Path(self.folder).name)
            case, ok = QInputDialog.getText(self, "Case report", "Case / sample name on the report:", text=default)
            if not ok:
                return None
            self.settings.setValue(f"case/{Path(self.folder).name}", case.strip())
            path, _f = QFileDialog.getSaveFileName(self, "Export PDF report",
                                                   self.default_export_path("pdf", case.strip()), "PDF (*.pdf)")
            if not path:
                return None
        from .report import write_report

        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            write_report(self.db, self.folder, self.version, self.reviewer or "", path, case=case)
        except Exception as exc:
            log.exception("PDF report failed")
            self.show_error(f"PDF report failed: {exc}")
            return None
        finally:
            QApplication.restoreOverrideCursor()
        self.statusBar().showMessage(f"Report written to {path}", 8000)
        self.reportWritten.emit(path)
        return path


class ModelMenuMixin:
    """Part of MainWindow: model versions, retrain, switching the active version."""

    def show_models(self) -> None:
        dlg = ModelsDialog(self.db, self)
        dlg.activateRequested.connect(lambda vid: self.activate_version(vid, ask=True))
        dlg.retrainRequested.connect(lambda: (dlg.accept(), self.show_retrain()))
        dlg.exec()

    def show_retrain(self):
        """The modeless Retrain dialog (one at a time); the window stays usable while it trains."""
        from .retrain_dialog import RetrainDialog

        if getattr(self, "retrain_dialog", None) is None:
            self.retrain_dialog = RetrainDialog(self.db, self.paths, self, device=self.device_pref,
                                                folder_open=self.folder is not None)
            self.retrain_dialog.promoted.connect(lambda vid, re: self.activate_version(vid, ask=False, reclassify=re))
            self.retrain_dialog.finished.connect(lambda _=None: setattr(self, "retrain_dialog", None))
            self.retrain_dialog.setAttribute(Qt.WA_DeleteOnClose)
        self.retrain_dialog.show()
        self.retrain_dialog.raise_()
        return self.retrain_dialog

    def activate_version(self, version_id: int, ask: bool = True, reclassify: bool | None = None) -> None:
        from trainer.retrain import activate

        with self.db.session() as s:
            name = next(v.name for v in list_versions(s) if v.id == version_id)
        activate(self.db, name, self.reviewer)  # recorded in the activation log, as `models activate`
        with self.db.session() as s:
            self.set_version(version_info(get_version(s, name)))
        self.reload_gallery()
        self.statusBar().showMessage(f"Active model: {self.version['name']}", 8000)
        if self.folder is None:
            return
        if reclassify is None and ask:
            reclassify = QMessageBox.question(
                self, "Re-classify?", f"Classify {Path(self.folder).name} with {self.version['name']} now?\n"
                "Only images this version has not predicted yet are processed.") == QMessageBox.Yes
        if reclassify:
            self.classify()


class HelpMixin:
    """Part of MainWindow: keys, log folder, About (with the decision-support statement)."""

    def show_shortcuts(self) -> None:
        QMessageBox.information(self, "Keyboard shortcuts", html_table(self.version["classes"] if self.version else []))

    def open_log_folder(self) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.paths.logs)))

    def about_text(self) -> str:
        import platform

        import PySide6
        import sqlalchemy

        from core.models.package import INTENDED_USE

        try:
            from importlib.metadata import version as pkg_version

            hv = pkg_version("hemascan")
        except Exception:
            hv = "dev"
        try:
            import torch

            tv = torch.__version__
        except Exception:
            tv = "not available"
        v = self.version or {}
        card = v.get("card") or {}
        return (f"<h3>hemascan {hv}</h3><p><b>{STATEMENT}</b></p><p>{INTENDED_USE}</p>"
                f"<p>Python {platform.python_version()} · PySide6 {PySide6.__version__} · Qt "
                f"{PySide6.QtCore.qVersion()} · PyTorch {tv} · SQLAlchemy {sqlalchemy.__version__}</p>"
                f"<p><b>Model:</b> {v.get('name', 'none')} ({card.get('architecture', '')}, "
                f"{card.get('taxonomy', '')}); {headline_metrics(card)}<br>"
                f"created {card.get('created_at', '')}; classes: {', '.join(card.get('classes', []))}<br>"
                f"{card.get('notes', '')}</p>"
                f"<p><small>Data: {self.paths.data_dir}<br>Log: {self.paths.logs / 'hemascan.log'}</small></p>")

    def show_about(self) -> None:
        QMessageBox.about(self, "About hemascan", self.about_text())
