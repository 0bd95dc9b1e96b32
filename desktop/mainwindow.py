"""The main window: open a folder, classify it in the worker, review it with the keyboard.

The window owns and lays out its parts, each one object with one concern, all given the
Qt-free controller (desktop/controller.py: the review state, the version shown, and the job
runner, the one road to the database): the filter panel (filter_panel.py), the gallery
(browse.py), the detail view (detail_view.py), the review actions (review_actions.py), the
classify job (classify_job.py), exports, models and help (window_menus.py), what other
seats do (peers.py, queuestatus.py) and what is kept across restarts (viewstate.py). The
action table (actions.py) builds the menus, keys and buttons from the window's methods
below, which hand each action to its part. The GUI thread reads nothing from the database
once the window is set up: every read runs in the pool and comes back as plain data.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import QFileDialog, QInputDialog, QLabel, QMainWindow, QMessageBox, QSplitter, QTabWidget

from core.app.bootstrap import open_database
from core.config import Paths
from core.models.registry import require_active_version
from core.review.gallery import GalleryFilter
from core.review.cells import images_with_labelled_cells
from core.review.labels import LabelWriter, reviewer_problem
from core.review.state import ReviewState
from core.storage.identity import current_identity

from . import actions
from .browse import GalleryPane
from .case_name import CaseName
from .cell_view import CellPane
from .classify_job import ClassifyJob
from .controller import Controller
from .detail_view import DetailPane
from .filter_panel import STATEMENT, FilterPanel  # noqa: F401  (STATEMENT: re-exported)
from .models_panel import version_info
from .peers import ActivationWatch, PeerCellLabels, PeerLabels
from .queuestatus import QueueStatusLabel
from .review_actions import UNREVIEWED_GRACE_MS, QueuedReview, ReviewActions, pending_rows  # noqa: F401
from .viewstate import (WindowSettings, last_folder, load_folder_view, load_image_kind, save_folder_view,
                        save_image_kind, settings_for)
from .window_menus import Exports, HelpMenu, ModelMenu
from .workers import Workers, setup_on_main_thread
from desktop.keys import GalleryKeys

# File ▸ Images in this folder are…: what the choice changes, said before it is made
IMAGE_KIND_QUESTION = ("What are this folder's images?\n\nhemascan then finds the cells again in every image "
                       "of the folder,\nexcept images with a cell a reviewer labelled: their cells and labels stay "
                       "as they are.")

log = logging.getLogger(__name__)


class MainWindow(QMainWindow):
    folderOpened = Signal(str)
    jobFinished = Signal(object)  # ClassifySummary (or None after an error), once the gallery shows it
    labelsChanged = Signal(list)  # image ids whose label changed
    gradcamReady = Signal(int)  # image id
    countsShown = Signal()  # the counts panel shows the latest counts
    imageShown = Signal(int)  # image id whose full image is in the detail view
    reportWritten = Signal(str)
    versionShown = Signal(str)  # the name of the model version the window now shows
    # the parts the action table's dotted handlers name ("reviewing.undo")
    reviewing: ReviewActions
    detail_pane: DetailPane
    model_menu: ModelMenu
    cases: CaseName
    help_menu: HelpMenu

    def __init__(self, paths: Paths, db_url: str | None = None, settings: QSettings | None = None,
                 device: str | None = None):
        super().__init__()
        self.paths = paths.ensure()
        self.settings = settings or settings_for(self.paths.data_dir)  # with the lab's data, not per OS user
        self.workers = Workers(self)
        with setup_on_main_thread():  # before the event loop: set up the database, read the version to show
            self.db = open_database(self.paths, paths.db_url(db_url))
            with self.db.session() as s:
                first_version = version_info(require_active_version(s))
        self.label_writer = LabelWriter(self.db, off_caller_thread=True)  # a key never waits on the server
        self.review = QueuedReview(self.db, "", self.label_writer)
        self.state = ReviewState(self.review)
        self.ctl = Controller(self.db, self.paths, self.state, self.workers, device=device, on_error=self.show_error)
        stored = str(self.settings.value("reviewer", "") or "")
        if reviewer_problem(stored) is None:
            self.state.set_reviewer(stored)
        self._post_job: object = False  # a finished job's summary, announced once the gallery shows its result
        self.setWindowTitle("hemascan")
        self.setAcceptDrops(True)
        self._build_parts()
        actions.build(self)
        self.window_settings.recent_menu = self.recent_menu
        self.window_settings.fill_recent()
        self.set_version(first_version)

        self.gallery_keys = GalleryKeys(self, self.view, self.key_classes,
                                        lambda text: self.statusBar().showMessage(text, 6000))
        if self.reviewer is None:  # first launch (or a stored computer account): ask once, when shown
            QTimer.singleShot(0, self.reviewing.ask_reviewer)
        self.window_settings.restore()
        self.gallery.update_counts()
        self.identity = None  # this seat's login and roles (core.storage.identity), read by a worker
        self.read_identity()
        self._update_actions()

    # ---------------------------------------------------------------- parts and their wiring
    def _build_parts(self) -> None:
        ctl, w = self.ctl, self.workers
        self.filters = FilterPanel()
        self.gallery = GalleryPane(ctl, w, self)
        self.detail_pane = DetailPane(ctl, w, self.gallery.current_row, self)
        self.reviewing = ReviewActions(ctl, self.gallery, self.detail_pane, self.label_writer, self.settings, self, self)
        self.job_part = ClassifyJob(ctl, w, self)
        self.cases = CaseName(ctl, self, self)  # the open folder's case name (File ▸ Rename case…)
        self.exports = Exports(ctl, self.settings, self, self, case_fn=lambda: self.cases.name,
                               preferred_csv=lambda: "cells" if self.cells is not None else "csv")
        self.model_menu = ModelMenu(ctl, self, self)
        self.help_menu = HelpMenu(ctl, self, self)
        # what the tests, screenshots and the action table name
        self.model, self.view, self.loader = self.gallery.model, self.gallery.view, self.gallery.loader
        self.gallery_info, self.detail = self.gallery.info, self.detail_pane.panel
        # the cells of the folder (issue 22): galleries by class, their fields, the differential
        self.cell_pane = CellPane(ctl, w, self.label_writer, self.reviewing.ask_reviewer, self)
        self.model_menu.cell_version = lambda: self.cell_pane.version if self.cells is not None else None
        for name in ("f_pred", "f_rev", "f_uncertain", "f_outside", "f_disagree", "sort", "counts", "model_label"):
            setattr(self, name, getattr(self.filters, name))
        for name in ("progress", "progress_label", "cancel_btn", "device_label"):
            setattr(self, name, getattr(self.job_part, name))
        self._label_signals = self.reviewing.signals
        self.label_writer.on_saved = self._label_signals.saved.emit
        self.label_writer.on_waiting = self._label_signals.waiting.emit
        self.label_writer.on_refused = self._label_signals.refused.emit  # a released case, a right the login lacks
        self.label_writer.on_cells_saved = self.cell_pane.cellsSaved.emit  # its differential is read again
        self.review.shown = self.model.labels_of  # what a key changes from: the rows shown, not a query
        self.model.overlay = lambda: pending_rows(self.label_writer, self.ctl.taxonomy)

        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        for widget in (self.filters, self.gallery.widget, self.detail):
            self.splitter.addWidget(widget)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setStretchFactor(2, 2)
        self.splitter.setSizes([230, 640, 460])
        self.tabs = QTabWidget()
        self.tabs.setObjectName("views")
        self.tabs.tabBar().setFocusPolicy(Qt.NoFocus)  # the keys stay with the gallery shown
        self.tabs.addTab(self.splitter, "Images")
        self.tabs.addTab(self.cell_pane.widget, "Cells")
        self.tabs.setTabToolTip(0, "One label per image (Ctrl+1)")
        self.tabs.setTabToolTip(1, "The white cells found in the images, grouped by class (Ctrl+2)")
        self.setCentralWidget(self.tabs)
        self.window_settings = WindowSettings(self.settings, self, self.splitter, self.detail, self.open_folder)

        # status bar: messages, progress (count, rate, time left), cancel, device, reviewer
        self.reviewer_label = QLabel()
        # classify workers on other machines (hemascan submit / worker): their progress on this folder
        self.queue_label = QueueStatusLabel(w, lambda: self.db)
        # other seats' labels and model activations on this database (several workstations)
        self.peer_labels = PeerLabels(w, self.db, lambda: self.folder, parent=self)
        self.peer_cells = PeerCellLabels(w, self.db, lambda: self.folder, parent=self)
        self.activations = ActivationWatch(w, self.db, lambda: self.ctl.version_id, parent=self)
        for widget in (self.progress_label, self.progress, self.cancel_btn, self.queue_label, self.device_label,
                       self.reviewer_label):
            self.statusBar().addPermanentWidget(widget)
        self._show_reviewer()

        say = self.statusBar().showMessage
        for part in (self.gallery, self.reviewing, self.job_part, self.exports, self.model_menu, self.cell_pane,
                     self.cases):
            part.message.connect(say)
        self.tabs.currentChanged.connect(self._view_changed)
        self.cell_pane.enabledChanged.connect(self._update_actions)
        self.cell_pane.loaded.connect(self._cells_loaded)
        self.filters.changed.connect(self._filter_changed)
        self.filters.problemsRequested.connect(self.show_problem_files)
        self.filters.modelsRequested.connect(self.model_menu.show_models)
        self.gallery.currentChanged.connect(lambda row: (self.detail_pane.show(row), self._update_actions()))
        self.gallery.selectionChanged.connect(self._update_actions)
        self.gallery.reloaded.connect(self._gallery_reloaded)
        self.gallery.countsReady.connect(self._show_counts)
        self.model.dataChanged.connect(self._rows_changed)
        self.detail_pane.imageShown.connect(self.imageShown)
        self.detail_pane.gradcamReady.connect(self.gradcamReady)
        self.detail_pane.gradcamToggled = self.detail.gradcamToggled
        self.detail_pane.error.connect(self.show_error)
        self.reviewing.labelsChanged.connect(self.labelsChanged)
        self.reviewing.enabledChanged.connect(self._update_actions)
        self.reviewing.reviewerChanged.connect(lambda _name: (self._show_reviewer(), self.read_identity()))
        self.reviewing.signals.refused.connect(lambda *_: self.reload_gallery(keep_current=True))
        self.exports.released.connect(lambda *_: self.reload_gallery(keep_current=True))
        self.job_part.scanned.connect(lambda: self.reload_gallery(keep_current=True))
        self.job_part.progressed.connect(self._job_progressed)
        self.job_part.finished.connect(self._job_done)
        self.job_part.failed.connect(self._job_failed)
        self.job_part.runningChanged.connect(self._update_actions)
        self.exports.written.connect(self.reportWritten)
        self.model_menu.switched.connect(self._version_switched)
        self.versionShown.connect(lambda _name: self.job_part.show_plan())  # the status bar names its precision
        self.queue_label.progressed.connect(lambda: self.reload_gallery(keep_current=True))
        self.peer_labels.changed.connect(self._peer_labels)
        self.peer_cells.changed.connect(lambda cell_ids, _who: self.cell_pane.labels_elsewhere(cell_ids))
        self.cases.named.connect(self._case_named)
        self.activations.elsewhere.connect(self.model_menu.activated_elsewhere)
        self.model_menu.activating.connect(self.activations.mine)
        self.activations.current.connect(lambda: self.model_menu.notice.emit(None))
        self.model_menu.notice.connect(self.filters.show_notice)
        self.filters.useActiveRequested.connect(lambda: self.model_menu.use_active(self.activations.latest))

    # ---------------------------------------------------------------- the version shown
    version = property(lambda self: self.ctl.version, doc="the version shown (desktop.models_panel.version_info)")

    def set_version(self, version: dict) -> str | None:
        """The model version shown (and classified with): its classes give the keys, buttons, filters
        and counts. The folder's filters stay as the reviewer chose them; one naming a class this
        version lacks shows Any, and the sentence returned says so (None: every filter stayed)."""
        kept = self.filters.filter()
        self.ctl.version = version
        self.review.taxonomy = version["taxonomy"]
        self.detail_pane.forget_model()
        actions.build_class_actions(self, self.key_classes())
        self.filters.fill_classes(version["classes"])
        lost = self.filters.show_filter(kept)
        self.state.set_filter(self.filters.filter())
        self.filters.show_model(version)
        self.activations.check()
        self._update_actions()
        self.versionShown.emit(version["name"])
        return " ".join(f"{version['name']} has no class {value}: the {name} filter shows Any now."
                        for name, value in lost) or None

    def _version_switched(self, info: dict, reclassify) -> None:
        note = self.set_version(info)
        self.reload_gallery(keep_current=True)  # the reviewer's image stays, if the filters still show it
        self.statusBar().showMessage(f"Active model: {info['name']}" + (f". {note}" if note else ""),
                                     20000 if note else 8000)
        if self.folder is None:
            return
        if reclassify is None:
            reclassify = QMessageBox.question(
                self, "Re-classify?", f"Classify {Path(self.folder).name} with {info['name']} now?\n"
                "Only images this version has not predicted yet are processed.") == QMessageBox.Yes
        if reclassify:
            self.classify()

    # ---------------------------------------------------------------- folder, gallery, counts
    @property
    def folder(self) -> str | None:
        return self.state.folder

    @property
    def job(self):
        """The running scan + classify job (None when idle)."""
        return self.job_part.task

    def choose_folder(self) -> None:
        start = self.folder or (self.recent_folders() or [str(Path.home())])[0]
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of smear images", start)
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder, classify: bool = True) -> None:
        folder = os.path.abspath(os.fspath(folder))
        if not os.path.isdir(folder):
            self.show_error(f"Not a folder: {folder}")
            return
        self.job_part.supersede()  # a job on the previous folder stops after its batch; its result is dropped
        self._post_job = False
        if self.folder is not None:
            save_folder_view(self.settings, self.folder, self.gallery.folder_view())
        self.state.open_folder(folder)
        self.ctl.image_kind = load_image_kind(self.settings, folder)
        restore = self.gallery.restore = load_folder_view(self.settings, folder)
        # as the reviewer left this folder (a class the model lacks: Any); a folder never opened
        # shows everything, not what the previous folder's filters hid
        self.filters.show_filter(restore if restore is not None else GalleryFilter())
        self.state.set_filter(self.filters.filter())
        self.queue_label.set_folder(folder)
        self.cases.load()  # the window's title: the case's name
        self.window_settings.add_recent(folder)
        self.loader.clear()
        self.reload_gallery()
        self.cell_pane.thumbs.clear()
        if self.cells is not None:
            self.cell_pane.reload()
        self.folderOpened.emit(folder)
        if classify:
            self.classify()

    def reopen_last_folder(self) -> bool:
        """Open the folder of the last session, as it was left (filters, image, scroll)."""
        folder = last_folder(self.settings)
        if folder and os.path.isdir(folder):
            self.open_folder(folder)
            return True
        return False

    def _filter_changed(self) -> None:
        shown = self.filters.filter()
        if self.state.set_filter(shown) != shown:  # an impossible combination: not kept
            self.filters.show_filter(self.state.filter)
        self.reload_gallery()

    def reload_gallery(self, keep_current: bool = False) -> None:
        self.gallery.reload(self.detail_pane.shown_id if keep_current else None)

    def _gallery_reloaded(self) -> None:
        self._update_actions()
        if self._post_job is not False:  # the job's result is on screen now: say it is done
            summary, self._post_job = self._post_job, False
            self.jobFinished.emit(summary)

    def _update_counts(self) -> None:
        self.gallery.update_counts()

    def _show_counts(self, counts, files) -> None:
        self.filters.show_model(self.version)
        self.filters.show_counts(counts, self.ctl.classes, files)
        if counts is not None:
            self.countsShown.emit()

    def _rows_changed(self, top, _bottom, roles=()) -> None:
        """A row read again or labelled: the detail's summary follows when it is the current one."""
        if roles and list(roles) == [Qt.DecorationRole]:
            return
        cur = self.view.currentIndex()
        if cur.isValid() and top.row() <= cur.row() <= _bottom.row():
            self.detail.show_row(self.gallery.current_row(), self.ctl.classes)

    def _peer_labels(self, image_ids: list, reviewers: list) -> None:
        self.model.refresh_ids(image_ids)
        self.gallery.update_counts()
        row = self.gallery.current_row()
        if row is not None and row.image_id in image_ids:  # the image shown got a label elsewhere
            self.detail_pane.refresh_history(row.image_id)

    def _case_named(self, name: str) -> None:
        folder = Path(self.folder).name if self.folder else ""
        self.setWindowTitle(f"{name} — hemascan" if name == folder else f"{name} ({folder}) — hemascan")
        self.cell_pane.set_case_name(name)

    def show_problem_files(self):
        return self.gallery.show_problem_files(self)

    # ---------------------------------------------------------------- the classify job
    def classify(self) -> None:
        self.job_part.start()

    IMAGE_KIND_CHOICES = {"auto": "Let hemascan judge each image",
                          "fields": "Fields from a camera: every white cell in each image",
                          "crops": "Pre-cut single cells (e.g. a CellaVision export): the cell in the middle only"}

    def choose_image_kind(self, kind: str | None = None) -> None:
        """File ▸ Images in this folder are…: what the folder's images are, kept per folder; the
        cells are then found again (those a reviewer labelled stay as they are)."""
        if self.folder is None or self.job is not None:
            return
        if kind is None:
            texts = list(self.IMAGE_KIND_CHOICES.values())
            text, ok = QInputDialog.getItem(self, "Images in this folder", IMAGE_KIND_QUESTION, texts,
                                            list(self.IMAGE_KIND_CHOICES).index(self.ctl.image_kind or "auto"), False)
            if not ok:
                return
            kind = next(k for k, t in self.IMAGE_KIND_CHOICES.items() if t == text)
        if kind == self.ctl.image_kind:
            return
        self.ctl.image_kind = kind
        save_image_kind(self.settings, self.folder, kind)
        self.cell_pane.show_image_kind()
        self.gallery.show_position()
        # short, in the views' words: a long message ran under the job's progress text
        self.statusBar().showMessage(f"Finding the cells again · {self.ctl.image_kind_words()}", 10000)
        self.classify()
        folder = self.folder
        # the job's closing message says how many images kept their cells because a reviewer labelled one
        self.ctl.read(lambda s: images_with_labelled_cells(s, folder), name="labelled cells kept",
                      on_result=lambda n: self.job_part.add_note(
                          f"{n:,} image(s) with labelled cells kept as they were" if n else None))

    def cancel_job(self) -> None:
        if self.cell_pane.cancel_adding():  # Esc while a missed cell's box is being drawn
            return
        self.job_part.cancel()

    def _job_progressed(self, stage: str) -> None:
        self.gallery.update_counts()
        if stage == "classify" and self.model.rowCount() <= 2000:  # tiles fill in as predictions land
            self.model.refresh_ids([self.model.row_at(r).image_id for r in range(self.model.rowCount())])

    def _job_done(self, summary) -> None:
        cur = self.view.currentIndex()
        cancelled = summary is not None and summary.cancelled
        untouched = (self.gallery.restore is None and cur.isValid() and not cancelled
                     and self.gallery.current_row().image_id == self.gallery.auto_picked)
        # A folder just classified starts at the top of the new order (least confident first),
        # unless the reviewer has acted, the folder's saved view says where they were, or the
        # reviewer cancelled (Esc): then the image shown stays, wherever the new order puts it.
        self._post_job = summary
        self.reload_gallery(keep_current=not untouched)
        self.gallery.restore = None
        if self.cells is not None:  # the cells the job found and classified
            self.cell_pane.reload()

    def _job_failed(self, message: str) -> None:
        self.show_error(message)
        self._post_job = None
        self.reload_gallery(keep_current=True)

    # ---------------------------------------------------------------- what the action table calls
    def select_image(self, image_id: int) -> bool:
        return self.gallery.select_image(image_id)

    def move_current(self, step: int, after_rows: list[int] | None = None) -> None:
        (self.cells or self.gallery).move_current(step, after_rows)

    def label_selected(self, label: str | None, note: str | None = None) -> None:
        (self.cells or self.reviewing).label_selected(label, note)

    def accept_prediction(self) -> None:
        (self.cells or self.reviewing).accept_prediction()

    def undo(self) -> None:
        (self.cells or self.reviewing).undo()

    def redo(self) -> None:
        (self.cells or self.reviewing).redo()

    def zoom(self, factor: float) -> None:
        (self.cells or self.detail_pane).zoom(factor)

    def fit_image(self) -> None:
        self.cell_pane.fit() if self.cells is not None else self.detail_pane.fit_image()

    # ---------------------------------------------------------------- the cells view
    @property
    def cells(self) -> CellPane | None:
        """The cell view when it is shown (the review keys act on its cells), else None."""
        return self.cell_pane if self.tabs.currentWidget() is self.cell_pane.widget else None

    @property
    def review_bar(self):
        """Where the action table lays out the review buttons: the view shown."""
        return (self.cells or self.gallery).review_bar

    def key_classes(self) -> list[str]:
        """The classes the keys 1..N give: the cell model's in the cells view, else the model shown's."""
        return self.cell_pane.classes if self.cells is not None else self.ctl.classes

    def show_view(self, which: str) -> None:
        self.tabs.setCurrentWidget(self.cell_pane.widget if which == "cells" else self.splitter)

    def add_missed_cell(self) -> None:
        if self.cells is None:
            self.statusBar().showMessage("⚠ Cells are added in the cells view (Ctrl+2).", 6000)
            return
        self.cell_pane.start_adding()

    def _view_changed(self, _index: int) -> None:
        shown = self.cells
        if shown is None:
            self.cell_pane.cancel_adding()
        actions.build_class_actions(self, self.key_classes())
        self.gallery_keys.gallery = shown.view if shown is not None else self.view
        (shown.view if shown is not None else self.view).setFocus(Qt.OtherFocusReason)
        if shown is not None:
            shown.reload()
        self._update_actions()

    def _cells_loaded(self) -> None:
        if self.cells is not None and [s.args[0] for s, _ in (self.specs[n] for n in self.specs
                                                                if n.startswith("class_"))] != self.key_classes():
            actions.build_class_actions(self, self.key_classes())  # the active cell model's classes arrived
        self._update_actions()

    reviewer = property(lambda self: self.state.reviewer)

    def _show_reviewer(self) -> None:
        ident = getattr(self, "identity", None)
        if ident is not None and ident.personal:  # a lab server's login: the reviewer is the login
            self.reviewer_label.setText(f"reviewer: {ident.display_name} (login {ident.login})")
            return
        self.reviewer_label.setText(f"reviewer: {self.reviewer}" if self.reviewer else "reviewer: (not set)")

    def read_identity(self) -> None:
        """Learn this seat's login and what its roles allow (a worker's read): the actions it may
        not take are disabled, and say why."""
        local = self.reviewer
        self.ctl.read(lambda s: current_identity(s, local), self._identity_read, "login and roles")

    def _identity_read(self, ident) -> None:
        self.identity = ident
        self.model_menu.identity = ident
        self._show_reviewer()
        self._update_actions()

    def release_case(self, path: str | None = None) -> str | None:
        return self.exports.release_case(path)

    def export_csv(self, path: str | None = None, fmt: str | None = None) -> str | None:
        return self.exports.export_csv(path, fmt)

    def export_pdf(self, path: str | None = None, case: str | None = None) -> str | None:
        return self.exports.export_pdf(path, case)

    def show_retrain(self):
        return self.model_menu.show_retrain()

    retrain_dialog = property(lambda self: self.model_menu.retrain_dialog)

    def activate_version(self, version_id: int, ask: bool = True, reclassify: bool | None = None) -> None:
        self.model_menu.activate_version(version_id, ask, reclassify)

    def about_text(self) -> str:
        return self.help_menu.about_text()

    def recent_folders(self) -> list[str]:
        return self.window_settings.recent_folders()

    def save_settings(self) -> None:
        self.window_settings.save(self.folder, self.gallery.folder_view() if self.folder else None)

    def _update_actions(self) -> None:
        self.gallery.sync_state()
        actions.update_enabled(self)

    def show_error(self, message: str) -> None:
        log.error("%s", message)  # and in the status bar
        self.statusBar().showMessage(f"⚠ {message}", 20000)

    # ---------------------------------------------------------------- window events
    def dragEnterEvent(self, e) -> None:
        if any(u.isLocalFile() and os.path.isdir(u.toLocalFile()) for u in e.mimeData().urls()):
            e.acceptProposedAction()

    def dropEvent(self, e) -> None:
        for u in e.mimeData().urls():
            if u.isLocalFile() and os.path.isdir(u.toLocalFile()):
                e.acceptProposedAction()
                self.open_folder(u.toLocalFile())
                return

    def closeEvent(self, e) -> None:
        if not self.label_writer.flush(0.3):  # a write in flight lands; a locked database is asked about
            n = len(self.label_writer.pending())
            answer = QMessageBox.warning(
                self, "Labels not saved yet",
                f"{n} label action(s) are not in the database yet: it is not available (see the status "
                "bar). Keep the window open and keep retrying? If you quit now, they are written only to "
                f"the log file ({self.paths.logs / 'hemascan.log'}).",
                QMessageBox.Retry | QMessageBox.Discard, QMessageBox.Retry)
            if answer != QMessageBox.Discard:
                e.ignore()
                return
        self.label_writer.close(timeout=0.3)  # anything left is written to the log, in full
        self.peer_labels.stop()
        self.peer_cells.stop()
        self.activations.stop()
        self.queue_label.set_folder(None)
        self.gallery_keys.remove()
        if self.retrain_dialog is not None:
            self.retrain_dialog.close()
        self.save_settings()
        self.cancel_job()
        self.workers.cancel_all()
        self.workers.wait(10000)
        self.db.dispose()
        super().closeEvent(e)
