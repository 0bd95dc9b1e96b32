"""Cut-out cells for training and evaluating a cell model, made exactly as classify makes them.

Every cell goes through the cell pipeline's own functions: core.cells.finder.find_cells (the
scale from the red cells, or the default for a pre-cut crop) and core.cells.cutout.cut_out_for_model
with the card's side, input size and background; nothing of the cut-out is re-implemented here.
A crop of one typed cell (PBC, C-NMC, wbc-masks) gives its central found cell; a field with boxed
white cells (BCCD, Raabin) gives every found cell whose centre lies in a white-cell box (untyped);
a Taleqani field gives every found cell (weak label: the field's class folder).

C-NMC's crops carry no scale (segmented cells on black, no red cells), so the finder gives them its
default 0.1 um/px, at which their cells measure about 20 um: twice a PBC lymphocyte, and "Blast"
would be learnt as "large cell". ``cnmc_scale`` calibrates one um/px for the whole data set: the
median size of C-NMC's normal (``hem``) lymphoid cells is made equal to the median PBC
lymphocyte's (PBC's scale is measured from its red cells; size: the finder's cell outline or its
nucleus, ``match``). Blasts keep their size relative to
C-NMC's normal cells (one scale for every crop).

    cells = build_source("pbc-cells", datasets, spec)      # CellSet: cut-outs + labels + meta
    cache: load_or_build(...) keeps them as .npy under a cache folder (never in the repository).
"""
from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from core.cells.cutout import cell_mask, cut_out_for_model
from core.cells.finder import DEFAULT_UM_PER_PX, FieldCells, FoundCell, central_index, find_cells
from core.imaging.preprocessing import Preprocessing
from core.models.taxonomy import TAXONOMIES, resolve_alias

TAXONOMY = "wbc_differential"
CLASSES = TAXONOMIES[TAXONOMY].classes
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}

# name -> (folder under the datasets root, kind). "typed": class folders of single-cell crops;
# "boxed": fields with white-cell boxes (untyped); "weak": Taleqani fields (class of the field).
SOURCES: dict[str, tuple[str, str]] = {
    "pbc": ("pbc-cells", "typed"),
    "pbc-dev": ("pbc-dev", "typed"),
    "cnmc": ("cnmc-train", "typed"),
    "wbc-masks-d1": ("wbc-masks/dataset1", "typed"),
    "wbc-masks-d2": ("wbc-masks/dataset2", "typed"),
    "bccd": ("bccd-boxes", "boxed"),
    "raabin": ("raabin-boxes", "boxed"),
    "taleqani": ("all-taleqani", "weak"),
}


@dataclass(frozen=True)
class CutSpec:
    """How a cell is cut out: the card's ``cell_side_um``, ``input_size`` and ``cell_background``."""

    side_um: float = 25.0
    out_px: int = 224
    background: str = "black"
    margin_um: float = 0.0

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing(input_size=self.out_px, interpolation="area", cell_background=self.background,
                             cell_margin_um=self.margin_um)

    def key(self) -> str:
        return f"{self.side_um:g}um-{self.out_px}px-{self.background}" + (f"-m{self.margin_um:g}" if self.margin_um else "")


@dataclass
class CellSet:
    """Cut-outs (N, S, S, 3) uint8, their cell masks (N, S, S) bool, and per cell: the class
    index (-1: untyped), the source, the subject ('' where the source names none), the file."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    subjects: np.ndarray
    files: np.ndarray
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> "CellSet":
        return CellSet(self.images[keep], self.masks[keep], self.labels[keep], self.sources[keep],
                       self.subjects[keep], self.files[keep], dict(self.info))

    @staticmethod
    def concat(parts: Iterable["CellSet"]) -> "CellSet":
        parts = [p for p in parts if len(p)]
        return CellSet(*(np.concatenate([getattr(p, a) for p in parts]) for a in
                         ("images", "masks", "labels", "sources", "subjects", "files")))


def read_rgb(path: Path) -> np.ndarray:
    import cv2  # heavy: imports OpenCV's image codecs

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# the C-NMC scale: which cells of which sources are matched (module constants, stated in the card)
SCALE_REFERENCE = ("pbc-cells", "lymphocyte")  # measured scale (red cells)
SCALE_MATCHED = ("cnmc-train", "hem")  # C-NMC's normal lymphoid cells, default scale


def _diameter_um(cell: FoundCell, um_per_px: float, part: str) -> float | None:
    """Equivalent diameter (um) of the cell's outline, or of its nucleus (None: none found)."""
    if part == "cell":
        return 2.0 * math.sqrt(cell.area_px / math.pi) * um_per_px
    import cv2  # heavy: imports OpenCV (contour area)

    if cell.nucleus_contour is None or len(cell.nucleus_contour) < 3:
        return None
    area = float(cv2.contourArea(np.asarray(cell.nucleus_contour, np.float32).reshape(-1, 1, 2)))
    return 2.0 * math.sqrt(area / math.pi) * um_per_px


