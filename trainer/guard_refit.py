"""Refit a package's foreign-image guard THRESHOLD only (weights, class means and covariance
unchanged) on the held-out patients of the split it was trained with, and measure the guard
before and after: flagged share of the test block, foreign sets called with confidence.

    python -m trainer.guard_refit --package resources/models/default \\
        --data ../shared/datasets/all-taleqani \\
        --foreign pbc-dev=../shared/datasets/pbc-dev --foreign cnmc-train=../shared/datasets/cnmc-train \\
        --foreign bccd-boxes=../shared/datasets/bccd-boxes/images \\
        --foreign raabin-boxes=../shared/datasets/raabin-boxes/images

The guard file is rewritten with the new threshold and the card's ``guard`` record (its
SHA-256, the rule, the figures) with it, so the package still verifies and loads.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from core.models.guard import ForeignImageGuard, load_guard
from core.models.package import load_model

from .guard import (add_guard, conformal_threshold, foreign_figures, logits_and_embeddings, ood_sets,
                    threshold_images, _folder_images)
from .quantize import split_as_trained


def _in_lab(guard: ForeignImageGuard, d: np.ndarray, conf: np.ndarray, right: np.ndarray,
            uncertain: float | None) -> dict:
    flagged = d > guard.threshold
    return {"n": int(len(d)), "flagged": round(float(flagged.mean()), 4),
            "flagged_or_uncertain": round(float((flagged | (conf < (uncertain or 0.0))).mean()), 4),
            "flagged_but_right": int((flagged & right).sum())}


def refit_threshold(package: Path, data: Path, foreign: dict[str, Path] | None = None,
                    cache_dir: Path | None = None, command: str = "") -> dict:
    """New threshold from held-out patients (trainer.guard.threshold_images and
    conformal_threshold, as training sets it); returns {"before", "after", "record"} and writes the package."""
    from .metrics import softmax  # heavy: imports scikit-learn

    package = Path(package)
    model, card = load_model(package)
    old = load_guard(package, card.guard, len(card.classes))
    if old is None:
        raise SystemExit(f"{package} has no foreign-image guard to refit")
    ds, split, images = split_as_trained(card, data, cache_dir)
    prep, temp = card.prep, float(card.temperature or 1.0)
    _, e_va = logits_and_embeddings(model, images[split.val], prep)
    keep, groups, described = threshold_images(ds, split)
    threshold, rule = conformal_threshold(old.distances(e_va[keep]), groups, card.guard.get("flag_rate_target", 0.05))
    new = dataclasses.replace(old, threshold=threshold)

    lo_te, e_te = logits_and_embeddings(model, images[split.test], prep)
    d_te, conf_te = old.distances(e_te), softmax(lo_te, temp).max(1)
    right = lo_te.argmax(1) == ds.labels[split.test]
    sets = dict(ood_sets(images[split.test], prep))
    for name, folder in (foreign or {}).items():
        sets[name] = _folder_images(folder, prep)
    measured: dict[str, dict] = {"before": {}, "after": {}}
    for key, guard in (("before", old), ("after", new)):
        measured[key]["in_lab_test"] = _in_lab(guard, d_te, conf_te, right, card.uncertain_threshold)
        measured[key]["in_lab_validation_held_out"] = {"n": int(len(keep)), "flagged": round(float(
            (old.distances(e_va[keep]) > guard.threshold).mean()), 4)}
        measured[key]["threshold"] = round(guard.threshold, 4)
    for name, x in sets.items():
        if len(x) == 0:
            continue
        lo, em = logits_and_embeddings(model, x, prep)
        conf = softmax(lo, temp).max(1)
        for key, guard in (("before", old), ("after", new)):
            measured[key].setdefault("foreign", {})[name] = foreign_figures(guard, d_te, conf, em, card.uncertain_threshold)
    after = measured["after"]
    info = {k: v for k, v in card.guard.items() if k not in ("sha256",)}
    info.update({"threshold": round(threshold, 4), **rule, "n_threshold": int(len(keep)), "threshold_from": described,
                 "in_lab_test_flagged": after["in_lab_test"]["flagged"],
                 "in_lab_test_flagged_or_uncertain": after["in_lab_test"]["flagged_or_uncertain"],
                 "n_in_lab_test": after["in_lab_test"]["n"], "foreign": after["foreign"],
                 "threshold_refit": {"before": {"threshold": measured["before"]["threshold"],
                                                "in_lab_test": measured["before"]["in_lab_test"],
                                                "confident_call": {k: v["confident_call"] for k, v in
                                                                   measured["before"]["foreign"].items()}},
                                     "weights_and_means": "unchanged (threshold only)", "command": command}})
    record = add_guard(package, new, info)
    return {**measured, "record": record}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.guard_refit", description=__doc__.split("\n\n")[0])
    p.add_argument("--package", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="the class folders the model was trained on")
    p.add_argument("--foreign", action="append", default=[], metavar="NAME=FOLDER")
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache (outside the repository)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the before/after figures here")
    args = p.parse_args(argv)
    import torch  # heavy: imports torch

    torch.set_num_threads(args.threads)
    foreign = {}
    for item in args.foreign:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            p.error(f"--foreign needs NAME=FOLDER with an existing folder, not {item!r}")
        foreign[name] = Path(folder)
    out = refit_threshold(args.package, args.data, foreign, args.cache_dir,
                          command="python -m trainer.guard_refit " + " ".join(argv if argv is not None else sys.argv[1:]))
    for key in ("before", "after"):
        m = out[key]
        t = m["in_lab_test"]
        print(f"{key}: threshold {m['threshold']:.1f}; held-out validation flagged {m['in_lab_validation_held_out']['flagged']:.1%}"
              f" of {m['in_lab_validation_held_out']['n']}; test block flagged {t['flagged']:.1%} of {t['n']} "
              f"({t['flagged_but_right']} of them predicted right), flagged or uncertain {t['flagged_or_uncertain']:.1%}")
        for name, f in m["foreign"].items():
            print(f"  {name:26s} n={f['n']:<5d} flagged {f['flagged']:.1%}  flagged or uncertain "
                  f"{f['flagged_or_uncertain']:.1%}  called with confidence {f['confident_call']:.1%}")
    print(f"rule: {out['record']['threshold_rule']}")
    if args.json:
        args.json.write_text(json.dumps({k: out[k] for k in ("before", "after")}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
