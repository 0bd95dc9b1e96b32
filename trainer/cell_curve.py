"""The new-lab learning curve of the white-cell differential model (issue 23, item 4).

A parent is the shipped recipe (frozen ImageNet EfficientNet-Lite0 + linear head, guard from
the training side) fitted without a fixed test part of every training source; a "new lab" is a
typed source it never saw. A simulated reviewer labels 0, 10, 25, 50, 100 of its cells (least
confident first, or at random; 3 seeds), and each budget is adapted exactly as ``hemascan
retrain`` adapts a cell model (the head refit with feature replay): the same functions
(trainer.replay: reviewed_embeddings' four views, replay_embeddings, fit_head_with_replay with
RetrainConfig's head settings; trainer.guard.extend_guard: the parent's guard plus the reviewed
cells' class centres), on cached embeddings instead of images (the
backbone is frozen, so an embedding is the same whichever way it is computed). About a fifth of
the reviewed cells go to the validation side, as the app's content hash puts them, and are not
trained on.

    python -m trainer.cell_experiments --cache /work/cache/wbcmodel --out docs/retrain curve

writes docs/retrain/cell_learning_curve.json and .png; docs/retrain.md gives the table.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from core.jobs import run_job
from core.models.architectures import classifier_head
from core.models.guard import load_guard
from core.models.package import load_model
from trainer.cell_data import CLASSES, CutSpec
from trainer.cell_model import LinearHead
from trainer.guard import extend_guard, fit_guard, match_parent_on_lab
from trainer.metrics import softmax
from trainer.replay import AUGMENTED_VIEWS, REPLAY_PER_CLASS, fit_head_with_replay, replay_embeddings, reviewed_embeddings
from trainer.retrain import RetrainConfig

BUDGETS = (0, 10, 25, 50, 100)
ORDERS = ("least_confident", "random")
SEEDS = (0, 1, 2)
VAL_SHARE = 0.2  # the app's validation side: int(sha256[:16], 16) / 2**64 < 0.2
MIN_LEFT = 50  # a budget is run only where this many of the new lab's cells remain to score
MIN_CLASS = 5  # macro recall over the classes with at least this many cells scored (a class of 1 is noise)
GUARD_ONLY = ("bccd", "raabin")  # untyped labs held out of both training and review: the guard check
CNMC_TEST = ("30", "33", "H10")  # C-NMC subjects the parents never train on (the forgetting check)

# scenario -> (the parent's training sources, the new lab)
SCENARIOS = {
    "wbc-masks-d1 (shipped recipe, never trained on it)": (("pbc", "cnmc", "wbc-masks-d2"), "wbc-masks-d1"),
    "wbc-masks-d2 (left out of the parent)": (("pbc", "cnmc"), "wbc-masks-d2"),
}


def macro_recall(y: np.ndarray, pred: np.ndarray, min_class: int = MIN_CLASS) -> float:
    """Mean recall over the classes with at least ``min_class`` cells in ``y``."""
    ks = [k for k in np.unique(y) if (y == k).sum() >= min_class]
    return float(np.mean([(pred[y == k] == k).mean() for k in ks])) if ks else float("nan")


def test_part(name: str, d: dict) -> np.ndarray:
    """The cells of a training source that no parent trains on: C-NMC subjects CNMC_TEST, a
    random fifth of PBC, a random 30% of wbc-masks d2."""
    n = len(d["y"])
    if name == "cnmc":
        return np.isin(d["subject"], CNMC_TEST)
    share = 0.2 if name == "pbc" else 0.3
    return np.random.default_rng(0).random(n) < share


class Parent:
    """A parent package in embedding space: head (W, b), temperature, guard."""

    def __init__(self, emb: np.ndarray, y: np.ndarray, held_emb: np.ndarray, c: float, temperature: float):
        self.W, self.b = LinearHead(c=c).fit(emb, y, len(CLASSES)).weights()
        self.temperature = temperature
        # the threshold from held-out cells of the same sources (a new subject's cells), 5% flagged
        self.guard, self.guard_info = fit_guard(emb, y, held_emb)

    @classmethod
    def of_package(cls, package: Path) -> "Parent":
        """A package's own head, temperature and guard (e.g. the shipped model)."""

        model, card = load_model(package)
        head = classifier_head(model)
        p = cls.__new__(cls)
        p.W, p.b = head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy()
        p.temperature = float(card.temperature or 1.0)
        p.guard = load_guard(package, card.guard, len(card.classes))
        p.guard_info = dict(card.guard)
        return p

    def probs(self, emb: np.ndarray) -> np.ndarray:
        return softmax(emb.astype(np.float64) @ self.W.T.astype(np.float64) + self.b, self.temperature)