def _median_diameter_um(folder: Path, part: str) -> tuple[float, int]:
    """Median equivalent diameter (um, at the finder's scale) of the central found cell (``part``
    "cell": its outline; "nucleus": its nucleus) of every crop in ``folder``, and how many gave one."""
    diameters = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.stem.endswith("_mask"):
            continue
        rgb = read_rgb(path)
        found = find_cells(rgb)
        cell = central_cell(found, rgb.shape)
        d = _diameter_um(cell, found.um_per_px, part) if cell is not None else None
        if d:
            diameters.append(d)
    return (float(np.median(diameters)) if diameters else float("nan")), len(diameters)


SCALE_MATCHES = ("cell", "nucleus")


def cnmc_scale(datasets: Path, cache: Path | None = None, match: str = "cell") -> dict:
    """C-NMC's calibrated um/px (see the module's doc): {"um_per_px", "match", "reference_median_um",
    "matched_median_um_at_default", "n_reference", "n_matched", "rule"}. ``match`` "cell" matches the
    finder's cell outlines; "nucleus" matches PBC lymphocytes' nuclei to C-NMC's normal cells'
    nuclei (on C-NMC's stain the finder's nucleus is nearly the whole cell, on PBC's the cell outline
    takes in a pale rim). Kept as JSON under ``cache`` (finding the cells takes a minute)."""
    if match not in SCALE_MATCHES:
        raise ValueError(f"match must be one of {', '.join(SCALE_MATCHES)}, not {match!r}")
    path = Path(cache) / f"cnmc_scale-{match}.json" if cache else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    ref_um, n_ref = _median_diameter_um(Path(datasets).joinpath(*SCALE_REFERENCE), match)
    hem_um, n_hem = _median_diameter_um(Path(datasets).joinpath(*SCALE_MATCHED), match)
    if not (n_ref and n_hem):
        raise ValueError(f"cannot calibrate C-NMC's scale: no cells found in {'/'.join(SCALE_REFERENCE)} "
                         f"or {'/'.join(SCALE_MATCHED)} under {datasets}")
    out = {"um_per_px": round(DEFAULT_UM_PER_PX * ref_um / hem_um, 5), "match": match,
           "finder_default_um_per_px": DEFAULT_UM_PER_PX,
           "reference_median_um": round(ref_um, 3), "matched_median_um_at_default": round(hem_um, 3),
           "n_reference": n_ref, "n_matched": n_hem,
           "rule": f"one um/px for every cnmc-train crop, chosen so that the median {match} diameter of its normal "
                   f"({SCALE_MATCHED[1]}) cells equals that of the {SCALE_REFERENCE[1]}s of {SCALE_REFERENCE[0]} "
                   f"(whose scale the finder measures from red cells); blasts keep their size relative to them"}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
    return out


def central_cell(found: FieldCells, shape: tuple[int, ...]) -> FoundCell | None:
    """The found cell nearest the image's centre (a crop of one typed cell), or None."""
    k = central_index(found.cells, shape[1], shape[0])
    return found.cells[k] if k >= 0 else None


def cut(rgb: np.ndarray, cell: FoundCell, um_per_px: float, spec: CutSpec) -> tuple[np.ndarray, np.ndarray]:
    """The model's cut-out (core.cells.cutout.cut_out_for_model, the card's background) and the
    cell's mask in the same square (for the source probe's blanking)."""
    out = cut_out_for_model(rgb, cell, um_per_px, side_um=spec.side_um, out_px=spec.out_px, prep=spec.prep)
    mask = cell_mask(rgb.shape[:2], cell, um_per_px, side_um=spec.side_um, out_px=spec.out_px,
                     margin_um=spec.margin_um)
    return out, mask


def cnmc_subject(name: str) -> str:
    """C-NMC's subject from the file name: UID_<subject>_... (ALL) or UID_H<donor>_... (normal)."""
    m = re.match(r"UID_(H?\d+)_", name)
    return m.group(1) if m else ""


def _typed_files(root: Path) -> list[tuple[Path, int]]:
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        hit = resolve_alias(sub.name, TAXONOMY)
        if hit is None:
            continue
        label = CLASSES.index(hit[1])
        out += [(f, label) for f in sorted(sub.iterdir())
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.stem.endswith("_mask")]
    return out


