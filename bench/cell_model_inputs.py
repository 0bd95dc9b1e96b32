"""What the bundled ALL-vs-normal cell model makes of cut-outs: background kept vs black.

    python -m bench.cell_model_inputs --datasets /work/shared/datasets [--fields 300] [--cnmc 80]

The model was trained on C-NMC crops (one segmented cell on black). Here each cell is found by
core.cells.finder.find_cells and cut out through core.cells.cutout.cut_out_for_model (the
function the classify cell stage uses) with the bundled card's preprocessing, varying only
``cell_background`` ("keep" / "black"), ``cell_margin_um`` and the cut-out side, then given to the
model through core.inference.predict.Predictor (the engine and foreign-image guard classify
uses). Per data set and variant: the share of cells the guard flags as outside the model's
experience, the share called ALL (all cells, and cells not flagged).

  taleqani  --fields fields of all-taleqani spread evenly over each class folder (Benign; Early,
            Pre, Pro = malignant), every found cell
  pbc-dev   240 CellaVision crops of normal white cells (another lab): the central cell of each
  cnmc      --cnmc cells per held-out subject of the card's split (metrics.split.test_subjects),
            cut out by the same finder path; plus "whole" (the crop as classify gives a
            single-cell crop: whole, through the preprocessing)
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# (side um, background, margin um); the first is how classify cut cells before cell_background
VARIANTS = [(25.0, "keep", 0.0), (25.0, "black", 0.0), (25.0, "black", 1.0),
            (20.0, "keep", 0.0), (20.0, "black", 0.0), (30.0, "keep", 0.0), (30.0, "black", 0.0),
            (45.0, "keep", 0.0), (45.0, "black", 0.0)]  # 45 um: a C-NMC frame at the finder's 0.1 um/px


def _read(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _spread(files: list[Path], n: int) -> list[Path]:
    if n >= len(files):
        return files
    return [files[round(i * (len(files) - 1) / max(1, n - 1))] for i in range(n)]


def _central(found, shape):
    h, w = shape[:2]
    if not found.cells:
        return None
    return min(found.cells, key=lambda c: (c.centre[0] - w / 2) ** 2 + (c.centre[1] - h / 2) ** 2)


def collect(datasets: Path, n_fields: int, n_cnmc: int, test_subjects: list[str]):
    """{group: [(rgb, cell, um_per_px)]}, and the whole C-NMC crops."""
    from core.cells.finder import find_cells

    groups: dict[str, list] = {}
    tal = datasets / "all-taleqani"
    per_class = max(1, n_fields // 4)
    for cls in ("Benign", "Early", "Pre", "Pro"):
        key = "taleqani Benign" if cls == "Benign" else "taleqani ALL (Early/Pre/Pro)"
        for f in _spread(sorted((tal / cls).glob("*.jpg")), per_class):
            rgb = _read(f)
            found = find_cells(rgb)
            groups.setdefault(key, []).extend((rgb, c, found.um_per_px) for c in found.cells)
    for f in sorted((datasets / "pbc-dev").glob("*/*.jpg")):
        rgb = _read(f)
        found = find_cells(rgb)
        c = _central(found, rgb.shape)
        groups.setdefault("pbc-dev (normal cells)", [])
        if c is not None:
            groups["pbc-dev (normal cells)"].append((rgb, c, found.um_per_px))
    whole: dict[str, list] = {}
    for subject in test_subjects:
        folder = "hem" if subject.startswith("H") else "all"
        files = _spread(sorted((datasets / "cnmc-train" / folder).glob(f"UID_{subject}_*.jpg")), n_cnmc)
        key = f"cnmc held-out {subject} ({'Normal' if folder == 'hem' else 'ALL'})"
        for f in files:
            rgb = _read(f)
            found = find_cells(rgb)
            whole.setdefault(key, []).append(rgb)
            c = _central(found, rgb.shape)
            if c is not None:
                groups.setdefault(key, []).append((rgb, c, found.um_per_px))
    return groups, whole


def assess(predictor, batch: np.ndarray):
    out_p, out_o, out_d = [], [], []
    for i in range(0, len(batch), 64):
        a = predictor.assess(batch[i:i + 64])
        out_p.append(a.probs)
        out_o.append(a.outside if a.outside is not None else np.zeros(len(a.probs), bool))
        out_d.append(a.guard_distance if a.guard_distance is not None else np.full(len(a.probs), np.nan))
    return np.concatenate(out_p), np.concatenate(out_o), np.concatenate(out_d)


def row(name: str, variant: str, probs: np.ndarray, outside: np.ndarray, distance: np.ndarray,
        all_index: int) -> str:
    n = len(probs)
    called_all = probs.argmax(1) == all_index
    inside = ~outside
    all_inside = f"{called_all[inside].mean():.0%} of {int(inside.sum())}" if inside.any() else "-"
    return (f"| {name} | {variant} | {n} | {outside.mean():.1%} | {np.nanmedian(distance):.0f} | "
            f"{called_all.mean():.1%} | {all_inside} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--fields", type=int, default=300, help="Taleqani fields (a quarter per class folder)")
    ap.add_argument("--cnmc", type=int, default=80, help="C-NMC cells per held-out subject")
    ap.add_argument("--package", type=Path, default=ROOT / "resources" / "models" / "all-vs-normal")
    args = ap.parse_args(argv)
    if not (args.datasets / "all-taleqani").is_dir():
        print(f"no all-taleqani under {args.datasets}: pass --datasets", file=sys.stderr)
        return 2

    cv2.setNumThreads(2)
    from core.cells.cutout import cut_out_for_model
    from core.inference.predict import Predictor
    from core.models.package import verify_package

    card = verify_package(args.package)
    predictor = Predictor(args.package, device="cpu", card=card)
    base = card.prep
    all_index = card.classes.index("ALL")
    t0 = time.perf_counter()
    groups, whole = collect(args.datasets, args.fields, args.cnmc, card.metrics["split"]["test_subjects"])
    print(f"# cells found in {time.perf_counter() - t0:.0f} s; model: {card.name}, runtime {predictor.runtime}, "
          f"card background {base.cell_background!r}, side {card.cut_out_side_um:g} um")
    threshold = (card.guard or {}).get("threshold")
    print(f"| cells | cut-out | n | outside experience | median guard distance (threshold {threshold}) "
          "| called ALL | ALL among the rest |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, items in groups.items():
        for side, background, margin in VARIANTS:
            prep = dataclasses.replace(base, cell_background=background, cell_margin_um=margin)
            batch = np.stack([prep.apply(cut_out_for_model(rgb, c, um, side_um=side, out_px=prep.input_size,
                                                           prep=prep)) for rgb, c, um in items])
            label = f"{side:g} um, {background}" + (f" +{margin:g} um" if margin else "")
            print(row(name, label, *assess(predictor, batch), all_index), flush=True)
        if name in whole:
            batch = np.stack([base.apply(rgb) for rgb in whole[name]])
            print(row(name, "whole crop (as classify gives a single-cell crop)", *assess(predictor, batch),
                      all_index), flush=True)
    print(f"# {time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
