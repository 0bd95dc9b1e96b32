"""The colour check (core/imaging/stain.py) on every real set we hold and on generated foreign copies.

Each image is decoded and reduced to 224 x 224 (what the field model sees; a cut-out of one of
these images keeps the colours of its cell and of what is around it), then checked as it is,
hue-rotated half a turn (trainer.augment.other_stain), stain-perturbed (augment.stain_perturb),
grayscale, and blurred (sigma 3). Prints and writes the share flagged per set and variant, and
the hue histogram of the coloured pixels per set (to choose the band by):

    python -m trainer.experiments.stain_check --data /work/shared/datasets --out docs/figures/stain_check.json

With ``--cells`` (the cut-out cache of ``python -m trainer.cell_experiments cut``), the cell model's
guard alone and with the colour check on every lab's cut-outs and on C-NMC's blurred, hue-rotated,
grayscale and stain-perturbed cut-outs:

    python -m trainer.experiments.stain_check --cells /work/cache/lead/cutouts --out docs/figures/stain_check_cells.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from core.imaging import stain
from core.inference.predict import Predictor
from trainer import augment as aug

SETS = {"all-taleqani": "all-taleqani", "cnmc-train": "cnmc-train", "pbc-cells": "pbc-cells", "pbc-dev": "pbc-dev",
        "bccd-boxes": "bccd-boxes/images", "raabin-boxes": "raabin-boxes/images", "wbc-masks": "wbc-masks"}
SUFFIXES = {".jpg", ".jpeg", ".bmp", ".png"}
SIDE = 224
CHUNK = 128  # images checked at a time (memory)


def images_of(folder: Path, limit: int | None) -> np.ndarray:
    import cv2

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and not p.stem.endswith("_mask"))
    if limit and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).astype(int)]
    out = []
    for p in files:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        out.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (SIDE, SIDE), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def checked(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    share, hue = stain.colour_scores(y)
    return share, hue, stain.foreign_colour(y)


def hue_histogram(x: np.ndarray, bins: int = 24) -> list[float]:
    h, c = stain.hue_deg(x[:, ::2, ::2])
    hist = np.histogram(h[c >= stain.MIN_CHROMA], bins=bins, range=(0, 360))[0].astype(float)
    return [round(v, 4) for v in hist / max(hist.sum(), 1)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.experiments.stain_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="the datasets folder (its seven real sets)")
    p.add_argument("--limit", type=int, default=None, help="images per set (evenly spaced); default all")
    p.add_argument("--out", type=Path)
    p.add_argument("--cells", type=Path, default=None,
                   help="cut-out cache of `python -m trainer.cell_experiments cut` (its cutouts/ folder): measure the "
                        "cell model's guard with the colour check on them, instead of the images")
    p.add_argument("--cell-package", type=Path, default=Path("resources/models/wbc-differential"))
    args = p.parse_args(argv)
    if args.cells is not None:
        cells = cell_figures(args.cell_package, args.cells)
        if args.out:
            cmd = "python -m trainer.experiments.stain_check " + " ".join(sys.argv[1:] if argv is None else argv)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"command": cmd, "cells": cells}, indent=1), encoding="utf-8")
        return 0
    if args.data is None:
        p.error("say --data (the images) or --cells (the cut-outs)")
    variants = {"as is": lambda x: x, "hue rotated 180": aug.other_stain,
                "stain perturbed": lambda x: aug.stain_perturb(x, seed=0), "grayscale": aug.to_grayscale,
                "blurred sigma 3": aug.blur}
    results, hists = {}, {}
    for name, sub in SETS.items():
        x = images_of(args.data / sub, args.limit)
        hists[name] = hue_histogram(x[:: max(1, len(x) // 300)])
        results[name] = {"n": int(len(x))}
        for v, f in variants.items():
            share, fshare, flagged = (np.concatenate(a) for a in zip(*(checked(f(x[i:i + CHUNK]))
                                                                      for i in range(0, len(x), CHUNK))))
            results[name][v] = {"flagged": round(float(flagged.mean()), 4),
                                "coloured_share_median": round(float(np.median(share)), 4),
                                "stained_hue_q01_q50_q99": [round(float(q), 1) for q in np.nanquantile(fshare, [0.01, 0.5, 0.99])]
                                if np.isfinite(fshare).any() else None}
        r = results[name]
        print(f"{name:13s} n={r['n']:5d} " + "  ".join(f"{v}: {r[v]['flagged']:.1%} (hue {r[v]['stained_hue_q01_q50_q99']})"
                                                        for v in variants), flush=True)
        print("   hue histogram (15-degree bins from 0):", " ".join(f"{v:.2f}" for v in hists[name]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python -m trainer.experiments.stain_check " + " ".join(sys.argv[1:] if argv is None else argv)
        args.out.write_text(json.dumps({"command": cmd, "band_deg": list(stain.FOREIGN_HUE_DEG),
                                        "min_chroma": stain.MIN_CHROMA, "min_coloured": stain.MIN_COLOURED,
                                        "stained_share": stain.STAINED_SHARE, "sets": results,
                                        "hue_histograms_15deg": hists}, indent=1), encoding="utf-8")
    return 0



# ---- the cell model: its cut-outs, guard and colour check together ----------------------------

CELL_SOURCES = ("pbc", "cnmc", "wbc-masks-d1", "wbc-masks-d2", "pbc-dev", "bccd", "raabin", "taleqani-100")


def black_cutouts(cache: Path, source: str, px: int, side_um: float) -> np.ndarray:
    """The cell model's inputs for ``source``: the black-background cut-outs cached by
    ``python -m trainer.cell_experiments cut``, or its kept-background ones blacked out by their masks."""
    black = cache / f"{side_um:g}um-{px}px-black" / source
    if (black / "images.npy").is_file():
        return np.load(black / "images.npy")
    keep = cache / f"{side_um:g}um-{px}px-keep" / source
    imgs, masks = np.load(keep / "images.npy"), np.load(keep / "masks.npy")
    return (imgs * masks[..., None]).astype(np.uint8)


def focus(x: np.ndarray) -> np.ndarray:
    """A sharpness measure per cut-out at the cell's physical scale (every cut-out is 25 um wide):
    the spread of the Laplacian inside the cell (mask eroded by 5 px) over the spread of its gray
    levels, so that contrast does not count; NaN where the cell is too small."""
    import cv2

    out = np.full(len(x), np.nan, np.float32)
    kernel = np.ones((5, 5), np.uint8)
    for i, im in enumerate(x):
        g = cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY).astype(np.float32)
        inside = cv2.erode((g > 8).astype(np.uint8), kernel).astype(bool)
        if inside.sum() > 50:
            out[i] = cv2.Laplacian(g, cv2.CV_32F)[inside].std() / (g[inside].std() + 1e-3)
    return out


def focus_figures(cache: Path, px: int, side: float) -> dict:
    """Does a lab-independent blur test exist? The focus measure's percentiles per lab's cut-outs
    (every 4th) against C-NMC's blurred (sigma 3) cut-outs."""
    out = {}
    for source in CELL_SOURCES:
        x = black_cutouts(cache, source, px, side)[::4]
        out[source] = [round(float(q), 3) for q in np.nanquantile(focus(x), [0.01, 0.05, 0.5])]
        if source == "cnmc":
            out["cnmc blurred sigma 3"] = [round(float(q), 3) for q in np.nanquantile(focus(aug.blur(x[::2])), [0.5, 0.95, 0.99])]
    for k, v in out.items():
        print(f"focus {k:22s} " + ("q50/q95/q99 " if "blurred" in k else "q01/q05/q50 ") + " / ".join(map(str, v)), flush=True)
    return out


