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
   split by a watershed of its distance transform (touching cells); too-small purple specks
   (platelets) are dropped; each cell's region is the foreground grown around its nucleus
   up to a cytoplasm width, shared between neighbours by a watershed.
6. Pre-cut single cells (a cell on black, or a crop only a few cells wide with one cell in the
   middle) give exactly the central cell.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.imaging import images

log = logging.getLogger(__name__)

FINDER_NAME = "stain-v1"  # stored with every cell row; bump when the method changes
RED_CELL_DIAMETER_UM = 7.5
# Used when a field has no measurable red cells (a pre-cut cell, a field of white cells only).
# 0.1 um/px is the grid of a 100x oil objective on today's cameras (CellaVision DM96 crops:
# about 0.1 um/px measured from their red cells; C-NMC's cells come out at a typical blast's
# 10-12 um with it). docs/cells.md: how it was measured.
DEFAULT_UM_PER_PX = 0.1
CELL_FLAGS = ("border", "touching", "too_small", "too_large")

# The grid the finder works on internally: thresholds below are in um, not in pixels.
WORK_UM_PER_PX = 0.4
# Where the scale is estimated: an image is first reduced to at most this many pixels.
SCALE_MAX_PIXELS = 700_000
# How far the nucleus stain must stand out (blue minus green over the background's), range for
# Otsu's threshold: measured on BCCD and Raabin nuclei (>= 80) vs red cells (<= 60).
NUCLEUS_THRESHOLD_RANGE = (40.0, 75.0)
MIN_RED_CELLS = 3
# Physical sizes (um) of what a white cell can be.
MIN_NUCLEUS_AREA_UM2 = 12.0       # a platelet is 2-3 um across (~5 um2); a small lymphocyte's nucleus ~6 um
LOBE_MERGE_UM = 1.6               # gaps between a neutrophil's lobes
CYTOPLASM_UM = 3.5                # the widest cytoplasm rim grown around a nucleus
MIN_CELL_DIAMETER_UM = 6.0
MAX_CELL_DIAMETER_UM = 30.0
SINGLE_NUCLEUS_MAX_UM2 = 180.0    # above it a nucleus region is tried for a split (two touching cells)
CROP_MAX_WIDTH_UM = 45.0          # a crop narrower than ~3 white cells may be a pre-cut single cell
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


def find_cells(rgb: np.ndarray, *, reduced_by: int = 1) -> FieldCells:
    """The white cells of one field (see the module's docstring). Never raises for an image:
    an image without cells gives an empty tuple."""
    if reduced_by < 1:
        raise ValueError("reduced_by must be 1 or more")
    rgb = _as_rgb8(rgb)
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        return _empty()
    try:
        return _find(rgb, reduced_by)
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


@dataclass
class _Stain:
    background: np.ndarray  # RGB of the background
    nucleus_threshold: float
    foreground_threshold: float


def _stain_maps(img: np.ndarray, stain: _Stain) -> tuple[np.ndarray, np.ndarray]:
    """(foreground mask, nucleus mask) of an RGB image under the stain's thresholds."""
    f = img.astype(np.int16)
    bg = stain.background.astype(np.int16)
    diff = np.abs(f - bg).sum(axis=2)
    fg = diff > stain.foreground_threshold
    nuc = (f[:, :, 2] - f[:, :, 1]) - (bg[2] - bg[1])
    nucleus = nuc > stain.nucleus_threshold
    return fg, nucleus


def _measure_stain(img: np.ndarray) -> _Stain:
    gray = img.mean(axis=2)
    bright = gray >= np.percentile(gray, 90)
    background = np.median(img[bright], axis=0)
    f = img.astype(np.int16)
    diff = np.abs(f - background.astype(np.int16)).sum(axis=2)
    fg_t = max(30.0, min(_otsu(np.clip(diff, 0, 255)), 90.0))
    fg = diff > fg_t
    nuc = (f[:, :, 2] - f[:, :, 1]) - (int(background[2]) - int(background[1]))
    lo, hi = NUCLEUS_THRESHOLD_RANGE
    nuc_t = _otsu(np.clip(nuc[fg], 0, 255)) if fg.any() else hi
    return _Stain(background, min(max(nuc_t, lo), hi), fg_t)