def adapt(parent: Parent, views: np.ndarray, views_y: np.ndarray, train_emb: np.ndarray, train_y: np.ndarray,
          val_emb: np.ndarray, lab_emb: np.ndarray, seed: int, guard_mode: str = "extend", **fit_options):
    """What retrain does to a cell model with reviewed cells: (W, b, guard). ``views``: the
    reviewed training cells' embeddings, four views each (trainer.replay.reviewed_embeddings);
    ``train_emb``: the plain view (the guard's new centres); ``lab_emb``: the lab's cells
    the parent classified. ``guard_mode`` "extend" (retrain's: the parent's guard plus the new
    lab's centres, trainer.guard.extend_guard) or "refit" (before: refitted on the reviewed and
    replayed cells, threshold from the validation cells, raised to the parent's flag count on
    the lab's cells). ``fit_options`` default to retrain's (RetrainConfig.head_distill, head_anchor,
    head_real_share)."""
    head = nn.Linear(parent.W.shape[1], parent.W.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(parent.W))
        head.bias.copy_(torch.as_tensor(parent.b))
    model = nn.Sequential(head)
    classes_fitted = parent.guard.classes_of_centres(parent.guard_info["classes_fitted"])
    rep, rep_y = replay_embeddings(parent.guard, classes_fitted, REPLAY_PER_CLASS, seed)
    cfg = RetrainConfig()
    fit_options = {"anchor": cfg.head_anchor, "real_share": cfg.head_real_share, "distill": cfg.head_distill,
                   **fit_options}
    run_job(fit_head_with_replay(model, views, views_y, rep, rep_y, len(CLASSES), seed=seed, **fit_options))
    W, b = head.weight.detach().numpy(), head.bias.detach().numpy()
    if guard_mode == "extend":
        guard, _ = extend_guard(parent.guard, parent.guard_info, train_emb, train_y)
        return W, b, guard
    e_tr, y_tr = np.concatenate([train_emb, rep]), np.concatenate([train_y, rep_y])
    guard, info = fit_guard(e_tr, y_tr, val_emb if len(val_emb) else np.zeros((0, 0)))
    if len(lab_emb):
        guard, info = match_parent_on_lab(guard, info, lab_emb, parent.guard.flags(lab_emb)[1], "parent")
    return W, b, guard


