"""The main window: open a folder, classify it in the worker, review it with the keyboard.

The window is put together from parts, one concern each: the review state without Qt
(core/review/state.py), the action table (actions.py), the left panel (filter_panel.py),
the gallery and counts (browse.py), the review actions (review_actions.py), the
classification job (classify_job.py), the detail view and Grad-CAM (detail_view.py),
exports, models and help (window_menus.py) and what is kept across restarts (viewstate.py).
"""
from __future__ import annotations

import os
import threading

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QHBoxLayout, QLabel, QListView, QMainWindow,
                               QMessageBox, QProgressBar, QSplitter, QToolButton, QVBoxLayout, QWidget)

from core.review import gallery as q
from core.config import Paths
from core.app.bootstrap import open_database
from core.review.labels import LabelWriter, reviewer_problem
from core.models.registry import require_active_version
from core.review.state import ReviewState

from . import actions
from .browse import BrowseMixin
from .classify_job import ClassifyJobMixin
from .detail import DetailPanel
from .detail_view import DetailMixin
from .filter_panel import STATEMENT, FilterPanel  # noqa: F401  (STATEMENT: re-exported)
from .gallery import ID_ROLE, ROW_ROLE, THUMB, GalleryModel, ThumbnailLoader, TileDelegate
from .models_panel import version_info
from .peers import PeerLabels
from .queuestatus import QueueStatusLabel
from .review_actions import LabelSignals, QueuedReview, ReviewMixin
from .viewstate import FolderView, WindowSettingsMixin, settings_for
from .window_menus import ExportMixin, HelpMixin, ModelMenuMixin
from .workers import JobSlot, Workers

# Under "Unreviewed only" a reviewed image leaves the view after this pause, so the next key
# still lands where the reviewer expects.
UNREVIEWED_GRACE_MS = 700


def show_startup_error(exc: BaseException, paths: Paths, db_url=None, parent=None) -> int | None:
    """At start-up, an error a person can act on (a damaged, read-only or unreachable database,
    a full disk...) is shown in a dialog with the same sentence the command line prints, and
    its exit code (README) is returned; None for anything else (a bug: let it show)."""
    from core.app.cli import report_error

    try:
        db_url = paths.db_url(db_url)  # to name the database file in the message
    except Exception:
        pass
    code = report_error(exc, db_url)  # the log file and stderr, as the command line
    if code is None:
        return None
    from core.storage.errors import user_error

    QMessageBox.critical(parent, "hemascan cannot start", str(user_error(exc, db_url)))
    return code