def _red_cell_diameter(fg: np.ndarray, nucleus: np.ndarray) -> tuple[float, int]:
    """Median equivalent diameter (px) of the isolated round red cells, and how many."""
    red = fg & ~cv2.dilate(nucleus.astype(np.uint8), _disc(2)).astype(bool)
    red = red.astype(np.uint8)
    red = cv2.morphologyEx(red, cv2.MORPH_OPEN, _disc(1))
    # fill the pale centres: holes are background pixels not reachable from the border
    contours, _ = cv2.findContours(red, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    h, w = fg.shape
    diameters = []
    for c in contours:
        area = cv2.contourArea(c)
        if area < 30:
            continue
        x, y, bw, bh = cv2.boundingRect(c)
        if x <= 0 or y <= 0 or x + bw >= w or y + bh >= h:
            continue
        hull = cv2.convexHull(c)
        hull_area = cv2.contourArea(hull)
        if hull_area <= 0 or area / hull_area < 0.9:
            continue
        (_, _), (a, b), _ = cv2.fitEllipse(c) if len(c) >= 5 else ((0, 0), (bw, bh), 0)
        if min(a, b) <= 0 or max(a, b) / min(a, b) > 1.3:
            continue
        diameters.append(2.0 * math.sqrt(area / math.pi))
    if not diameters:
        return 0.0, 0
    d = np.asarray(diameters)
    # the largest mode: a red cell, not a fragment or a platelet (drop what is under half the median)
    d = d[d >= 0.6 * np.median(d)]
    return float(np.median(d)), int(d.size)


def _find(rgb: np.ndarray, reduced_by: int) -> FieldCells:
    h, w = rgb.shape[:2]
    # pre-cut cell on black (C-NMC): the one cell is the non-black region
    dark = rgb.max(axis=2) < 30
    if dark.mean() > 0.25:
        return _cell_on_black(rgb, dark, reduced_by)

    # 1. scale, on an image reduced to at most SCALE_MAX_PIXELS
    s0 = min(1.0, math.sqrt(SCALE_MAX_PIXELS / float(h * w)))
    small = cv2.resize(rgb, (max(1, round(w * s0)), max(1, round(h * s0))), interpolation=cv2.INTER_AREA) \
        if s0 < 1.0 else rgb
    stain = _measure_stain(small)
    fg_s, nuc_s = _stain_maps(small, stain)
    diameter, n_red = _red_cell_diameter(fg_s, nuc_s)
    if n_red >= MIN_RED_CELLS and diameter > 0:
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
    px_um = 1.0 / WORK_UM_PER_PX  # working px per um

    nuc = nucleus.astype(np.uint8)
    nuc = cv2.morphologyEx(nuc, cv2.MORPH_OPEN, _disc(0.4 * px_um))
    merged = cv2.morphologyEx(nuc, cv2.MORPH_CLOSE, _disc(LOBE_MERGE_UM * px_um))
    merged = _fill_holes(merged)
    markers = _split_nuclei(merged, px_um)
    cells_work = _grow_cells(markers, fg, px_um)
    found = _to_found(cells_work, nuc, k, reduced_by, (wh, ww), px_um)
    found.sort(key=lambda c: (round(c.centre[1]), c.centre[0]))

    single = False
    width_um = min(h, w) * um_per_px_rgb
    if found and width_um <= CROP_MAX_WIDTH_UM:
        central = _central(found, w * reduced_by, h * reduced_by)
        if central is not None and all("border" in c.flags for c in found if c is not central):
            found, single = [central], True
    return FieldCells(tuple(found), um_per_px, source, n_red, single)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out


def _split_nuclei(merged: np.ndarray, px_um: float) -> np.ndarray:
    """Label image of nucleus regions, one label per cell: specks dropped, big regions split."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(merged, connectivity=8)
    out = np.zeros(merged.shape, np.int32)
    next_label = 1
    min_area = MIN_NUCLEUS_AREA_UM2 * px_um * px_um
    split_area = SINGLE_NUCLEUS_MAX_UM2 * px_um * px_um
    for i in range(1, n):
        area = stats[i, cv2.CC_STAT_AREA]
        if area < min_area:
            continue
        x, y, bw, bh = stats[i, :4]
        comp = (labels[y:y + bh, x:x + bw] == i)
        parts = _watershed_split(comp, px_um) if area > split_area else [comp]
        for part in parts:
            if part.sum() < min_area:
                continue
            sub = out[y:y + bh, x:x + bw]
            sub[part] = next_label
            next_label += 1
    return out


def _watershed_split(comp: np.ndarray, px_um: float) -> list[np.ndarray]:
    """Split a nucleus region at the necks of its distance transform (two touching cells)."""
    padded = np.pad(comp.astype(np.uint8), 2)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
    # peaks: at least 2.5 um from any edge, and separated (dilation equality with a 4 um disc)
    peak = (dist >= cv2.dilate(dist, _disc(4.0 * px_um))) & (dist >= 2.5 * px_um)
    n, peak_labels = cv2.connectedComponents(peak.astype(np.uint8))
    if n <= 2:
        return [comp]
    markers = peak_labels.astype(np.int32)
    markers[padded == 0] = n  # background marker
    img = cv2.cvtColor(cv2.normalize(-dist, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    cv2.watershed(img, markers)
    parts = [(markers == j)[2:-2, 2:-2] & comp for j in range(1, n)]
    return [p for p in parts if p.any()]


def _grow_cells(markers: np.ndarray, fg: np.ndarray, px_um: float) -> np.ndarray:
    """Each cell's region: foreground within CYTOPLASM_UM of its nucleus, shared by a watershed."""
    if markers.max() == 0:
        return markers
    nuclei = (markers > 0).astype(np.uint8)
    reach = cv2.dilate(nuclei, _disc(CYTOPLASM_UM * px_um)).astype(bool)
    allowed = (reach & fg) | (markers > 0)
    m = markers.copy()
    bg_label = int(markers.max()) + 1
    m[~allowed] = bg_label
    dist = cv2.distanceTransform((1 - nuclei).astype(np.uint8), cv2.DIST_L2, 3)
    img = cv2.cvtColor(np.clip(dist * 4, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    cv2.watershed(img, m)
    m[(m == bg_label) | (m < 0)] = 0
    m[~allowed] = 0
    return m


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
              work_shape: tuple[int, int], px_um: float) -> list[FoundCell]:
    wh, ww = work_shape
    scale = reduced_by / k  # original px per working px
    orig_w, orig_h = round(ww * scale), round(wh * scale)
    out = []
    labels = [i for i in np.unique(cells) if i > 0]
    dil = {}
    for i in labels:
        dil[i] = None
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
        ring = cv2.dilate(mask.astype(np.uint8), _disc(1)).astype(bool) & ~mask
        if ((cells[ring] > 0) & (cells[ring] != i)).any():
            flags.add("touching")
        area = int(mask.sum())
        diameter_um = 2.0 * math.sqrt(area / math.pi) / px_um
        if diameter_um < MIN_CELL_DIAMETER_UM:
            flags.add("too_small")
        if diameter_um > MAX_CELL_DIAMETER_UM:
            flags.add("too_large")
        nuc_c = _contour_of(mask & (nucleus > 0))
        pts = _to_original(contour, scale, (orig_w, orig_h))
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0) + 1
        box = (int(math.floor(x * scale)), int(math.floor(y * scale)),
               int(min(orig_w, math.ceil((x + bw) * scale))), int(min(orig_h, math.ceil((y + bh) * scale))))
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


__all__ = ["CELL_FLAGS", "DEFAULT_UM_PER_PX", "FINDER_NAME", "FieldCells", "FoundCell",
           "RED_CELL_DIAMETER_UM", "cut_out", "decode_for_cells", "find_cells"]
