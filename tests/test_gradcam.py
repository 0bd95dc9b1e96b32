"""Grad-CAM at a resolution that shows which cell drove the call, computed off the GUI
thread for the image that is shown when it finishes."""
from __future__ import annotations

import numpy as np
import pytest


def test_target_layer_keeps_an_eighth_of_the_input_and_the_map_has_that_detail():
    import torch.nn.functional as F
    import torch

    from core.inference.gradcam import gradcam, last_conv, target_layer
    from core.models.package import load_model
    from core.models.registry import bundled_default_package
    from core.app.sample import smear_image

    model, card = load_model(bundled_default_package(), "cpu")
    for p in model.parameters():
        p.requires_grad_(True)
    size = card.prep.input_size
    sides = {}
    for name, layer in (("fine", target_layer(model, size)), ("last", last_conv(model))):
        h = layer.register_forward_hook(lambda m, i, o, n=name: sides.__setitem__(n, o.shape[-1]))
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        h.remove()
    assert sides["fine"] >= size / 8 > sides["last"]  # 16x16 against 4x4 at 128 px
    img = card.prep.apply(smear_image("Pro-B", np.random.default_rng(0), 224))
    cam, k = gradcam(model, card.prep, img)
    assert cam.shape == img.shape[:2] and 0 <= cam.min() and cam.max() <= 1 and 0 <= k < len(card.classes)
    # detail finer than the last layer's grid: a 4x4 blocky version cannot reproduce it
    t = torch.from_numpy(cam)[None, None]
    coarse = F.interpolate(F.adaptive_avg_pool2d(t, 4), size=cam.shape, mode="bilinear", align_corners=False)
    assert float((t - coarse).abs().mean()) > 0.05


def test_gradcam_lands_on_the_image_shown_when_it_finishes(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    from PySide6.QtCore import QSettings, Qt

    from core.config import resolve_paths
    from core.app.sample import generate
    from desktop.mainwindow import MainWindow

    from .test_desktop import JOB_TIMEOUT

    settings = QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "tester")
    w = MainWindow(resolve_paths(tmp_path / "data").ensure(), settings=settings, device="cpu")
    qtbot.addWidget(w)
    w.show()
    generate(tmp_path / "a", n_per_class=2, seed=1)
    with qtbot.waitSignal(w.jobFinished, timeout=JOB_TIMEOUT):
        w.open_folder(tmp_path / "a")
    w.view.setFocus()
    ready = []
    w.gradcamReady.connect(ready.append)
    w.detail.gradcam.setChecked(True)  # toggled on this image...
    qtbot.keyClick(w.view, Qt.Key_Right)  # ...and at once the reviewer moves on
    shown = w.model.row_at(w.view.currentIndex().row()).image_id
    qtbot.waitUntil(lambda: shown in ready, timeout=60000)
    assert w.detail.view.has_overlay() and w.detail_pane.shown_id == shown
    w.workers.cancel_all()
    w.workers.wait(10000)
