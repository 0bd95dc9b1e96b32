"""The gallery pane: the folder's images under the filter as tiles, where the reviewer is in
them, and the counts. It keeps what it shows in memory (desktop.gallery.GalleryModel) and
asks the controller for everything else, off the GUI thread."""
from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel, QObject, Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QApplication, QHBoxLayout, QLabel, QListView, QVBoxLayout, QWidget

from core.review import gallery as q

from .controller import Controller
from .gallery import ID_ROLE, PREFETCH, ROW_ROLE, THUMB, GalleryModel, ThumbnailLoader, TileDelegate
from .viewstate import FolderView
from desktop.problems import ProblemFilesDialog


JUMP_KEYS = {Qt.Key_Home, Qt.Key_End, Qt.Key_PageUp, Qt.Key_PageDown}
MOVE_KEYS = JUMP_KEYS | {Qt.Key_Up, Qt.Key_Down, Qt.Key_Left, Qt.Key_Right}


class GalleryView(QListView):
    """The tiles. Home, End and the page keys walk the whole view, not only the rows loaded
    so far (``pane.move_to`` loads what they reach); a move without Shift or Ctrl leaves one
    image selected, even at the edge (Home on the first image after Ctrl+A); typing a letter
    never jumps to a file of that name (the next key would label an image nobody chose)."""

    def __init__(self, pane: "GalleryPane"):
        super().__init__()
        self.pane = pane

    def keyPressEvent(self, e) -> None:  # noqa: N802  (Qt's name)
        mods = e.modifiers() & ~Qt.KeypadModifier
        extend = bool(mods & (Qt.ShiftModifier | Qt.ControlModifier))
        if e.key() in JUMP_KEYS and not (mods & Qt.ShiftModifier):
            cur = self.currentIndex().row() if self.currentIndex().isValid() else 0
            step = self.page_step()
            target = {Qt.Key_Home: 0, Qt.Key_End: self.pane.model.total - 1,
                      Qt.Key_PageUp: cur - step, Qt.Key_PageDown: cur + step}[e.key()]
            self.pane.move_to(target)
            e.accept()
            return
        super().keyPressEvent(e)
        if e.key() in MOVE_KEYS and not extend and len(self.selectionModel().selectedIndexes()) > 1:
            self.selectionModel().setCurrentIndex(self.currentIndex(), QItemSelectionModel.ClearAndSelect)

    def keyboardSearch(self, search: str) -> None:  # noqa: N802  (Qt's name)
        return None

    def page_step(self) -> int:
        """Tiles in one screen of the view (what PgDn moves by)."""
        model = self.model()
        if model is None or not model.rowCount():
            return 1
        tile = self.visualRect(model.index(0, 0))
        w, h = max(1, tile.width() + 2 * self.spacing()), max(1, tile.height() + 2 * self.spacing())
        vp = self.viewport().size()
        return max(1, vp.width() // w) * max(1, vp.height() // h)


class GalleryPane(QObject):
    """Owns the gallery's view, model, thumbnails, the "Image n of N" line and the review bar."""

    currentChanged = Signal(object)  # the GalleryRow now current, or None
    selectionChanged = Signal()
    reloaded = Signal()  # a reload's rows are in and the current image is chosen
    countsReady = Signal(object, object)  # ClassCounts, FolderFiles
    message = Signal(str, int)  # for the status bar

    def __init__(self, ctl: Controller, workers, parent=None):
        super().__init__(parent)
        self.ctl = ctl
        self.folder_files = q.FolderFiles()
        self.restore: FolderView | None = None  # a folder's saved view, applied as its images arrive
        self.auto_picked: int | None = None  # the image a reload selected by itself, until the reviewer moves
        self._choosing = False  # the pane itself sets the current image (not the reviewer)
        self._counts_generation = 0
        app = QApplication.instance()
        dpr = max(1.0, app.devicePixelRatio()) if app else 1.0
        self.loader = ThumbnailLoader(workers, size_px=int(THUMB * min(dpr, 3.0)))  # sharp on HiDPI
        self.model = GalleryModel(ctl, self)
        self.loader.ready.connect(self.model.thumbnail_ready)
        self.model.reloaded.connect(self._reloaded)
        self.view = v = GalleryView(self)
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
        v.setItemDelegate(TileDelegate(self.loader, lambda: self.ctl.classes))
        v.selectionModel().currentChanged.connect(self._current_changed)
        v.selectionModel().selectionChanged.connect(lambda *_: (self.show_position(), self.selectionChanged.emit()))
        self.model.modelReset.connect(self.show_position)

        self.review_bar = QHBoxLayout()  # buttons from the action table (actions.build)
        self.review_bar.setSpacing(4)
        self.widget = QWidget()
        cl = QVBoxLayout(self.widget)
        cl.setContentsMargins(0, 4, 0, 0)
        cl.addLayout(self.review_bar)
        self.info = QLabel(ctl.state.position())
        cl.addWidget(self.info)
        cl.addWidget(self.view, 1)

    @property
    def busy(self) -> bool:
        """A reload or a page is on its way."""
        return self.model.busy

    def current_row(self) -> q.GalleryRow | None:
        cur = self.view.currentIndex()
        return cur.data(ROW_ROLE) if cur.isValid() else None

    def folder_view(self) -> FolderView:
        """This folder's view, to restore it on the next start (desktop/viewstate.py)."""
        f, cur = self.ctl.state.filter, self.view.currentIndex()
        return FolderView(predicted=f.predicted, reviewed=f.reviewed, uncertain_only=f.uncertain_only,
                          outside_only=f.outside_only, disagreement=f.disagreement, sort=f.sort,
                          image_id=cur.data(ID_ROLE) if cur.isValid() else None,
                          scroll=self.view.verticalScrollBar().value())

    # ---------------------------------------------------------------- reload
    def reload(self, keep_id: int | None = None) -> None:
        """Read the folder's images again under the filter. ``keep_id`` stays current if it is
        still in view, wherever the new order puts it; if it has left, the image after it
        (else before it) in the order shown until now. A re-read by a running job, a re-sort
        or a late answer never moves the reviewer to another image by itself."""
        keep = self.model.around(keep_id) if keep_id is not None else []
        if self.restore is not None and self.restore.image_id is not None:  # the folder's first read
            keep = [self.restore.image_id]
        if self.ctl.folder is None:
            self.model.clear()
            self._reloaded()
        else:
            self.model.set_query(self.ctl.folder, self.ctl.version_id, self.ctl.taxonomy, self.ctl.state.filter,
                                 keep=keep)
        self.update_counts()

    def _reloaded(self) -> None:
        restore, self.restore = self.restore, None  # a saved position applies to the folder's first read only
        self.ctl.state.n_in_view = self.model.total
        sel = self.view.selectionModel()
        row = self.model.row_of(self.model.kept) if self.model.kept is not None else None
        if row is not None and self.model.kept != self.auto_picked:
            self.auto_picked = None
        if row is None and self.model.rowCount():  # a filter, sort or folder change: the top, first image
            self.view.scrollToTop()
            row = 0
            self.auto_picked = self.model.row_at(0).image_id  # chosen for the reviewer, not by them
        if row is not None:  # the current image (what keys act on); no stale multi-selection
            self._set_current(row)
            if restore is not None and self.model.kept == restore.image_id:
                self.view.verticalScrollBar().setValue(restore.scroll)  # where the reviewer left off
                self.view.scrollTo(self.model.index(row))
        else:  # nothing to show: the panel shows nothing, not the previous image
            sel.clear()
            self.sync_state()
            self.currentChanged.emit(None)
        self.show_position()
        self.reloaded.emit()

    def _set_current(self, row: int) -> None:
        """The pane's own choice of the current image (after a reload or a drop)."""
        self._choosing = True
        try:
            sel = self.view.selectionModel()
            sel.clearSelection()  # the current image is selected too: its tile is framed, as the keys act on it
            sel.setCurrentIndex(self.model.index(row), QItemSelectionModel.ClearAndSelect)
            self.view.scrollTo(self.model.index(row))
        finally:
            self._choosing = False

    def drop_reviewed(self, image_ids) -> None:
        """"Unreviewed only": the images just labelled leave the view after the grace, in
        place; the reviewer stays on the image shown (if it is one of them: the next one)."""
        cur = self.current_row()
        gone = set(image_ids)
        stay = next((i for i in self.model.around(cur.image_id) if i not in gone), None) if cur else None
        self.model.drop_ids(gone)
        row = self.model.row_of(stay) if stay is not None else None
        if row is not None and row != self.view.currentIndex().row():
            self._set_current(row)
        elif row is None and cur is not None and self.model.rowCount() == 0:
            self.view.selectionModel().clear()
            self.currentChanged.emit(None)
        self.show_position()

    # ---------------------------------------------------------------- where the reviewer is
    def sync_state(self) -> None:
        """The review state follows the view: current image, selection, images in view."""
        state, cur = self.ctl.state, self.view.currentIndex()
        state.set_current(cur.row() if cur.isValid() else None, cur.data(ID_ROLE) if cur.isValid() else None)
        rows = sorted(ix.row() for ix in self.view.selectionModel().selectedIndexes())
        state.selected = tuple(self.model.row_at(r).image_id for r in rows)
        state.n_in_view = self.model.total if self.ctl.folder is not None else 0

    def show_position(self) -> None:
        self.sync_state()
        text = self.ctl.state.position()
        if self.ctl.folder is not None:  # what the finder was told (File ▸ Images in this folder are…)
            text += f" · {self.ctl.image_kind_words()}"
        self.info.setText(text)

    def _current_changed(self, cur, _prev=None) -> None:
        if not self._choosing:  # the reviewer moved: a later reload keeps their image
            self.auto_picked = None
        self.show_position()
        if cur.isValid() and cur.row() >= self.model.rowCount() - PREFETCH:
            self.model.fetchMore()  # the next page arrives before the keys reach it
        self.currentChanged.emit(cur.data(ROW_ROLE) if cur.isValid() else None)

    def select_image(self, image_id: int) -> bool:
        row = self.model.row_of(image_id)
        if row is None:
            return False
        ix = self.model.index(row)
        self.view.selectionModel().setCurrentIndex(ix, QItemSelectionModel.ClearAndSelect)
        self.view.scrollTo(ix)
        return True

    def move_current(self, step: int, after_rows: list[int] | None = None) -> None:
        self.sync_state()
        n = self.model.rowCount()
        if n == 0:
            return self.message.emit(f"⚠ {self.ctl.state.refusal() or 'No image in view.'}", 6000)
        row, end = self.ctl.state.next_row(step, n, after_rows)
        if end and self.model.canFetchMore():  # past the rows loaded so far, not the end of the queue
            self.model.load_rows(n + 1, lambda: self.move_current(step, after_rows))
            return
        if end:
            self.message.emit(end, 8000)
        self._go(row)

    def move_to(self, row: int) -> None:
        """Make ``row`` of the whole view current (Home, End, the page keys), loading the rows
        down to it first when they are not in yet."""
        if not self.model.total:
            return self.message.emit(f"⚠ {self.ctl.state.refusal() or 'No image in view.'}", 6000)
        row = max(0, min(self.model.total - 1, row))
        if row >= self.model.rowCount():
            self.model.load_rows(row + 1, lambda: self._go(min(row, self.model.rowCount() - 1)))
            return
        self._go(row)

    def _go(self, row: int) -> None:
        ix = self.model.index(row)
        self.view.selectionModel().setCurrentIndex(ix, QItemSelectionModel.ClearAndSelect)
        self.view.scrollTo(ix)

    def show_problem_files(self, parent):
        """The files of the folder that could not be used, with the reason (from the last counts)."""
        from PySide6.QtCore import Qt


        if self.ctl.folder is None:
            return None
        dlg = ProblemFilesDialog(self.folder_files.problems, self.ctl.folder, parent)
        dlg.setAttribute(Qt.WA_DeleteOnClose)
        dlg.show()
        return dlg

    # ---------------------------------------------------------------- counts
    def update_counts(self) -> None:
        """Counts per class and the folder's files, read in a worker (tens of ms at 100,000
        images: too slow for a key press); a newer request supersedes an older one."""
        if self.ctl.folder is None:
            self.countsReady.emit(None, None)
            return
        self._counts_generation += 1
        gen, folder, vid, tax = self._counts_generation, self.ctl.folder, self.ctl.version_id, self.ctl.taxonomy
        self.ctl.read(lambda s: (q.class_counts(s, folder, vid, tax), q.folder_files(s, folder)),
                      lambda out: self._show_counts(gen, *out), "counts", priority=2)

    def _show_counts(self, generation: int, c, files) -> None:
        if generation != self._counts_generation or self.ctl.folder is None:
            return  # a newer count is on its way
        self.folder_files = files
        self.countsReady.emit(c, files)


