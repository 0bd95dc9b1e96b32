"""The new-lab learning curve: how many reviewed images does a new lab need before the
shipped model is good on its images? (issue 13, section 4)

Measured with the project's own retrain job (``trainer.retrain.retrain`` with its defaults;
``--retrain-options`` sets other RetrainConfig fields, e.g. ``{"replay": "off"}`` for the
fine-tune), starting every run from the shipped ALL-vs-normal model
(``resources/models/all-vs-normal``: seed_cnn3, 128 px, C-NMC subject split fold 4), in a
fresh data directory, exactly as a lab would: the reviewed images are scanned, a simulated
reviewer records their true class as ``human`` label events, ``retrain`` adapts the active
(shipped) model (validation side fixed per image by content hash, 20%), compares it with
the active version and registers the new version. The commit of the code is recorded.

Scenarios (the "new lab" is data the shipped model never saw):

* ``A``: the Taleqani fields (``all-taleqani``) mapped to the binary task: Benign -> Normal;
  Early, Pre, Pro -> ALL. Review pool = the training and validation sides of the project's
  pseudo-patient split (``trainer.data.patient_split``, fold 4: contiguous blocks of file
  numbers per class, duplicates joined); evaluation = its test side (the last 20% of every
  class's file numbering), never reviewed.
* ``B``: ``pbc-dev`` normal cells of 8 types (another hospital, scanner and stain), all
  Normal. Per cell type (sub-folder), sorted by file number: the first half is the review
  pool, the second half the evaluation part.

For every run the held-out C-NMC subjects of the shipped model's card (ALL patients 33 and
38, normal donor H10; ``trainer.data.subject_split`` fold 4) are scored too: what the model
knew before must not be forgotten.

Per scenario, budget (reviewed images) and strategy (``least_confident``: lowest max
probability of the shipped model first; ``random``) and seed: the first ``budget`` images
of the strategy's order are reviewed (nested: a seed's 25 contain its 10) and ONE retrain
runs from the shipped model. The least-confident order is the shipped model's ranking of
the pool (ties broken by the seed), so its spread over seeds is the retrain's own
randomness; the random order is a seeded permutation of the pool. Budget 0 is the shipped
model itself. ``random+base`` reviews what ``random`` does and adds the shipped model's own
C-NMC training and validation subjects as retrain's base data.

Recorded per run: accuracy and macro recall (mean recall over the classes present) on the
new lab's evaluation part and on the C-NMC test side (plus recall per class and per
subject), the share the NEW version's refitted foreign-image guard flags on both, the
class mix of the reviewed images, n_train / n_val, the comparison verdict, retrain
seconds. Results are written after every run; a second call with the same ``--out``
skips the runs already there (resumable).

    python -m trainer.experiments.learning_curve --out docs/retrain/learning_curve.json \
        --plot docs/retrain/learning_curve.png

``--plot-only`` recomputes the summary and redraws the PNG from the JSON. Needs matplotlib
for the plot (``pip install 'hemascan[experiments]'``); nothing else here imports it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
from trainer.data import compute_hashes
from trainer.data import (
    duplicate_pairs,
    file_number,
    load_images,
    patient_split,
    scan_as_one_class,
    scan_class_folders,
    subject_of,
    subject_split,
)
from core.models.guard import load_guard
from core.models.package import load_model
from core.config import resolve_paths
from core.jobs import run_job
from core.review.labels import record_labels
from core.models.package import read_card
from core.app.bootstrap import open_database
from core.imaging.scan import images_under, scan
from trainer.retrain import RetrainConfig, activate, retrain
from core.config import resources_dir

AVN_DIR = "all-vs-normal"
CLASSES = ["ALL", "Normal"]  # the all_vs_normal taxonomy
TALEQANI_TO_BINARY = {"Benign": "Normal", "Early Pre-B": "ALL", "Pre-B": "ALL", "Pro-B": "ALL"}
STRATEGIES = ("least_confident", "random")
BASE = "+base"  # e.g. "random+base": the same reviewed images, plus retrain's base-data folder (below)
COLOURS = {"least_confident": "tab:red", "random": "tab:blue", "random+base": "tab:green",
           "least_confident+base": "tab:orange"}
SCENARIOS = {
    "A": "Taleqani fields (Benign -> Normal; Early, Pre, Pro -> ALL)",
    "B": "pbc-dev normal cells (another hospital), all Normal",
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _default_data() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "datasets"


# ---- data ------------------------------------------------------------------------------------

def _hashes_cached(ds, cache_file: Path):
    """trainer.data.compute_hashes, cached by path, size and mtime (2,770 fields: ~1 min)."""

    keys = []
    for p in ds.paths:
        st = p.stat()
        keys.append(f"{p}|{st.st_size}|{st.st_mtime_ns}")
    if cache_file.is_file():
        c = json.loads(cache_file.read_text())
        if c.get("keys") == keys:
            ds.sha256 = c["sha256"]
            ds.phash = np.array([int(h, 16) for h in c["phash"]], dtype=np.uint64)
            return ds
    compute_hashes(ds)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"keys": keys, "sha256": ds.sha256, "phash": [f"{int(h):016x}" for h in ds.phash]}))
    return ds


class Part:
    """Images of one side (pool / evaluation), decoded at the model's preprocessing."""

    def __init__(self, name: str, paths: list[Path], labels: np.ndarray, x: np.ndarray, groups: list[str] | None = None):
        self.name, self.paths, self.y, self.x = name, paths, np.asarray(labels, dtype=np.int64), x
        self.groups = groups  # per image: C-NMC subject or pbc cell type (reported per group)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        return {c: int((self.y == i).sum()) for i, c in enumerate(CLASSES)}