def cell_figures(package: Path, cache: Path) -> dict:
    """Share flagged by the cell model's guard alone and with the colour check, per lab's cut-outs and
    for C-NMC's cut-outs (every 8th, as trainer.cell_experiments ships) blurred and hue-rotated."""
    pred = Predictor(package)
    card = pred.card
    assert pred.guard is not None and not pred.guard.has_other and not pred.guard.has_lab  # guard alone: distance
    px, side = int(card.prep.input_size), float(card.cut_out_side_um)
    out = {}

    def row(name: str, x: np.ndarray) -> None:
        parts = [pred.assess(x[i:i + 64]) for i in range(0, len(x), 64)]
        outside = np.concatenate([p.outside for p in parts])
        colour = np.concatenate([p.colour for p in parts])
        guard = pred.guard.verdict(np.concatenate([p.guard_distance for p in parts]))
        out[name] = {"n": int(len(x)), "flagged_guard_alone": round(float(guard.mean()), 4),
                     "flagged": round(float(outside.mean()), 4), "colour_flagged": round(float(colour.mean()), 4)}
        print(f"cells {name:22s} n={len(x):5d} flagged: guard {guard.mean():.1%}, with the colour check "
              f"{outside.mean():.1%} (colour check alone {colour.mean():.1%})",
              flush=True)

    for source in CELL_SOURCES:
        x = black_cutouts(cache, source, px, side)
        row(source, x)
        if source == "cnmc":
            cn = x[::8]
            row("cnmc blurred sigma 3", aug.blur(cn))
            row("cnmc hue rotated 180", aug.other_stain(cn))
            row("cnmc grayscale", aug.to_grayscale(cn))
            row("cnmc stain perturbed", aug.stain_perturb(cn, seed=0))
    out["focus"] = focus_figures(cache, px, side)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
