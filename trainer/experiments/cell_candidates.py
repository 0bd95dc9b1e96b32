"""Candidate recipes for the white-cell differential measured against the shipped v2, none shipped
(figures and the decision in docs/trainer.md, "Tried after v2 and not shipped").

    python -m trainer.experiments.cell_candidates --cache /work/cache/diffmodel --work /work/cache/ft12 \
        finetune [--ft-no-cnmc] | finetune-loso | taleqani

It reads the cut-outs and embeddings that ``python -m trainer.cell_experiments cut embed`` cached
under ``--cache`` and keeps what it makes itself (stage-5 activations of the colour copies,
Taleqani's cut-outs) under ``--work``; results are appended to ``--work``/results.jsonl.

- ``finetune``: the comparison split of ``cell_experiments compare`` (C-NMC subjects 30, 33, H10
  held out; pbc-dev): stages 6-7 fine-tuned on the cached stage-5 activations of every training
  cut-out and its grayscale and stain-perturbed copies (``--ft-no-cnmc``: of PBC and wbc-masks d2
  only), then the v2 linear head refitted on the fine-tuned embeddings.
- ``finetune-loso``: stages 6-7 fine-tuned on PBC and wbc-masks d2 (+ copies) only, so C-NMC's
  leave-one-subject-out with the linear head refitted per subject is exact.
- ``taleqani``: v2's frozen recipe with the cells of 1,200 Taleqani fields added as weak labels
  (a field of an ALL folder: Blast; a Benign field: Lymphocyte, as C-NMC's hem cells), held out
  by five contiguous ranges of file numbers per folder (pseudo-patients), exact duplicate
  cut-outs dropped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from trainer import cell_experiments as E
from trainer.cell_data import CutSpec, load_or_build
from trainer.cell_model import backbone, embed, finetune_top, set_head, top_outputs
from trainer.data import file_number
from trainer.metrics import softmax

COPIES = ("train_grayscale", "train_stain")
TALEQANI_LIMIT = 1200
TALEQANI_CHUNKS = 5


def _data_args(ns) -> argparse.Namespace:
    return argparse.Namespace(data=ns.data, cache=ns.cache, px=128, cnmc_scale="default", colour_copies="yes", c=0.05)


def copy_mids(name: str, variant: str, args, work: Path, spec: CutSpec) -> dict:
    """Frozen embeddings and stage-5 activations of a colour copy of a source's cut-outs (cached)."""
    path = work / f"mid-{name}-{variant}.npz"
    if path.is_file():
        return dict(np.load(path))
    imgs, idx = E.variant_images(E.cells_of(name, args, spec), variant)
    t0 = time.perf_counter()
    emb, mid = embed(backbone(), imgs, spec.prep, keep_mid=True)
    E._log(f"stage-5 activations {name} {variant}: {len(imgs)} in {time.perf_counter() - t0:.0f} s")
    np.savez(path, emb=emb, mid=mid, idx=idx)
    return {"emb": emb, "mid": mid, "idx": idx}


def _accuracy(head_or_model_logits, emb_or_mid, y) -> float:
    return float((head_or_model_logits(emb_or_mid).argmax(1) == y).mean())


def step_finetune(ns, args, spec) -> dict:
    data = {s: E.source_data(s, args) for s in (*E.TRAIN_SOURCES, "pbc-dev", "bccd", "raabin", "wbc-masks-d1")}
    cn = data["cnmc"]
    hold = np.isin(cn["subject"], E.COMPARISON_HELD_OUT)
    sel = {"pbc": np.ones(len(data["pbc"]["y"]), bool), "wbc-masks-d2": np.ones(len(data["wbc-masks-d2"]["y"]), bool),
           "cnmc": ~hold}
    parts, is_cnmc = [], []
    for variant in ("as_is", *COPIES):
        for s in ("pbc", "wbc-masks-d2", "cnmc"):
            src = data[s] if variant == "as_is" else copy_mids(s, variant, args, ns.work, spec)
            parts.append({"emb": src["emb"][sel[s]], "mid": src["mid"][sel[s]], "y": data[s]["y"][sel[s]]})
            is_cnmc.append(np.full(int(sel[s].sum()), s == "cnmc"))
    train = E._concat(parts, ("emb", "y", "mid"))
    ft = ~np.concatenate(is_cnmc) if ns.ft_no_cnmc else np.ones(len(train["y"]), bool)
    model = backbone()
    t0 = time.perf_counter()
    finetune_top(model, train["mid"][ft], train["y"][ft], len(E.CLASSES), epochs=ns.epochs, lr=ns.lr, log=E._log)
    seconds = time.perf_counter() - t0
    head = E.fit_head(top_outputs(model, train["mid"])[1], train["y"], args.c)
    set_head(model, *head.weights())

    def logits(mid):
        return top_outputs(model, mid)[0]

    r = E.summary(cn["y"][hold], softmax(logits(cn["mid"][hold]), 1.0), 2.0, binary=True)
    out = {"step": "finetune", "ft_no_cnmc": ns.ft_no_cnmc, "epochs": ns.epochs, "lr": ns.lr, "seconds": seconds,
           "cnmc_heldout_macro_recall": r["macro_recall"], "cnmc_recall": r["recall"]}
    for s in ("pbc-dev", "wbc-masks-d1"):
        out[f"{s}_acc"] = _accuracy(logits, data[s]["mid"], data[s]["y"])
    for s in ("bccd", "raabin"):
        out[f"{s}_called_blast"] = float((logits(data[s]["mid"]).argmax(1) == E.BLAST).mean())
    cells = E.cells_of("pbc-dev", args, spec)
    for v in ("grayscale", "stain"):
        imgs, idx = E.variant_images(cells, v)
        e, _ = embed(model, imgs, spec.prep)
        out[f"pbc-dev_{v}_acc"] = float((head.logits(e).argmax(1) == np.asarray(cells.labels)[idx]).mean())
    return out


