"""The cell finder's white-cell counts on Taleqani fields against counts made by eye.

    python -m bench.taleqani_counts --data ../shared/datasets [--images fields]

bench/data/taleqani_hand_counts.csv holds 80 fields (20 per class folder, drawn with
``random.Random(13).sample`` from each folder's sorted file list), each field's white cells
counted by eye on the finder's overlays (round 6, docs/cells.md; one counter, no second reading;
cells cut by the border count, a cell under the burnt-in label counts), with what ``stain-v5``
did: cells found, found cells holding two or more cells ("merged"), found cells that were the
label. It holds counts and names only, no pixels. Printed per class: the cells counted and
found, found / counted, the mean absolute difference per field and the share of fields within
one cell.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys

from core.cells.finder import FINDER_NAME, IMAGE_KINDS, decode_for_cells, find_cells

HAND_COUNTS = os.path.join(os.path.dirname(__file__), "data", "taleqani_hand_counts.csv")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join("..", "shared", "datasets"))
    ap.add_argument("--images", default="fields", choices=IMAGE_KINDS)
    args = ap.parse_args(argv)
    folder = os.path.join(args.data, "all-taleqani")
    if not os.path.isdir(folder):
        print(f"no Taleqani fields at {folder}: pass --data DIR", file=sys.stderr)
        return 2
    with open(HAND_COUNTS, newline="") as fh:
        rows = list(csv.DictReader(fh))
    per: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        with open(os.path.join(folder, r["field"]), "rb") as fh:
            rgb, reduced_by = decode_for_cells(fh.read())
        n = len(find_cells(rgb, reduced_by=reduced_by, image_kind=args.images).cells)
        per.setdefault(r["field"].split("/")[0], []).append((int(r["true_cells"]), n))
    per["all"] = [p for v in list(per.values()) for p in v]
    print(f"finder {FINDER_NAME}, images: {args.images}\n")
    print("| class | fields | cells counted | found | found / counted | mean abs. difference per field | fields within 1 |")
    print("|---|---|---|---|---|---|---|")
    for cls, v in per.items():
        t, f = sum(a for a, _ in v), sum(b for _, b in v)
        mad = statistics.mean(abs(a - b) for a, b in v)
        within = sum(abs(a - b) <= 1 for a, b in v) / len(v)
        print(f"| {cls} | {len(v)} | {t} | {f} | {f / t:.2f} | {mad:.2f} | {within:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