def _boxes(root: Path, image: Path) -> list[tuple[float, float, float, float]]:
    """White-cell boxes (x0, y0, x1, y1 in pixels) of a BCCD (VOC xml) or Raabin (YOLO txt) field."""
    xml = root / "annotations" / f"{image.stem}.xml"
    if xml.is_file():
        out = []
        for obj in ET.parse(xml).getroot().iter("object"):
            if (obj.findtext("name") or "").strip().upper() == "WBC":
                b = obj.find("bndbox")
                out.append(tuple(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
        return out
    txt = root / "labels" / f"{image.stem}.txt"
    if txt.is_file():
        return [("yolo",) + tuple(float(v) for v in line.split()[1:5])  # type: ignore[misc]
                for line in txt.read_text().splitlines() if line.split() and line.split()[0] == "0"]
    return []


def build_source(name: str, datasets: Path, spec: CutSpec, *, limit: int | None = None,
                 progress: Callable[[str], None] | None = None, unscaled_um_per_px: float | None = None) -> CellSet:
    """Every cell of source ``name`` (SOURCES) under ``datasets``, cut out by ``spec``;
    ``unscaled_um_per_px``: the um/px of a crop the finder found no scale for (its default
    otherwise), e.g. C-NMC's calibrated ``cnmc_scale``."""
    folder, kind = SOURCES[name]
    root = Path(datasets) / folder
    imgs, masks, labels, subjects, files = [], [], [], [], []
    n_images = n_missed = 0

    def add(rgb, cell, um, label, subject, path):
        a, m = cut(rgb, cell, um, spec)
        imgs.append(a)
        masks.append(m)
        labels.append(label)
        subjects.append(subject)
        files.append(str(path.relative_to(datasets)))

    if kind == "typed":
        items = _typed_files(root)
        if limit:
            items = items[:: max(1, len(items) // limit)][:limit]
        for path, label in items:
            rgb = read_rgb(path)
            found = find_cells(rgb)
            cell = central_cell(found, rgb.shape)
            n_images += 1
            if cell is None:
                n_missed += 1
                continue
            um = unscaled_um_per_px if unscaled_um_per_px and found.scale_source == "default" else found.um_per_px
            add(rgb, cell, um, label, cnmc_subject(path.name) if name == "cnmc" else "", path)
    elif kind == "boxed":
        paths = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit:
            paths = paths[:limit]
        for path in paths:
            rgb = read_rgb(path)
            h, w = rgb.shape[:2]
            boxes = []
            for b in _boxes(root, path):
                if b[0] == "yolo":
                    cx, cy, bw, bh = b[1] * w, b[2] * h, b[3] * w, b[4] * h
                    b = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
                boxes.append(b)
            found = find_cells(rgb)
            n_images += 1
            kept = [c for c in found.cells
                    if any(b[0] <= c.centre[0] <= b[2] and b[1] <= c.centre[1] <= b[3] for b in boxes)]
            n_missed += max(0, len(boxes) - len(kept))
            for c in kept:
                add(rgb, c, found.um_per_px, -1, "", path)
    else:  # weak: Taleqani fields, every found cell, the folder (Benign or an ALL subtype) as subject
        per = (limit or 10 ** 9) // 4
        for sub in ("Benign", "Early", "Pre", "Pro"):
            paths = sorted((root / sub).glob("*.jpg"))
            paths = paths[:: max(1, len(paths) // per)][:per]
            for path in paths:
                rgb = read_rgb(path)
                found = find_cells(rgb)
                n_images += 1
                for c in found.cells:
                    add(rgb, c, found.um_per_px, -1, sub, path)
        if progress:
            progress(f"{name}: {len(labels)} cells")
    s = spec.out_px
    cells = CellSet(np.stack(imgs) if imgs else np.zeros((0, s, s, 3), np.uint8),
                    np.stack(masks) if masks else np.zeros((0, s, s), bool),
                    np.asarray(labels, np.int64), np.asarray([name] * len(labels)),
                    np.asarray(subjects), np.asarray(files))
    cells.info = {"source": name, "folder": folder, "kind": kind, "images": n_images, "cells": len(labels),
                  "missed": n_missed, "cut": spec.key(), "unscaled_um_per_px": unscaled_um_per_px}
    if progress:
        progress(f"{name}: {len(labels)} cells from {n_images} images ({n_missed} without a cell)")
    return cells


def source_key(name: str, limit: int | None = None, unscaled_um_per_px: float | None = None) -> str:
    """The cache's name for a source's cut-outs (a calibrated scale makes other cut-outs)."""
    return name + (f"-{limit}" if limit else "") + (f"-{unscaled_um_per_px:g}umpx" if unscaled_um_per_px else "")


def load_or_build(name: str, datasets: Path, spec: CutSpec, cache: Path, *, limit: int | None = None,
                  progress: Callable[[str], None] | None = None, unscaled_um_per_px: float | None = None) -> CellSet:
    """build_source, kept under ``cache`` as .npy (memory-mapped on reading)."""
    folder = Path(cache) / spec.key() / source_key(name, limit, unscaled_um_per_px)
    done = folder / "info.json"
    if done.is_file():
        info = json.loads(done.read_text())
        arrays = {a: np.load(folder / f"{a}.npy", mmap_mode="r" if a in ("images", "masks") else None)
                  for a in ("images", "masks", "labels", "sources", "subjects", "files")}
        return CellSet(**arrays, info=info)
    cells = build_source(name, datasets, spec, limit=limit, progress=progress, unscaled_um_per_px=unscaled_um_per_px)
    folder.mkdir(parents=True, exist_ok=True)
    for a in ("images", "masks", "labels", "sources", "subjects", "files"):
        np.save(folder / f"{a}.npy", getattr(cells, a))
    done.write_text(json.dumps(cells.info))
    return cells


__all__ = ["CLASSES", "CellSet", "CutSpec", "SOURCES", "TAXONOMY", "build_source", "central_cell", "cnmc_scale",
           "cnmc_subject", "cut", "load_or_build", "read_rgb", "source_key"]