def step_finetune_loso(ns, args, spec) -> dict:
    raw = {s: E.source_data(s, args) for s in (*E.TRAIN_SOURCES, "pbc-dev", "wbc-masks-d1", "bccd", "raabin")}
    tuned_on = ("pbc", "wbc-masks-d2")
    xs = [raw[s]["mid"] for s in tuned_on] + [copy_mids(s, v, args, ns.work, spec)["mid"] for v in COPIES for s in tuned_on]
    ys = [raw[s]["y"] for s in tuned_on] * (1 + len(COPIES))
    model = backbone()
    t0 = time.perf_counter()
    finetune_top(model, np.concatenate(xs), np.concatenate(ys), len(E.CLASSES), epochs=ns.epochs, lr=ns.lr, log=E._log)
    seconds = time.perf_counter() - t0

    def emb(mid):
        return top_outputs(model, mid)[1]

    data, parts = {}, []
    for s in E.TRAIN_SOURCES:
        d = dict(raw[s])
        d["emb"] = emb(d["mid"])
        d["group"] = E.groups_of(d)
        data[s] = d
        parts.append(d)
        parts += [{**d, "emb": emb(copy_mids(s, v, args, ns.work, spec)["mid"])} for v in COPIES]
    train = E._concat(parts, ("emb", "y", "subject", "source", "group"))
    cn = data["cnmc"]
    pred = np.zeros(len(cn["y"]), int)
    for g in np.unique(cn["group"]):
        t = cn["group"] == g
        keep = train["group"] != g
        pred[t] = E.fit_head(train["emb"][keep], train["y"][keep], args.c).logits(cn["emb"][t]).argmax(1)
    yb, pb = cn["y"] == E.BLAST, pred == E.BLAST
    out = {"step": "finetune-loso", "epochs": ns.epochs, "lr": ns.lr, "seconds": seconds,
           "cnmc_loso_macro": float((pb[yb].mean() + (~pb[~yb]).mean()) / 2),
           "cnmc_loso_blast_recall": float(pb[yb].mean()), "cnmc_loso_normal_recall": float((~pb[~yb]).mean()),
           "cnmc_per_subject_acc": {g: round(float((pb[cn["group"] == g] == yb[cn["group"] == g]).mean()), 3)
                                    for g in np.unique(cn["group"])}}
    head = E.fit_head(train["emb"], train["y"], args.c)
    out["pbc-dev"] = _accuracy(head.logits, emb(raw["pbc-dev"]["mid"]), raw["pbc-dev"]["y"])
    out["d1"] = _accuracy(head.logits, emb(raw["wbc-masks-d1"]["mid"]), raw["wbc-masks-d1"]["y"])
    cells = E.cells_of("pbc-dev", args, spec)
    for v in ("grayscale", "stain"):
        imgs, idx = E.variant_images(cells, v)
        e, _ = embed(model, imgs, spec.prep)
        out[f"pbc-dev_{v}"] = _accuracy(head.logits, e, np.asarray(cells.labels)[idx])
    for s in ("bccd", "raabin"):
        out[f"{s}_called_blast"] = float((head.logits(emb(raw[s]["mid"])).argmax(1) == E.BLAST).mean())
    return out


def taleqani_cells(ns, spec) -> tuple:
    """Cut-outs of TALEQANI_LIMIT fields and the frozen embeddings of them and their colour copies."""
    cells = load_or_build("taleqani", ns.data, spec, ns.work / "cutouts", limit=TALEQANI_LIMIT, progress=E._log)
    path = ns.work / f"taleqani{TALEQANI_LIMIT}-emb.npz"
    if not path.is_file():
        model = backbone()
        np.savez(path, **{v: embed(model, E.variant_images(cells, v)[0], spec.prep)[0] for v in ("as_is", *COPIES)})
    return cells, dict(np.load(path))


