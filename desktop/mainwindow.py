"""The main window: open a folder, classify it in the worker, review it with the keyboard."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from PySide6.QtCore import QByteArray, QItemSelectionModel, QObject, QSettings, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QCheckBox, QComboBox, QFileDialog, QFormLayout,
                               QGroupBox, QHBoxLayout, QInputDialog, QLabel, QListView, QMainWindow, QMessageBox,
                               QProgressBar, QPushButton, QSplitter, QStyle, QToolButton, QVBoxLayout, QWidget)

from core import gallery as q
from core.config import Paths
from core.db import open_database
from core.labels import LabelWriter, history, reviewer_problem
from core.registry import ensure_active_model, get_version, list_versions
from core.review import ReviewSession
from core.taxonomy import OTHER, OTHER_TITLE

from .detail import DetailPanel, heatmap_rgba, rgb_to_qimage
from .gallery import (ID_ROLE, OUTSIDE_HATCH, OUTSIDE_MARK, ROW_ROLE, THUMB, GalleryModel, ThumbnailLoader,
                      TileDelegate, class_color)
from .models_panel import ModelsDialog, headline_metrics, trained_on, version_info
from .viewstate import FolderView, last_folder, load_folder_view, save_folder_view, settings_for
from .workers import JobSlot, Workers

log = logging.getLogger(__name__)


class _LabelSignals(QObject):
    """The label writer's thread reports here; Qt queues it to the GUI thread (plain data)."""

    saved = Signal(list, int)  # image ids written, writes still pending
    waiting = Signal(str, int)  # why the database refused (one sentence), writes pending


class QueuedReview(ReviewSession):
    """The review actions of core.review, written through a LabelWriter: a key press never
    waits on the database for longer than a frame, and a write the database refuses (locked
    by another process, disk full) is queued and retried, never dropped. Labels still in the
    queue count as current, so undo and redo stay right while they wait."""

    def __init__(self, db, reviewer: str, writer: LabelWriter):
        super().__init__(db, reviewer)
        self.writer = writer

    def _write(self, targets: dict[int, str | None], note: str) -> None:
        self.writer.write(targets, self.reviewer, self.taxonomy, note)

    def current(self, image_ids) -> dict[int, str | None]:
        got = super().current(image_ids)
        pending = self.writer.pending_labels(self.taxonomy)
        return {i: pending[i] if i in pending else got[i] for i in got}


def show_startup_error(exc: BaseException, paths: Paths, db_url=None, parent=None) -> int | None:
    """At start-up, an error a person can act on (a damaged, read-only or unreachable database,
    a full disk...) is shown in a dialog with the same sentence the command line prints, and
    its exit code (README) is returned; None for anything else (a bug: let it show)."""
    from core.cli import report_error

    try:
        db_url = paths.db_url(db_url)  # to name the database file in the message
    except Exception:
        pass
    code = report_error(exc, db_url)  # the log file and stderr, as the command line
    if code is None:
        return None
    from core.db.errors import user_error

    QMessageBox.critical(parent, "hemascan cannot start", str(user_error(exc, db_url)))
    return code


MAX_RECENT = 8
STATEMENT = "hemascan supports and does not replace diagnosis: it is not a diagnostic device."


def _fmt_eta(s) -> str:
    if s is None:
        return "…"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


UNREVIEWED_GRACE_MS = 700


