"""Colour plausibility: are an image's stained pixels coloured like a Romanowsky-stained smear?

The foreign-image guard (core/models/guard.py) measures the network's embedding, which is
trained not to read the stain: a field or cut-out whose colours are turned half a turn round
the hue circle (green nuclei, cyan red cells) stays near its class and is called with
confidence. This check looks at the colours themselves. Romanowsky stains (May-Grünwald-
Giemsa, Wright, Leishman, rapid stains) colour nuclei purple to blue and red cells and
eosinophil granules pink to orange-red: on the hue circle, their stained pixels lie from blue
through purple and magenta to red and orange. Green, yellow-green and cyan stained pixels
are not a Romanowsky stain, whatever the lab, microscope or camera.

What is judged is the hue of the *stained* pixels: the darkest tenth (by optical density,
Beer-Lambert: -log of the transmitted light, summed over R, G, B) of the image's *coloured*
pixels (chroma, max - min of R, G, B, at least ``MIN_CHROMA``), as their chroma-weighted
circular mean (the direction of their summed opponent-colour vectors). These are the nuclei (or, in a field without a white cell, the most stained red
cells). Measured on every image of the seven real sets (six labs/stains; 9,223 images), it
lies mostly between 215 and 360 degrees (1st percentile per set 217-282: blue, purple, magenta, red;
a stain-perturbed copy may pass red into orange), and flags none of them; their hue-rotated
copies lie between 30 and 181 (orange-yellow, green, cyan). The share of all coloured pixels in
a fixed hue band was tried first and does not work: Taleqani's fields are blue throughout, and
turned half a turn they become the orange-yellow that wbc-masks' rapid stain gives its
background. An image with too few coloured pixels (grayscale, faded, low saturation) has no
colour to judge and passes: grayscale images are a robustness question, not a foreign stain.

The band and thresholds are fixed, not fitted per model: the hue of a Romanowsky stain is a
property of the dyes, not of the lab or the model, so one plausibility band serves every
model package, old cards included, and a model trained on one lab does not flag another
lab's ordinary stain by colour. They were chosen by measurement on the six real labs/stains
we hold against their hue-rotated copies (trainer/experiments/stain_check.py; figures in
docs/trainer.md, "The colour check beside the guard").

Cost: a few vectorised numpy operations on the already-decoded, reduced image, on every
second pixel in each direction: about 0.5 ms per 128-px cut-out, 1.6 ms per 224-px field.
"""
from __future__ import annotations

import numpy as np

#: hue band (degrees, 0 = red, 120 = green, 240 = blue) no Romanowsky stain gives its stained pixels
FOREIGN_HUE_DEG = (30.0, 185.0)
#: a pixel is coloured when max - min of its R, G, B (0-255) is at least this
MIN_CHROMA = 24
#: below this share of coloured pixels an image has no colour to judge (passes)
MIN_COLOURED = 0.02
#: the darkest share of the coloured pixels whose hue is judged
STAINED_SHARE = 0.10
#: every STEP-th pixel in each direction is looked at (images reach this check at model size)
STEP = 2

#: the one sentence a user reads for an image or cell flagged by colour
REASON = "its colours are unlike any stained smear this model knows"


def hue_deg(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hue in degrees [0, 360), chroma 0-255) of uint8 (..., 3) pixels (HSV hue)."""
    x = rgb.astype(np.int16)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    c = (mx - mn).astype(np.float32)
    safe = np.where(c > 0, c, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6.0,
                 np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return (h * 60.0) % 360.0, c


_OD_BINS = 128
_OD_MAX = float(3 * np.log(256.0))
# optical density of a 0-255 value (Beer-Lambert), already scaled to a bin of the summed density
_OD = (-np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0) * (_OD_BINS / _OD_MAX)).astype(np.float32)
_SQRT3_2 = float(np.sqrt(3.0) / 2.0)


def colour_scores(batch_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coloured share, hue in degrees of the stained pixels; NaN where nothing is coloured) per
    image of uint8 (N, H, W, 3). The darkest tenth is found on a 128-bin histogram of the summed
    optical density (no sort), and the mean hue is the direction of the summed opponent-colour
    vectors (R - (G + B)/2, sqrt(3)/2 (G - B)): each pixel weighs by its chroma, no trigonometry
    per pixel."""
    x = np.asarray(batch_u8)
    if x.ndim == 3:
        x = x[None]
    n = len(x)
    x = x[:, ::STEP, ::STEP, :3].reshape(n, -1, 3)
    p = x.shape[1]
    xi = x.astype(np.int16)
    r, g, b = xi[..., 0], xi[..., 1], xi[..., 2]
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    coloured = chroma >= MIN_CHROMA
    n_col = coloured.sum(1)
    od_bin = np.minimum(_OD[x].sum(-1).astype(np.int32), _OD_BINS - 1)
    rows = np.arange(n, dtype=np.int32)[:, None] * _OD_BINS
    hist = np.bincount((rows + od_bin)[coloured], minlength=n * _OD_BINS).reshape(n, _OD_BINS)
    from_top = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # coloured pixels at least this dense
    k = np.maximum(1, np.ceil(STAINED_SHARE * n_col))
    cut = np.maximum((from_top >= k[:, None]).sum(1) - 1, 0)  # the densest bin that still holds k
    stained = coloured & (od_bin >= cut[:, None])
    w = stained.astype(np.float32)
    u = ((r - (g + b) * 0.5) * w).sum(1)
    v = ((g - b) * w).sum(1) * _SQRT3_2
    hue = np.rad2deg(np.arctan2(v, u)) % 360.0
    share = n_col / max(p, 1)
    return share.astype(np.float32), np.where(n_col > 0, hue, np.nan).astype(np.float32)


def foreign_colour(batch_u8: np.ndarray) -> np.ndarray:
    """(N,) bool: the image's stained pixels are coloured unlike any Romanowsky-stained smear."""
    share, hue = colour_scores(batch_u8)
    lo, hi = FOREIGN_HUE_DEG
    with np.errstate(invalid="ignore"):
        return (share >= MIN_COLOURED) & (hue >= lo) & (hue <= hi)


__all__ = ["FOREIGN_HUE_DEG", "MIN_CHROMA", "MIN_COLOURED", "REASON", "STAINED_SHARE", "colour_scores",
           "foreign_colour", "hue_deg"]
