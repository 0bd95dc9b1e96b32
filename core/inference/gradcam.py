"""Grad-CAM (Selvaraju et al. 2017) for a model package: where the model looked.

Headless: returns a float32 heat map in [0, 1] at the model input size; the GUI colours
and overlays it. The target layer is the last convolution whose output is still at least
1/8 of the input's side (``stride=8``): the last layer of a small-input CNN (4x4 at 128 px
for EfficientNet-Lite0) paints one blob over the whole field, while a stride-8 map (16x16)
shows which cell drove the call (docs/gradcam.md compares them).
"""
from __future__ import annotations

import numpy as np
from core.models.package import load_model
from core.imaging.fspath import to_fs
from core.imaging.images import decode_rgb, read_file


def last_conv(model):
    import torch.nn as nn

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no Conv2d layer for Grad-CAM")
    return convs[-1]


def target_layer(model, input_size: int, stride: int | None = 8):
    """The last Conv2d whose output side is at least ``input_size / stride`` (None: the last
    convolution, classic Grad-CAM)."""
    import torch
    import torch.nn as nn

    if stride is None:
        return last_conv(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    sides: dict[int, int] = {}
    hooks = [m.register_forward_hook(lambda m, _i, out: sides.__setitem__(id(m), out.shape[-1])) for m in convs]
    try:
        with torch.no_grad():
            model.eval()
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
    fine = [m for m in convs if sides.get(id(m), 0) >= input_size / stride]
    return fine[-1] if fine else last_conv(model)


def gradcam(model, prep, image_u8: np.ndarray, class_index: int | None = None, layer=None) -> tuple[np.ndarray, int]:
    """``image_u8``: preprocessed uint8 (S, S, 3). Returns (heat map (S, S) in [0, 1], class index)."""
    import torch
    import torch.nn.functional as F

    layer = layer if layer is not None else target_layer(model, image_u8.shape[0])
    store: dict[str, torch.Tensor] = {}

    def fwd_hook(_m, _i, out):
        out.retain_grad()
        store["act"] = out

    handle = layer.register_forward_hook(fwd_hook)
    try:
        model.eval()
        with torch.enable_grad():
            x = prep.normalise(torch.from_numpy(np.ascontiguousarray(image_u8[None])))
            x = x.contiguous().requires_grad_(True)
            logits = model(x)
            k = int(logits.argmax(1)) if class_index is None else int(class_index)
            model.zero_grad(set_to_none=True)
            logits[0, k].backward()
        act, grad = store["act"], store["act"].grad
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=image_u8.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        cam = cam.detach().numpy().astype(np.float32)
    finally:
        handle.remove()
    lo, hi = float(cam.min()), float(cam.max())  # stretched to [0, 1] for display
    return ((cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)), k


class GradCam:
    """A model package loaded once (unfused, on the CPU) for Grad-CAM of single images."""

    def __init__(self, package, stride: int | None = 8):
        from pathlib import Path


        self.model, self.card = load_model(Path(package), "cpu")
        self.prep = self.card.prep
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.layer = target_layer(self.model, self.prep.input_size, stride)

    def __call__(self, stored_path: str, shown: int | str | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """(preprocessed uint8 image (S, S, 3), heat map (S, S), class index). ``shown``: the
        class shown for the image (its stored prediction, by name or index), which the map
        explains whatever engine predicted it (int8 and this fp32 model may disagree); None:
        this model's own top class."""

        img = self.prep.apply(decode_rgb(read_file(to_fs(stored_path))))
        cam, k = gradcam(self.model, self.prep, img, self.class_index(shown), self.layer)
        return img, cam, k

    def class_index(self, shown: int | str | None) -> int | None:
        if shown is None or isinstance(shown, int):
            return shown
        return self.card.classes.index(shown) if shown in self.card.classes else None