class MainWindow(BrowseMixin, ReviewMixin, ClassifyJobMixin, DetailMixin, ExportMixin, ModelMenuMixin, HelpMixin,
                 WindowSettingsMixin, QMainWindow):
    folderOpened = Signal(str)
    jobFinished = Signal(object)  # ClassifySummary (or None after an error)
    labelsChanged = Signal(list)  # image ids whose label changed
    gradcamReady = Signal(int)  # image id
    countsShown = Signal()  # the counts panel shows the latest counts
    imageShown = Signal(int)  # image id whose full image is in the detail view
    reportWritten = Signal(str)

    def __init__(self, paths: Paths, db_url: str | None = None, settings: QSettings | None = None,
                 device: str | None = None):
        super().__init__()
        self.paths = paths.ensure()
        self.settings = settings or settings_for(self.paths.data_dir)  # with the lab's data, not per OS user
        self.device_pref = device
        self.db = open_database(self.paths, paths.db_url(db_url))
        self.workers = Workers(self)
        self.jobs = JobSlot(self.workers)  # the one place scan + classify jobs start
        self.jobs.progress.connect(self._job_progress)
        self.jobs.result.connect(self._job_done)
        self.jobs.failed.connect(self._job_failed)
        self.version: dict | None = None
        self.folder_files = q.FolderFiles()
        self._counts_generation = 0
        self._last_counts = 0.0
        self._auto_picked: int | None = None  # the image a reload selected by itself
        self._restore: FolderView | None = None  # a folder's saved view, applied as its images arrive
        self._shown_id: int | None = None
        self._full_image = None
        self._gradcam = None
        self._gradcam_lock = threading.Lock()
        self._pending_cam = None  # (image_id, map, class) computed before its image was shown
        self.gallery_keys = None
        self._drop_reviewed = QTimer(self)  # "Unreviewed only": reviewed images leave the view after this
        self._drop_reviewed.setSingleShot(True)
        self._drop_reviewed.setInterval(UNREVIEWED_GRACE_MS)
        self._drop_reviewed.timeout.connect(lambda: self.reload_gallery(keep_current=True))

        self._label_signals = LabelSignals(self)
        self._label_signals.saved.connect(self._labels_saved)
        self._label_signals.waiting.connect(self._labels_waiting)
        self.label_writer = LabelWriter(self.db, on_saved=self._label_signals.saved.emit,
                                        on_waiting=self._label_signals.waiting.emit)
        stored = str(self.settings.value("reviewer", "") or "")
        self.review = QueuedReview(self.db, "", self.label_writer)
        self.state = ReviewState(self.review)
        if reviewer_problem(stored) is None:
            self.state.set_reviewer(stored)

        self.setWindowTitle("hemascan")
        self.setAcceptDrops(True)
        self._build_widgets()
        actions.build(self)
        self._fill_recent()
        with self.db.session() as s:
            self.set_version(version_info(require_active_version(s)))
        from .keys import GalleryKeys

        self.gallery_keys = GalleryKeys(self, self.view)
        if self.reviewer is None:  # first launch (or a stored computer account): ask once, when shown
            QTimer.singleShot(0, self.ask_reviewer)
        self._restore_settings()
        self._update_counts()
        self._update_actions()
        self.workers.submit(self._describe_device, name="device check", on_result=self.device_label.setText,
                            on_error=self.show_error)

    def _build_widgets(self) -> None:
        dpr = max(1.0, QApplication.instance().devicePixelRatio()) if QApplication.instance() else 1.0
        self.loader = ThumbnailLoader(self.workers, size_px=int(THUMB * min(dpr, 3.0)))  # sharp on HiDPI
        self.model = GalleryModel(self.db, self)
        self.loader.ready.connect(self.model.thumbnail_ready)
        self.view = v = QListView()
        v.setObjectName("gallery")
        v.setViewMode(QListView.IconMode)
        v.setResizeMode(QListView.Adjust)
        v.setMovement(QListView.Static)
        v.setUniformItemSizes(True)
        v.setSpacing(2)
        v.setWrapping(True)
        v.setSelectionMode(QAbstractItemView.ExtendedSelection)
        v.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        v.setModel(self.model)
        v.setItemDelegate(TileDelegate(self.loader, lambda: self.version["classes"] if self.version else []))
        v.selectionModel().currentChanged.connect(self._current_changed)
        v.selectionModel().selectionChanged.connect(lambda *_: (self._update_actions(), self._show_position()))
        self.model.modelReset.connect(self._show_position)

        self.filters = FilterPanel()
        self.filters.changed.connect(self._filter_changed)
        self.filters.problemsRequested.connect(self.show_problem_files)
        self.filters.modelsRequested.connect(self.show_models)
        # the panel's controls, by the names the tests and screenshots use
        for name in ("f_pred", "f_rev", "f_uncertain", "f_outside", "f_disagree", "sort", "counts", "model_label"):
            setattr(self, name, getattr(self.filters, name))

        self.review_bar = QHBoxLayout()  # buttons from the action table (actions.build)
        self.review_bar.setSpacing(4)
        centre = QWidget()
        cl = QVBoxLayout(centre)
        cl.setContentsMargins(0, 4, 0, 0)
        cl.addLayout(self.review_bar)
        self.gallery_info = QLabel(self.state.position())
        cl.addWidget(self.gallery_info)
        cl.addWidget(self.view, 1)

        self.detail = DetailPanel()
        self.detail.gradcamToggled.connect(self._gradcam_toggled)

        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        for w in (self.filters, centre, self.detail):
            self.splitter.addWidget(w)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setStretchFactor(2, 2)
        self.splitter.setSizes([230, 640, 460])
        self.setCentralWidget(self.splitter)

        # status bar: messages, progress (count, rate, time left), cancel, device, reviewer
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.progress_label = QLabel()
        self.cancel_btn = QToolButton()
        self.cancel_btn.setText("Cancel")
        self.cancel_btn.setVisible(False)
        self.cancel_btn.clicked.connect(self.cancel_job)
        self.device_label = QLabel("device: …")
        self.reviewer_label = QLabel()
        # classify workers on other machines (hemascan submit / worker): their progress on this folder
        self.queue_label = QueueStatusLabel(self.workers, lambda: self.db)
        self.queue_label.progressed.connect(lambda: self.reload_gallery(keep_current=True))
        # other seats' labels on this database (PostgreSQL, several workstations): tiles and counts follow
        self.peer_labels = PeerLabels(self.workers, self.db, lambda: self.folder, parent=self)
        self.peer_labels.changed.connect(self._peer_labels)
        for w in (self.progress_label, self.progress, self.cancel_btn, self.queue_label, self.device_label,
                  self.reviewer_label):
            self.statusBar().addPermanentWidget(w)
        self._show_reviewer()

    def set_version(self, version: dict) -> None:
        """The active model: its classes give the keys, buttons, filters and counts."""
        self.version = version
        self.review.taxonomy = version["taxonomy"]
        self._gradcam = None
        actions.build_class_actions(self, version["classes"])
        self.filters.fill_classes(version["classes"])
        self.state.set_filter(self.filters.filter())
        self.filters.show_model(version)
        self._update_actions()

    def _peer_labels(self, image_ids: list, reviewers: list) -> None:
        self.model.refresh_ids(image_ids)
        self._update_counts()
        cur = self.view.currentIndex()
        if cur.isValid() and cur.data(ID_ROLE) in image_ids:  # the image shown got a label elsewhere
            self._show_detail(cur.data(ROW_ROLE), reload_image=False)

    def _update_actions(self) -> None:
        self._sync_state()
        actions.update_enabled(self)

    def show_error(self, message: str) -> None:
        import logging

        logging.getLogger(__name__).error("%s", message)
        self.statusBar().showMessage(f"⚠ {message}", 20000)

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
        self.queue_label.set_folder(None)
        if self.gallery_keys is not None:
            self.gallery_keys.remove()
        if getattr(self, "retrain_dialog", None) is not None:
            self.retrain_dialog.close()
        self.save_settings()
        self.cancel_job()
        self.workers.cancel_all()
        self.workers.wait(10000)
        self.db.dispose()
        super().closeEvent(e)