class MainWindow(QMainWindow):
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
        self.folder: str | None = None
        self.version: dict | None = None
        self.jobs = JobSlot(self.workers)  # the one place scan + classify jobs start
        self.folder_files = q.FolderFiles()
        self._counts_generation = 0
        self._auto_picked: int | None = None  # the image a reload selected by itself
        self.gallery_keys = None  # desktop.keys.GalleryKeys, once the gallery exists
        self._drop_reviewed = QTimer(self)  # "Unreviewed only": reviewed images leave the view after this
        self._drop_reviewed.setSingleShot(True)
        self._drop_reviewed.setInterval(UNREVIEWED_GRACE_MS)
        self._drop_reviewed.timeout.connect(lambda: self.reload_gallery(keep_current=True))
        self.jobs.progress.connect(self._job_progress)
        self.jobs.result.connect(self._job_done)
        self.jobs.failed.connect(self._job_failed)
        self._gradcam = None
        self._gradcam_lock = threading.Lock()
        self._shown_id: int | None = None
        self._last_counts = 0.0
        self._full_image = None
        self._pending_cam = None  # (image_id, map, class) computed before its image was shown
        stored = str(self.settings.value("reviewer", "") or "")
        self.reviewer: str | None = stored if reviewer_problem(stored) is None else None
        self._restore: FolderView | None = None  # a folder's saved view, applied as its images arrive
        self._label_signals = _LabelSignals(self)
        self._label_signals.saved.connect(self._labels_saved)
        self._label_signals.waiting.connect(self._labels_waiting)
        self.label_writer = LabelWriter(self.db, on_saved=self._label_signals.saved.emit,
                                        on_waiting=self._label_signals.waiting.emit)
        self.review = QueuedReview(self.db, self.reviewer or "", self.label_writer)
        with self.db.session() as s:
            self.version = version_info(ensure_active_model(s, self.paths))
        self.review.taxonomy = self.version["taxonomy"]

        self.setWindowTitle("hemascan")
        self.setAcceptDrops(True)
        self._build_widgets()
        from .keys import GalleryKeys

        self.gallery_keys = GalleryKeys(self, self.view)
        if self.reviewer is None:  # first launch (or a stored computer account): ask once, when shown
            QTimer.singleShot(0, self.ask_reviewer)
        self._build_actions()
        self._restore_settings()
        self._update_counts()
        self._update_actions()
        self.workers.submit(self._describe_device, name="device check", on_result=self.device_label.setText,
                            on_error=self.show_error)

    # ------------------------------------------------------------------ construction
    def _build_widgets(self) -> None:
        dpr = max(1.0, QApplication.instance().devicePixelRatio()) if QApplication.instance() else 1.0
        self.loader = ThumbnailLoader(self.workers, size_px=int(THUMB * min(dpr, 3.0)))  # sharp on HiDPI
        self.model = GalleryModel(self.db, self)
        self.loader.ready.connect(self.model.thumbnail_ready)
        self.view = QListView()
        self.view.setObjectName("gallery")
        self.view.setViewMode(QListView.IconMode)
        self.view.setResizeMode(QListView.Adjust)
        self.view.setMovement(QListView.Static)
        self.view.setUniformItemSizes(True)
        self.view.setSpacing(2)
        self.view.setWrapping(True)
        self.view.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        self.view.setModel(self.model)
        self.view.setItemDelegate(TileDelegate(self.loader, lambda: self.version["classes"] if self.version else []))
        self.view.selectionModel().currentChanged.connect(self._current_changed)
        self.view.selectionModel().selectionChanged.connect(lambda *_: self._update_actions())
        self.model.modelReset.connect(self._after_reset)

        # left: filters, sort and counts
        self.f_pred = QComboBox()
        self.f_rev = QComboBox()
        self.f_uncertain = QCheckBox("Uncertain only")
        self.f_outside = QCheckBox(f"{OUTSIDE_MARK} Outside the model's experience only")
        self.f_outside.setToolTip("Images unlike anything the model was trained on (foreign-image guard):\n"
                                  "their predicted class is not reliable")
        self.f_disagree = QCheckBox("Disagreement (reviewed ≠ predicted)")
        self.sort = QComboBox()
        for label, key in [("Confidence (least first)", "confidence"), ("Entropy (highest first)", "entropy"),
                           ("Name", "name"), ("Time", "time")]:
            self.sort.addItem(label, key)
        self._fill_class_combos()
        for w in (self.f_pred, self.f_rev, self.sort):
            w.currentIndexChanged.connect(self._filter_changed)
            w.setFocusPolicy(Qt.ClickFocus)
        for w in (self.f_uncertain, self.f_outside, self.f_disagree):
            w.toggled.connect(self._filter_changed)
            w.setFocusPolicy(Qt.ClickFocus)
        fbox = QGroupBox("Filter and sort")
        fl = QFormLayout(fbox)
        fl.addRow("Predicted", self.f_pred)
        fl.addRow("Reviewed", self.f_rev)
        fl.addRow(self.f_uncertain)
        fl.addRow(self.f_outside)
        fl.addRow(self.f_disagree)
        fl.addRow("Sort", self.sort)
        self.counts = QLabel()
        self.counts.setTextFormat(Qt.RichText)
        self.counts.setTextInteractionFlags(Qt.TextSelectableByMouse | Qt.LinksAccessibleByMouse)
        self.counts.linkActivated.connect(lambda _link: self.show_problem_files())
        cbox = QGroupBox("Counts per class")
        QVBoxLayout(cbox).addWidget(self.counts)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        mbox = QGroupBox("Model")
        ml = QVBoxLayout(mbox)
        ml.addWidget(self.model_label)
        models_btn = QPushButton("Model versions…")
        models_btn.clicked.connect(self.show_models)
        ml.addWidget(models_btn)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(4, 4, 4, 4)
        ll.addWidget(fbox)
        ll.addWidget(cbox)
        ll.addWidget(mbox)
        ll.addStretch(1)
        note = QLabel(f"<small>{STATEMENT}</small>")
        note.setWordWrap(True)
        ll.addWidget(note)

        # centre: review buttons over the gallery
        self.review_bar = QHBoxLayout()
        self.review_bar.setSpacing(4)
        self.class_buttons: list[QPushButton] = []
        centre = QWidget()
        cl = QVBoxLayout(centre)
        cl.setContentsMargins(0, 4, 0, 0)
        cl.addLayout(self.review_bar)
        self.gallery_info = QLabel("Open a folder of smear images (File ▸ Open, Ctrl+O, or drop it here).")
        cl.addWidget(self.gallery_info)
        cl.addWidget(self.view, 1)

        self.detail = DetailPanel()
        self.detail.gradcamToggled.connect(self._gradcam_toggled)

        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(centre)
        self.splitter.addWidget(self.detail)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setStretchFactor(2, 2)
        self.splitter.setSizes([230, 640, 460])
        self.setCentralWidget(self.splitter)

        # status bar: messages, progress (count, rate, time left), cancel, device, reviewer
        sb = self.statusBar()
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
        for w in (self.progress_label, self.progress, self.cancel_btn, self.device_label, self.reviewer_label):
            sb.addPermanentWidget(w)
        self._show_reviewer()

    def _build_class_actions(self) -> None:
        """One action, menu entry and button per class of the active model (keys 1..9), then
        "Other"; called again when a model of another taxonomy becomes active."""
        for a in self.class_actions:
            self.review_menu.removeAction(a)
            self.removeAction(a)
            a.deleteLater()
        for b in self.class_buttons:
            if b is not self.other_button:
                self.review_bar.removeWidget(b)
                b.deleteLater()
        self.class_actions, buttons = [], []
        classes = self.version["classes"] if self.version else []
        for k, c in enumerate(classes, start=1):
            key = QKeySequence(str(k)) if k <= 9 else None
            a = self._act(f"{k}  {c}" if key else c, lambda _=False, c=c: self.label_selected(c), key)
            self.review_menu.insertAction(self._class_anchor, a)
            self.class_actions.append(a)
            b = QPushButton(f"{k}  {c}" if key else c)
            b.setFocusPolicy(Qt.NoFocus)
            b.setToolTip(f"Label the selected image(s) {c}" + (f" (key {k})" if key else ""))
            col = class_color(c, classes).name()
            b.setStyleSheet(f"QPushButton {{ border-left: 6px solid {col}; padding: 4px 8px; }}")
            b.clicked.connect(a.trigger)
            self.review_bar.insertWidget(len(buttons), b)
            buttons.append(b)
        self.class_buttons = [*buttons, self.other_button]
        self.label_actions = [*self.class_actions, self.a_other, self.a_other_note]

    def _fill_class_combos(self) -> None:
        classes = self.version["classes"] if self.version else []
        for combo, extra in ((self.f_pred, []), (self.f_rev, [("Unreviewed only", q.UNREVIEWED)])):
            combo.blockSignals(True)
            combo.clear()
            combo.addItem("Any", None)
            for label, data in extra:
                combo.addItem(label, data)
            for c in classes:
                combo.addItem(c, c)
            if combo is self.f_rev:
                combo.addItem(OTHER_TITLE, OTHER)
            combo.blockSignals(False)

    def _build_actions(self) -> None:
        st = self.style()
        mb = self.menuBar()
        tb = self.addToolBar("Main")
        tb.setObjectName("mainToolbar")
        tb.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        tb.setIconSize(QSize(18, 18))

        def act(text, slot, shortcut=None, icon=None, tip=None):
            a = QAction(text, self)
            if shortcut is not None:
                a.setShortcuts(shortcut if isinstance(shortcut, list) else [shortcut])
            if icon is not None:
                a.setIcon(st.standardIcon(icon))
            if tip:
                a.setStatusTip(tip)
            a.triggered.connect(slot)
            self.addAction(a)  # shortcuts work whatever has focus in the window
            return a

        self.a_open = act("&Open folder…", self.choose_folder, QKeySequence.Open, QStyle.SP_DirOpenIcon,
                          "Open a folder of smear images and classify it")
        self.a_classify = act("&Classify", self.classify, QKeySequence("Ctrl+R"), QStyle.SP_MediaPlay,
                              "Classify what the active model has not predicted yet")
        self.a_cancel = act("Cancel", self.cancel_job, QKeySequence("Esc"), QStyle.SP_MediaStop)
        self.a_csv = act("Export &CSV…", self.export_csv, QKeySequence("Ctrl+E"), QStyle.SP_DialogSaveButton)
        self.a_pdf = act("Export &PDF report…", self.export_pdf, QKeySequence("Ctrl+P"), QStyle.SP_FileIcon)
        self.a_quit = act("&Quit", self.close, QKeySequence.Quit)
        self.recent_menu = None
        m = mb.addMenu("&File")
        m.addAction(self.a_open)
        self.recent_menu = m.addMenu("Open &recent")
        m.addSeparator()
        m.addAction(self.a_classify)
        m.addAction(self.a_cancel)
        m.addSeparator()
        m.addAction(self.a_csv)
        m.addAction(self.a_pdf)
        m.addSeparator()
        m.addAction(self.a_quit)
        self._fill_recent()

        m = self.review_menu = mb.addMenu("&Review")
        self._act = act
        self.class_actions: list[QAction] = []  # keys 1..N: rebuilt when the active model changes taxonomy
        self.label_actions: list[QAction] = []
        self._class_anchor = m.addSeparator()
        self.a_other = act(f"O  {OTHER_TITLE}", lambda: self.label_selected(OTHER), QKeySequence("O"))
        self.a_other_note = act(f"{OTHER_TITLE} with a &note…", self.label_other_with_note, QKeySequence("Shift+O"))
        for a in (self.a_other, self.a_other_note):
            m.addAction(a)
        b = self.other_button = QPushButton(f"O  {OTHER}")
        b.setFocusPolicy(Qt.NoFocus)
        b.setToolTip(f"{OTHER_TITLE}: fits none of the classes (another cell type, an artefact, out of focus). "
                     "Key O; Shift+O adds a note. Never used as a class when retraining.")
        b.setStyleSheet(f"QPushButton {{ border-left: 6px solid {class_color(OTHER).name()}; padding: 4px 8px; }}")
        b.clicked.connect(self.a_other.trigger)
        self.review_bar.addWidget(b)
        self._build_class_actions()
        self.a_accept = act("&Accept prediction", self.accept_prediction,
                            [QKeySequence("A"), QKeySequence(Qt.Key_Return), QKeySequence(Qt.Key_Enter)])
        self.a_clear = act("C&lear label", lambda: self.label_selected(None), QKeySequence("0"))
        self.a_undo = act("&Undo", self.undo, QKeySequence.Undo, QStyle.SP_ArrowBack)
        self.a_redo = act("&Redo", self.redo, [QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")],
                          QStyle.SP_ArrowForward)
        self.a_next = act("&Next image", lambda: self.move_current(1), QKeySequence("Space"))
        self.a_prev = act("&Previous image", lambda: self.move_current(-1), QKeySequence("Shift+Space"))
        self.a_reviewer = act("Reviewer &name…", self.ask_reviewer)
        for a in (self.a_accept, self.a_clear):
            m.addAction(a)
        m.addSeparator()
        for a in (self.a_undo, self.a_redo, self.a_next, self.a_prev):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.a_reviewer)
        self.review_buttons: dict[str, QPushButton] = {}
        for key, text, a in (("accept", "A  Accept", self.a_accept), ("undo", "Undo", self.a_undo),
                             ("redo", "Redo", self.a_redo)):
            b = QPushButton(text)
            b.setFocusPolicy(Qt.NoFocus)
            b.setToolTip(f"{a.text().replace('&', '')} ({a.shortcut().toString(QKeySequence.NativeText)})")
            b.clicked.connect(a.trigger)
            self.review_bar.addWidget(b)
            self.review_buttons[key] = b
        self.review_bar.addStretch(1)

        m = mb.addMenu("&View")
        self.a_gradcam = act("&Grad-CAM overlay", self.detail.gradcam.toggle, QKeySequence("G"))
        self.a_zoom_in = act("Zoom &in", lambda: self.detail.view.zoom(1.25), QKeySequence.ZoomIn)
        self.a_zoom_out = act("Zoom &out", lambda: self.detail.view.zoom(0.8), QKeySequence.ZoomOut)
        self.a_fit = act("&Fit image", self.detail.view.fit, QKeySequence("F"))
        for a in (self.a_gradcam, self.a_zoom_in, self.a_zoom_out, self.a_fit):
            m.addAction(a)

        m = mb.addMenu("&Models")
        self.a_models = act("Model &versions…", self.show_models)
        self.a_retrain = act("&Retrain…", self.show_retrain)
        self.a_retrain.setStatusTip("Train a new model version from your reviewed labels and compare it")
        m.addAction(self.a_models)
        m.addAction(self.a_retrain)

        m = mb.addMenu("&Help")
        m.addAction(act("&Keyboard shortcuts", self.show_shortcuts, QKeySequence.HelpContents))
        m.addAction(act("Open &log folder", lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.paths.logs)))))
        m.addAction(act("&About hemascan", self.show_about))

        for a in (self.a_open, self.a_classify, self.a_cancel, self.a_csv, self.a_pdf):
            tb.addAction(a)
        tb.addSeparator()
        tb.addAction(self.a_models)

    # ------------------------------------------------------------------ settings
    def _restore_settings(self) -> None:
        s = self.settings
        geo = s.value("geometry")
        if isinstance(geo, QByteArray) and not geo.isEmpty():
            self.restoreGeometry(geo)
        else:
            screen = QApplication.primaryScreen()
            avail = screen.availableGeometry() if screen else None
            if avail is not None:
                self.resize(min(1360, avail.width()), min(860, avail.height()))
        for key, widget in (("windowState", None), ("mainSplitter", self.splitter),
                            ("detailSplitter", self.detail.splitter)):
            v = s.value(key)
            if isinstance(v, QByteArray) and not v.isEmpty():
                (self.restoreState if widget is None else widget.restoreState)(v)
        self.detail.gradcam.setChecked(s.value("gradcam", False, type=bool))

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("geometry", self.saveGeometry())
        s.setValue("windowState", self.saveState())
        s.setValue("mainSplitter", self.splitter.saveState())
        s.setValue("detailSplitter", self.detail.splitter.saveState())
        s.setValue("gradcam", self.detail.gradcam.isChecked())
        if self.folder is not None:
            save_folder_view(s, self.folder, self.folder_view())
        s.sync()

    def recent_folders(self) -> list[str]:
        v = self.settings.value("recentFolders", [])
        if isinstance(v, str):
            v = [v]
        return [str(x) for x in (v or [])]

    def _add_recent(self, folder: str) -> None:
        rec = [folder] + [f for f in self.recent_folders() if f != folder]
        self.settings.setValue("recentFolders", rec[:MAX_RECENT])
        self._fill_recent()

    def _fill_recent(self) -> None:
        if self.recent_menu is None:
            return
        self.recent_menu.clear()
        rec = self.recent_folders()
        for k, f in enumerate(rec, start=1):
            a = self.recent_menu.addAction(f"&{k} {f}")
            a.triggered.connect(lambda _=False, f=f: self.open_folder(f))
        self.recent_menu.setEnabled(bool(rec))

    # ------------------------------------------------------------------ folder + job
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
        self.jobs.supersede()  # a job on the previous folder stops after its batch; its result is dropped
        self._end_job()
        if self.folder is not None:
            save_folder_view(self.settings, self.folder, self.folder_view())
        self.folder = folder
        self._restore = load_folder_view(self.settings, folder)
        if self._restore is not None:
            self._apply_filters(self._restore)
        self.setWindowTitle(f"{Path(folder).name} — hemascan")
        self._add_recent(folder)
        self.loader.clear()
        self.reload_gallery()
        self.folderOpened.emit(folder)
        if classify:
            self.classify()

    @property
    def job(self):
        """The running scan + classify job (None when idle)."""
        return self.jobs.task

    def classify(self) -> None:
        if self.folder is None or self.jobs.running:
            return
        from core.inference import classify

        folder, db, paths, device = self.folder, self.db, self.paths, self.device_pref
        self._job_stage = None
        self._job_t0 = time.monotonic()
        self.jobs.start(lambda cancel: classify(db, paths, folder, device=device, cancel=cancel), "classification")
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_btn.setVisible(True)
        self.progress_label.setText("scanning…")
        self._update_actions()

    def cancel_job(self) -> None:
        if self.jobs.cancel():
            self.progress_label.setText("cancelling after this batch…")

    def _job_progress(self, p) -> None:
        if p.stage != self._job_stage:
            if self._job_stage == "scan":  # the folder's images are known: show them
                self.reload_gallery(keep_current=True)
            self._job_stage = p.stage
        if p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)
        if p.stage == "classify":
            rate = p.extra.get("rate")
            text = f"classified {p.done:,} / {p.total:,}" if p.total else f"classified {p.done:,}"
            if rate:
                text += f" · {rate:.0f} img/s · {_fmt_eta(p.extra.get('eta_s'))} left"
            if p.extra.get("device"):
                self.device_label.setText(p.extra["device"])
            elif p.message and p.done == 0:
                text = p.message if "compil" in p.message else text
        else:
            text = f"scanning: {p.done:,} files" + (f" / {p.total:,}" if p.total else "")
        self.progress_label.setText(text)
        now = time.monotonic()
        if now - self._last_counts > 1.0:
            self._last_counts = now
            self._update_counts()
            if p.stage == "classify" and self.model.rowCount() <= 2000:  # tiles fill in as predictions land
                self.model.refresh_ids([self.model.row_at(r).image_id for r in range(self.model.rowCount())])

    def _job_done(self, summary) -> None:
        self._end_job()
        cur = self.view.currentIndex()
        untouched = self._restore is None and cur.isValid() and cur.data(ID_ROLE) == self._auto_picked
        # A folder just classified starts at the top of the new order (least confident first),
        # unless the reviewer has already moved or the folder's saved view says where they were.
        self.reload_gallery(keep_current=not untouched)
        self._restore = None
        if summary is not None:
            if summary.device:
                self.device_label.setText(summary.device)
            msg = (f"{'Cancelled' if summary.cancelled else 'Done'}: {summary.n_predicted:,} images classified "
                   f"with {summary.model}")
            if summary.seconds > 0 and summary.n_predicted:
                msg += f" ({summary.rate:.0f} img/s)"
            bad = summary.scan.n_errors + summary.n_errors
            if bad:
                msg += f"; {bad} file(s) could not be used (listed under the counts: Show…)"
                for path, why in (summary.scan.errors + summary.errors)[:50]:
                    log.warning("unreadable: %s: %s", path, why)
            self.statusBar().showMessage(msg, 15000)
            log.info(msg)
        self.jobFinished.emit(summary)

    def _job_failed(self, message) -> None:
        self._end_job()
        self.show_error(message)
        self.reload_gallery(keep_current=True)
        self.jobFinished.emit(None)

    def _end_job(self) -> None:
        self.progress.setVisible(False)
        self.cancel_btn.setVisible(False)
        self.progress_label.setText("")
        self._update_actions()

    def _describe_device(self) -> str:
        from core.inference import describe_device, select_device

        return describe_device(select_device(self.device_pref))

    # ------------------------------------------------------------------ gallery
    def folder_view(self) -> FolderView:
        """This folder's view, to restore it on the next start (desktop/viewstate.py)."""
        f, cur = self.current_filter(), self.view.currentIndex()
        return FolderView(predicted=f.predicted, reviewed=f.reviewed, uncertain_only=f.uncertain_only,
                          outside_only=f.outside_only, disagreement=f.disagreement, sort=f.sort,
                          image_id=cur.data(ID_ROLE) if cur.isValid() else None,
                          scroll=self.view.verticalScrollBar().value())

    def _apply_filters(self, v: FolderView) -> None:
        for combo, value in ((self.f_pred, v.predicted), (self.f_rev, v.reviewed), (self.sort, v.sort)):
            combo.blockSignals(True)
            combo.setCurrentIndex(max(0, combo.findData(value)))  # a class the model no longer has: Any
            combo.blockSignals(False)
        for box, value in ((self.f_uncertain, v.uncertain_only), (self.f_outside, v.outside_only),
                           (self.f_disagree, v.disagreement)):
            box.blockSignals(True)
            box.setChecked(value)
            box.blockSignals(False)

    def reopen_last_folder(self) -> bool:
        """Open the folder of the last session, as it was left (filters, image, scroll)."""
        folder = last_folder(self.settings)
        if folder and os.path.isdir(folder):
            self.open_folder(folder)
            return True
        return False

    def current_filter(self) -> q.GalleryFilter:
        return q.GalleryFilter(predicted=self.f_pred.currentData(), reviewed=self.f_rev.currentData(),
                               uncertain_only=self.f_uncertain.isChecked(), outside_only=self.f_outside.isChecked(),
                               disagreement=self.f_disagree.isChecked(),
                               sort=self.sort.currentData())

    def _filter_changed(self, *_) -> None:
        self._forbid_impossible_filters()
        self.reload_gallery()

    def _forbid_impossible_filters(self) -> None:
        """A filter combination that can match nothing cannot be chosen: "reviewed differs
        from predicted" needs a reviewed image of another class than the predicted one."""
        rev, pred = self.f_rev.currentData(), self.f_pred.currentData()
        impossible = rev == q.UNREVIEWED or (rev is not None and rev == pred)
        self.f_disagree.setEnabled(not impossible)
        self.f_disagree.setToolTip("Not with the Reviewed filter chosen: those images cannot disagree"
                                   if impossible else "Images whose reviewed class differs from the prediction")
        if impossible and self.f_disagree.isChecked():
            self.f_disagree.blockSignals(True)
            self.f_disagree.setChecked(False)
            self.f_disagree.blockSignals(False)

    def reload_gallery(self, keep_current: bool = False) -> None:
        keep = self._shown_id if keep_current else None
        restore = self._restore
        if restore is not None and restore.image_id is not None:
            keep = restore.image_id
        if self.folder is None:
            self.model.clear()
        else:
            self.model.set_query(self.db, self.folder, self.version["id"] if self.version else None,
                                 self.version["taxonomy"] if self.version else None, self.current_filter())
        sel = self.view.selectionModel()
        row = self.model.row_of(keep) if keep is not None else None
        if row is None and self.model.rowCount():  # a filter, sort or folder change: the top, first image
            self.view.scrollToTop()
            row = 0
            self._auto_picked = self.model.row_at(0).image_id  # chosen for the reviewer, not by them
        if row is not None:  # the current image (what keys act on); no stale multi-selection
            sel.clearSelection()
            sel.setCurrentIndex(self.model.index(row), QItemSelectionModel.Current)
            self.view.scrollTo(self.model.index(row))
            if restore is not None and keep == restore.image_id and self.model.row_of(keep) is not None:
                self.view.verticalScrollBar().setValue(restore.scroll)  # where the reviewer left off
                self._restore = None
        else:  # nothing to show: the panel shows nothing, not the previous image
            self.view.selectionModel().clear()
            self._show_detail(None)
            self._update_actions()
        self._update_counts()

    def _after_reset(self) -> None:
        if self.folder is None:
            return
        self._show_position()

    def _show_position(self) -> None:
        """Where am I: "image n of N" in the current view (the queue the keys walk through)."""
        if self.folder is None:
            return
        n, cur = self.model.total, self.view.currentIndex()
        if not n:
            self.gallery_info.setText("No images match (yet).")
        elif cur.isValid():
            self.gallery_info.setText(f"Image {cur.row() + 1:,} of {n:,} in this view")
        else:
            self.gallery_info.setText(f"{n:,} image(s) match")

    def select_image(self, image_id: int) -> bool:
        row = self.model.row_of(image_id)
        if row is None:
            return False
        ix = self.model.index(row)
        self.view.selectionModel().setCurrentIndex(ix, QItemSelectionModel.ClearAndSelect)
        self.view.scrollTo(ix)
        return True

    def selected_ids(self) -> list[int]:
        rows = sorted(ix.row() for ix in self.view.selectionModel().selectedIndexes())
        ids = [self.model.row_at(r).image_id for r in rows]
        if not ids:
            cur = self.view.currentIndex()
            if cur.isValid():
                ids = [cur.data(ID_ROLE)]
        return ids

    def move_current(self, step: int, after_rows: list[int] | None = None) -> None:
        n = self.model.rowCount()
        if n == 0:
            return self._refuse(self.review_refusal() or "No image in view.")
        cur = self.view.currentIndex()
        base = max(after_rows) if (after_rows and step > 0) else (cur.row() if cur.isValid() else -1)
        row = base + step
        if row >= n and self.model.canFetchMore():
            self.model.fetchMore()
            n = self.model.rowCount()
        if row >= n and step > 0:
            self.statusBar().showMessage(f"End of the queue: this was the last of the {n:,} images in this view. "
                                         "Change the filters for more, or Home to go back to the first.", 8000)
        row = max(0, min(n - 1, row))
        ix = self.model.index(row)
        self.view.selectionModel().setCurrentIndex(ix, QItemSelectionModel.ClearAndSelect)
        self.view.scrollTo(ix)

    def _update_counts(self) -> None:
        v = self.version
        if v is not None:
            self.model_label.setText(f"<b>{v['name']}</b><br><small>{v['architecture']} · "
                                     f"{headline_metrics(v['card'])}</small>")
        if self.folder is None:
            self.counts.setText("<i>No folder open.</i>")
            return
        # The counts are queried in a worker (they scan the folder's rows: tens of ms at 100,000
        # images, too slow for every key press); a newer request supersedes an older one.
        self._counts_generation += 1
        gen, db, folder = self._counts_generation, self.db, self.folder

        def query():
            with db.session() as s:
                return (q.class_counts(s, folder, v["id"] if v else None, v["taxonomy"] if v else None),
                        q.folder_files(s, folder))

        self.workers.submit(query, name="counts", on_result=lambda out, g=gen: self._show_counts(g, *out),
                            on_error=self.show_error, priority=2)

    def _show_counts(self, generation: int, c, files) -> None:
        if generation != self._counts_generation or self.folder is None:
            return  # a newer count is on its way
        v = self.version
        self.folder_files = files
        classes = v["classes"] if v else sorted(set(c.predicted) | set(c.reviewed))
        rows = ["<tr><th align='left'>Class</th><th align='right'>&nbsp;Predicted</th>"
                "<th align='right'>&nbsp;Reviewed</th></tr>"]
        for cl in classes:
            pn, rn = c.predicted.get(cl, 0), c.reviewed.get(cl, 0)
            col = class_color(cl, classes).name()
            rows.append(f"<tr><td><span style='color:{col}'>■</span> {cl}</td>"
                        f"<td align='right'>{pn:,} ({c.pct(pn, c.n_classified):.0f}%)</td>"
                        f"<td align='right'>{rn:,} ({c.pct(rn, c.n_reviewed_classes):.0f}%)</td></tr>")
        # not classes: their own rows, outside the percentages above
        rows.append(f"<tr><td><span style='color:{OUTSIDE_HATCH}'>{OUTSIDE_MARK}</span> Outside experience</td>"
                    f"<td align='right'>{c.n_outside:,}</td><td align='right'></td></tr>")
        rows.append(f"<tr><td><span style='color:{class_color(OTHER).name()}'>■</span> {OTHER_TITLE}</td>"
                    f"<td align='right'></td><td align='right'>{c.reviewed.get(OTHER, 0):,}</td></tr>")
        rows.append(f"<tr><td><b>All</b></td><td align='right'><b>{c.n_predicted:,}</b></td>"
                    f"<td align='right'><b>{c.n_reviewed:,}</b></td></tr>")
        ff = self.folder_files
        files = f"<br><small>{ff.summary()}</small>" if ff.n_copies > 0 or ff.problems else ""
        if ff.problems:
            files += f"<br><a href='problems'>Show the {len(ff.problems):,} file(s) that could not be used…</a>"
        self.counts.setText(f"<table cellspacing='0' cellpadding='2'>{''.join(rows)}</table>"
                            f"<small>{c.total:,} images · {c.pct(c.n_reviewed, c.total):.0f}% reviewed</small>{files}")
        self.countsShown.emit()

    def show_problem_files(self):
        from .problems import ProblemFilesDialog

        if self.folder is None:
            return None
        dlg = ProblemFilesDialog(self.folder_files.problems, self.folder, self)
        dlg.setAttribute(Qt.WA_DeleteOnClose)
        dlg.show()
        return dlg

    # ------------------------------------------------------------------ detail
    def _current_changed(self, cur, _prev=None) -> None:
        self._show_position()
        row = cur.data(ROW_ROLE) if cur.isValid() else None
        self._show_detail(row)
        self._update_actions()

    def _show_detail(self, row, reload_image: bool = True) -> None:
        classes = self.version["classes"] if self.version else []
        if self.version:  # the outside-experience note names where the model's images came from
            self.detail.set_trained_on(trained_on(self.version["card"]))
        self.detail.show_row(row, classes)
        if row is None:
            self._shown_id = None
            return
        with self.db.session() as s:
            events = [dict(when=e.created_at.strftime("%Y-%m-%d %H:%M:%S"), reviewer=e.reviewer,
                           **{"from": e.previous_label, "to": e.label}, source=e.source, note=e.note)
                      for e in history(s, row.image_id)]
        self.detail.show_history(events)
        if reload_image or self._shown_id != row.image_id:
            self._shown_id = row.image_id
            self._full_image = None
            self.workers.submit(lambda r=row: (r.image_id, self._decode_full(r.path)), name="image",
                                on_result=self._image_loaded, on_error=self.show_error, priority=1)

    @staticmethod
    def _decode_full(path):
        from core.fspath import to_fs
        from core.images import decode_rgb, read_file

        return rgb_to_qimage(decode_rgb(read_file(to_fs(path))))

    def _image_loaded(self, out) -> None:
        image_id, img = out
        if image_id != self._shown_id:
            return  # the user has moved on
        self._full_image = img
        self.detail.view.set_image(img)
        self.imageShown.emit(image_id)
        pending = self._pending_cam
        if pending is not None and pending[0] == image_id and self.detail.gradcam.isChecked():
            self._gradcam_done(pending)  # the map was ready before the image
            return
        if self.detail.gradcam.isChecked():
            self._request_gradcam()

    def _gradcam_toggled(self, on: bool) -> None:
        if on:
            self._request_gradcam()
        else:
            self.detail.view.set_overlay(None)

    def _request_gradcam(self) -> None:
        cur = self.view.currentIndex()
        row = cur.data(ROW_ROLE) if cur.isValid() else None
        if row is None or self.version is None:
            return
        package = self.version["path"]
        vid = self.version["id"]

        def work(r=row):
            from core.gradcam import GradCam

            with self._gradcam_lock:
                if self._gradcam is None or self._gradcam[0] != vid:
                    self._gradcam = (vid, GradCam(package))
                _img, cam, k = self._gradcam[1](r.path)
            return r.image_id, cam, k

        self.workers.submit(work, name="Grad-CAM", on_result=self._gradcam_done, on_error=self.show_error,
                            priority=1)

    def _gradcam_done(self, out) -> None:
        image_id, cam, k = out
        if not self.detail.gradcam.isChecked():
            return
        if image_id != self._shown_id:  # the reviewer moved on while it computed: the image shown now
            self._request_gradcam()
            return
        self._pending_cam = out
        img = self._full_image
        if img is None:  # the image itself is still loading: _image_loaded applies the map
            return
        w, h = img.width(), img.height()
        side = min(w, h)  # preprocessing centre-crops to a square: the map covers that square
        self.detail.view.set_overlay(heatmap_rgba(cam, side), ((w - side) // 2, (h - side) // 2))
        cls = self.version["classes"][k] if self.version and k < len(self.version["classes"]) else k
        self.statusBar().showMessage(f"Grad-CAM for class {cls}", 5000)
        self.gradcamReady.emit(image_id)

    # ------------------------------------------------------------------ review
    def _after_label(self, action, advance: bool, rows_before: list[int] | None = None) -> None:
        if action is None:
            if advance:
                self.move_current(1, rows_before)
            return
        ids = [i for i, _, _ in action.changes]
        self.model.refresh_ids(ids)
        self._update_counts()
        cur = self.view.currentIndex()
        if cur.isValid():
            self._show_detail(cur.data(ROW_ROLE), reload_image=False)
        self._update_actions()
        self.labelsChanged.emit(ids)
        if advance:
            self.move_current(1, rows_before)
        if self.f_rev.currentData() == q.UNREVIEWED:  # reviewed images leave the queue, after a short
            self._drop_reviewed.start()  # grace: the next key still lands on the image now shown

    def _labels_saved(self, ids: list, pending: int) -> None:
        """A queued label write reached the database: show it."""
        self.model.refresh_ids(ids)
        if self.f_rev.currentData() == q.UNREVIEWED and not self._drop_reviewed.isActive():
            self._drop_reviewed.start()
        self._update_counts()
        cur = self.view.currentIndex()
        if cur.isValid():
            self._show_detail(cur.data(ROW_ROLE), reload_image=False)
        self.labelsChanged.emit(ids)
        if pending:
            self.statusBar().showMessage(f"Saving labels: {pending} action(s) still waiting for the database", 0)
        else:
            self.statusBar().showMessage("All labels saved", 5000)

    def _labels_waiting(self, message: str, pending: int) -> None:
        self.statusBar().showMessage(f"⚠ {pending} label action(s) not saved yet, retrying: {message} "
                                     "(nothing is lost)", 0)

    def _guard(self, fn, *a):
        try:
            return fn(*a)
        except Exception as exc:
            log.exception("review action failed")
            self.show_error(f"Could not save the label: {exc}")
            return None

    def label_other_with_note(self) -> None:
        """"Other / not assessable" with the reviewer's free-text note (what the image shows)."""
        why = self.review_refusal()
        if why:
            return self._refuse(why)
        note, ok = QInputDialog.getText(self, OTHER_TITLE, "Note (optional): what does the image show?")
        if ok:
            self.label_selected(OTHER, note=note.strip() or None)

    def label_selected(self, label: str | None, note: str | None = None) -> None:
        why = self.review_refusal()
        if why:
            return self._refuse(why)
        ids = self.selected_ids()
        rows = [self.model.row_of(i) for i in ids]
        action = self._guard(self.review.label, ids, label, note)
        if action is not None:
            self.statusBar().showMessage(f"{len(action.changes)} image(s) labelled {label or '(cleared)'}"
                                         + (" (Ctrl+Z undoes them all)" if len(action.changes) > 1 else ""), 4000)
        self._after_label(action, advance=True, rows_before=[r for r in rows if r is not None])

    def accept_prediction(self) -> None:
        why = self.review_refusal()
        if why:
            return self._refuse(why)
        ids = self.selected_ids()
        labels = {}
        for i in ids:
            row = self.model.row_of(i)
            r = self.model.row_at(row) if row is not None else None
            if r is not None and r.predicted:
                labels[i] = r.predicted
        if not labels:
            return self._refuse("Nothing to accept: the selected image has no prediction yet (classify with Ctrl+R).")
        rows = [self.model.row_of(i) for i in ids]
        action = self._guard(self.review.apply, labels, f"accept {len(labels)} prediction(s)", "accepted prediction")
        if action is not None:  # one undo step for all of them
            self.statusBar().showMessage(f"{len(action.changes)} prediction(s) accepted (Ctrl+Z undoes them all)", 4000)
        self._after_label(action, advance=True, rows_before=[r for r in rows if r is not None])

    def undo(self) -> None:
        if not self.review.can_undo:
            return self._refuse("Nothing to undo.")
        action = self._guard(self.review.undo)
        if action is not None:
            self.statusBar().showMessage(f"Undone: {action.description}", 4000)
            self._after_label(action, advance=False)
            self.select_image(action.changes[0][0])

    def redo(self) -> None:
        if not self.review.can_redo:
            return self._refuse("Nothing to redo.")
        action = self._guard(self.review.redo)
        if action is not None:
            self.statusBar().showMessage(f"Redone: {action.description}", 4000)
            self._after_label(action, advance=False)

    def ask_reviewer(self) -> bool:
        """Ask for the reviewer's name until it is a person's or the dialog is cancelled."""
        prompt = "Your name, stored with every label you give:"
        while True:
            name, ok = QInputDialog.getText(self, "Reviewer", prompt, text=self.reviewer or "")
            if not ok:
                return self.reviewer is not None
            why = reviewer_problem(name)
            if why is None:
                self.set_reviewer(name.strip())
                return True
            prompt = f"{why[0].upper()}{why[1:]}.\nYour name, stored with every label you give:"

    def set_reviewer(self, name: str) -> None:
        if reviewer_problem(name):
            raise ValueError(reviewer_problem(name))
        self.reviewer = name
        self.review.reviewer = name
        self.settings.setValue("reviewer", name)
        self._show_reviewer()

    def _show_reviewer(self) -> None:
        self.reviewer_label.setText(f"reviewer: {self.reviewer}" if self.reviewer else "reviewer: (not set)")

    def _update_actions(self) -> None:
        has_folder = self.folder is not None
        running = self.job is not None
        has_sel = self.view.currentIndex().isValid() or bool(self.view.selectionModel().selectedIndexes())
        self.a_classify.setEnabled(has_folder and not running)
        self.a_cancel.setEnabled(running)
        self.a_csv.setEnabled(has_folder)
        self.a_pdf.setEnabled(has_folder)
        # The review keys stay live whatever the state: a key that cannot act says why
        # (review_refusal); the buttons are enabled only when they can act.
        for b in self.class_buttons:
            b.setEnabled(has_sel)
        self.review_buttons["accept"].setEnabled(has_sel)
        self.review_buttons["undo"].setEnabled(self.review.can_undo)
        self.review_buttons["redo"].setEnabled(self.review.can_redo)

    def review_refusal(self) -> str | None:
        """Why a review key cannot act now, in one sentence (None: it can)."""
        if self.folder is None:
            return "Open a folder first (Ctrl+O)."
        if self.model.rowCount() == 0:
            return "No image in view: change the filters to see images."
        if not self.selected_ids():
            return "No image selected: click one, or use the arrow keys."
        if self.reviewer is None and not self.ask_reviewer():
            return "Labels need your name: Review ▸ Reviewer name…"
        return None

    def _refuse(self, why: str) -> None:
        self.statusBar().showMessage(f"⚠ {why}", 6000)

    # ------------------------------------------------------------------ export
    def default_export_path(self, ext: str) -> str:
        name = f"hemascan-{Path(self.folder).name}-{time.strftime('%Y%m%d-%H%M')}.{ext}"
        return str(Path(self.folder) / name) if os.access(self.folder, os.W_OK) else str(Path.home() / name)

    def export_csv(self, _=False, path: str | None = None) -> str | None:
        if self.folder is None:
            return None
        if path is None:
            path, _f = QFileDialog.getSaveFileName(self, "Export CSV", self.default_export_path("csv"), "CSV (*.csv)")
            if not path:
                return None
        from core.export import EXPORTERS

        try:
            n = EXPORTERS["csv"](self.db, path, folder=self.folder)
        except Exception as exc:
            log.exception("CSV export failed")
            self.show_error(f"CSV export failed: {exc}")
            return None
        self.statusBar().showMessage(f"Exported {n:,} rows to {path}", 8000)
        self.reportWritten.emit(path)
        return path

    def export_pdf(self, _=False, path: str | None = None, case: str | None = None) -> str | None:
        if self.folder is None:
            return None
        if path is None:
            default = str(self.settings.value(f"case/{Path(self.folder).name}", "") or Path(self.folder).name)
            case, ok = QInputDialog.getText(self, "Case report", "Case / sample name on the report:", text=default)
            if not ok:
                return None
            self.settings.setValue(f"case/{Path(self.folder).name}", case.strip())
            path, _f = QFileDialog.getSaveFileName(self, "Export PDF report", self.default_export_path("pdf"),
                                                   "PDF (*.pdf)")
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

    # ------------------------------------------------------------------ models, about
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
            self.version = version_info(get_version(s, name))
        self.review.taxonomy = self.version["taxonomy"]
        self._gradcam = None
        self._build_class_actions()
        self._update_actions()
        self._fill_class_combos()
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

    def show_shortcuts(self) -> None:
        classes = self.version["classes"] if self.version else []
        keys = "".join(f"<tr><td><b>{k}</b></td><td>label {c}</td></tr>" for k, c in enumerate(classes[:9], 1))
        keys += (f"<tr><td><b>O</b> / <b>Shift+O</b></td><td>{OTHER_TITLE} (fits none of the classes) "
                 "/ with a note</td></tr>")
        QMessageBox.information(self, "Keyboard shortcuts", f"""<table>{keys}
            <tr><td><b>A</b> / <b>Enter</b></td><td>accept the prediction</td></tr>
            <tr><td><b>0</b></td><td>clear the label</td></tr>
            <tr><td><b>Arrows</b>, <b>Space</b></td><td>move (Shift+arrows / Ctrl+click select many)</td></tr>
            <tr><td><b>Ctrl+Z</b> / <b>Ctrl+Shift+Z</b></td><td>undo / redo (recorded as new audit events)</td></tr>
            <tr><td><b>G</b></td><td>Grad-CAM overlay</td></tr>
            <tr><td><b>Ctrl++</b> / <b>Ctrl+-</b> / <b>F</b></td><td>zoom in / out / fit</td></tr>
            <tr><td><b>Ctrl+O</b>, <b>Ctrl+R</b>, <b>Esc</b></td><td>open folder, classify, cancel</td></tr>
            <tr><td><b>Ctrl+E</b>, <b>Ctrl+P</b></td><td>export CSV, PDF report</td></tr></table>""")

    def about_text(self) -> str:
        import platform

        import PySide6
        import sqlalchemy

        from core.modelpkg import INTENDED_USE

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

    # ------------------------------------------------------------------ errors, events
    def show_error(self, message: str) -> None:
        log.error("%s", message)
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
