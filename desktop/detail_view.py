"""The window's right side: the current image (decoded in a worker), its probabilities and
label history, and the Grad-CAM overlay (computed in a worker, applied to the image that is
shown when it finishes)."""
from __future__ import annotations

from datetime import datetime, timezone

from core.review.labels import history

from .detail import heatmap_rgba, rgb_to_qimage
from .gallery import ROW_ROLE
from .models_panel import trained_on


def local_time(t: datetime) -> str:
    """A stored time (UTC; SQLite gives it back without a zone) as the reviewer's local time."""
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone().strftime("%Y-%m-%d %H:%M:%S")


class DetailMixin:
    """Part of MainWindow (desktop/mainwindow.py)."""

    def _current_changed(self, cur, _prev=None) -> None:
        self._show_position()
        self._show_detail(cur.data(ROW_ROLE) if cur.isValid() else None)
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
            events = [dict(when=local_time(e.created_at), reviewer=e.reviewer,
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
        from core.imaging.fspath import to_fs
        from core.imaging.images import decode_rgb, read_file

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

    # ---------------------------------------------------------------- view actions
    def toggle_gradcam(self) -> None:
        self.detail.gradcam.toggle()

    def zoom(self, factor: float) -> None:
        self.detail.view.zoom(factor)

    def fit_image(self) -> None:
        self.detail.view.fit()

    # ---------------------------------------------------------------- Grad-CAM
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
        package, vid = self.version["path"], self.version["id"]

        def work(r=row):
            from core.inference.gradcam import GradCam

            with self._gradcam_lock:  # one explainer, built once per model version
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
        self.detail.show_gradcam_class(str(cls))
        self.gradcamReady.emit(image_id)
