"""Augmentations on uint8 images after ``Preprocessing.apply`` (training), and the
perturbations used to test robustness (evaluation): grayscale and stain/hue shifts.

Training is for morphology, not colour: the classes of the public data are confounded
with staining and with the scale-bar overlay in the corner, so colour is jittered hard
(HED stain space, hue, saturation, brightness, contrast, random grayscale) and the
bottom-right corner is blanked at random on top of the card's fixed ``corner_mask``.

Options for data from several labs (all off by default, so existing runs are unchanged):
``background_p`` puts segmented cells (C-NMC: a cell on black) onto a smear-like
background (a pale pink/beige/lavender/grey field with red-cell discs), ``scale`` zooms in
or out (magnification and crop size differ between labs and scanners), and ``blur_p``
defocuses (focus and optics differ). They act before the stain jitter, so the new
background is stained along with the cell.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import colour

# Ruifrok & Johnston haematoxylin / eosin / DAB stain vectors (as skimage.color.rgb2hed).
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def hed_jitter(img: torch.Tensor, sigma: float, bias: float, gen: torch.Generator) -> torch.Tensor:
    """Stain augmentation (Tellez et al. 2018): in HED optical-density space scale each
    stain by U(1-sigma, 1+sigma) and shift by U(-bias, bias). uint8 (3,H,W) -> uint8."""
    x = img.float().clamp_min(1.0) / 255.0
    od = -torch.log(x).permute(1, 2, 0) @ _HED_FROM_RGB  # (H, W, 3) stain concentrations
    alpha = 1.0 + (torch.rand(3, generator=gen) * 2 - 1) * sigma
    beta = (torch.rand(3, generator=gen) * 2 - 1) * bias
    od = od * alpha + beta
    rgb = torch.exp(-(od @ _RGB_FROM_HED)).permute(2, 0, 1)
    return (rgb * 255.0).clamp(0, 255).round().to(torch.uint8)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding). uint8 (3,H,W) -> uint8."""
    if sigma <= 0:
        return img
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    t = img.float().unsqueeze(1)  # (3,1,H,W): each channel on its own
    t = torch.nn.functional.pad(t, (r, r, r, r), mode="reflect")
    t = torch.nn.functional.conv2d(t, k.view(1, 1, 1, -1))
    t = torch.nn.functional.conv2d(t, k.view(1, 1, -1, 1))
    return t.squeeze(1).round().clamp(0, 255).to(torch.uint8)


