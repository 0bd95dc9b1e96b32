"""Colour and rotation operations on image tensors, in plain torch (no torchvision).

The trainer's augmentations used ``torchvision.transforms.v2.functional``; torchvision's
published wheels link the CUDA libraries and do not load beside the CPU build of torch that
the CPU installer bundles, so the trainer could not run there. These functions compute the
same thing as torchvision's tensor kernels (0.28/0.29), step for step and in the same
floating-point order, so results on uint8 images are the same pixel for pixel (checked
against torchvision in ``tests/test_augment_ops.py`` where it is installed):

    rgb_to_grayscale    ITU-R 601-2 luma (0.2989 R + 0.587 G + 0.114 B), truncated to uint8
    adjust_brightness   x * factor, clamped, truncated
    adjust_contrast     blend with the mean of the (floored) grayscale image
    adjust_saturation   blend with the (floored) grayscale image
    adjust_hue          rotate the hue in HSV space (via [0, 1] floats, back with x * 255.999)
    rotate              about the centre, bilinear or nearest, uncovered corners = ``fill``

Images are (..., 3, H, W) tensors, uint8 or floating point in [0, 1]; the result has the
input's dtype. The formulas follow torchvision (BSD-3-Clause, Copyright (c) Soumith Chintala
2016, and contributors).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["rgb_to_grayscale", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "rotate"]


def _max_value(dtype: torch.dtype) -> float:
    if dtype.is_floating_point:
        return 1.0
    if dtype == torch.uint8:
        return 255
    raise TypeError(f"unsupported image dtype {dtype} (uint8 or floating point)")


def _check_rgb(img: torch.Tensor) -> None:
    if img.ndim < 3 or img.shape[-3] != 3:
        raise ValueError(f"expected an RGB image tensor (..., 3, H, W), got shape {tuple(img.shape)}")
    _max_value(img.dtype)


def _luma(img: torch.Tensor) -> torch.Tensor:
    """Floating-point luma (..., 1, H, W); a uint8 input gives float32."""
    r, g, b = img.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3)


def _blend(img1: torch.Tensor, img2: torch.Tensor, ratio: float) -> torch.Tensor:
    """ratio * img1 + (1 - ratio) * img2, clamped to the dtype's range (uint8: truncated)."""
    ratio = float(ratio)
    out = img1.mul(ratio).add_(img2, alpha=1.0 - ratio).clamp_(0, _max_value(img1.dtype))
    return out if img1.is_floating_point() else out.to(img1.dtype)


def rgb_to_grayscale(img: torch.Tensor, num_output_channels: int = 1) -> torch.Tensor:
    """Luma of an RGB image, 1 channel or repeated to 3; same dtype as the input."""
    if num_output_channels not in (1, 3):
        raise ValueError(f"num_output_channels must be 1 or 3, got {num_output_channels}")
    _check_rgb(img)
    gray = _luma(img).to(img.dtype)
    return gray.expand(img.shape) if num_output_channels == 3 else gray


def adjust_brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply by ``factor`` (>= 0; 1 gives the input back)."""
    if factor < 0:
        raise ValueError(f"brightness factor ({factor}) must be non-negative")
    _check_rgb(img)
    out = img.mul(factor).clamp_(0, _max_value(img.dtype))
    return out if img.is_floating_point() else out.to(img.dtype)


def _gray_for_blend(img: torch.Tensor) -> torch.Tensor:
    gray = _luma(img)
    return gray if img.is_floating_point() else gray.floor_()


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's mean gray level (0: flat gray, 1: unchanged, 2: double contrast)."""
    if factor < 0:
        raise ValueError(f"contrast factor ({factor}) must be non-negative")
    _check_rgb(img)
    mean = torch.mean(_gray_for_blend(img), dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, factor)


def adjust_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's grayscale version (0: gray, 1: unchanged, 2: doubly saturated)."""
    if factor < 0:
        raise ValueError(f"saturation factor ({factor}) must be non-negative")
    _check_rgb(img)
    return _blend(img, _gray_for_blend(img), factor)


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """float RGB in [0, 1] -> HSV, each in [0, 1] (the Pillow/torchvision algorithm)."""
    r, g, _ = img.unbind(dim=-3)
    minc, maxc = torch.aminmax(img, dim=-3)
    eqc = maxc == minc  # gray pixel: hue and saturation are 0; avoid dividing by zero
    crange = maxc - minc
    ones = torch.ones_like(maxc)
    s = crange / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, crange).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - img) / divisor).unbind(dim=-3)
    max_is_not_r = maxc != r
    max_is_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(max_is_g & max_is_not_r)
    hr = bc.sub_(gc).mul_(~max_is_not_r)
    hb = gc.add_(4.0).sub_(rc).mul_(max_is_not_r.logical_and_(max_is_g.logical_not_()))
    h = hr.add_(hg).add_(hb).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