def pool_views(name: str, images: np.ndarray, labels: np.ndarray, cache: Path, prep, log=print) -> np.ndarray:
    """(AUGMENTED_VIEWS, N, 1280) embeddings of every cell of a new lab as retrain computes them
    (view 0 as it is, the others augmented as RetrainConfig's default), cached as .npy."""
    path = cache / f"views-{name}.npy"
    if path.is_file():
        return np.load(path)

    model, _ = load_model(Path(__file__).resolve().parent.parent / "resources" / "models" / "wbc-differential")
    t0 = time.perf_counter()
    emb, _ = reviewed_embeddings(model, images, labels, prep, RetrainConfig().augment, "cpu", 0)
    emb = emb.reshape(AUGMENTED_VIEWS, len(labels), -1).astype(np.float32)
    log(f"{name}: {AUGMENTED_VIEWS} views of {len(labels)} cells embedded in {time.perf_counter() - t0:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


def run_curve(data: dict, views: dict, c: float, temperature: float, log=print,
              scenarios: dict = SCENARIOS, budgets=BUDGETS, orders=ORDERS, seeds=SEEDS,
              runs_log: Path | None = None) -> dict:
    """``data``: source -> {"emb", "y", "subject"}; ``views``: new lab -> (views, N, D).
    Returns {"scenarios": {name: {"parent": ..., "runs": [...]}}, "settings": ...}."""
    out = {"settings": {"budgets": list(budgets), "orders": list(orders), "seeds": list(seeds),
                        "val_share": VAL_SHARE, "min_class": MIN_CLASS, "replay_per_class": REPLAY_PER_CLASS,
                        "views": AUGMENTED_VIEWS, "head_c": c, "temperature": temperature,
                        "cnmc_test_subjects": list(CNMC_TEST)},
           "scenarios": {}}
    for scen, (train_sources, new) in scenarios.items():
        t0 = time.perf_counter()
        parts = {s: test_part(s, data[s]) for s in train_sources}
        emb = np.concatenate([data[s]["emb"][~parts[s]] for s in train_sources])
        y = np.concatenate([data[s]["y"][~parts[s]] for s in train_sources])
        held = np.concatenate([data[s]["emb"][parts[s]] for s in train_sources])
        parent = Parent(emb, y, held, c, temperature)
        # the other sources' figures: each training source's test part, every other typed set
        others = {f"{s} (test part)": (data[s]["emb"][parts[s]], data[s]["y"][parts[s]]) for s in train_sources}
        for s in ("pbc-dev", "wbc-masks-d1", "wbc-masks-d2"):
            if s != new and s not in train_sources:
                others[s] = (data[s]["emb"], data[s]["y"])
        guard_only = {s: data[s]["emb"] for s in GUARD_ONLY}
        nd = data[new]
        v = views[new]
        p0 = parent.probs(nd["emb"])

        def score(W, b, guard, left):
            def pred(e):
                return (e.astype(np.float64) @ np.asarray(W, np.float64).T + b).argmax(1)
            r = {"new_lab_macro_recall": macro_recall(nd["y"][left], pred(nd["emb"][left])),
                 "new_lab_accuracy": float((pred(nd["emb"][left]) == nd["y"][left]).mean()),
                 "new_lab_flagged": float(guard.flags(nd["emb"][left])[1].mean()),
                 "others_macro_recall": {k: macro_recall(yy, pred(e)) for k, (e, yy) in others.items()},
                 "held_out_labs_flagged": {k: float(guard.flags(e)[1].mean()) for k, e in guard_only.items()},
                 "n_scored": int(left.sum())}
            return r

        base = score(parent.W, parent.b, parent.guard, np.ones(len(nd["y"]), bool))
        runs = []
        for order in orders:
            for seed in seeds:
                rng = np.random.default_rng(seed)
                if order == "least_confident":  # the parent's lowest calibrated confidence first, ties by seed
                    sequence = np.lexsort((rng.random(len(p0)), p0.max(1)))
                else:
                    sequence = rng.permutation(len(p0))
                for k in budgets:
                    if len(nd["y"]) - k < MIN_LEFT:
                        continue
                    reviewed = sequence[:k]
                    left = np.ones(len(nd["y"]), bool)
                    left[reviewed] = False
                    if k == 0:
                        r = {**base, "n_train": 0, "n_val": 0}
                    else:
                        is_val = np.random.default_rng(1000 + seed).random(len(nd["y"]))[reviewed] < VAL_SHARE
                        tr, va = reviewed[~is_val], reviewed[is_val]
                        W, b, guard = adapt(parent, v[:, tr].reshape(-1, v.shape[2]), np.tile(nd["y"][tr], v.shape[0]),
                                            nd["emb"][tr], nd["y"][tr], nd["emb"][va], nd["emb"], seed)
                        r = {**score(W, b, guard, left), "n_train": int(len(tr)), "n_val": int(len(va)),
                             "reviewed_classes": {CLASSES[c_]: int((nd["y"][reviewed] == c_).sum())
                                                  for c_ in np.unique(nd["y"][reviewed])}}
                    runs.append({"order": order, "seed": seed, "reviewed": k, **r})
                    log(f"{scen} {order} seed {seed} k={k}: macro recall {r['new_lab_macro_recall']:.3f}, "
                        f"flagged {r['new_lab_flagged']:.2f}, others " + ", ".join(
                            f"{o} {x:.3f}" for o, x in r["others_macro_recall"].items()) + "; held-out labs flagged "
                        + ", ".join(f"{g} {x:.2f}" for g, x in r["held_out_labs_flagged"].items()))
                    if runs_log is not None:  # every run as it ends: a long curve on a busy machine keeps what it did
                        with open(runs_log, "a") as fh:
                            fh.write(json.dumps({"scenario": scen, **r, "order": order, "seed": seed, "reviewed": k}) + "\n")
        out["scenarios"][scen] = {"parent_sources": list(train_sources), "new_lab": new, "n_new_lab": int(len(nd["y"])),
                                  "new_lab_classes": {CLASSES[c_]: int((nd["y"] == c_).sum()) for c_ in np.unique(nd["y"])},
                                  "parent": base, "parent_guard_threshold": float(parent.guard.threshold),
                                  "runs": runs, "seconds": time.perf_counter() - t0}
    return out


def summarise(result: dict) -> list[dict]:
    """One row per scenario x order x budget: means (and min/max) over the seeds."""
    rows = []
    for scen, s in result["scenarios"].items():
        keys = sorted({(r["order"], r["reviewed"]) for r in s["runs"]}, key=lambda t: (t[0], t[1]))
        for order, k in keys:
            rs = [r for r in s["runs"] if r["order"] == order and r["reviewed"] == k]
            mr = [r["new_lab_macro_recall"] for r in rs]
            others = {o: float(np.mean([r["others_macro_recall"][o] for r in rs])) for o in rs[0]["others_macro_recall"]}
            worst_drop = max(s["parent"]["others_macro_recall"][o] - min(r["others_macro_recall"][o] for r in rs)
                             for o in others)
            rows.append({"scenario": scen, "order": order, "reviewed": k, "n_train": float(np.mean([r["n_train"] for r in rs])),
                         "macro_recall": float(np.mean(mr)), "macro_recall_min": float(np.min(mr)),
                         "macro_recall_max": float(np.max(mr)),
                         "new_lab_flagged": float(np.mean([r["new_lab_flagged"] for r in rs])),
                         "others": others, "worst_other_drop": float(worst_drop),
                         "held_out_labs_flagged": {g: float(np.mean([r["held_out_labs_flagged"][g] for r in rs]))
                                                   for g in rs[0]["held_out_labs_flagged"]}})
    return rows


def table(result: dict) -> str:
    rows = summarise(result)
    lines = []
    for scen, s in result["scenarios"].items():
        other_names = list(s["parent"]["others_macro_recall"])
        guard_names = list(s["parent"]["held_out_labs_flagged"])
        lines.append(f"\n**{scen}**: parent trained on {', '.join(s['parent_sources'])} (without their test parts); "
                     f"new lab {s['new_lab']}, {s['n_new_lab']} cells ("
                     + ", ".join(f"{k} {v}" for k, v in s["new_lab_classes"].items()) + ")\n")
        lines.append("| order | reviewed | trained on | new lab macro recall (min-max) | new lab flagged | "
                     + " | ".join(other_names) + " | worst drop | " + " | ".join(f"{g} flagged" for g in guard_names) + " |")
        lines.append("| --- " * (6 + len(other_names) + len(guard_names)) + "|")
        for r in (r for r in rows if r["scenario"] == scen):
            lines.append(f"| {r['order'].replace('_', ' ')} | {r['reviewed']} | {r['n_train']:.0f} | "
                         f"{r['macro_recall']:.3f} ({r['macro_recall_min']:.3f}-{r['macro_recall_max']:.3f}) | "
                         f"{r['new_lab_flagged']:.2f} | " + " | ".join(f"{r['others'][o]:.3f}" for o in other_names)
                         + f" | {r['worst_other_drop']:+.3f} | "
                         + " | ".join(f"{r['held_out_labs_flagged'][g]:.2f}" for g in guard_names) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """A plain PNG (PIL: matplotlib is not in the app's environment): macro recall of the new
    lab against reviewed cells, one panel per scenario, least confident (blue) and random (orange),
    mean over seeds with min-max bars."""
    rows = summarise(result)
    scen_names = list(result["scenarios"])
    pw, ph, m = 460, 340, 60
    img = Image.new("RGB", (pw * len(scen_names), ph + 40), "white")
    dr = ImageDraw.Draw(img)
    colours = {"least_confident": (31, 119, 180), "random": (255, 127, 14)}
    for i, scen in enumerate(scen_names):
        x0, y0, w, h = i * pw + m, 40, pw - m - 20, ph - 80
        dr.text((i * pw + m, 8), scen, fill="black")
        dr.rectangle([x0, y0, x0 + w, y0 + h], outline="black")

        def X(k):
            return x0 + w * k / 100

        def Y(v):
            return y0 + h * (1 - v)
        for v in (0, 0.25, 0.5, 0.75, 0.9, 1.0):
            dr.line([x0, Y(v), x0 + w, Y(v)], fill=(200, 200, 200) if v != 0.9 else (150, 200, 150))
            dr.text((x0 - 34, Y(v) - 6), f"{v:.2f}", fill="black")
        for k in BUDGETS:
            dr.text((X(k) - 8, y0 + h + 6), str(k), fill="black")
        dr.text((x0 + w / 2 - 40, y0 + h + 22), "reviewed cells", fill="black")
        for j, order in enumerate(ORDERS):
            pts = [(X(r["reviewed"]), Y(r["macro_recall"]), Y(r["macro_recall_min"]), Y(r["macro_recall_max"]))
                   for r in rows if r["scenario"] == scen and r["order"] == order]
            dr.line([(p[0], p[1]) for p in pts], fill=colours[order], width=2)
            for px, py, lo, hi in pts:
                dr.line([px + 3 * j, lo, px + 3 * j, hi], fill=colours[order])
                dr.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colours[order])
            dr.text((x0 + 8, y0 + h - 30 + 14 * j), order.replace("_", " ") + " first" * (order != "random"),
                    fill=colours[order])
        dr.text((x0 + 8, y0 + 4), "new lab macro recall (mean of 3 seeds, min-max)", fill="black")
    img.save(path)


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cell_learning_curve.json").write_text(json.dumps(result, indent=1))
    (out / "cell_learning_curve.md").write_text(table(result))
    plot(result, out / "cell_learning_curve.png")


def spec_for(px: int) -> CutSpec:
    return CutSpec(out_px=px, background="black")


def check_with_retrain(data_dir: Path, retrained: Path, parent_package: Path, files: np.ndarray, emb: np.ndarray,
                       y: np.ndarray, images: np.ndarray) -> dict:
    """The cached-embedding refit against a real ``hemascan retrain`` of the same reviewed cells:
    the same training / validation cells (read from the app's database in ``data_dir``: the
    crops imported there are named as the source's files), the same parent package, the
    training cells' four views drawn as retrain draws them (same order, same seed); both heads'
    predictions on the source's cells that were not reviewed."""

    with sqlite3.connect(Path(data_dir) / "hemascan.sqlite3") as con:
        rows = con.execute("SELECT f.path, i.split FROM files f JOIN images i ON i.id = f.image_id").fetchall()
    key = {"/".join(str(f).split("/")[-2:]): i for i, f in enumerate(files)}
    side = {key["/".join(Path(p).parts[-2:])]: sp for p, sp in rows if "/".join(Path(p).parts[-2:]) in key}
    tr = np.array(sorted(i for i, sp in side.items() if sp == "train"))
    va = np.array(sorted(i for i, sp in side.items() if sp == "val"), dtype=int)
    left = np.ones(len(y), bool)
    left[list(side)] = False
    parent = Parent.of_package(parent_package)
    model, card = load_model(parent_package)
    v, _ = reviewed_embeddings(model, np.asarray(images[tr]), y[tr], card.prep, RetrainConfig().augment, "cpu", 0)
    views = np.zeros((AUGMENTED_VIEWS, len(y), v.shape[1]), np.float32)
    views[:, tr] = v.reshape(AUGMENTED_VIEWS, len(tr), -1)
    W, b, _ = adapt(parent, views[:, tr].reshape(-1, views.shape[2]), np.tile(y[tr], views.shape[0]), emb[tr], y[tr],
                    emb[va], emb[:0], 0)
    model, _ = load_model(retrained)
    head = classifier_head(model)
    Wr, br = head.weight.detach().numpy(), head.bias.detach().numpy()
    sim = (emb[left] @ W.T + b).argmax(1)
    real = (emb[left] @ Wr.T + br).argmax(1)
    return {"n_train": int(len(tr)), "n_val": int(len(va)), "n_compared": int(left.sum()),
            "agreement": float((sim == real).mean()), "macro_recall_cached_refit": macro_recall(y[left], sim),
            "macro_recall_real_retrain": macro_recall(y[left], real),
            "parent_macro_recall": macro_recall(y[left], parent.probs(emb[left]).argmax(1))}