def zoom(img: torch.Tensor, log_factor: float) -> torch.Tensor:
    """Zoom about the centre by exp(log_factor) (> 0 enlarges), same output size; the
    border is extended outwards (a cell on black stays on black). uint8 (3,H,W) -> uint8."""
    if abs(log_factor) < 1e-6:
        return img
    f = math.exp(-log_factor)  # sampling grid scale: < 1 samples the centre, i.e. zooms in
    theta = torch.tensor([[[f, 0.0, 0.0], [0.0, f, 0.0]]], dtype=torch.float32)
    t = img.float().unsqueeze(0)
    grid = torch.nn.functional.affine_grid(theta, list(t.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.squeeze(0).round().clamp(0, 255).to(torch.uint8)


def smear_background(img: torch.Tensor, gen: torch.Generator, threshold: int = 28) -> torch.Tensor:
    """Put a segmented cell (on a near-black background, as in C-NMC) onto a smear-like
    background: a pale field (pink, beige, lavender or grey), smooth brightness variation
    and a few pale red-cell discs with central pallor, all behind the cell. Images with no
    black background are returned unchanged. uint8 (3,H,W) -> uint8."""
    _, h, w = img.shape
    bg_mask = img.amax(0) < threshold  # (H, W)
    if bg_mask.float().mean() < 0.05:
        return img
    # soften the cut so the cell's dark rim blends into the new field
    m = gaussian_blur((bg_mask.to(torch.uint8) * 255).expand(3, h, w), 1.0)[0].float() / 255.0
    u = torch.rand(12, generator=gen)
    base = torch.tensor([235.0, 215.0, 220.0]) + (u[:3] * 2 - 1) * torch.tensor([20.0, 25.0, 25.0])
    field = base.view(3, 1, 1).expand(3, h, w).clone()
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    field = field * (1.0 + 0.06 * (u[3] * 2 - 1) * (xx / w - 0.5) + 0.06 * (u[4] * 2 - 1) * (yy / h - 0.5))
    rbc = torch.tensor([215.0, 150.0, 160.0]) + (u[5:8] * 2 - 1) * 20.0
    n_rbc = int(u[8] * 10)
    for _ in range(n_rbc):
        p = torch.rand(4, generator=gen)
        cy, cx, rad = float(p[0]) * h, float(p[1]) * w, (0.08 + 0.07 * float(p[2])) * min(h, w)
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        disc = (d < rad).float()
        pallor = (d < rad * 0.45).float() * 0.5
        alpha = (disc - pallor) * (0.5 + 0.4 * float(p[3]))
        field = field * (1 - alpha) + rbc.view(3, 1, 1) * alpha
    field = field + torch.randn((1, h, w), generator=gen) * 3.0
    out = img.float() * (1 - m) + field * m
    return out.round().clamp(0, 255).to(torch.uint8)


@dataclass
class AugmentConfig:
    flips: bool = True
    rotate_degrees: float = 15.0  # plus random 90-degree turns and flips
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.5
    hue: float = 0.15
    grayscale_p: float = 0.25
    hed_sigma: float = 0.3
    hed_bias: float = 0.05
    hed_p: float = 0.8
    corner_p: float = 0.5  # chance of blanking a random-size bottom-right corner
    strength: float = 1.0  # 0 disables all augmentation
    # -- for several labs (off by default)
    background_p: float = 0.0  # chance of replacing a near-black background by a smear-like one
    background_threshold: int = 28  # max channel value below which a pixel counts as background
    scale: float = 0.0  # zoom factor in [1/(1+scale), 1+scale] (log-uniform), about the centre
    blur_p: float = 0.0  # chance of a Gaussian defocus blur
    blur_sigma: float = 1.5  # its largest sigma in pixels (at the model's input size)

    def to_dict(self) -> dict:
        return asdict(self)


class Augmenter:
    """Per-image random augmentation, reproducible from a torch.Generator."""

    def __init__(self, cfg: AugmentConfig, fill: tuple[float, float, float] = (0.485, 0.456, 0.406)):
        self.cfg = cfg
        self.fill = [int(round(c * 255)) for c in fill]

    def __call__(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> uint8 (N, H, W, 3)."""
        c = self.cfg
        if c.strength <= 0:
            return batch
        out = batch.permute(0, 3, 1, 2).clone()  # N,3,H,W
        n, _, h, w = out.shape
        for i in range(n):
            img = out[i]
            r = torch.rand(8, generator=gen)
            if c.flips:
                if r[0] < 0.5:
                    img = img.flip(-1)
                if r[1] < 0.5:
                    img = img.flip(-2)
            img = torch.rot90(img, int(r[2] * 4) % 4, dims=(-2, -1)) if c.flips else img
            if c.background_p and torch.rand(1, generator=gen) < c.background_p:
                img = smear_background(img, gen, c.background_threshold)
            if c.scale:
                img = zoom(img, float(torch.empty(1).uniform_(-1, 1, generator=gen)) * math.log1p(c.scale * c.strength))
            if c.hed_sigma and r[3] < c.hed_p:
                img = hed_jitter(img, c.hed_sigma * c.strength, c.hed_bias * c.strength, gen)
            img = _color_jitter(img, c, gen)
            if c.blur_p and torch.rand(1, generator=gen) < c.blur_p:
                img = gaussian_blur(img, 0.3 + float(torch.rand(1, generator=gen)) * max(0.0, c.blur_sigma - 0.3))
            if r[4] < c.grayscale_p:
                img = colour.rgb_to_grayscale(img, num_output_channels=3)
            if c.rotate_degrees and torch.rand(1, generator=gen) < 0.5:  # after colour, so the fill stays the neutral mean colour
                ang = float((torch.rand(1, generator=gen) * 2 - 1) * c.rotate_degrees * c.strength)
                img = colour.rotate(img, ang, fill=self.fill)
            if r[5] < c.corner_p:
                fh, fw = 0.1 + 0.2 * float(r[6]), 0.15 + 0.3 * float(r[7])
                mh, mw = max(1, int(h * fh)), max(1, int(w * fw))
                img = img.clone()
                img[:, h - mh :, w - mw :] = torch.tensor(self.fill, dtype=torch.uint8).view(3, 1, 1)
            out[i] = img
        return out.permute(0, 2, 3, 1).contiguous()


def _color_jitter(img: torch.Tensor, c: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(5, generator=gen)
    s = c.strength
    order = torch.randperm(4, generator=gen).tolist()
    for k in order:
        if k == 0 and c.brightness:
            img = colour.adjust_brightness(img, 1 + (float(u[0]) * 2 - 1) * c.brightness * s)
        elif k == 1 and c.contrast:
            img = colour.adjust_contrast(img, 1 + (float(u[1]) * 2 - 1) * c.contrast * s)
        elif k == 2 and c.saturation:
            img = colour.adjust_saturation(img, 1 + (float(u[2]) * 2 - 1) * c.saturation * s)
        elif k == 3 and c.hue:
            img = colour.adjust_hue(img, (float(u[3]) * 2 - 1) * c.hue * s)
    return img


# ---- evaluation perturbations ---------------------------------------------------------

def to_grayscale(batch: np.ndarray) -> np.ndarray:
    """uint8 (N,H,W,3) -> grayscale replicated to 3 channels."""
    t = torch.from_numpy(batch).permute(0, 3, 1, 2)
    return colour.rgb_to_grayscale(t, num_output_channels=3).permute(0, 2, 3, 1).numpy()


def stain_perturb(batch: np.ndarray, seed: int = 0, hue: float = 0.1, hed_sigma: float = 0.25,
                  saturation: float = 0.3) -> np.ndarray:
    """A random stain/hue shift per image (deterministic for a seed): HED jitter, hue
    rotation up to +-hue, saturation x U(1-s, 1+s). Simulates another lab's staining."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.from_numpy(batch).permute(0, 3, 1, 2)
    out = torch.empty_like(t)
    for i in range(len(t)):
        img = hed_jitter(t[i], hed_sigma, 0.03, gen)
        u = torch.rand(2, generator=gen)
        img = colour.adjust_hue(img, float(u[0] * 2 - 1) * hue)
        img = colour.adjust_saturation(img, 1 + float(u[1] * 2 - 1) * saturation)
        out[i] = img
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def blur(batch: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    import cv2

    return np.stack([cv2.GaussianBlur(im, (0, 0), sigma) for im in batch])


def other_stain(batch: np.ndarray) -> np.ndarray:
    """A far-out-of-distribution stain: hue rotated half a turn (e.g. green/blue fields)."""
    t = torch.from_numpy(batch).permute(0, 3, 1, 2)
    return colour.adjust_hue(t, 0.5).permute(0, 2, 3, 1).contiguous().numpy()