# For sector i = floor(6 h) of the hue circle, which of (v, p, q, t) is R, G and B.
_SECTOR = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], dtype=torch.long)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(dim=-3)
    h6 = h.mul(6)
    i = torch.floor(h6)
    f = h6.sub_(i)
    i = i.to(dtype=torch.int32).remainder_(6)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = _SECTOR.to(device=hsv.device)[:, i]  # (3, ..., H, W)
    if select.ndim > 3:
        select = select.moveaxis(0, -3)
    return vpqt.gather(-3, select)


def adjust_hue(img: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """Rotate the hue by ``hue_factor`` turns, in [-0.5, 0.5] (0 gives the input back up to
    the uint8 -> float -> uint8 round trip, which is exact)."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5]")
    _check_rgb(img)
    if img.numel() == 0:
        return img
    fp = img.is_floating_point()
    x = img if fp else img.to(torch.float32).mul_(1.0 / 255)
    hsv = _rgb_to_hsv(x)
    h, s, v = hsv.unbind(dim=-3)
    h.add_(hue_factor).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    # float -> uint8: scale by 256 - eps and truncate, so 1.0 -> 255 and each level gets an equal share
    return rgb if fp else rgb.mul(255 + 1.0 - 1e-3).to(img.dtype)


def rotate(img: torch.Tensor, angle: float, fill: Sequence[float] | float | None = None,
           interpolation: str = "bilinear") -> torch.Tensor:
    """Rotate by ``angle`` degrees counter-clockwise about the image centre, same size;
    pixels that come from outside the image get ``fill`` (one value per channel, in the
    image's range, e.g. 0-255 for uint8; None: 0). ``interpolation``: bilinear or nearest."""
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be bilinear or nearest, not {interpolation!r}")
    angle = angle % 360
    h, w = img.shape[-2:]
    if angle == 0:
        return img.clone()
    if angle == 180:
        return torch.rot90(img, k=2, dims=(-2, -1))
    if h == w and angle in (90, 270):
        return torch.rot90(img, k=1 if angle == 90 else 3, dims=(-2, -1))
    # Inverse rotation (output pixel -> input pixel) in pixel coordinates about the centre.
    rot = math.radians(-angle)
    a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    matrix = [d, -b, 0.0, -c, a, 0.0]
    fp = img.is_floating_point()
    dtype = img.dtype if fp else torch.float32
    theta = torch.tensor(matrix, dtype=dtype, device=img.device).reshape(1, 2, 3)
    # grid of output pixel centres, mapped by theta and normalised to [-1, 1] for grid_sample
    base = torch.empty(1, h, w, 3, dtype=dtype, device=img.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=img.device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=img.device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    theta = theta.transpose(1, 2).div_(torch.tensor([0.5 * w, 0.5 * h], dtype=dtype, device=img.device))
    grid = base.view(1, h * w, 3).bmm(theta).view(1, h, w, 2)

    shape = img.shape
    x = img.reshape(-1, shape[-3], h, w)
    n = x.shape[0]
    x = x if fp else x.to(dtype)
    if n > 1:
        grid = grid.expand(n, -1, -1, -1)
    if fill is not None:  # a ones channel marks where the image was: blend with fill by it
        x = torch.cat((x, torch.ones((n, 1, h, w), dtype=dtype, device=img.device)), dim=1)
    x = torch.nn.functional.grid_sample(x, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    if fill is not None:
        x, mask = torch.tensor_split(x, indices=(-1,), dim=-3)
        mask = mask.expand_as(x)
        fill_list = list(fill) if isinstance(fill, (list, tuple)) else [float(fill)]
        fill_img = torch.tensor(fill_list, dtype=dtype, device=img.device).view(1, -1, 1, 1)
        if interpolation == "nearest":
            x = torch.where(mask < 0.5, fill_img.expand_as(x), x)
        else:
            x = x.sub_(fill_img).mul_(mask).add_(fill_img)
    out = x if fp else x.round_().to(img.dtype)
    return out.reshape(shape)
