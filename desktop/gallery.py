"""The gallery's list model: the ordered image ids of a folder under the filter, and the
details of rows a page (PAGE rows) at a time as the view scrolls. Everything it shows is in
memory; every read runs on the pool (desktop.controller.Controller.read) and lands with a
generation check, so a late answer never overwrites a newer one. A review key updates the
rows it labelled at once (``set_labels``); the database's answer follows.
"""
from __future__ import annotations

import dataclasses

from PySide6.QtCore import QAbstractListModel, QModelIndex, Qt, Signal

from core.review import gallery as q

from .tiles import (ID_ROLE, OUTSIDE_BAND, OUTSIDE_HATCH, OUTSIDE_MARK, ROW_ROLE, THUMB, TILE, ThumbnailLoader,  # noqa: F401
                    TileDelegate, class_color, make_thumbnail)

PAGE = 200
PREFETCH = 50  # the next page is asked for when the current image is this close to the last loaded row


def pages_for(n: int) -> int:
    """``n`` rows rounded up to whole pages (at least one)."""
    return max(1, -(-n // PAGE)) * PAGE


class GalleryModel(QAbstractListModel):
    """Rows are image ids under a folder in filter order. ``reloaded`` when a new id list and
    its first page are in; ``pageLoaded`` after each further page."""

    reloaded = Signal()
    pageLoaded = Signal()

    def __init__(self, ctl=None, parent=None):
        super().__init__(parent)
        self.ctl = ctl
        self.folder = None
        self.version_id = None
        self.taxonomy = None
        self.filter = q.GalleryFilter()
        self.overlay = None  # image ids -> label not yet in the database (the label writer's queue)
        self._ids: list[int] = []
        self._rows: list[q.GalleryRow] = []
        self._pos: dict[int, int] = {}
        self._generation = 0  # of the id list: answers for an older list are dropped
        self._row_generation: dict[int, int] = {}  # image id -> newest request or change of its row
        self._ticket = 0
        self.loading = False  # a new id list is on its way
        self.fetching = False  # a page is on its way
        self.pages_loaded = 0
        self.kept: int | None = None  # the image of the last reload's ``keep`` found in the new list
        self._want_n = 0  # rows asked for (load_rows), and what to do once they are in
        self._thens: list = []

    @property
    def busy(self) -> bool:
        return self.loading or self.fetching

    # --- query -------------------------------------------------------------------------
    def set_query(self, folder, version_id, taxonomy, flt: q.GalleryFilter | None = None,
                  keep: list[int] | None = None) -> None:
        self.folder, self.version_id, self.taxonomy = folder, version_id, taxonomy
        if flt is not None:
            self.filter = flt
        self.reload(keep)

    def reload(self, keep: list[int] | None = None) -> None:
        """Ask for the id list and its rows; the rows shown stay until they arrive. ``keep``:
        image ids in order of preference (the current image, then its neighbours); the first
        still in the list is ``kept``, and the rows down to it are read with the first page,
        so a re-read never loses the reviewer's image beyond the first page."""
        self._generation += 1
        gen, folder, vid, tax, flt = self._generation, self.folder, self.version_id, self.taxonomy, self.filter
        if folder is None:
            return self.clear()
        self.loading, self.fetching = True, False
        self._want_n, self._thens = 0, []  # asked of the old list
        keep = list(keep or ())

        def query(s):
            ids = q.ordered_ids(s, folder, vid, flt, tax)
            at = {i: k for k, i in enumerate(ids)}
            kept = next((i for i in keep if i in at), None)
            n = PAGE if kept is None else pages_for(at[kept] + 1 + PREFETCH)
            return ids, q.rows(s, folder, vid, ids[:n], tax), kept, n

        self.ctl.read(query, lambda out: self._reloaded(gen, *out), "gallery", on_error=self._failed(gen))

    def _failed(self, gen):
        def failed(err):
            if gen == self._generation:
                self.loading = self.fetching = False
            self.ctl._said(err)
        return failed

    def _reloaded(self, gen: int, ids: list[int], first: dict, kept: int | None = None, n: int = PAGE) -> None:
        if gen != self._generation:
            return
        self.beginResetModel()
        self._ids, self._rows, self._pos, self.pages_loaded = ids, [], {}, 0
        self._row_generation.clear()
        self.endResetModel()
        self.loading = False
        self._insert(0, ids[:n], first)
        self.kept = kept if kept in self._pos else None
        self.reloaded.emit()

    def clear(self) -> None:
        self._generation += 1
        self.loading = self.fetching = False
        self.beginResetModel()
        self.folder, self._ids, self._rows, self._pos, self.kept = None, [], [], {}, None
        self._want_n, self._thens = 0, []
        self.endResetModel()

    @property
    def total(self) -> int:
        """Images passing the filter (rowCount() is how many are loaded so far)."""
        return len(self._ids)

    # --- Qt model ----------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def canFetchMore(self, parent=QModelIndex()) -> bool:
        return not parent.isValid() and len(self._rows) < len(self._ids)

    def fetchMore(self, parent=QModelIndex()) -> None:
        """Ask for the next page (one at a time); the view calls it as it scrolls."""
        if parent.isValid() or not self.canFetchMore():
            return
        self.load_rows(len(self._rows) + PAGE)

    def load_rows(self, n: int, then=None) -> None:
        """Have at least ``n`` rows loaded (as far as there are images), read in one go from
        the last loaded row, then call ``then()``: End, PgDn or a move far down the folder
        reach it at once instead of a page per key."""
        self._want_n = max(self._want_n, min(n, len(self._ids)))
        if then is not None:
            self._thens.append(then)
        if not (self.loading or self.fetching):
            self._fetch()

    def _fetch(self) -> None:
        start = len(self._rows)
        if self._want_n <= start:  # all asked for is in
            thens, self._thens, self._want_n = self._thens, [], 0
            for then in thens:
                then()
            return
        ids = self._ids[start:pages_for(self._want_n)]
        gen, folder, vid, tax = self._generation, self.folder, self.version_id, self.taxonomy
        self.fetching = True

        def landed(got):
            if gen == self._generation and len(self._rows) == start:
                self.fetching = False
                self._insert(start, ids, got)
                if len(self._rows) == start:  # none of them exists any more: what is left is all there is
                    self._want_n = min(self._want_n, len(self._ids))
                self.pageLoaded.emit()
                self._fetch()

        self.ctl.read(lambda s: q.rows(s, folder, vid, ids, tax), landed, "gallery page", on_error=self._failed(gen))

    def drop_ids(self, image_ids) -> None:
        """Take these images out of the view in place (reviewed under "Unreviewed only"):
        the rows around them keep their order; nothing is read again."""
        gone = set(image_ids)
        for at in sorted((self._pos[i] for i in gone if i in self._pos), reverse=True):
            self.beginRemoveRows(QModelIndex(), at, at)
            del self._rows[at]
            self.endRemoveRows()
        self._ids = [i for i in self._ids if i not in gone]
        self._pos = {r.image_id: k for k, r in enumerate(self._rows)}

    def _insert(self, start: int, ids: list[int], got: dict) -> None:
        pending = self.overlay() if self.overlay else {}
        rows = [self._with_pending(got[i], pending) for i in ids if i in got]
        if rows:
            self.beginInsertRows(QModelIndex(), start, start + len(rows) - 1)
            for r in rows:
                self._pos[r.image_id] = len(self._rows)
                self._rows.append(r)
            self.endInsertRows()
        self.pages_loaded += 1
        if len(rows) < len(ids):  # images vanished meanwhile: drop them from the id list
            keep = set(got)
            self._ids = self._ids[:start] + [i for i in self._ids[start:] if i in keep or i not in ids]

    def data(self, index: QModelIndex, role=Qt.DisplayRole):
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        r = self._rows[index.row()]
        if role == Qt.DisplayRole:
            return r.name
        if role == ROW_ROLE:
            return r
        if role == ID_ROLE:
            return r.image_id
        if role == Qt.AccessibleTextRole:
            return q.tile_caption(r)
        if role == Qt.ToolTipRole:
            conf = f"{r.confidence:.1%}" if r.confidence is not None else "not predicted"
            rev = f"reviewed: {r.reviewed} by {r.reviewer}" if r.reviewed else "not reviewed"
            return f"{r.name}\n{q.tile_caption(r)}\npredicted: {r.predicted or '-'} {conf}\n{rev}"
        return None

    def flags(self, index):
        return Qt.ItemIsEnabled | Qt.ItemIsSelectable if index.isValid() else Qt.NoItemFlags

    # --- helpers -----------------------------------------------------------------------
    def around(self, image_id: int) -> list[int]:
        """``image_id``, then the images after it in this order, then those before it, nearest
        first: where the reviewer goes when their image has left the view."""
        try:
            at = self._ids.index(image_id)
        except ValueError:
            return [image_id]
        return self._ids[at:] + self._ids[:at][::-1]

    def row_of(self, image_id: int) -> int | None:
        return self._pos.get(image_id)

    def row_at(self, row: int) -> q.GalleryRow:
        return self._rows[row]

    def labels_of(self, image_ids) -> dict[int, str | None]:
        """The label each loaded image shows now (what a review key changes from)."""
        return {i: self._rows[self._pos[i]].reviewed if i in self._pos else None for i in image_ids}

    def _touch(self, image_id: int) -> int:
        self._ticket += 1
        self._row_generation[image_id] = self._ticket
        return self._ticket

    def _replace(self, image_id: int, row: q.GalleryRow) -> None:
        at = self._pos[image_id]
        self._rows[at] = row
        ix = self.index(at)
        self.dataChanged.emit(ix, ix)

    def set_labels(self, labels: dict[int, str | None], reviewer: str | None) -> None:
        """Show a review key's labels at once (the write is queued; its answer follows)."""
        for i, label in labels.items():
            if i in self._pos:
                self._touch(i)
                self._replace(i, dataclasses.replace(self._rows[self._pos[i]], reviewed=label,
                                                     reviewer=reviewer if label is not None else None))

    def _with_pending(self, row: q.GalleryRow, pending: dict) -> q.GalleryRow:
        if row.image_id in pending:  # a label still in the writer's queue is what the reviewer gave
            label, who = pending[row.image_id]
            return dataclasses.replace(row, reviewed=label, reviewer=who if label is not None else None)
        return row

    def refresh_ids(self, image_ids) -> None:
        """Re-read loaded rows (labels stored here or elsewhere); rows stay in place until the next reload."""
        ids = [i for i in image_ids if i in self._pos]
        if not ids:
            return
        tickets = {i: self._touch(i) for i in ids}
        gen, folder, vid, tax = self._generation, self.folder, self.version_id, self.taxonomy

        def landed(got):
            if gen != self._generation:
                return
            pending = self.overlay() if self.overlay else {}
            for i, r in got.items():
                if i in self._pos and self._row_generation.get(i) == tickets[i]:  # no newer change or read
                    self._replace(i, self._with_pending(r, pending))

        self.ctl.read(lambda s: q.rows(s, folder, vid, ids, tax), landed, "gallery rows", priority=1)

    def thumbnail_ready(self, image_id: int) -> None:
        row = self._pos.get(image_id)
        if row is not None:
            ix = self.index(row)
            self.dataChanged.emit(ix, ix, [Qt.DecorationRole])