def step_taleqani(ns, args, spec) -> dict:
    from sklearn.metrics import roc_auc_score  # heavy: imports scikit-learn

    cells, te = taleqani_cells(ns, spec)
    folder = np.asarray(cells.subjects).astype(str)
    files = np.asarray(cells.files).astype(str)
    chunk = np.zeros(len(files), int)  # contiguous file-number ranges per folder: pseudo-patients
    for f in np.unique(folder):
        s = np.nonzero(folder == f)[0]
        nums = np.array([file_number(Path(p)) for p in files[s]])
        for k, e in enumerate(np.array_split(np.unique(nums), TALEQANI_CHUNKS)):
            chunk[s[np.isin(nums, e)]] = k
    digests = [hashlib.sha1(np.asarray(cells.images[i]).tobytes()).hexdigest() for i in range(len(files))]
    keep = np.zeros(len(files), bool)
    keep[np.unique(digests, return_index=True)[1]] = True
    ty = np.where(folder == "Benign", E.CLASSES.index("Lymphocyte"), E.BLAST)
    data = {s: E.source_data(s, args) for s in E.TRAIN_SOURCES}
    for d in data.values():
        d["group"] = E.groups_of(d)
    base = E.training_pool(data, args)
    tq = E._concat([{"emb": te[v][keep], "y": ty[keep], "group": np.char.add("tq:", chunk[keep].astype(str)),
                     "subject": folder[keep], "source": np.full(int(keep.sum()), "taleqani")} for v in ("as_is", *COPIES)],
                   ("emb", "y", "subject", "source", "group"))
    out = {"step": "taleqani", "taleqani_cells": int(keep.sum()), "fields": TALEQANI_LIMIT}
    for name, pool in (("v2", base), ("v2+taleqani", E._concat([base, tq], ("emb", "y", "subject", "source", "group")))):
        r = {}
        cn = data["cnmc"]
        pred = np.zeros(len(cn["y"]), int)
        for g in np.unique(cn["group"]):
            t = cn["group"] == g
            pred[t] = E.fit_head(pool["emb"][pool["group"] != g], pool["y"][pool["group"] != g], args.c).logits(cn["emb"][t]).argmax(1)
        yb, pb = cn["y"] == E.BLAST, pred == E.BLAST
        r["cnmc_loso_macro"] = float((pb[yb].mean() + (~pb[~yb]).mean()) / 2)
        head = E.fit_head(pool["emb"], pool["y"], args.c)
        for v in ("as_is", "grayscale", "stain"):
            d = E.source_data("pbc-dev", args, v)
            r[f"pbc-dev_{v}"] = _accuracy(head.logits, d["emb"], d["y"])
        d1 = E.source_data("wbc-masks-d1", args)
        r["d1"] = _accuracy(head.logits, d1["emb"], d1["y"])
        for s in ("bccd", "raabin"):
            r[f"{s}_called_blast"] = float((head.logits(E.source_data(s, args)["emb"]).argmax(1) == E.BLAST).mean())
        tp = np.zeros(len(ty), int)  # Taleqani: each range predicted by a head trained without it
        for k in range(TALEQANI_CHUNKS):
            hk = E.fit_head(pool["emb"][pool["group"] != f"tq:{k}"], pool["y"][pool["group"] != f"tq:{k}"], args.c) \
                if name != "v2" else head
            tp[chunk == k] = hk.logits(te["as_is"][chunk == k]).argmax(1)
        r["taleqani_called_blast"] = {f: round(float((tp[(folder == f) & keep] == E.BLAST).mean()), 3) for f in np.unique(folder)}
        fields = np.unique(files[keep])
        share = np.array([(tp[files == f] == E.BLAST).mean() for f in fields])
        r["taleqani_field_auc_all_vs_benign"] = float(roc_auc_score([f.split("/")[1] != "Benign" for f in fields], share))
        out[name] = r
    return out


STEPS = {"finetune": step_finetune, "finetune-loso": step_finetune_loso, "taleqani": step_taleqani}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=sorted(STEPS))
    ap.add_argument("--data", type=Path, default=E.ROOT.parent / "shared" / "datasets")
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/diffmodel"))
    ap.add_argument("--work", type=Path, default=Path("/work/cache/ft12"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ft-no-cnmc", action="store_true", help="finetune: fine-tune on PBC and wbc-masks d2 only")
    ap.add_argument("--threads", type=int, default=2)
    ns = ap.parse_args(argv)
    torch.set_num_threads(ns.threads)
    ns.work.mkdir(parents=True, exist_ok=True)
    spec = CutSpec(out_px=128, background="black")
    out = STEPS[ns.step](ns, _data_args(ns), spec)
    E._log(json.dumps(out))
    with open(ns.work / "results.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
