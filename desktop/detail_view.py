"""The detail pane: the current image (decoded in a worker), its probabilities and label
history (read in a worker), and the Grad-CAM overlay (computed in a worker, applied to the
image that is shown when it finishes)."""
from __future__ import annotations

import threading

from PySide6.QtCore import QObject, Signal

from core.review.labels import history

from .controller import Controller, local_time
from .detail import DetailPanel, heatmap_rgba, rgb_to_qimage
from .models_panel import trained_on
from core.imaging.fspath import to_fs
from core.imaging.images import decode_rgb, read_file
from core.inference.gradcam import GradCam


def history_rows(session, image_id: int) -> list[dict]:
    """An image's label events as the history table shows them (plain data)."""
    return [dict(when=local_time(e.created_at), reviewer=e.reviewer, **{"from": e.previous_label, "to": e.label},
                 source=e.source, note=e.note) for e in history(session, image_id)]


def decode_full(path):
    return rgb_to_qimage(decode_rgb(read_file(to_fs(path))))


class DetailPane(QObject):
    imageShown = Signal(int)  # image id whose full image is in the view
    gradcamReady = Signal(int)  # image id
    error = Signal(str)

    def __init__(self, ctl: Controller, workers, current_row, parent=None):
        super().__init__(parent)
        self.ctl, self.workers = ctl, workers
        self.current_row = current_row  # () -> the gallery's current GalleryRow (or None)
        self.panel = DetailPanel()
        self.panel.gradcamToggled.connect(self._gradcam_toggled)
        self.shown_id: int | None = None
        self.full_image = None
        self._gradcam = None  # (version id, GradCam), built once per model version
        self._gradcam_lock = threading.Lock()
        self._pending_cam = None  # (image_id, map, class) computed before its image was shown
        self._history_ticket = 0

    def forget_model(self) -> None:
        self._gradcam = None

    def show(self, row, reload_image: bool = True) -> None:
        """Show ``row`` (a GalleryRow, or None: nothing) from memory; its history and image follow."""
        v = self.ctl.version
        if v:  # the outside-experience note names where the model's images came from
            self.panel.set_trained_on(trained_on(v["card"]))
        self.panel.show_row(row, self.ctl.classes)
        if row is None:
            self.shown_id = None
            return
        if reload_image or self.shown_id != row.image_id:
            self.panel.show_history([])  # never the previous image's history under this one
        self.refresh_history(row.image_id)
        if reload_image or self.shown_id != row.image_id:
            self.shown_id = row.image_id
            self.full_image = None
            self.workers.submit(lambda r=row: (r.image_id, decode_full(r.path)), name="image",
                                on_result=self._image_loaded, on_error=lambda e: self.error.emit(str(e)), priority=1)

    def refresh_history(self, image_id: int) -> None:
        self._history_ticket += 1
        ticket = self._history_ticket

        def landed(events):
            if ticket == self._history_ticket and self.shown_id == image_id:
                self.panel.show_history(events)

        self.ctl.read(lambda s: history_rows(s, image_id), landed, "label history", priority=1)

    def _image_loaded(self, out) -> None:
        image_id, img = out
        if image_id != self.shown_id:
            return  # the user has moved on
        self.full_image = img
        self.panel.view.set_image(img)
        self.imageShown.emit(image_id)
        pending = self._pending_cam
        if pending is not None and pending[0] == image_id and self.panel.gradcam.isChecked():
            self._gradcam_done(pending)  # the map was ready before the image
            return
        if self.panel.gradcam.isChecked():
            self.request_gradcam()

    # ---------------------------------------------------------------- view actions
    def toggle_gradcam(self) -> None:
        self.panel.gradcam.toggle()

    def zoom(self, factor: float) -> None:
        self.panel.view.zoom(factor)

    def fit_image(self) -> None:
        self.panel.view.fit()

    # ---------------------------------------------------------------- Grad-CAM
    def _gradcam_toggled(self, on: bool) -> None:
        if on:
            self.request_gradcam()
        else:
            self.panel.set_gradcam_busy(False)
            self.panel.view.set_overlay(None)

    def request_gradcam(self) -> None:
        row, v = self.current_row(), self.ctl.version
        if row is None or v is None:
            return
        package, vid = v["path"], v["id"]

        def work(r=row):
            with self._gradcam_lock:  # one explainer, built once per model version
                if self._gradcam is None or self._gradcam[0] != vid:
                    self._gradcam = (vid, GradCam(package))
                _img, cam, k = self._gradcam[1](r.path, r.predicted)  # the class shown, whatever engine chose it
            return r.image_id, cam, k

        self.workers.submit(work, name="Grad-CAM", on_result=self._gradcam_done,
                            on_error=self._gradcam_failed, priority=1)
        self.panel.set_gradcam_busy(True)

    def _gradcam_failed(self, message) -> None:
        self.panel.set_gradcam_busy(False)
        self.error.emit(str(message))

    def _gradcam_done(self, out) -> None:
        image_id, cam, k = out
        if not self.panel.gradcam.isChecked():
            self.panel.set_gradcam_busy(False)
            return
        if image_id != self.shown_id:  # the reviewer moved on while it computed: the image shown now
            self.request_gradcam()
            return
        self._pending_cam = out
        img = self.full_image
        if img is None:  # the image itself is still loading: _image_loaded applies the map
            return
        w, h = img.width(), img.height()
        side = min(w, h)  # preprocessing centre-crops to a square: the map covers that square
        self.panel.view.set_overlay(heatmap_rgba(cam, side), ((w - side) // 2, (h - side) // 2))
        self.panel.set_gradcam_busy(False)
        classes = self.ctl.classes
        self.panel.show_gradcam_class(str(classes[k] if k < len(classes) else k))
        self.gradcamReady.emit(image_id)
