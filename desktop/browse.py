"""The window's gallery: the folder's images under the filter, where the reviewer is in
them, and the counts (queried in a worker: they scan the folder's rows)."""
from __future__ import annotations

import os

from PySide6.QtCore import QItemSelectionModel, Qt

from core.review import gallery as q

from .gallery import ID_ROLE
from .viewstate import FolderView, last_folder


class BrowseMixin:
    """Part of MainWindow (desktop/mainwindow.py)."""

    def folder_view(self) -> FolderView:
        """This folder's view, to restore it on the next start (desktop/viewstate.py)."""
        f, cur = self.current_filter(), self.view.currentIndex()
        return FolderView(predicted=f.predicted, reviewed=f.reviewed, uncertain_only=f.uncertain_only,
                          outside_only=f.outside_only, disagreement=f.disagreement, sort=f.sort,
                          image_id=cur.data(ID_ROLE) if cur.isValid() else None,
                          scroll=self.view.verticalScrollBar().value())

    def reopen_last_folder(self) -> bool:
        """Open the folder of the last session, as it was left (filters, image, scroll)."""
        folder = last_folder(self.settings)
        if folder and os.path.isdir(folder):
            self.open_folder(folder)
            return True
        return False

    def current_filter(self) -> q.GalleryFilter:
        return self.state.filter

    def _filter_changed(self) -> None:
        shown = self.filters.filter()
        if self.state.set_filter(shown) != shown:  # an impossible combination: not kept
            self.filters.show_filter(self.state.filter)
        self.reload_gallery()

    def reload_gallery(self, keep_current: bool = False) -> None:
        keep = self._shown_id if keep_current else None
        restore = self._restore
        if restore is not None and restore.image_id is not None:
            keep = restore.image_id
        v = self.version
        if self.folder is None:
            self.model.clear()
        else:
            self.model.set_query(self.db, self.folder, v["id"] if v else None, v["taxonomy"] if v else None,
                                 self.current_filter())
        self.state.n_in_view = self.model.total
        sel = self.view.selectionModel()
        row = self.model.row_of(keep) if keep is not None else None
        if row is None and self.model.rowCount():  # a filter, sort or folder change: the top, first image
            self.view.scrollToTop()
            row = 0
            self._auto_picked = self.model.row_at(0).image_id  # chosen for the reviewer, not by them
        if row is not None:  # the current image (what keys act on); no stale multi-selection
            sel.clearSelection()  # the current image is selected too: its tile is framed, as the keys act on it
            sel.setCurrentIndex(self.model.index(row), QItemSelectionModel.ClearAndSelect)
            self.view.scrollTo(self.model.index(row))
            if restore is not None and keep == restore.image_id and self.model.row_of(keep) is not None:
                self.view.verticalScrollBar().setValue(restore.scroll)  # where the reviewer left off
                self._restore = None
        else:  # nothing to show: the panel shows nothing, not the previous image
            sel.clear()
            self._sync_state()
            self._show_detail(None)
            self._update_actions()
        self._update_counts()

    def _sync_state(self) -> None:
        """The review state follows the view: current image, selection, images in view."""
        cur = self.view.currentIndex()
        self.state.set_current(cur.row() if cur.isValid() else None, cur.data(ID_ROLE) if cur.isValid() else None)
        rows = sorted(ix.row() for ix in self.view.selectionModel().selectedIndexes())
        self.state.selected = tuple(self.model.row_at(r).image_id for r in rows)
        self.state.n_in_view = self.model.total if self.folder is not None else 0

    def _show_position(self) -> None:
        self._sync_state()
        self.gallery_info.setText(self.state.position())

    def select_image(self, image_id: int) -> bool:
        row = self.model.row_of(image_id)
        if row is None:
            return False
        ix = self.model.index(row)
        self.view.selectionModel().setCurrentIndex(ix, QItemSelectionModel.ClearAndSelect)
        self.view.scrollTo(ix)
        return True

    def selected_ids(self) -> list[int]:
        self._sync_state()
        return self.state.targets()

    def move_current(self, step: int, after_rows: list[int] | None = None) -> None:
        self._sync_state()
        n = self.model.rowCount()
        if n == 0:
            return self._refuse(self.state.refusal() or "No image in view.")
        row, end = self.state.next_row(step, n, after_rows)
        if end and self.model.canFetchMore():  # past the rows loaded so far, not the end of the queue
            self.model.fetchMore()
            row, end = self.state.next_row(step, self.model.rowCount(), after_rows)
        if end:
            self.statusBar().showMessage(end, 8000)
        ix = self.model.index(row)
        self.view.selectionModel().setCurrentIndex(ix, QItemSelectionModel.ClearAndSelect)
        self.view.scrollTo(ix)

    # ---------------------------------------------------------------- counts
    def _update_counts(self) -> None:
        v = self.version
        self.filters.show_model(v)
        if self.folder is None:
            self.filters.show_counts(None, [])
            return
        # Queried in a worker (tens of ms at 100,000 images: too slow for every key press);
        # a newer request supersedes an older one.
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
        self.folder_files = files
        self.filters.show_counts(c, self.version["classes"] if self.version else [], files)
        self.countsShown.emit()

    def show_problem_files(self):
        from .problems import ProblemFilesDialog

        if self.folder is None:
            return None
        dlg = ProblemFilesDialog(self.folder_files.problems, self.folder, self)
        dlg.setAttribute(Qt.WA_DeleteOnClose)
        dlg.show()
        return dlg
