"""The one preprocessing definition, shared by inference and training and written into
every model card. Change it here and both sides change together."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

INTERPOLATIONS: dict[str, int] = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}

# What a cell model's cut-out shows around the cell (core/cells/cutout.py makes it): "keep" the
# field as it is (red cells, background), or "black" everything outside the cell's outline, as
# segmented single-cell data sets (C-NMC) publish their cells.
CELL_BACKGROUNDS = ("keep", "black")
MAX_CELL_MARGIN_UM = 10.0  # a rim wider than this around the outline is the neighbours, not the cell


@dataclass(frozen=True)
class Preprocessing:
    """RGB uint8 image -> square uint8 model input; then normalisation on the device.

    Non-square images are centre-cropped to a square first so cell shapes are not
    stretched. ``corner_mask`` (fractions of height, width) blanks the bottom-right
    corner where acquisition software draws scale bars, so a model cannot learn them.
    """

    input_size: int = 128
    interpolation: str = "linear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    corner_mask: tuple[float, float] | None = None
    # A cell model only (ignored for whole images): what its cut-outs show outside the cell's
    # outline, and how many micrometres around the outline are kept when that is "black".
    cell_background: str = "keep"
    cell_margin_um: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["corner_mask"] = list(self.corner_mask) if self.corner_mask else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("mean", "std", "corner_mask"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        if kw.get("interpolation", "linear") not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {kw['interpolation']!r}")
        if kw.get("cell_background", "keep") not in CELL_BACKGROUNDS:
            raise ValueError(f"unknown cell_background {kw['cell_background']!r}; known: {', '.join(CELL_BACKGROUNDS)}")
        margin = kw.get("cell_margin_um", 0.0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= float(margin) <= MAX_CELL_MARGIN_UM:
            raise ValueError(f"cell_margin_um must be 0-{MAX_CELL_MARGIN_UM:g} micrometres, not {margin!r}")
        if "cell_margin_um" in kw:
            kw["cell_margin_um"] = float(margin)
        return cls(**kw)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> uint8 (S, S, 3), S = input_size."""
        h, w = rgb.shape[:2]
        if h != w:
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            rgb = rgb[top : top + side, left : left + side]
        s = self.input_size
        if rgb.shape[0] != s:
            rgb = cv2.resize(rgb, (s, s), interpolation=INTERPOLATIONS[self.interpolation])
        if self.corner_mask:
            fh, fw = self.corner_mask
            mh, mw = max(1, round(s * fh)), max(1, round(s * fw))
            rgb = rgb.copy() if not rgb.flags.writeable else rgb
            rgb[s - mh :, s - mw :] = np.asarray(self.mean) * 255.0
        return np.ascontiguousarray(rgb)

    def normalise(self, batch_u8):
        """torch uint8 (N, S, S, 3) on any device -> float32 (N, 3, S, S), channels_last memory.

        Done on the device so a GPU receives 4x fewer bytes than float input.
        """
        import torch

        x = batch_u8.permute(0, 3, 1, 2).float()  # NHWC storage == channels_last NCHW
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255.0
        return (x - mean) / std