def load_scenarios(data_root: Path, prep, work: Path) -> tuple[dict, Part, dict, list]:
    """{scenario: {"pool": Part, "eval": Part, "info"}}, the C-NMC test Part, setup info, and
    the C-NMC images off the test side [(path, class folder)] (the base-data folder)."""

    cache = work / "cache"
    out: dict = {}
    # A: Taleqani fields, pseudo-patient split (fold 4) of the 4-class folders, then mapped to binary
    tq = _hashes_cached(scan_class_folders(data_root / "all-taleqani", "all_subtype"), cache / "taleqani-hashes.json")
    sp = patient_split(tq, fold=4)
    y_bin = np.array([CLASSES.index(TALEQANI_TO_BINARY[tq.classes[k]]) for k in tq.labels])
    x_tq = load_images(tq, prep, cache)
    sub = tq.classes
    a_info = {"source": str(data_root / "all-taleqani"), "n_images": len(tq), "split": sp.describe(),
              "mapping": TALEQANI_TO_BINARY}
    pool_idx = np.sort(np.concatenate([sp.train, sp.val]))
    for name, idx in (("pool", pool_idx), ("eval", np.sort(sp.test))):
        part = Part(f"A-{name}", [tq.paths[i] for i in idx], y_bin[idx], x_tq[idx],
                    [sub[int(tq.labels[i])] for i in idx])
        a_info[f"n_{name}"] = len(part)
        a_info[f"{name}_counts"] = part.counts()
        a_info[f"{name}_subtypes"] = {c: int(sum(g == c for g in part.groups)) for c in sub}
        out.setdefault("A", {})[name] = part
    out["A"]["info"] = a_info
    out["A"]["sha256"] = dict(zip(map(str, tq.paths), tq.sha256))

    # B: pbc-dev, per cell type sorted by file number: first half pool, second half evaluation
    pbc = _hashes_cached(scan_as_one_class(data_root / "pbc-dev", "all_vs_normal", "Normal"), cache / "pbc-hashes.json")
    x_pbc = load_images(pbc, prep, cache)
    kind = [p.parent.name for p in pbc.paths]
    side = np.zeros(len(pbc), dtype=np.int8)
    for k in sorted(set(kind)):
        idx = np.array([i for i in range(len(pbc)) if kind[i] == k])
        idx = idx[np.argsort([file_number(pbc.paths[i]) for i in idx], kind="stable")]
        side[idx[len(idx) // 2:]] = 1
    pairs = duplicate_pairs(pbc)
    b_info = {"source": str(data_root / "pbc-dev"), "n_images": len(pbc),
              "split": "per cell type (sub-folder), sorted by file number: first half review pool, second half evaluation",
              "duplicate_pairs": len(pairs), "duplicate_pairs_across_sides": sum(1 for a, b in pairs if side[a] != side[b])}
    for name, s in (("pool", 0), ("eval", 1)):
        idx = np.nonzero(side == s)[0]
        part = Part(f"B-{name}", [pbc.paths[i] for i in idx], pbc.labels[idx], x_pbc[idx], [kind[i] for i in idx])
        b_info[f"n_{name}"] = len(part)
        b_info[f"{name}_counts"] = part.counts()
        b_info[f"{name}_cell_types"] = {k: int(sum(g == k for g in part.groups)) for k in sorted(set(kind))}
        out.setdefault("B", {})[name] = part
    out["B"]["info"] = b_info
    out["B"]["sha256"] = dict(zip(map(str, pbc.paths), pbc.sha256))

    # the shipped model's test side: C-NMC subjects held out by its subject split (fold 4)
    cn = scan_class_folders(data_root / "cnmc-train", "all_vs_normal")
    csp = subject_split(cn, fold=4)
    test = np.sort(csp.test)
    cn_test = cn.subset(test)
    x_cn = load_images(cn_test, prep, cache)
    cnmc = Part("cnmc-test", list(cn_test.paths), cn_test.labels, x_cn, [subject_of(p) for p in cn_test.paths])
    c_info = {"source": str(data_root / "cnmc-train"), "split": "subject, fold 4 (the all-vs-normal card's)",
              "test_subjects": csp.info["test_subjects"], "n": len(cnmc), "counts": cnmc.counts()}
    off_test = np.sort(np.concatenate([csp.train, csp.val]))
    base = [(cn.paths[i], cn.paths[i].parent.name) for i in off_test]
    c_info["base_data"] = {"subjects": csp.info["train_subjects"] + csp.info["val_subjects"], "n": len(base),
                             "counts": {c: int((cn.labels[off_test] == k).sum()) for k, c in enumerate(cn.classes)}}
    return out, cnmc, c_info, base


# ---- scoring ---------------------------------------------------------------------------------

def score(package: Path, parts: dict[str, Part]) -> dict:
    """Accuracy, macro recall (over the classes present), recall per class and per group, and
    the package's foreign-image guard's flagged share, on each part."""
    import torch


    from ..guard import logits_and_embeddings  # heavy: imports torch

    model, card = load_model(package, "cpu")
    guard = load_guard(package, card.guard, len(card.classes))
    out = {}
    with torch.no_grad():
        for name, part in parts.items():
            logits, emb = logits_and_embeddings(model, part.x, card.prep, "cpu")
            pred = logits.argmax(1)
            ok = pred == part.y
            present = [c for c in range(len(CLASSES)) if (part.y == c).any()]
            rec = {CLASSES[c]: float(ok[part.y == c].mean()) for c in present}
            m = {"n": len(part), "accuracy": float(ok.mean()), "macro_recall": float(np.mean(list(rec.values()))),
                 "recall": rec, "called_all": float((pred == CLASSES.index("ALL")).mean())}
            if part.groups is not None:
                g = np.array(part.groups)
                m["accuracy_by_group"] = {k: float(ok[g == k].mean()) for k in sorted(set(part.groups))}
            if guard is not None:
                _, flagged = guard.flags(emb)
                m["guard_flagged"] = float(np.mean(flagged))
                m["guard_threshold"] = float(guard.threshold)
            out[name] = m
    return out


def shipped_probs(package: Path, x: np.ndarray) -> np.ndarray:
    """Calibrated probabilities of the shipped model on the pool (max: the reviewer's queue order)."""

    from ..engine import predict_logits  # heavy: imports scikit-learn, torch
    from ..metrics import softmax  # heavy: imports scikit-learn, torch

    model, card = load_model(package, "cpu")
    return softmax(predict_logits(model, x, card.prep, "cpu"), float(card.temperature or 1.0))


def order_for(strategy: str, scenario: str, seed: int, conf: np.ndarray) -> np.ndarray:
    """The reviewer's queue. ``X+base`` reviews exactly what ``X`` does (paired runs)."""
    strategy = strategy.removesuffix(BASE)
    rng = np.random.default_rng([seed, ord(scenario), STRATEGIES.index(strategy)])
    if strategy == "least_confident":
        return np.lexsort((rng.random(len(conf)), conf))  # lowest confidence first, ties by the seed
    if strategy == "random":
        return rng.permutation(len(conf))
    raise ValueError(f"unknown strategy {strategy!r}")


# ---- one run ---------------------------------------------------------------------------------

def one_run(pool: Part, chosen: np.ndarray, eval_parts: dict[str, Part], avn_package: Path, run_dir: Path,
            seed: int, threads: int, image_cache: dict, int8: bool, base_data: Path | None = None,
            overrides: dict | None = None) -> dict:
    """A fresh data directory; the shipped ALL-vs-normal model active; ``chosen`` scanned and
    labelled by the simulated reviewer; one retrain; the new version scored."""


    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir / "reviewed"
    truth: dict[str, str] = {}
    for i in chosen:
        src = pool.paths[int(i)]
        dst = folder / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, dst)  # scan follows file links; nothing is copied
        truth[str(dst)] = CLASSES[int(pool.y[int(i)])]
    paths = resolve_paths(run_dir / "data").ensure()
    db = open_database(paths)  # set up: the bundled models registered
    try:
        activate(db, read_card(avn_package).name, who="learning-curve")
        run_job(scan(db, folder))
        with db.session() as s:
            listed = images_under(s, folder)
            for image_id, path in listed:
                record_labels(s, [image_id], truth[str(Path(path))], "simulated-reviewer", source="human",
                              taxonomy="all_vs_normal")
        t0 = time.perf_counter()
        r = run_job(retrain(db, paths, RetrainConfig(int8=int8, threads=threads, bootstrap=200, seed=seed,
                                                     base_data=str(base_data) if base_data else None,
                                                     **(overrides or {})),
                            image_cache=image_cache))
        seconds = time.perf_counter() - t0
        if r.get("status") != "completed":
            raise RuntimeError(f"retrain ended {r.get('status')}")
        cmp = r.get("comparison") or {}
        rec = {"n_images_listed": len(listed), "n_distinct_images": len({i for i, _ in listed}),
               "n_train": r["data"]["n_train"], "n_val": r["data"]["n_val"], "per_class": r["data"]["per_class"],
               "n_train_base": r["data"].get("n_train_base", 0), "base_data": r["data"].get("base_data") or None,
               "too_few": r["data"]["too_few"], "retrain_seconds": round(seconds, 2),
               "train_seconds": round(float(r["train_seconds"]), 2),
               "epochs_run": len(r["history"]), "steps_per_epoch": -(-r["data"]["n_train"] // 32),
               "comparison": {"n": cmp.get("n"), "verdict": cmp.get("verdict"),
                              "val_accuracy_new": (cmp.get("new") or {}).get("accuracy"),
                              "val_accuracy_old": (cmp.get("old") or {}).get("accuracy")} if cmp else None,
               "version": r["version"],
               "best_epoch": _best_epoch(r),
               "train_images_per_s": _quantiles([h.get("train_images_per_s") for h in r["history"]]),
               "last_epoch": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in (r["history"] or [{}])[-1].items()
                              if k in ("epoch", "train_loss", "train_accuracy", "val_accuracy", "val_macro_f1")}}
        rec["metrics"] = score(Path(r["package"]), eval_parts)
        return rec
    finally:
        db.dispose()


def _quantiles(v: list) -> dict | None:
    v = [float(x) for x in v if x is not None]
    if not v:
        return None
    return {"min": round(min(v), 1), "median": round(float(np.median(v)), 1), "max": round(max(v), 1)}


def _best_epoch(r: dict) -> int | None:
    try:
        return read_card(Path(r["package"])).metrics.get("best_epoch")
    except Exception:  # noqa: BLE001 - informative only
        return None


# ---- results ---------------------------------------------------------------------------------

def _key(r: dict) -> tuple:
    return (r["scenario"], r["strategy"], int(r["budget"]), int(r["seed"]))


def _write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    tmp.replace(path)


METRICS = {  # name -> (part, key), as tabled and plotted
    "new_accuracy": ("new_lab", "accuracy"),
    "new_macro_recall": ("new_lab", "macro_recall"),
    "new_guard_flagged": ("new_lab", "guard_flagged"),
    "orig_accuracy": ("cnmc_test", "accuracy"),
    "orig_macro_recall": ("cnmc_test", "macro_recall"),
    "orig_guard_flagged": ("cnmc_test", "guard_flagged"),
}


def summarise(results: dict) -> dict:
    """{scenario: {strategy: {budget: {metric: [mean, sd, n]}}}}; budget 0 (the shipped model)
    appears under both strategies."""
    out: dict = {}
    for sc in results.get("scenarios", {}):
        base = results["baseline"][sc]
        present = [st for st in COLOURS if any(r["scenario"] == sc and r["strategy"] == st for r in results["runs"])]
        for strategy in present or list(STRATEGIES):
            rows: dict[int, dict[str, list]] = {0: {m: [base[p][k]] for m, (p, k) in METRICS.items()}}
            rows[0]["retrain_seconds"] = [0.0]
            for r in results["runs"]:
                if r["scenario"] != sc or r["strategy"] != strategy or "metrics" not in r:
                    continue
                d = rows.setdefault(int(r["budget"]), {})
                for m, (p, k) in METRICS.items():
                    d.setdefault(m, []).append(r["metrics"][p].get(k, float("nan")))
                d.setdefault("retrain_seconds", []).append(r["retrain_seconds"])
                d.setdefault("n_train", []).append(r["n_train"])
                d.setdefault("n_val", []).append(r["n_val"])
            out.setdefault(sc, {})[strategy] = {
                b: {m: [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)] for m, v in d.items()}
                for b, d in sorted(rows.items())}
    return out


