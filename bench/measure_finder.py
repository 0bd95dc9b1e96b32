"""How well the cell finder (core/cells/finder.py) finds white cells in other labs' images.

    python -m bench.measure_finder --data ../shared/datasets            # every figure of docs/cells.md
    python -m bench.measure_finder --data DIR --only bccd,raabin         # some of them
    python -m bench.measure_finder --data DIR --overlays /tmp/finder     # also draw the misses there
    python -m bench.measure_finder --data DIR --only raabin --misses     # list every box not found
    python -m bench.measure_finder --data DIR --images declared          # each set at the kind a lab would declare

Figures (each per lab / dataset):
  bccd-boxes, raabin-boxes  WBC recall and precision (a ground-truth WBC box is found when a found
                            cell's box has IoU >= 0.5 with it; one-to-one greedy matching by IoU;
                            precision = found cells matched / found cells), on the first half of
                            the files (where the method was tuned), the second half (held out) and
                            all; the estimated um per pixel (median, IQR) and where it came from
  wbc-masks                 Dice of the nucleus and of the whole cell (nucleus + cytoplasm) against
                            the masks, for the found cell nearest the centre (0 when none)
  pbc-dev, cnmc-train       share of crops with exactly one cell returned that covers the centre
  all-taleqani              cells per field (histogram), share of fields on the default scale
  speed                     ms per field, 640x480 (BCCD) and 2592x1944 (a BCCD field upscaled x4
                            with cv2.INTER_CUBIC, encoded as JPEG q95 and decoded reduced)
--images auto (the default) lets the finder judge whether each image is a single-cell crop;
--images declared gives each set the kind its lab would declare (DECLARED_KINDS: bccd, raabin
and Taleqani are a camera's fields, pbc-dev, cnmc-train and wbc-masks pre-cut single cells);
--images fields or crops gives every set that kind.
Nothing is written to the repository: overlays go where --overlays says (never commit them).
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time
import xml.etree.ElementTree as ET

import cv2
import numpy as np
from PIL import Image

from core.cells.finder import FINDER_NAME, IMAGE_KINDS, FieldCells, decode_for_cells, find_cells

IOU_FOUND = 0.5
# What each set's lab would declare its images to be (``--images declared``).
DECLARED_KINDS = {"bccd-boxes": "fields", "raabin-boxes": "fields", "all-taleqani": "fields",
                  "pbc-dev": "crops", "cnmc-train": "crops", "wbc-masks": "crops"}


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_match(truth: list, found: list) -> int:
    """How many one-to-one pairs with IoU >= 0.5, pairing the highest IoU first."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    used_t, used_f, n = set(), set(), 0
    for v, i, j in pairs:
        if v < IOU_FOUND:
            break
        if i in used_t or j in used_f:
            continue
        used_t.add(i)
        used_f.add(j)
        n += 1
    return n


def load(path: str, image_kind: str = "auto") -> tuple[FieldCells, np.ndarray, int]:
    with open(path, "rb") as fh:
        rgb, reduced_by = decode_for_cells(fh.read())
    return find_cells(rgb, reduced_by=reduced_by, image_kind=image_kind), rgb, reduced_by


