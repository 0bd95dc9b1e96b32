"""Does the field model's guard need "another stain" centres? Measured on the shipped default
model (issue 23, item 6): the hue-rotated (180 degrees) copies of the test block are the one
generated foreign set the guard lets through (37% called with confidence), so this measures
(a) whether those confident calls are wrong, and (b) what "Other"-style centres fitted on
training images rotated by 90/135/225/270 degrees (never 180) would do to them and to the
in-lab test block, its stain-perturbed and its grayscale copies.

    python -m trainer.experiments.guard_stain --data ../shared/datasets/all-taleqani \\
        --cache /work/cache/fieldguard/decoded --out docs/ood/guard_stain.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from core.imaging.stain import foreign_colour
from core.models.guard import ForeignImageGuard, load_guard
from core.models.package import load_model
from trainer import augment as aug
from trainer import colour
from trainer.guard import logits_and_embeddings
from trainer.metrics import softmax
from trainer.quantize import split_as_trained

ROTATIONS = {"hue90": 0.25, "hue270": -0.25, "hue135": 0.375, "hue225": -0.375}  # turns; 180 kept for the test


def hue(x: np.ndarray, turns: float) -> np.ndarray:
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    return colour.adjust_hue(t, turns).permute(0, 2, 3, 1).contiguous().numpy()


def figures(guard: ForeignImageGuard, lo: np.ndarray, em: np.ndarray, labels: np.ndarray | None,
            temperature: float, uncertain: float, colour: np.ndarray | None = None) -> dict:
    """``colour``: the colour check's flags (core/imaging/stain.py), applied beside the guard as
    inference applies them (core.inference.predict.Predictor.assess); None: the guard alone."""
    _, outside = guard.flags(em)
    if colour is not None:
        outside = outside | colour
    confident = ~outside & (softmax(lo, temperature).max(1) >= uncertain)
    out = {"n": int(len(em)), "flagged": round(float(outside.mean()), 4), "confident_call": round(float(confident.mean()), 4)}
    if labels is not None:
        right = lo.argmax(1) == labels
        out.update(accuracy=round(float(right.mean()), 4), confident_calls=int(confident.sum()),
                   confident_wrong=int((confident & ~right).sum()))
    return out


def main(argv: list[str] | None = None) -> int:
    from sklearn.cluster import KMeans  # heavy: imports scikit-learn

    p = argparse.ArgumentParser(prog="python -m trainer.experiments.guard_stain", description=__doc__.split("\n\n")[0])
    p.add_argument("--package", type=Path, default=Path("resources/models/default"))
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=None, help="decoded-image cache (outside the repository)")
    p.add_argument("--n-rotated", type=int, default=400, help="training images rotated per angle")
    p.add_argument("--out", type=Path)
    p.add_argument("--no-centres", action="store_true", help="skip the rotated-stain centres (the guard and the colour check only)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    model, card = load_model(args.package)
    guard = load_guard(args.package, card.guard, len(card.classes))
    ds, split, images = split_as_trained(card, args.data, args.cache)
    prep, temp, unc = card.prep, float(card.temperature or 1.0), float(card.uncertain_threshold or 0.0)
    test = images[split.test]
    y_test = ds.labels[split.test]
    sets = {"in-lab test": test, "stain perturbed": aug.stain_perturb(test, seed=0),
            "grayscale": aug.to_grayscale(test), "hue rotated 180": aug.other_stain(test)}
    emb = {name: logits_and_embeddings(model, x, prep) for name, x in sets.items()}
    colour = {name: foreign_colour(x) for name, x in sets.items()}
    results = {"shipped": {name: figures(guard, lo, em, y_test, temp, unc) for name, (lo, em) in emb.items()},
               "shipped + colour check": {name: figures(guard, lo, em, y_test, temp, unc, colour[name])
                                          for name, (lo, em) in emb.items()}}
    for name, (lo, em) in emb.items():
        results["shipped + colour check"][name]["colour_flagged"] = round(float(colour[name].mean()), 4)
    if args.no_centres:
        return report(results, args, argv)
    rng = np.random.default_rng(0)
    sample = images[rng.choice(split.train, min(args.n_rotated, len(split.train)), replace=False)]
    rotated = np.concatenate([logits_and_embeddings(model, hue(sample, t), prep)[1] for t in ROTATIONS.values()])
    z = rotated @ guard.whitening.astype(np.float64)
    for k in (2, 4, 8):
        centres = KMeans(n_clusters=k, n_init=4, random_state=0).fit(z).cluster_centers_.astype(np.float32)
        g = ForeignImageGuard(guard.whitening, guard.class_means, guard.threshold, centres)
        results[f"+{k} rotated-stain centres"] = {name: figures(g, lo, em, y_test, temp, unc)
                                                  for name, (lo, em) in emb.items()}
    return report(results, args, argv)


def report(results: dict, args, argv: list[str] | None) -> int:
    for variant, r in results.items():
        print(variant)
        for name, f in r.items():
            print(f"  {name:18s} flagged {f['flagged']:.1%}  called with confidence {f['confident_call']:.1%} "
                  f"({f['confident_wrong']} of {f['confident_calls']} wrong)  accuracy {f['accuracy']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python -m trainer.experiments.guard_stain " + " ".join(sys.argv[1:] if argv is None else argv),
                                        "rotations_fitted": [] if args.no_centres else list(ROTATIONS), **results},
                                       indent=1), encoding="utf-8")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