def table_markdown(summary: dict) -> str:
    def f(c):
        return f"{c[0]:.3f} ± {c[1]:.3f}" if c[2] > 1 else f"{c[0]:.3f}"

    lines = []
    for sc, by in summary.items():
        lines.append(f"Scenario {sc}: {SCENARIOS[sc]}")
        lines.append("")
        lines.append("| reviewed | strategy | n_train / n_val | new lab: accuracy | new lab: macro recall | "
                     "C-NMC test: macro recall | guard flags (new lab) | guard flags (C-NMC test) | retrain s | seeds |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        budgets = sorted({b for s in by.values() for b in s})
        for b in budgets:
            for strategy in by:
                if b not in by[strategy] or (b == 0 and strategy != next(iter(by))):
                    continue
                d = by[strategy][b]
                nv = f"{d['n_train'][0]:.0f} / {d['n_val'][0]:.0f}" if "n_train" in d else "-"
                name = "shipped model" if b == 0 else strategy.replace("_", "-")
                lines.append(f"| {b} | {name} | {nv} | {f(d['new_accuracy'])} | {f(d['new_macro_recall'])} | "
                             f"{f(d['orig_macro_recall'])} | {f(d['new_guard_flagged'])} | {f(d['orig_guard_flagged'])} | "
                             f"{d['retrain_seconds'][0]:.0f} | {d['new_accuracy'][2]} |")
        lines.append("")
    return "\n".join(lines)


def _label(strategy: str, n_seeds: int, n_most: int) -> str:
    label = strategy.replace("least_confident", "least-confident first").replace(BASE, " + C-NMC base data")
    return label + (f" ({n_seeds} seed{'s' if n_seeds > 1 else ''})" if n_seeds != n_most else "")


def plot(results: dict, path: Path, heading: str = "hemascan retrain") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    summary = summarise(results)
    panels = [("new_macro_recall", "new lab: macro recall"), ("orig_macro_recall", "C-NMC test (33, 38, H10): macro recall"),
              ("new_guard_flagged", "guard flags: new lab (solid), C-NMC test (dashed)")]
    seeds = {st: max(v["new_accuracy"][2] for b, v in rows.items() if b > 0)
             for by in summary.values() for st, rows in by.items() if any(b > 0 for b in rows)}
    n_most = max(seeds.values(), default=1)
    scen = list(summary)
    fig, axes = plt.subplots(len(scen), len(panels), figsize=(14, 3.9 * len(scen) + 1.2), squeeze=False)
    for r, sc in enumerate(scen):
        budgets = sorted({b for s in summary[sc].values() for b in s})
        pos = {b: i for i, b in enumerate(budgets)}
        shown = list(summary[sc])
        for c, (metric, title) in enumerate(panels):
            ax = axes[r][c]
            for k, strategy in enumerate(shown):
                rows = summary[sc][strategy]
                extra = strategy.endswith(BASE)  # an extra arm at a few budgets: points, no line, no budget 0
                bs = [b for b in budgets if b in rows and not (extra and b == 0)]
                xs = np.array([pos[b] for b in bs]) + (k - (len(shown) - 1) / 2) * 0.08
                style = dict(marker="D" if extra else "o", ms=5 if extra else 4, capsize=3, color=COLOURS[strategy],
                             ls="none" if extra else "-")
                ax.errorbar(xs, [rows[b][metric][0] for b in bs], yerr=[rows[b][metric][1] for b in bs], **style)
                if metric == "new_guard_flagged":  # the same guard on the original test side, dashed
                    ax.errorbar(xs, [rows[b]["orig_guard_flagged"][0] for b in bs],
                                yerr=[rows[b]["orig_guard_flagged"][1] for b in bs],
                                **{**style, "ms": 3, "capsize": 2, "ls": "none" if extra else "--", "lw": 1,
                                   "mfc": "white", "alpha": 0.8})
            if metric == "orig_macro_recall":
                ax.axhline(summary[sc][shown[0]][0][metric][0], color="grey", ls=":", lw=1.2)
            if metric == "new_macro_recall" and results["scenarios"][sc].get("eval_counts", {}).get("Normal", 0) and \
                    results["scenarios"][sc].get("eval_counts", {}).get("ALL", 0):
                ax.axhline(0.5, color="grey", ls="--", lw=0.8)
            ax.set_xticks(range(len(budgets)), [str(b) for b in budgets])
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            ax.set_xlabel("reviewed images", fontsize=9)
            if metric == "new_macro_recall" and results["scenarios"][sc].get("eval_counts", {}).get("ALL", 1) == 0:
                title = "new lab (all Normal): accuracy"  # one class: macro recall = accuracy
            ax.set_title(f"{sc}: {title}", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"scenario {sc}\n" + ("Taleqani fields -> ALL / Normal" if sc == "A" else "pbc-dev normal cells"))
    handles = [Line2D([], [], color=COLOURS[st], marker="D" if st.endswith(BASE) else "o",
                      ls="none" if st.endswith(BASE) else "-", label=_label(st, n, n_most)) for st, n in seeds.items()]
    handles += [Line2D([], [], color="grey", ls=":", lw=1.2, label="shipped model on C-NMC test"),
                Line2D([], [], color="grey", ls="--", lw=0.8, label="chance (macro recall 0.5)"),
                Line2D([], [], color="black", ls="--", lw=1, marker="o", ms=3, mfc="white", label="guard on C-NMC test")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8.5, frameon=False)
    fig.suptitle(f"{heading}\neach point: one retrain of the shipped ALL-vs-normal model on that many reviewed "
                 f"images of the new lab (0 = the shipped model); mean ± sd over {n_most} seeds", fontsize=10.5)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _code_state() -> dict:
    """The commit the retrain code came from, and any uncommitted change to it (a run
    measures the working tree)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "trainer", "core"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}
    changed = [ln[3:] for ln in dirty.stdout.splitlines() if not ln[3:].startswith("trainer/experiments/")]
    return {"commit": head.stdout.strip(), "uncommitted_changes": changed}


# ---- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(_default_data()), help="folder holding all-taleqani, pbc-dev, cnmc-train")
    ap.add_argument("--out", default="docs/retrain/learning_curve.json")
    ap.add_argument("--plot", default=None, help="PNG to draw (needs matplotlib)")
    ap.add_argument("--title", default="hemascan retrain", help="the plot's title starts with this")
    ap.add_argument("--table", default=None, help="also write the markdown table here")
    ap.add_argument("--work", default="/tmp/hemascan-learning-curve", help="caches and per-run data directories")
    ap.add_argument("--scenarios", default="A,B")
    ap.add_argument("--budgets", default="10,25,50,100,200", help="reviewed images (capped at the pool; 0 is always scored)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help="least_confident, random; a '+base' suffix (random+base) adds the shipped model's C-NMC "
                         "training and validation subjects as retrain's base-data folder (RetrainConfig.base_data)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--int8", action="store_true", help="let retrain add the int8 model too (+20-40 s per run)")
    ap.add_argument("--retrain-options", default=None,
                    help="JSON object of further RetrainConfig fields, for diagnostics (e.g. '{\"patience\": null}'); "
                         "use another --out: the defaults are what the app runs")
    ap.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs (timing)")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--keep-runs", action="store_true", help="keep every run's data directory under --work")
    args = ap.parse_args(argv)

    out = Path(args.out)
    if args.plot_only:
        results = json.loads(out.read_text())
        results["summary"] = summarise(results)
        _write_json(out, results)
        if args.plot:
            plot(results, Path(args.plot), args.title)
        print(table_markdown(summarise(results)))
        return 0

    import torch


    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    avn = resources_dir() / "models" / AVN_DIR
    card = read_card(avn)
    assert card.taxonomy == "all_vs_normal" and list(card.classes) == CLASSES, card.classes

    _log("loading data (hashes and decoded images are cached under --work)")
    scen, cnmc, c_info, base = load_scenarios(Path(args.data), card.prep, work)
    want = [s for s in args.scenarios.split(",") if s]
    expected = set(card.training_data["split"]["test_subjects"])
    assert set(c_info["test_subjects"]) == expected, (c_info["test_subjects"], expected)

    results = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("runs", [])
    results["description"] = ("One retrain from the shipped ALL-vs-normal model per (scenario, strategy, budget, seed); "
                              "see trainer/experiments/learning_curve.py")
    results["model"] = {"name": card.name, "architecture": card.architecture, "input_size": card.prep.input_size}
    results["cnmc_test"] = c_info
    overrides = json.loads(args.retrain_options) if args.retrain_options else {}
    if results.get("retrain_config", {}).get("overrides", {}) != overrides and results["runs"]:
        raise SystemExit(f"{out} holds runs made with retrain options {results['retrain_config'].get('overrides', {})}; "
                         "use another --out")
    results["retrain_config"] = {"defaults": "trainer.retrain.RetrainConfig", "int8": args.int8, "threads": args.threads,
                                 "bootstrap": 200, "seed": "the run's seed", "overrides": overrides}
    results["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                              "machine": platform.machine(), "cpus": os.cpu_count()}
    results.setdefault("code", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **_code_state()})
    results.setdefault("scenarios", {})
    results.setdefault("baseline", {})
    done = {_key(r) for r in results["runs"] if "metrics" in r}
    t_first = results.get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S")
    results["started_at"] = t_first
    image_cache: dict = {}
    n_new = 0
    budgets = sorted({int(b) for b in args.budgets.split(",") if b and int(b) > 0})
    seeds = [int(s) for s in args.seeds.split(",") if s]
    strategies = [s for s in args.strategies.split(",") if s]
    for st in strategies:
        if st.removesuffix(BASE) not in STRATEGIES:
            raise SystemExit(f"unknown strategy {st!r}")
    base_dir = None
    if any(st.endswith(BASE) for st in strategies):  # the shipped model's own training side, linked
        base_dir = work / "base-data"
        shutil.rmtree(base_dir, ignore_errors=True)
        for path, folder in base:
            (base_dir / folder).mkdir(parents=True, exist_ok=True)
            os.symlink(path, base_dir / folder / path.name)
    setup = {}
    for sc in want:
        pool, ev = scen[sc]["pool"], scen[sc]["eval"]
        parts = {"new_lab": ev, "cnmc_test": cnmc}
        results["scenarios"][sc] = {"description": SCENARIOS[sc], **scen[sc]["info"]}
        probs = shipped_probs(avn, pool.x)
        conf, shipped_pred = probs.max(1), probs.argmax(1)
        results["scenarios"][sc]["shipped_pool_confidence"] = {
            "mean": float(conf.mean()), "share_below_0.9": float((conf < 0.9).mean()),
            "accuracy_on_pool": float((shipped_pred == pool.y).mean())}
        results["baseline"][sc] = score(avn, parts)
        b0 = results["baseline"][sc]
        _log(f"{sc}: pool {len(pool)} {pool.counts()}, evaluation {len(ev)} {ev.counts()}; shipped model: new lab "
             f"acc {b0['new_lab']['accuracy']:.3f} macro recall {b0['new_lab']['macro_recall']:.3f} flagged "
             f"{b0['new_lab'].get('guard_flagged', float('nan')):.3f}; C-NMC test macro recall "
             f"{b0['cnmc_test']['macro_recall']:.3f} flagged {b0['cnmc_test'].get('guard_flagged', float('nan')):.3f}")
        setup[sc] = (pool, parts, conf, shipped_pred, sorted({min(b, len(pool)) for b in budgets}))
    _write_json(out, results)
    # seeds outermost: a run stopped early still has whole curves for the seeds it finished
    for seed in seeds:
        for sc in want:
            pool, parts, conf, shipped_pred, sc_budgets = setup[sc]
            for budget in sc_budgets:
                for strategy in strategies:
                    key = (sc, strategy, budget, seed)
                    if key in done:
                        continue
                    if args.max_runs is not None and n_new >= args.max_runs:
                        _log(f"--max-runs {args.max_runs} reached")
                        results["seconds_this_call"] = round(time.perf_counter() - t_start, 1)
                        _write_json(out, results)
                        return 0
                    order = order_for(strategy, sc, seed, conf)
                    chosen = order[:budget]
                    rec = {"scenario": sc, "strategy": strategy, "budget": budget, "seed": seed,
                           "reviewed_counts": {c: int((pool.y[chosen] == i).sum()) for i, c in enumerate(CLASSES)},
                           "reviewed_groups": {g: int(sum(pool.groups[int(i)] == g for i in chosen))
                                               for g in sorted(set(pool.groups))},
                           "corrections": int((shipped_pred[chosen] != pool.y[chosen]).sum()),
                           "load_average": os.getloadavg()[0]}
                    run_dir = work / "runs" / f"{sc}-{strategy}-{budget}-{seed}"
                    t0 = time.perf_counter()
                    try:
                        rec.update(one_run(pool, chosen, parts, avn, run_dir, seed, args.threads, image_cache, args.int8,
                                           base_dir if strategy.endswith(BASE) else None, overrides))
                    except Exception as exc:  # recorded, reported, and the other runs go on
                        rec["error"] = f"{type(exc).__name__}: {exc}"
                        rec["traceback"] = traceback.format_exc()[-3000:]
                        _log(f"{key}: FAILED {rec['error']}")
                    rec["seconds"] = round(time.perf_counter() - t0, 1)
                    rec["load_average_after"] = os.getloadavg()[0]
                    if not args.keep_runs:
                        shutil.rmtree(run_dir, ignore_errors=True)
                    results["runs"] = [r for r in results["runs"] if _key(r) != key] + [rec]
                    results["seconds_this_call"] = round(time.perf_counter() - t_start, 1)
                    _write_json(out, results)
                    n_new += 1
                    if "metrics" in rec:
                        m = rec["metrics"]
                        _log(f"{sc} {strategy:<15} {budget:>3} seed {seed}: train/val {rec['n_train']}/{rec['n_val']} "
                             f"{rec['reviewed_counts']}; new lab acc {m['new_lab']['accuracy']:.3f} "
                             f"macro recall {m['new_lab']['macro_recall']:.3f} flagged {m['new_lab']['guard_flagged']:.3f}; "
                             f"C-NMC macro recall {m['cnmc_test']['macro_recall']:.3f} flagged "
                             f"{m['cnmc_test']['guard_flagged']:.3f}; retrain {rec['retrain_seconds']:.0f} s "
                             f"(total {rec['seconds']:.0f} s, load {rec['load_average']:.1f})")
    results["summary"] = summarise(results)
    results["seconds_this_call"] = round(time.perf_counter() - t_start, 1)
    _write_json(out, results)
    if args.plot:
        plot(results, Path(args.plot), args.title)
    table = table_markdown(results["summary"])
    if args.table:
        Path(args.table).write_text(table + "\n")
    print(table)
    _log(f"done in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
