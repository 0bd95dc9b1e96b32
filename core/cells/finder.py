"""Find the white (nucleated) cells in a blood-smear field: classical stain-space segmentation.

One image in, the nucleated cells out, each with a box and outline in the ORIGINAL image's
pixel grid, and the physical scale of that grid estimated from the red cells (their median
diameter is about 7.5 um in every lab). The method (docs/cells.md gives the figures):

1. Background: the colour of the brightest tenth of the pixels; foreground: pixels far from it.
2. Nuclei: Romanowsky stains make nuclei blue-purple and red cells pink or grey, so blue minus
   green, taken relative to the background's, separates them in every lab measured; the
   threshold is Otsu's over the foreground, kept inside a range measured on three labs.
3. Scale: red cells are the foreground parts without nucleus stain; the isolated round ones
   (holes filled, solid, not too elongated) give the median diameter -> um per pixel.
4. Everything after runs on a fixed working grid (WORK_UM_PER_PX), so sizes are in um.
5. Nuclear lobes within a few um merge into one cell's nucleus; a too-big nucleus region is
   split by a watershed of its distance transform (touching cells; where the field shows
   enough lone nuclei, any region bigger than they are, at its necks: packed blasts); too-small purple specks
   (platelets) are dropped; each cell's region is the foreground grown around its nucleus
   up to a cytoplasm width, shared between neighbours by a watershed.
6. Pre-cut single cells (a cell on black, or a crop only a few cells wide with one cell in the
   middle) give exactly the central cell. The pixels cannot always tell a crop from a field
   centred on one white cell (a Raabin field is the same picture as a PBC crop), but the lab
   can: ``image_kind`` "crops" (a CellaVision export, a folder of pre-cut cells) always gives
   the central cell, "fields" (a camera's fields) never judges an image a crop, "auto" judges.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.imaging import images

log = logging.getLogger(__name__)

FINDER_NAME = "stain-v6"  # stored with every cell row; bump when the method changes
RED_CELL_DIAMETER_UM = 7.5
# Used when a field has no measurable red cells (a pre-cut cell, a field of white cells only).
# 0.1 um/px is the grid of a 100x oil objective on today's cameras (CellaVision DM96 crops:
# about 0.1 um/px measured from their red cells; C-NMC's cells come out at a typical blast's
# 10-12 um with it). docs/cells.md: how it was measured.
DEFAULT_UM_PER_PX = 0.1
# What the lab says its images are: "auto" (the finder judges whether an image is a pre-cut
# single cell), "fields" (never a single-cell crop: every cell found, border-cut ones flagged),
# "crops" (always one cell: the central one).
IMAGE_KINDS = ("auto", "fields", "crops")
CELL_FLAGS = ("border", "touching", "too_small", "too_large")

# The grid the finder works on internally: thresholds below are in um, not in pixels.
WORK_UM_PER_PX = 0.4
# Where the scale is estimated: an image is first reduced to at most this many pixels.
SCALE_MAX_PIXELS = 700_000
# How far the nucleus stain must stand out (blue minus green over the background's), range for
# Otsu's threshold: measured on BCCD and Raabin nuclei (>= 80) vs red cells (<= 60).
NUCLEUS_THRESHOLD_RANGE = (40.0, 75.0)
MIN_RED_CELLS = 3
# The biggest white-cell nucleus (a blast's, ~14 um across) at the red cells' scale: above this
# the red cells were mismeasured and the field falls back to the default scale.
MAX_NUCLEUS_UM2 = 250.0
# ... checked only where one nucleus covers this share of the image and the image's centre (a
# crop around one cell): elsewhere a "nucleus" that big is a cluster of touching blasts
# (Taleqani), not a bad scale.
LARGE_NUCLEUS_SHARE = 0.1
# Above this share of the foreground the nucleus mask holds red cells' violet rims (some Raabin
# fields: measured 0.45-0.53 there, white cells' nuclei alone <= ~0.43 in all three labs' tuning
# sets): the threshold is then raised to Otsu's among the nucleus-stained pixels.
NUCLEUS_MAX_SHARE = 0.44
# ... and only where that stain rings red cells' pale centres (a small crop filled by one white
# cell, wbc-masks' dataset1, also passes the share): at least this many holes of this share.
MIN_RINGS = 3
RING_HOLE_SHARE = 0.002
# Packed red cells: a maximum of the distance transform is a cell's centre (its inscribed
# radius) only when nothing within this share of that radius lies farther from the edge; round
# 5 (`stain-v5`): before, any 7 px window's maximum counted, and the small maxima on ragged or
# touching outlines halved the diameter (Raabin `train_c360b474`: 69 px for ~130 px red cells).
RED_CELL_CENTRE_REACH = 0.8
AGREEING_PAIR = 1.25              # two isolated red cells this close in diameter give the scale
# A red cell measured for the scale is at least this big where it is measured (10 px across).
MIN_RED_CELL_AREA_PX = 80
# Physical sizes (um) of what a white cell can be.
MIN_NUCLEUS_AREA_UM2 = 12.0       # a platelet is 2-3 um across (~5 um2); a small lymphocyte's nucleus ~6 um
LOBE_MERGE_UM = 1.6               # gaps between a neutrophil's lobes
CYTOPLASM_UM = 4.0                # the widest cytoplasm rim grown around a nucleus
CYTOPLASM_THRESHOLD = 0.5         # of the foreground's threshold
CYTOPLASM_EDGE = 0.4              # a ray leaves the cell where the smoothed colour difference falls to the local background's + this x the fg threshold
CYTOPLASM_SMOOTH_UM = 0.8         # smoothing of the colour difference: pale granular cytoplasm averages above background
RAY_MAX_UM = 12.0                 # a cell's radius is at most this (a white cell is <= ~24 um across)
RAY_CLIP = 1.2                    # a ray longer than this x the cell's short rays ran into a neighbour (a red cell)
RAY_SHORT_PERCENTILE = 10         # the cell's short rays: those that reached the background
N_RAYS = 48
BACKGROUND_WINDOW_UM = 12.0       # the background's level is measured locally, over this width
RIM_FRACTION = 0.3                # the rim grown around a nucleus, as a fraction of its diameter
MIN_CELL_DIAMETER_UM = 6.0
MAX_CELL_DIAMETER_UM = 30.0
FRAGMENT_UM2 = 40.0               # a nucleus piece smaller than this near a bigger one is its lobe (a neutrophil's lobes: up to ~40 um^2)
FRAGMENT_JOIN_UM = 4.0
NUCLEUS_OVER_RED = 15.0           # a nucleus's median stain over the red cells' 95th percentile (WBCs: >= 20 but 2 of 400)
SINGLE_NUCLEUS_MAX_UM2 = 180.0    # above it a nucleus region is tried for a split (two touching cells)
# Round 6 (`stain-v6`): packed nuclei (Taleqani's crowded blasts) are split where the field
# itself says how big one nucleus is: the median of its lone nuclei (regions of one nucleus's
# size, off the border), at least PACKED_REFERENCE_MIN of them. A region over PACKED_TRY x that
# is split on the nucleus stain before the lobe closing (touching blasts are often two regions
# there, joined only by the closing), at the necks of its distance transform: each part holds a
# disc of NUCLEUS_THICK_UM and at least PACKED_PART_MIN x the lone nuclei's area, and two parts
# stay one where the thickest point of the line between them is >= SPLIT_NECK x the thinner
# part's inscribed radius. A field of one or two white cells (BCCD, Raabin, a crop) has no such
# reference and keeps round 5's split: a neutrophil's thick lobes look like packed nuclei.
PACKED_REFERENCE_MIN = 3
PACKED_TRY = 1.5
PACKED_PART_MIN = 0.5
NUCLEUS_THICK_UM = 2.5
SPLIT_NECK = 0.7
# A nucleus candidate nowhere thicker than this from its edge is strokes (a text label, a scale
# bar): synthetic labels' letters 0.8-0.9 um, nuclei >= 3.4 um (core/cells/synthetic.py).
NUCLEUS_STROKE_UM = 1.0
LABEL_WHITE = 248                 # a label's box: every channel at least this (and above the background's)
LABEL_BOX_SHARE = 0.2
# Pale spots inside a nucleus (nucleoli) are filled in that stain up to this size; a bigger hole
# is a red cell ringed by packed nuclei.
NUCLEUS_HOLE_MAX_UM2 = 20.0
# In a crop, a neighbour cut by the border showing this much nucleus is kept (the image is then
# no single-cell crop): pbc-dev's crops' cut neighbours show <= 67 um2, Raabin's cut white cells
# up to ~150 (tuning halves; docs/cells.md).
CROP_NEIGHBOUR_NUCLEUS_UM2 = 100.0
CROP_MAX_CELL_WIDTHS = 4.0        # a crop at most this many times its central cell's width may be a pre-cut cell
DEFAULT_MAX_DECODE_PIXELS = images.DEFAULT_MAX_PIXELS
# The finder needs no more than this many pixels (after libjpeg's DCT scaling) for a field.
FINDER_TARGET_PIXELS = 1_500_000


@dataclass(frozen=True)
class FoundCell:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the original image's grid (x1, y1 exclusive)
    contour: np.ndarray  # (K, 2) int32 outline of the whole cell, original grid, x then y
    nucleus_contour: np.ndarray | None  # (K, 2) int32, or None
    area_px: int  # in original pixels
    flags: frozenset[str]  # subset of CELL_FLAGS; empty = a clean cell

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


@dataclass(frozen=True)
class FieldCells:
    cells: tuple[FoundCell, ...]  # reading order (top-to-bottom, left-to-right by centre)
    um_per_px: float  # of the ORIGINAL image grid
    scale_source: str  # "red_cells" (measured) or "default" (fallback)
    n_red_cells: int  # how many red cells the scale came from
    single_cell_crop: bool  # the image was judged a pre-cut single cell: exactly one cell returned


# --------------------------------------------------------------------------------------------
# decoding and cutting out


def decode_for_cells(data: bytes, max_pixels: int = DEFAULT_MAX_DECODE_PIXELS) -> tuple[np.ndarray, int]:
    """Decode an image's bytes at the reduced scale the finder needs -> (rgb, reduced_by).

    A JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 (DCT scaling: far cheaper than a full decode)
    as long as the result keeps FINDER_TARGET_PIXELS; other formats are decoded whole and then
    reduced. Raises ImageError (one sentence) for unusable bytes."""
    info = images.probe(data, max_pixels)
    pixels = info.width * info.height
    reduced_by = 1
    while reduced_by < 8 and pixels / ((reduced_by * 2) ** 2) >= FINDER_TARGET_PIXELS:
        reduced_by *= 2
    if info.format == "JPEG" and info.mode in ("RGB", "L", "YCbCr") and reduced_by > 1:
        flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag[reduced_by])
        if bgr is not None and bgr.ndim == 3:
            return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), reduced_by
    rgb = images.decode_rgb(data, max_pixels)
    if reduced_by > 1:
        h, w = rgb.shape[:2]
        size = (max(1, -(-w // reduced_by)), max(1, -(-h // reduced_by)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb, reduced_by


def central_index(cells, width: float, height: float) -> int:
    """Index of the cell (``FoundCell``, centres in the image's pixel grid) nearest the centre of a
    ``width`` x ``height`` image: the cell a single-cell crop is of. -1 when there is none."""
    if not cells:
        return -1
    d = [(c.centre[0] - width / 2) ** 2 + (c.centre[1] - height / 2) ** 2 for c in cells]
    return int(np.argmin(d))


def cut_out(rgb: np.ndarray, cell: FoundCell, um_per_px: float, *, side_um: float, out_px: int,
            reduced_by: int = 1) -> np.ndarray:
    """A square uint8 (out_px, out_px, 3) cut-out centred on the cell, side_um micrometres wide.

    um_per_px is of the original grid; rgb may be a reduced decode (reduced_by). Where the square
    leaves the image the image is mirrored (edge-repeated for a 1-pixel side)."""
    if out_px <= 0 or side_um <= 0 or um_per_px <= 0:
        raise ValueError("cut_out needs a positive side_um, out_px and um_per_px")
    rgb = _as_rgb8(rgb)
    h, w = rgb.shape[:2]
    cx, cy = cell.centre
    cx, cy = cx / reduced_by, cy / reduced_by
    side = side_um / (um_per_px * reduced_by)  # in rgb's pixels
    x0 = int(math.floor(cx - side / 2.0))
    y0 = int(math.floor(cy - side / 2.0))
    n = max(1, int(math.ceil(side)))
    x1, y1 = x0 + n, y0 + n
    pad = (max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w))
    region = rgb[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if region.size == 0:  # the square lies wholly outside: take the nearest edge pixel
        yy = min(max(int(cy), 0), h - 1)
        xx = min(max(int(cx), 0), w - 1)
        return np.broadcast_to(rgb[yy, xx], (out_px, out_px, 3)).copy()
    if any(p for pair in pad for p in pair):
        mode = "symmetric" if min(region.shape[:2]) > 1 else "edge"
        region = np.pad(region, (pad[0], pad[1], (0, 0)), mode=mode)
    interp = cv2.INTER_AREA if n > out_px else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(region, (out_px, out_px), interpolation=interp))


# --------------------------------------------------------------------------------------------
# finding


def _as_rgb8(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"find_cells needs an RGB image, not an array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _empty(um_per_px: float = DEFAULT_UM_PER_PX, source: str = "default", n_red: int = 0) -> FieldCells:
    return FieldCells((), um_per_px, source, n_red, False)


def finder_name(image_kind: str = "auto") -> str:
    """The finder's name as stored with a search and its cells (``CellSearch.finder``): the
    method's name, and the declared image kind unless "auto", so a run with another declared
    kind searches the images again as a new finder version does (core/cells/records.py)."""
    _check_kind(image_kind)
    return FINDER_NAME if image_kind == "auto" else f"{FINDER_NAME}+{image_kind}"


def _check_kind(image_kind: str) -> None:
    if image_kind not in IMAGE_KINDS:
        raise ValueError(f"the image kind must be one of {', '.join(IMAGE_KINDS)}, not {image_kind!r}")


def find_cells(rgb: np.ndarray, *, reduced_by: int = 1, image_kind: str = "auto") -> FieldCells:
    """The white cells of one field (see the module's docstring). Never raises for an image:
    an image without cells gives an empty tuple. ``image_kind`` (IMAGE_KINDS): what the lab
    declares the image to be; "auto" lets the finder judge whether it is a single-cell crop."""
    if reduced_by < 1:
        raise ValueError("reduced_by must be 1 or more")
    _check_kind(image_kind)
    rgb = _as_rgb8(rgb)
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        return _empty()
    try:
        return _find(rgb, reduced_by, image_kind)
    except cv2.error as exc:  # a degenerate image OpenCV declines: no cells, and say why in the log
        log.warning("cell finder gave up on a %dx%d image: %s", w, h, exc)
        return _empty()


def _otsu(values: np.ndarray) -> float:
    v = np.clip(values, 0, 255).astype(np.uint8).reshape(-1, 1)
    if v.size == 0:
        return 0.0
    t, _ = cv2.threshold(v, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t)


def _disc(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _label_pixels(labels: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ys, xs) of every label 0..n, exactly as np.nonzero(labels == i) orders them, in one pass
    over the image (a pass per label cost most of the finder's time on small fields)."""
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    order = np.argsort(lab, kind="stable")  # stable: row-major order kept within a label
    ys, xs = ys[order], xs[order]
    bounds = np.searchsorted(lab[order], np.arange(n + 2))
    return [(ys[bounds[i]:bounds[i + 1]], xs[bounds[i]:bounds[i + 1]]) for i in range(n + 1)]


@dataclass
class _Stain:
    background: np.ndarray  # RGB of the background
    nucleus_threshold: float
    foreground_threshold: float


def _channel_sum(a: np.ndarray) -> np.ndarray:
    """a.sum(axis=2) of an (H, W, 3) image, as int32: numpy's reduce over a 3-long last axis is
    several times slower than two adds."""
    return np.add(np.add(a[:, :, 0], a[:, :, 1], dtype=np.int32), a[:, :, 2], dtype=np.int32)


def _stain_maps(img: np.ndarray, stain: _Stain) -> tuple[np.ndarray, np.ndarray]:
    """(foreground mask, nucleus mask) of an RGB image under the stain's thresholds."""
    f = img.astype(np.int16)
    bg = stain.background.astype(np.int16)
    diff = _channel_sum(np.abs(f - bg))
    fg = diff > stain.foreground_threshold
    nuc = (f[:, :, 2] - f[:, :, 1]) - (bg[2] - bg[1])
    nucleus = nuc > stain.nucleus_threshold
    return fg, nucleus


def _measure_stain(img: np.ndarray) -> _Stain:
    gray = _channel_sum(img) / 3  # img.mean(axis=2), the same float64 values
    bright = gray >= np.percentile(gray, 90)
    background = np.median(img[bright], axis=0)
    f = img.astype(np.int16)
    diff = _channel_sum(np.abs(f - background.astype(np.int16)))
    fg_t = max(30.0, min(_otsu(np.clip(diff, 0, 255)), 90.0))
    fg = diff > fg_t
    nuc = (f[:, :, 2] - f[:, :, 1]) - (int(background[2]) - int(background[1]))
    lo, hi = NUCLEUS_THRESHOLD_RANGE
    nuc_t = _otsu(np.clip(nuc[fg], 0, 255)) if fg.any() else hi
    nuc_t = min(max(nuc_t, lo), hi)
    stained = fg & (nuc > nuc_t)
    if fg.any() and stained.sum() > NUCLEUS_MAX_SHARE * fg.sum() and _rings(stained) >= MIN_RINGS:
        nuc_t = max(nuc_t, _otsu(np.clip(nuc[stained], 0, 255)))
    return _Stain(background, nuc_t, fg_t)


def _rings(mask: np.ndarray) -> int:
    """How many holes of at least RING_HOLE_SHARE of the image the mask encloses (red cells'
    pale centres inside their rims; a white cell's nucleus has none that big)."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return 0
    least = RING_HOLE_SHARE * mask.size
    return sum(1 for c, hier in zip(contours, hierarchy[0]) if hier[3] >= 0 and cv2.contourArea(c) >= least)


def _largest_nucleus_px(nucleus: np.ndarray) -> int:
    """Area (px) of the biggest nucleus-stained region (lobes closed together) where its box
    holds the image's centre, as a crop's cell does; 0 otherwise."""
    merged = cv2.morphologyEx(nucleus.astype(np.uint8), cv2.MORPH_CLOSE, _disc(2))
    n, _, stats, _ = cv2.connectedComponentsWithStats(merged, connectivity=8)
    if n <= 1:
        return 0
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh, area = stats[i]
    h, w = nucleus.shape
    return int(area) if x <= w / 2 < x + bw and y <= h / 2 < y + bh else 0


def _red_cell_diameter(fg: np.ndarray, nucleus: np.ndarray) -> tuple[float, int]:
    """Median diameter (px) of the red cells, and how many it came from.

    Isolated round red cells (pale centres filled, solid, not elongated, off the border) give
    their equivalent diameter; where fewer than MIN_RED_CELLS are isolated (packed or
    overlapping red cells), the local maxima of the distance transform of the red-cell mask
    give each cell's inscribed radius instead (overlapping discs keep their centres' radius)."""
    red = fg & ~cv2.dilate(nucleus.astype(np.uint8), _disc(2)).astype(bool)
    red = _fill_holes(cv2.morphologyEx(red.astype(np.uint8), cv2.MORPH_OPEN, _disc(1)))
    diameters = _isolated_round_diameters(red)
    if len(diameters) >= MIN_RED_CELLS:
        d = np.asarray(diameters)
        d = d[d >= 0.6 * np.median(d)]  # fragments and platelets are not red cells
        return float(np.median(d)), int(d.size)
    if len(diameters) == 2 and max(diameters) <= AGREEING_PAIR * min(diameters):
        # two isolated round red cells that agree (a pre-cut crop, whose other red cells the
        # border cuts) measure better than the packed-cell fallback below, which there finds
        # the ridges of border-cut cells
        return float(np.mean(diameters)), 2
    # packed red cells: inscribed radii at the distance transform's maxima
    dist = cv2.distanceTransform(np.pad(red, 1, constant_values=1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    dist[:, [0, -1]] = 0  # the border is no edge of a cell: a half cell there is not measured
    dist[[0, -1], :] = 0
    peaks = (dist >= cv2.dilate(dist, _disc(3))) & (dist >= 5)
    n, labels, _, centroids = cv2.connectedComponentsWithStats(peaks.astype(np.uint8))
    if n - 1 < MIN_RED_CELLS:
        return 0.0, 0
    radii = []
    for ys, xs in _label_pixels(labels, n - 1)[1:]:
        j = int(np.argmax(dist[ys, xs]))
        y, x, r = int(ys[j]), int(xs[j]), float(dist[ys[j], xs[j]])
        # a cell's centre is the farthest point from its edge within most of its own radius;
        # a 7 px window's maximum on a ragged outline or on the ridge where cells touch is not
        q = int(RED_CELL_CENTRE_REACH * r)
        if float(dist[max(0, y - q):y + q + 1, max(0, x - q):x + q + 1].max()) <= r:
            radii.append(r)
    radii = np.array(radii)
    if radii.size < MIN_RED_CELLS:
        return 0.0, 0
    radii = radii[radii >= 0.5 * np.percentile(radii, 90)]
    if radii.size < MIN_RED_CELLS:
        return 0.0, 0
    return float(2.0 * np.median(radii) + 1.0), int(radii.size)


def _isolated_round_diameters(mask: np.ndarray) -> list[float]:
    """Equivalent diameters (px) of the mask's isolated round parts: off the border, solid
    (solidity >= 0.92), not elongated (axis ratio <= 1.25), at least MIN_RED_CELL_AREA_PX."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    h, w = mask.shape
    diameters = []
    for c in contours:
        area = cv2.contourArea(c)
        if area < MIN_RED_CELL_AREA_PX or len(c) < 5:  # specks and reflections, not red cells
            continue
        x, y, bw, bh = cv2.boundingRect(c)
        if x <= 0 or y <= 0 or x + bw >= w or y + bh >= h:
            continue
        hull_area = cv2.contourArea(cv2.convexHull(c))
        if hull_area <= 0 or area / hull_area < 0.92:
            continue
        (_, _), (a, b), _ = cv2.fitEllipse(c)
        if min(a, b) <= 0 or max(a, b) / min(a, b) > 1.25:
            continue
        diameters.append(2.0 * math.sqrt(area / math.pi))
    return diameters


def _find(rgb: np.ndarray, reduced_by: int, image_kind: str = "auto") -> FieldCells:
    h, w = rgb.shape[:2]
    # pre-cut cell on black (C-NMC): the one cell is the non-black region
    dark = np.maximum(np.maximum(rgb[:, :, 0], rgb[:, :, 1]), rgb[:, :, 2]) < 30  # rgb.max(axis=2), faster
    if dark.mean() > 0.25:
        on_black = _cell_on_black(rgb, dark, reduced_by)
        if image_kind == "fields":  # declared a field: its one cell, not judged a crop
            return FieldCells(on_black.cells, on_black.um_per_px, on_black.scale_source, on_black.n_red_cells, False)
        return on_black

    # 1. scale, on an image reduced to at most SCALE_MAX_PIXELS
    s0 = min(1.0, math.sqrt(SCALE_MAX_PIXELS / float(h * w)))
    small = cv2.resize(rgb, (max(1, round(w * s0)), max(1, round(h * s0))), interpolation=cv2.INTER_AREA) \
        if s0 < 1.0 else rgb
    stain = _measure_stain(small)
    fg_s, nuc_s = _stain_maps(small, stain)
    diameter, n_red = _red_cell_diameter(fg_s, nuc_s)
    largest = _largest_nucleus_px(nuc_s)
    if n_red and diameter > 0 and largest >= LARGE_NUCLEUS_SHARE * nuc_s.size \
            and largest * (RED_CELL_DIAMETER_UM / diameter) ** 2 > MAX_NUCLEUS_UM2:
        # the "red cells" measured are too small for the white cell that fills this image (a
        # small crop, whose red cells are slivers): the scale is not trusted
        diameter, n_red = 0.0, 0
    if n_red >= min(2, MIN_RED_CELLS) and diameter > 0:
        um_per_px_rgb = RED_CELL_DIAMETER_UM / (diameter / s0)  # per pixel of rgb
        source = "red_cells"
    else:
        um_per_px_rgb = DEFAULT_UM_PER_PX * reduced_by
        source, n_red = "default", 0
    um_per_px = um_per_px_rgb / reduced_by

    # 2. working grid
    k = um_per_px_rgb / WORK_UM_PER_PX  # working px per rgb px
    ww, wh = max(1, round(w * k)), max(1, round(h * k))
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    work = cv2.resize(rgb, (ww, wh), interpolation=interp)
    fg, nucleus = _stain_maps(work, stain)
    # cytoplasm is paler than a red cell: grow cells into a lower threshold than the foreground's
    diff = _channel_sum(np.abs(work.astype(np.int16) - stain.background.astype(np.int16)))
    cellish = diff > CYTOPLASM_THRESHOLD * stain.foreground_threshold
    px_um = 1.0 / WORK_UM_PER_PX  # working px per um

    nuc = nucleus.astype(np.uint8)
    nuc = cv2.morphologyEx(nuc, cv2.MORPH_OPEN, _disc(0.4 * px_um))
    merged = cv2.morphologyEx(nuc, cv2.MORPH_CLOSE, _disc(LOBE_MERGE_UM * px_um))
    merged = _fill_holes(merged)
    markers = _split_nuclei(merged, px_um, _fill_holes(nuc, NUCLEUS_HOLE_MAX_UM2 * px_um * px_um))
    markers = _drop_red_cell_nuclei(markers, work, stain, fg, nucleus)
    markers = _drop_strokes(markers, nucleus, work, stain, px_um)
    smooth = cv2.GaussianBlur(diff.astype(np.float32), (0, 0), CYTOPLASM_SMOOTH_UM * px_um)
    # the background's own level varies across a field (uneven lighting, BCCD): the lowest
    # smoothed difference nearby, averaged
    window = round(BACKGROUND_WINDOW_UM * px_um)
    local_bg = cv2.blur(cv2.erode(smooth, _disc(window / 2)), (window, window))
    edge = local_bg + CYTOPLASM_EDGE * stain.foreground_threshold
    cells_work = _grow_cells(markers, px_um, smooth, edge)
    _, blobs = cv2.connectedComponents(cellish.astype(np.uint8) | (cells_work > 0).astype(np.uint8))
    found = _to_found(cells_work, nuc, k, reduced_by, (wh, ww), px_um, blobs, (w * reduced_by, h * reduced_by))
    found = _reading_order(found)

    single = False
    central = _central(found, w * reduced_by, h * reduced_by)
    if image_kind == "crops":  # declared a crop: the central cell (the nearest the centre if none holds it)
        if central is None and found:
            cx, cy = w * reduced_by / 2.0, h * reduced_by / 2.0
            central = min(found, key=lambda c: (c.centre[0] - cx) ** 2 + (c.centre[1] - cy) ** 2)
        return FieldCells((central,) if central is not None else (), um_per_px, source, n_red, central is not None)
    if central is not None and image_kind == "auto":
        cw, ch = central.box[2] - central.box[0], central.box[3] - central.box[1]
        narrow = min(w, h) * reduced_by <= CROP_MAX_CELL_WIDTHS * max(cw, ch)
        others = [c for c in found if c is not central]
        # a neighbour cut by the border with a whole nucleus's worth showing is a white cell of
        # a field (Raabin's fields are centred on a cell too), not a crop's sliver
        if narrow and all("border" in c.flags and _nucleus_um2(c, um_per_px) < CROP_NEIGHBOUR_NUCLEUS_UM2
                          for c in others):
            found, single = [central], True
    return FieldCells(tuple(found), um_per_px, source, n_red, single)


def _nucleus_um2(cell: FoundCell, um_per_px: float) -> float:
    if cell.nucleus_contour is None:
        return 0.0
    return float(cv2.contourArea(cell.nucleus_contour.reshape(-1, 1, 2).astype(np.float32))) * um_per_px ** 2


def _reading_order(found: list[FoundCell]) -> list[FoundCell]:
    """Top-to-bottom rows, left-to-right within a row: a row holds the cells whose centres lie
    within half a cell's height below the row's first centre."""
    if not found:
        return found
    band = 0.5 * float(np.median([c.box[3] - c.box[1] for c in found]))
    rows: list[list[FoundCell]] = []
    for c in sorted(found, key=lambda c: c.centre[1]):
        if rows and c.centre[1] - rows[-1][0].centre[1] <= band:
            rows[-1].append(c)
        else:
            rows.append([c])
    return [c for row in rows for c in sorted(row, key=lambda c: c.centre[0])]


def _fill_holes(mask: np.ndarray, max_hole_px: float | None = None) -> np.ndarray:
    """The mask with its holes filled: every hole, or only those up to max_hole_px."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    if max_hole_px is None:
        return out
    holes = (out > 0) & (mask == 0)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=4)
    big = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] > max_hole_px)
    big = big[big > 0]
    if big.size:
        out[np.isin(labels, big)] = 0
    return out


def _typical_nucleus_px(pixels: list[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int], min_area: float,
                        max_area: float) -> float:
    """The median area (px) of this field's lone nuclei: regions of one nucleus's size
    (MIN_NUCLEUS_AREA_UM2..SINGLE_NUCLEUS_MAX_UM2) off the border; 0 where fewer than
    PACKED_REFERENCE_MIN (a field of one or two white cells, a crop: no packed split there)."""
    h, w = shape
    areas = [ys.size for ys, xs in pixels[1:]
             if min_area <= ys.size <= max_area and ys.min() > 0 and xs.min() > 0 and ys.max() < h - 1
             and xs.max() < w - 1]
    return float(np.median(areas)) if len(areas) >= PACKED_REFERENCE_MIN else 0.0


def _split_nuclei(merged: np.ndarray, px_um: float, core: np.ndarray | None = None) -> np.ndarray:
    """Label image of nucleus regions, one label per cell: a small fragment near a bigger
    nucleus joins it (a lobe), lone specks are dropped (platelets), big regions are split at
    necks (touching cells). Where the field shows enough lone nuclei to know their size, a
    region bigger than that is split into nuclei of about that size (``_packed_split`` on
    ``core``, the nucleus stain before the lobes were closed together: packed blasts)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(merged, connectivity=8)
    min_area = MIN_NUCLEUS_AREA_UM2 * px_um * px_um
    fragment = FRAGMENT_UM2 * px_um * px_um
    split_area = SINGLE_NUCLEUS_MAX_UM2 * px_um * px_um
    areas = stats[:, cv2.CC_STAT_AREA]
    big = [i for i in range(1, n) if areas[i] >= fragment]
    if big:
        # each fragment joins the nearest big nucleus within FRAGMENT_JOIN_UM
        is_big = np.zeros(n, bool)
        is_big[big] = True
        not_big = (~is_big[labels]).astype(np.uint8)
        pixels = _label_pixels(labels, n - 1)
        dist, nearest = cv2.distanceTransformWithLabels(not_big, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        zero_label = np.zeros(int(nearest.max()) + 1, np.int32)
        zero_label[nearest[not_big == 0]] = labels[not_big == 0]
        for i in range(1, n):
            if areas[i] >= fragment:
                continue
            ys, xs = pixels[i]  # a fragment's own pixels: only big labels are ever written
            j = int(np.argmin(dist[ys, xs]))  # the first minimum in row-major order, as over the image
            if dist[ys[j], xs[j]] <= FRAGMENT_JOIN_UM * px_um:
                labels[ys, xs] = zero_label[nearest[ys[j], xs[j]]]
    out = np.zeros(merged.shape, np.int32)
    next_label = 1
    pixels = _label_pixels(labels, n - 1)
    typical = _typical_nucleus_px(pixels, merged.shape, min_area, split_area)
    for i in range(1, n):
        ys, xs = pixels[i]
        area = int(ys.size)
        if area == 0 or area < min_area:
            continue
        y, x, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
        comp = labels[y:y1, x:x1] == i
        parts = [comp]
        if core is not None and typical and area > PACKED_TRY * typical:
            parts = _packed_split(comp, px_um, comp & (core[y:y1, x:x1] > 0), PACKED_PART_MIN * typical)
        if len(parts) == 1 and area > split_area:
            parts = _watershed_split(comp, px_um)
        for part in parts:
            if np.count_nonzero(part) < min_area:
                continue
            sub = out[y:y1, x:x1]
            sub[part] = next_label
            next_label += 1
    return out


def _drop_red_cell_nuclei(markers: np.ndarray, work: np.ndarray, stain: _Stain, fg: np.ndarray,
                          nucleus: np.ndarray) -> np.ndarray:
    """Drop nucleus candidates stained no more than this field's red cells: grey-violet red cells
    (Raabin) pass the nucleus threshold at their rims, a nucleus stands out well above them
    (median stain >= the red cells' 95th percentile + NUCLEUS_OVER_RED)."""
    n = int(markers.max())
    if n == 0:
        return markers
    f = work.astype(np.int16)
    bg = stain.background.astype(np.int16)
    stain_map = (f[:, :, 2] - f[:, :, 1]) - (bg[2] - bg[1])
    red = fg & ~cv2.dilate(nucleus.astype(np.uint8), _disc(2)).astype(bool)
    if np.count_nonzero(red) < MIN_RED_CELL_AREA_PX * MIN_RED_CELLS:
        return markers
    floor = float(np.percentile(stain_map[red], 95)) + NUCLEUS_OVER_RED
    out = np.zeros_like(markers)
    next_label = 1
    pixels = _label_pixels(markers, n)
    for i in range(1, n + 1):
        ys, xs = pixels[i]
        if ys.size and float(np.median(stain_map[ys, xs])) >= floor:
            out[ys, xs] = next_label
            next_label += 1
    return out


def _drop_strokes(markers: np.ndarray, nucleus: np.ndarray, work: np.ndarray, stain: _Stain,
                  px_um: float) -> np.ndarray:
    """Drop nucleus candidates that are a label burnt into the image (round 6): thin strokes (a
    scale bar, letters joined by the lobe closing: nowhere thicker than NUCLEUS_STROKE_UM from
    their edge) on a box whiter than the slide's background (LABEL_BOX_SHARE of the ring
    around them). A nucleus is thicker; a thin platelet or a cut sliver lies on the slide."""
    n = int(markers.max())
    if n == 0:
        return markers
    whiter = np.minimum(np.minimum(work[:, :, 0], work[:, :, 1]), work[:, :, 2]).astype(np.int16) \
        >= max(LABEL_WHITE, int(stain.background.max()) + 5)
    ring = _disc(1.0 * px_um)
    out = np.zeros_like(markers)
    next_label = 1
    pixels = _label_pixels(markers, n)
    for i in range(1, n + 1):
        ys, xs = pixels[i]
        if ys.size == 0:
            continue
        y, x, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
        own = ((markers[y:y1, x:x1] == i) & nucleus[y:y1, x:x1]).astype(np.uint8)
        thin = float(cv2.distanceTransform(np.pad(own, 1), cv2.DIST_L2, 5).max()) < NUCLEUS_STROKE_UM * px_um
        if thin:
            pad = ring.shape[0]
            y0, x0 = max(0, y - pad), max(0, x - pad)
            mine = np.zeros(markers.shape, np.uint8)
            mine[ys, xs] = 1
            mine = mine[y0:y1 + pad, x0:x1 + pad]
            around = (cv2.dilate(mine, ring) > 0) & (mine == 0)
            thin = np.count_nonzero(around & whiter[y0:y1 + pad, x0:x1 + pad]) >= LABEL_BOX_SHARE * max(1, np.count_nonzero(around))
        if not thin:
            out[ys, xs] = next_label
            next_label += 1
    return out


def _watershed_split(comp: np.ndarray, px_um: float) -> list[np.ndarray]:
    """Split a nucleus region at the necks of its distance transform (two touching cells).

    Only where two or more parts are each as thick as a nucleus (inscribed radius >= 2.5 um:
    a neutrophil's lobes are thinner) and the cut between them is a neck (clearly thinner
    than the parts)."""
    padded = np.pad(comp.astype(np.uint8), 2)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
    peak = (dist >= cv2.dilate(dist, _disc(4.0 * px_um))) & (dist >= 2.5 * px_um)
    n, peak_labels = cv2.connectedComponents(peak.astype(np.uint8))
    if n <= 2:
        return [comp]
    markers = peak_labels.astype(np.int32)
    markers[padded == 0] = n  # background marker
    img = cv2.cvtColor(cv2.normalize(-dist, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    cv2.watershed(img, markers)
    cut = (markers == -1) & (padded > 0)
    weakest_peak = min(float(dist[peak_labels == j].max()) for j in range(1, n))
    if cut.any() and float(dist[cut].max()) > 0.7 * weakest_peak:
        return [comp]
    parts = [(markers == j)[2:-2, 2:-2] & comp for j in range(1, n)]
    return [p for p in parts if p.any()]


def _packed_split(comp: np.ndarray, px_um: float, core: np.ndarray, least_px: float) -> list[np.ndarray]:
    """Split a packed nucleus region (``comp``) into nuclei, at the necks of the distance
    transform of ``core`` (the region's nucleus stain before the lobe closing, small holes
    filled), round 6.

    Seeds: the distance transform's local maxima at least NUCLEUS_THICK_UM from the edge; each
    pixel goes to a seed by flooding the distance transform from its peaks down
    (``_flood``: the lines meet at the necks). Then neighbouring parts are
    joined while the line between them is no neck (its thickest point >= SPLIT_NECK x the
    thinner part's peak) or one of them is under ``least_px`` (too small for a nucleus of its
    own): a kidney-shaped or notched nucleus stays one, lobes thinner than a nucleus never seed
    a part of their own."""
    padded = np.pad(comp.astype(np.uint8), 1)
    dist = cv2.distanceTransform(np.pad(core.astype(np.uint8), 1), cv2.DIST_L2, 5)
    thick = NUCLEUS_THICK_UM * px_um
    peak = (dist >= cv2.dilate(dist, np.ones((3, 3), np.uint8))) & (dist >= thick)
    n, seeds = cv2.connectedComponents(peak.astype(np.uint8), connectivity=8)
    if n <= 2:
        return [comp]
    parts = _flood(seeds.astype(np.int32), dist, padded > 0)
    peaks = {j: float(dist[parts == j].max()) for j in range(1, n)}
    # the thickest point of each line between two parts (4-neighbours with different labels)
    saddles: dict[tuple[int, int], float] = {}
    for a, b, da, db in ((parts[:, :-1], parts[:, 1:], dist[:, :-1], dist[:, 1:]),
                         (parts[:-1, :], parts[1:, :], dist[:-1, :], dist[1:, :])):
        m = (a != b) & (a > 0) & (b > 0)
        for i, j, v in zip(a[m], b[m], np.minimum(da[m], db[m])):
            key = (int(min(i, j)), int(max(i, j)))
            saddles[key] = max(saddles.get(key, 0.0), float(v))
    areas = {j: float(np.count_nonzero(parts == j)) for j in peaks}
    least = least_px
    owner = {j: j for j in peaks}

    def root(j: int) -> int:
        while owner[j] != j:
            j = owner[j]
        return j

    while True:  # join the pair with the least neck first, until every line left is a neck
        joined: dict[tuple[int, int], float] = {}
        for (i, j), v in saddles.items():
            ri, rj = root(i), root(j)
            if ri != rj:
                key = (min(ri, rj), max(ri, rj))
                joined[key] = max(joined.get(key, 0.0), v)
        if not joined:
            break
        ratio = {k: v / max(1e-6, min(peaks[k[0]], peaks[k[1]])) for k, v in joined.items()}
        # a part too small for a nucleus of its own (a lobe) joins its neighbour first
        small = {k: r + 10.0 for k, r in ratio.items() if min(areas[k[0]], areas[k[1]]) < least}
        best = max(small or ratio, key=lambda k: (small or ratio)[k])
        if not small and ratio[best] < SPLIT_NECK:
            break
        i, j = best
        owner[j] = i
        peaks[i] = max(peaks[i], peaks[j])
        areas[i] += areas[j]
    roots = sorted({root(j) for j in peaks})
    if len(roots) <= 1:
        return [comp]
    lut = np.zeros(n + 1, np.int32)
    for j in peaks:
        lut[j] = root(j)
    parts = lut[np.clip(parts, 0, n)][1:-1, 1:-1]
    return [(parts == r) & comp for r in roots if ((parts == r) & comp).any()]


def _flood(seeds: np.ndarray, height: np.ndarray, inside: np.ndarray, step: float = 0.5) -> np.ndarray:
    """A watershed by levels: the seeds' labels spread over ``inside`` from the highest ``height``
    down, each level's pixels taken by the labelled pixels next to them (4-neighbours) before
    the next level opens, so two floods meet where the height is lowest between them (at a
    neck of a distance transform). cv2.watershed orders its flooding by the difference between
    neighbouring pixels, not by height, so on a distance transform its lines fall anywhere
    (docs/cells.md, round 5). A pixel two floods reach together goes to the higher label."""
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    labels = np.where(inside, seeds, 0).astype(np.float32)
    top = float(height[inside].max()) if inside.any() else 0.0
    for level in np.arange(top, -step, -step):
        open_ = inside & (height >= level)
        for _ in range(labels.shape[0] + labels.shape[1]):
            grown = np.where(open_ & (labels == 0), cv2.dilate(labels, cross), labels)
            if np.array_equal(grown, labels):
                break
            labels = grown
    return labels.astype(np.int32)


def _ray_reach(markers: np.ndarray, hulls: np.ndarray, n: int, smooth: np.ndarray, edge: np.ndarray,
               px_um: float, pixels: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Label image of how far each cell may reach: rays cast from each nucleus's centre, each
    stopping where the smoothed colour difference falls to the local background's level (pale
    cytoplasm still counts: it is averaged over ~1 um), at most RAY_MAX_UM. A cell is round: a
    ray much longer than its short rays (those that met the background) ran into a touching
    red cell and is cut back."""
    h, w = markers.shape
    reach = np.zeros(markers.shape, np.int32)
    ang = np.linspace(0.0, 2.0 * np.pi, N_RAYS, endpoint=False)
    steps = np.arange(0.0, RAY_MAX_UM * px_um, 0.5)
    dx, dy = np.cos(ang)[:, None] * steps[None, :], np.sin(ang)[:, None] * steps[None, :]
    pixels = pixels if pixels is not None else _label_pixels(markers, n)
    for i in range(1, n + 1):
        ys, xs = pixels[i]
        if xs.size == 0:
            continue
        cx, cy = xs.mean(), ys.mean()
        px = np.clip(np.round(cx + dx).astype(np.intp), 0, w - 1)
        py = np.clip(np.round(cy + dy).astype(np.intp), 0, h - 1)
        in_hull = hulls[py, px] == i
        start = np.where(in_hull.any(axis=1), steps.size - 1 - np.argmax(in_hull[:, ::-1], axis=1), 0)
        after = np.arange(steps.size)[None, :] > start[:, None]
        below = after & (smooth[py, px] < edge[py, px])
        stop = np.where(below.any(axis=1), np.argmax(below, axis=1), steps.size - 1)
        stop = np.maximum(stop, start)
        short = float(np.percentile(stop, RAY_SHORT_PERCENTILE))
        stop = np.minimum(stop, np.maximum(start, RAY_CLIP * short)).astype(np.intp)
        pts = np.stack([px[np.arange(N_RAYS), stop], py[np.arange(N_RAYS), stop]], axis=1).astype(np.int32)
        cv2.fillPoly(reach, [cv2.convexHull(pts)], i)
    return reach


def _grow_cells(markers: np.ndarray, px_um: float, smooth: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Each cell's region: the pixels within its rays' reach (_ray_reach) above the background's
    level, shared between neighbours by nearness to their nuclei's hulls; the region's convex
    hull is the cell (cytoplasm is convex)."""
    n = int(markers.max())
    if n == 0:
        return markers
    hulls = np.zeros(markers.shape, np.int32)
    pixels = _label_pixels(markers, n)
    for i in range(1, n + 1):
        ys, xs = pixels[i]
        if xs.size == 0:
            continue
        pts = np.stack([xs, ys], axis=1).astype(np.int32)
        cv2.fillPoly(hulls, [cv2.convexHull(pts)], i)
    reach = _ray_reach(markers, hulls, n, smooth, edge, px_um, pixels)
    allowed = (reach > 0) | (hulls > 0)
    outside = (hulls == 0).astype(np.uint8)
    _, nearest = cv2.distanceTransformWithLabels(outside, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    owner_of = np.zeros(int(nearest.max()) + 1, np.int32)
    owner_of[nearest[outside == 0]] = hulls[outside == 0]
    m = np.where(allowed & ((smooth >= edge) | (hulls > 0)), owner_of[nearest], 0)
    out = np.zeros(markers.shape, np.int32)
    for i in range(1, n + 1):
        region = (m == i).astype(np.uint8)
        region = cv2.morphologyEx(region, cv2.MORPH_OPEN, _disc(0.5 * px_um)) | (hulls == i).astype(np.uint8)
        c = _contour_of(region)
        if c is None:
            continue
        cv2.fillPoly(out, [cv2.convexHull(c)], i)
    return out


def _contour_of(mask: np.ndarray) -> np.ndarray | None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    return max(contours, key=cv2.contourArea)


def _to_original(contour: np.ndarray, scale: float, box_limit: tuple[int, int]) -> np.ndarray:
    pts = contour.reshape(-1, 2).astype(np.float64)
    pts = (pts + 0.5) * scale - 0.5
    pts[:, 0] = np.clip(pts[:, 0], 0, box_limit[0] - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, box_limit[1] - 1)
    return np.round(pts).astype(np.int32)


def _to_found(cells: np.ndarray, nucleus: np.ndarray, k: float, reduced_by: int,
              work_shape: tuple[int, int], px_um: float, blobs: np.ndarray,
              image_size: tuple[int, int]) -> list[FoundCell]:
    """The working grid's cell regions as FoundCells in the original grid (image_size: its
    width, height). A cell is "touching" when another one lies in the same stained blob
    (cytoplasm meeting cytoplasm) close by (centres nearer than 1.2 x the sum of their radii).
    A cell cut by the border gets a box reaching the image's edge (the working grid's rounding
    would leave it a pixel or two short)."""
    wh, ww = work_shape
    scale = reduced_by / k  # original px per working px
    orig_w, orig_h = image_size
    out = []
    pixels = _label_pixels(cells, int(cells.max()))
    labels = [i for i, (ys, _) in enumerate(pixels) if i > 0 and ys.size]
    geometry = {}
    for i in labels:
        ys, xs = pixels[i]
        blob_ids, counts = np.unique(blobs[ys, xs], return_counts=True)
        geometry[i] = (xs.mean(), ys.mean(), math.sqrt(xs.size / math.pi), int(blob_ids[np.argmax(counts)]))
    for i in labels:
        mask = cells == i
        contour = _contour_of(mask)
        if contour is None:
            continue
        x, y, bw, bh = cv2.boundingRect(contour)
        flags = set()
        edge = max(1, round(0.3 * px_um))
        if x < edge or y < edge or x + bw > ww - edge or y + bh > wh - edge:
            flags.add("border")
        xi, yi, ri, bi = geometry[i]
        if any(j != i and bj == bi and math.hypot(xj - xi, yj - yi) < 1.2 * (ri + rj)
               for j, (xj, yj, rj, bj) in geometry.items()):
            flags.add("touching")
        area = int(pixels[i][0].size)
        diameter_um = 2.0 * math.sqrt(area / math.pi) / px_um
        if diameter_um < MIN_CELL_DIAMETER_UM:
            flags.add("too_small")
        if diameter_um > MAX_CELL_DIAMETER_UM:
            flags.add("too_large")
        nuc_c = _contour_of(mask & (nucleus > 0))
        pts = _to_original(contour, scale, (orig_w, orig_h))
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0) + 1
        box = (0 if x <= 0 else int(math.floor(x * scale)), 0 if y <= 0 else int(math.floor(y * scale)),
               orig_w if x + bw >= ww else int(min(orig_w, math.ceil((x + bw) * scale))),
               orig_h if y + bh >= wh else int(min(orig_h, math.ceil((y + bh) * scale))))
        out.append(FoundCell(box=box, contour=pts,
                             nucleus_contour=None if nuc_c is None else _to_original(nuc_c, scale, (orig_w, orig_h)),
                             area_px=int(round(area * scale * scale)), flags=frozenset(flags)))
    return out


def _central(found: list[FoundCell], w: int, h: int) -> FoundCell | None:
    """The cell whose box holds the image's centre (the nearest centre if several)."""
    cx, cy = w / 2.0, h / 2.0
    holding = [c for c in found if c.box[0] <= cx < c.box[2] and c.box[1] <= cy < c.box[3]]
    if not holding:
        return None
    return min(holding, key=lambda c: (c.centre[0] - cx) ** 2 + (c.centre[1] - cy) ** 2)


def _cell_on_black(rgb: np.ndarray, dark: np.ndarray, reduced_by: int) -> FieldCells:
    """A pre-cut cell on a black background (C-NMC): the largest non-black region is the cell."""
    h, w = rgb.shape[:2]
    cell = (~dark).astype(np.uint8)
    cell = cv2.morphologyEx(cell, cv2.MORPH_OPEN, _disc(2))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cell, connectivity=8)
    if n <= 1:
        return _empty()
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = (labels == i).astype(np.uint8)
    mask = _fill_holes(mask)
    contour = _contour_of(mask)
    # nucleus: the darker, bluer part of the cell (Otsu of blue minus green inside it)
    f = rgb.astype(np.int16)
    nuc = f[:, :, 2] - f[:, :, 1]
    inside = mask.astype(bool)
    t = _otsu(np.clip(nuc[inside] + 128, 0, 255)) - 128
    nuc_c = _contour_of(inside & (nuc > t))
    scale = float(reduced_by)
    limit = (w * reduced_by, h * reduced_by)
    x, y, bw, bh = cv2.boundingRect(contour)
    flags = set()
    if x <= 0 or y <= 0 or x + bw >= w or y + bh >= h:
        flags.add("border")
    box = (x * reduced_by, y * reduced_by, (x + bw) * reduced_by, (y + bh) * reduced_by)
    found = FoundCell(box=box, contour=_to_original(contour, scale, limit),
                      nucleus_contour=None if nuc_c is None else _to_original(nuc_c, scale, limit),
                      area_px=int(mask.sum()) * reduced_by * reduced_by, flags=frozenset(flags))
    return FieldCells((found,), DEFAULT_UM_PER_PX, "default", 0, True)


__all__ = ["CELL_FLAGS", "DEFAULT_UM_PER_PX", "FINDER_NAME", "IMAGE_KINDS", "FieldCells", "FoundCell",
           "RED_CELL_DIAMETER_UM", "central_index", "cut_out", "decode_for_cells", "find_cells", "finder_name"]