def bccd_items(data: str):
    for xml in sorted(glob.glob(os.path.join(data, "bccd-boxes", "annotations", "*.xml"))):
        root = ET.parse(xml).getroot()
        boxes = []
        for o in root.iter("object"):
            if o.findtext("name") != "WBC":
                continue
            b = o.find("bndbox")
            boxes.append(tuple(int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
        yield os.path.join(data, "bccd-boxes", "images", os.path.basename(xml)[:-4] + ".jpg"), boxes


def raabin_items(data: str):
    for txt in sorted(glob.glob(os.path.join(data, "raabin-boxes", "labels", "*.txt"))):
        img = os.path.join(data, "raabin-boxes", "images", os.path.basename(txt)[:-4] + ".jpg")
        with Image.open(img) as im:  # the header only: the YOLO boxes are fractions of the size
            w, h = im.size
        boxes = []
        with open(txt) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) != 5 or parts[0] != "0":
                    continue
                cx, cy, bw, bh = map(float, parts[1:])
                boxes.append((round((cx - bw / 2) * w), round((cy - bh / 2) * h),
                              round((cx + bw / 2) * w), round((cy + bh / 2) * h)))
        yield img, boxes


def draw(rgb: np.ndarray, reduced_by: int, truth: list, cells, path: str) -> None:
    out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).copy()
    for t in truth:
        cv2.rectangle(out, (t[0] // reduced_by, t[1] // reduced_by), (t[2] // reduced_by, t[3] // reduced_by),
                      (0, 200, 0), 2)
    for c in cells:
        cv2.drawContours(out, [c.contour.reshape(-1, 1, 2) // reduced_by], -1, (0, 0, 255), 1)
        if c.nucleus_contour is not None:
            cv2.drawContours(out, [c.nucleus_contour.reshape(-1, 1, 2) // reduced_by], -1, (255, 0, 0), 1)
        b = c.box
        cv2.rectangle(out, (b[0] // reduced_by, b[1] // reduced_by), (b[2] // reduced_by, b[3] // reduced_by),
                      (0, 0, 255), 1)
        cv2.putText(out, ",".join(sorted(c.flags)), (b[0] // reduced_by, b[1] // reduced_by + 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1)
    cv2.imwrite(path, out, [cv2.IMWRITE_JPEG_QUALITY, 85])


def quartiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    q = np.percentile(values, [25, 50, 75])
    return f"median {q[1]:.3f} (IQR {q[0]:.3f}-{q[2]:.3f})"


def unmatched(truth: list, found: list) -> list[int]:
    """Indexes of the truth boxes the greedy one-to-one matching leaves without a found cell."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    used_t, used_f = set(), set()
    for v, i, j in pairs:
        if v < IOU_FOUND:
            break
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
    return [i for i in range(len(truth)) if i not in used_t]


def boxes_figures(name: str, items: list, overlays: str | None, list_misses: bool = False,
                  image_kind: str = "auto") -> list[str]:
    half = len(items) // 2
    rows = {"tune (first half)": [0, 0, 0], "held out (second half)": [0, 0, 0]}
    scales, sources = [], {}
    misses = 0
    missed_lines = []
    for k, (path, truth) in enumerate(items):
        fc, rgb, r = load(path, image_kind)
        found = [c.box for c in fc.cells]
        n = greedy_match(truth, found)
        row = rows["tune (first half)" if k < half else "held out (second half)"]
        row[0] += n
        row[1] += len(truth)
        row[2] += len(found)
        scales.append(fc.um_per_px)
        sources[fc.scale_source] = sources.get(fc.scale_source, 0) + 1
        if list_misses:
            for i in unmatched(truth, found):
                best = max((iou(truth[i], f) for f in found), default=0.0)
                missed_lines.append(f"- {'tune' if k < half else 'held'} {os.path.basename(path)} box {truth[i]}: "
                                    f"best IoU {best:.2f}, {fc.um_per_px:.3f} um/px ({fc.scale_source})"
                                    f"{', judged a single-cell crop' if fc.single_cell_crop else ''}")
        if overlays and (n < len(truth) or n < len(found)) and misses < 100:
            misses += 1
            draw(rgb, r, truth, fc.cells, os.path.join(overlays, f"{name}-{os.path.basename(path)[:-4]}.png"))
    out = [f"### {name} ({len(items)} fields, images: {image_kind})", "", "| part | WBC boxes | found cells | recall | precision |",
           "|---|---|---|---|---|"]
    rows["all"] = [sum(r[i] for r in rows.values()) for i in range(3)]
    for part, (m, t, f) in rows.items():
        out.append(f"| {part} | {t} | {f} | {m / t if t else 0:.3f} | {m / f if f else 0:.3f} |")
    shares = ", ".join(f"{s} {v / len(items):.1%}" for s, v in sorted(sources.items()))
    out += ["", f"um per pixel: {quartiles(scales)}; scale from: {shares}", ""]
    if list_misses:
        out += [f"boxes not found ({len(missed_lines)}):", *missed_lines, ""]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 2.0 * (a & b).sum() / s if s else 1.0


def masks_figures(data: str, overlays: str | None, image_kind: str = "auto") -> list[str]:
    out = [f"### wbc-masks (Dice against the masks, the found cell nearest the centre; 0 when none; "
           f"images: {image_kind})", "",
           "| dataset | cells | cells found | nucleus Dice (mean / median) | whole cell Dice (mean / median) |",
           "|---|---|---|---|---|"]
    for ds in ("dataset1", "dataset2"):
        nd, cd, nfound, files = [], [], 0, 0
        for mpath in sorted(glob.glob(os.path.join(data, "wbc-masks", ds, "*", "*_mask.png"))):
            stem = mpath[: -len("_mask.png")]
            img = next((p for p in (stem + ".bmp", stem + ".jpg", stem + ".png") if os.path.exists(p)), None)
            if img is None:
                continue
            files += 1
            mask = cv2.imread(mpath, cv2.IMREAD_GRAYSCALE)
            fc, rgb, r = load(img, image_kind)
            h, w = mask.shape
            if not fc.cells:
                nd.append(0.0)
                cd.append(0.0)
                continue
            nfound += 1
            c = min(fc.cells, key=lambda c: (c.centre[0] - w / 2) ** 2 + (c.centre[1] - h / 2) ** 2)
            cell = np.zeros((h, w), np.uint8)
            cv2.drawContours(cell, [c.contour.reshape(-1, 1, 2)], -1, 1, cv2.FILLED)
            nuc = np.zeros((h, w), np.uint8)
            if c.nucleus_contour is not None:
                cv2.drawContours(nuc, [c.nucleus_contour.reshape(-1, 1, 2)], -1, 1, cv2.FILLED)
            nd.append(dice(nuc.astype(bool), mask > 200))
            cd.append(dice(cell.astype(bool), mask > 64))
            if overlays and cd[-1] < 0.7 and len([f for f in os.listdir(overlays) if f.startswith(ds)]) < 15:
                draw(rgb, r, [], fc.cells, os.path.join(overlays, f"{ds}-{os.path.basename(stem)}.png"))
        out.append(f"| {ds} | {files} | {nfound} | {np.mean(nd):.3f} / {np.median(nd):.3f} | "
                   f"{np.mean(cd):.3f} / {np.median(cd):.3f} |")
    return out + [""]


def crops_figures(data: str, overlays: str | None, kinds: dict[str, str]) -> list[str]:
    out = ["### single-cell crops (exactly one cell returned, covering the image's centre)", "",
           "| set | images | crops | one central cell | share | judged a single-cell crop | scale from red cells |",
           "|---|---|---|---|---|---|---|"]
    for ds in ("pbc-dev", "cnmc-train"):
        paths = sorted(glob.glob(os.path.join(data, ds, "*", "*.jpg")) + glob.glob(os.path.join(data, ds, "*", "*.bmp")))
        ok = single = red = bad = 0
        for p in paths:
            fc, rgb, r = load(p, kinds[ds])
            h, w = rgb.shape[0] * r, rgb.shape[1] * r
            good = len(fc.cells) == 1 and fc.cells[0].box[0] <= w / 2 < fc.cells[0].box[2] \
                and fc.cells[0].box[1] <= h / 2 < fc.cells[0].box[3]
            ok += good
            single += fc.single_cell_crop
            red += fc.scale_source == "red_cells"
            if overlays and not good and bad < 15:
                bad += 1
                draw(rgb, r, [], fc.cells, os.path.join(overlays, f"{ds}-{os.path.basename(p)[:-4]}.png"))
        n = max(1, len(paths))
        out.append(f"| {ds} | {kinds[ds]} | {len(paths)} | {ok} | {ok / n:.1%} | {single / n:.1%} | {red / n:.1%} |")
    return out + [""]


def taleqani_figures(data: str, image_kind: str = "auto") -> list[str]:
    paths = sorted(glob.glob(os.path.join(data, "all-taleqani", "*", "*.jpg")))
    counts, default, scales = [], 0, []
    for p in paths:
        fc, _, _ = load(p, image_kind)
        counts.append(len(fc.cells))
        default += fc.scale_source == "default"
        if fc.scale_source == "red_cells":
            scales.append(fc.um_per_px)
    bins = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 10**9)]
    out = [f"### all-taleqani ({len(paths)} fields, 224x224, images: {image_kind})", "", "| cells per field | fields |", "|---|---|"]
    for lo, hi in bins:
        label = str(lo) if lo == hi else (f"{lo}-{hi}" if hi < 10**9 else f"{lo}+")
        out.append(f"| {label} | {sum(lo <= c <= hi for c in counts)} |")
    out += ["", f"default scale: {default / max(1, len(paths)):.1%} of fields; measured um per pixel: "
            f"{quartiles(scales)}; cells per field: mean {statistics.mean(counts) if counts else 0:.2f}", ""]
    return out


def speed_figures(data: str) -> list[str]:
    paths = sorted(glob.glob(os.path.join(data, "bccd-boxes", "images", "*.jpg")))[:40]
    blobs = [open(p, "rb").read() for p in paths]
    t = time.perf_counter()
    for b in blobs:
        rgb, r = decode_for_cells(b)
        find_cells(rgb, reduced_by=r)
    small = (time.perf_counter() - t) / len(blobs) * 1e3
    big = []
    for p in paths[:8]:
        img = cv2.imread(p)
        up = cv2.resize(img, (2592, 1944), interpolation=cv2.INTER_CUBIC)
        big.append(cv2.imencode(".jpg", up, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    t = time.perf_counter()
    for b in big:
        rgb, r = decode_for_cells(b)
        find_cells(rgb, reduced_by=r)
    large = (time.perf_counter() - t) / len(big) * 1e3
    return ["### speed (decode + find, one thread of the shared 2-core machine)", "",
            f"- 640x480 BCCD field: {small:.0f} ms per field ({len(blobs)} fields)",
            f"- 2592x1944 field (a BCCD field upscaled x4 with cv2.INTER_CUBIC, JPEG q95, decoded at 1/2): "
            f"{large:.0f} ms per field ({len(big)} fields)", ""]


def docs_figure(path: str) -> None:
    """The finder's outlines on the synthetic field of the tests (no real image may be committed)."""
    from core.cells import synthetic

    rgb = synthetic.draw(synthetic.standard_field(), 0.125)
    fc = find_cells(rgb)
    out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    for c in fc.cells:
        cv2.drawContours(out, [c.contour.reshape(-1, 1, 2)], -1, (0, 160, 0), 2)
        if c.nucleus_contour is not None:
            cv2.drawContours(out, [c.nucleus_contour.reshape(-1, 1, 2)], -1, (255, 60, 0), 1)
        label = ", ".join(sorted(c.flags)) or "clean"
        cv2.putText(out, label, (c.box[0] + 2, max(12, c.box[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.putText(out, f"{len(fc.cells)} cells, {fc.um_per_px:.3f} um/px from {fc.n_red_cells} red cells (true 0.125)",
                (8, out.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.imwrite(path, out, [cv2.IMWRITE_JPEG_QUALITY, 85])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join("..", "shared", "datasets"))
    ap.add_argument("--only", default="bccd,raabin,masks,crops,taleqani,speed")
    ap.add_argument("--overlays", default=None, help="a folder (outside the repository) for overlays of misses")
    ap.add_argument("--misses", action="store_true", help="list every box of bccd/raabin not found, with its best IoU")
    ap.add_argument("--docs-figure", default=None, help="write the synthetic field's overlay (docs/cells-synthetic-field.jpg)")
    ap.add_argument("--images", default="auto", choices=("declared",) + IMAGE_KINDS,
                    help="the image kind the finder is told: auto (it judges), declared (each set's own, "
                         "DECLARED_KINDS), fields or crops (every set)")
    args = ap.parse_args(argv)
    kinds = {ds: (k if args.images == "declared" else args.images) for ds, k in DECLARED_KINDS.items()}
    if args.docs_figure:
        docs_figure(args.docs_figure)
    if not os.path.isdir(args.data):
        print(f"no datasets at {args.data}", file=sys.stderr)
        return 2
    if args.overlays:
        os.makedirs(args.overlays, exist_ok=True)
    cv2.setNumThreads(1)
    only = set(args.only.split(","))
    lines = [f"finder {FINDER_NAME}, images: {args.images}", ""]
    print(lines[0], flush=True)
    steps = [("bccd", lambda: boxes_figures("bccd-boxes", list(bccd_items(args.data)), args.overlays, args.misses,
                                            kinds["bccd-boxes"])),
             ("raabin", lambda: boxes_figures("raabin-boxes", list(raabin_items(args.data)), args.overlays,
                                              args.misses, kinds["raabin-boxes"])),
             ("masks", lambda: masks_figures(args.data, args.overlays, kinds["wbc-masks"])),
             ("crops", lambda: crops_figures(args.data, args.overlays, kinds)),
             ("taleqani", lambda: taleqani_figures(args.data, kinds["all-taleqani"])),
             ("speed", lambda: speed_figures(args.data))]
    for key, step in steps:
        if key in only:
            part = step()
            print("\n".join(part), flush=True)
            lines += part
    return 0


if __name__ == "__main__":
    sys.exit(main())
