"""Which foreign-image score should the guard use? Measured on the default subtype model.

For each candidate score, the threshold is set on the in-lab validation side (5% flagged),
then the flagged share and AUROC are reported on the in-lab test side and on foreign sets:
pbc-dev (another lab's normal white cells), cnmc-train (C-NMC single cells), synthetic sample
images, and corrupted in-lab test images (blur, another stain's hue). Also: the share of each
foreign set still called with confidence (neither flagged nor below the uncertain threshold).

Scores (higher = more foreign):
    msp          1 - max softmax probability (Hendrycks & Gimpel, ICLR 2017)
    energy       -logsumexp(logits) (Liu et al., NeurIPS 2020)
    mahalanobis  min over classes of the Mahalanobis distance to the class mean of the
                 penultimate embedding, shared Ledoit-Wolf covariance (Lee et al., NeurIPS 2018)
    rel_maha     mahalanobis minus the distance to one background Gaussian (Ren et al., 2021)
    knn          distance to the k-th nearest training embedding, L2-normalised (Sun et al., ICML 2022)

    python -m trainer.experiments.ood_guard --out docs/ood/guard_scores.json
"""
from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np
from core.imaging.images import decode_rgb, read_file
from core.models.package import load_model
from core.models.registry import bundled_default_package
from core.app.sample import generate
from trainer.data import compute_hashes, make_split, scan_class_folders

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def _load(files: list[str], prep) -> np.ndarray:
    return np.stack([prep.apply(decode_rgb(read_file(f))) for f in files])


def embed(model, prep, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate embedding, logits), torch fp32."""
    import torch

    feats, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = prep.normalise(torch.from_numpy(images[i : i + batch]))
            f = model.features(x)
            feats.append(f.numpy())
            logits.append(model._fc(f).numpy())
    return np.concatenate(feats).astype(np.float64), np.concatenate(logits).astype(np.float64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--package", default=None, help="model package (default: the bundled default)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cache", default="/tmp/hemascan-ood-cache.npz")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)

    from scipy.special import logsumexp, softmax
    from sklearn.covariance import LedoitWolf
    from sklearn.metrics import roc_auc_score

    from trainer import augment as aug  # heavy: imports torch

    package = Path(args.package) if args.package else bundled_default_package()
    model, card = load_model(package)
    model.eval()
    prep = card.prep
    cache = Path(args.cache)
    if cache.is_file():
        z = np.load(cache)
        sets = {k[2:]: (z[k], z["L_" + k[2:]]) for k in z.files if k.startswith("F_")}
        sides = {k: z[k] for k in ("train", "val", "test")}
    else:
        t0 = time.perf_counter()
        ds = compute_hashes(scan_class_folders(SHARED / "all-taleqani", card.taxonomy))
        sp = make_split(ds, "patient", fold=4)
        imgs = _load([str(p) for p in ds.paths], prep)
        sides = {"train": sp.train, "val": sp.val, "test": sp.test}
        sets = {"taleqani": embed(model, prep, imgs)}
        test_imgs = imgs[sp.test]
        sets["corrupt_blur"] = embed(model, prep, aug.blur(test_imgs, 3.0))
        sets["corrupt_other_stain"] = embed(model, prep, aug.other_stain(test_imgs))
        sets["pbc_dev"] = embed(model, prep, _load(sorted(glob.glob(str(SHARED / "pbc-dev" / "*" / "*.jpg"))), prep))
        cnmc = sorted(glob.glob(str(SHARED / "cnmc-train" / "*" / "*.jpg")))[::3]
        sets["cnmc"] = embed(model, prep, _load(cnmc, prep))
        synth_dir = Path("/tmp/hemascan-ood-synth")
        sets["synthetic"] = embed(model, prep, _load([str(p) for p in generate(synth_dir, n_per_class=25)], prep))
        np.savez(cache, **{f"F_{k}": v[0] for k, v in sets.items()}, **{f"L_{k}": v[1] for k, v in sets.items()},
                 **sides)
        print(f"embedded in {time.perf_counter() - t0:.0f} s")

    F, L = sets["taleqani"]
    tr, va, te = sides["train"], sides["val"], sides["test"]
    y = np.argmax(L, 1)  # not used for fitting: the class means use the true labels below
    ds_labels = None
    try:
        ds = scan_class_folders(SHARED / "all-taleqani", card.taxonomy)
        ds_labels = ds.labels
    except Exception:
        ds_labels = y
    ftr, ytr = F[tr], ds_labels[tr]
    n_cls = len(card.classes)
    means = np.stack([ftr[ytr == c].mean(0) for c in range(n_cls)])
    centred = ftr - means[ytr]
    prec = LedoitWolf().fit(centred).precision_
    bg = LedoitWolf().fit(ftr)
    bg_mean, bg_prec = ftr.mean(0), bg.precision_
    tr_norm = ftr / np.linalg.norm(ftr, axis=1, keepdims=True)

    def maha(f):
        d = np.stack([np.einsum("ij,jk,ik->i", f - m, prec, f - m) for m in means], 1)
        return d.min(1)

    def scores(f, logit):
        m = maha(f)
        b = np.einsum("ij,jk,ik->i", f - bg_mean, bg_prec, f - bg_mean)
        fn = f / np.linalg.norm(f, axis=1, keepdims=True)
        sims = fn @ tr_norm.T
        kth = -np.sort(-sims, axis=1)[:, args.k - 1]
        p = softmax(logit / card.temperature, axis=1)
        return {"msp": 1 - p.max(1), "energy": -logsumexp(logit, axis=1), "mahalanobis": m,
                "rel_maha": m - b, "knn": 1 - kth}, p.max(1)

    s_val, _ = scores(F[va], L[va])
    s_test, conf_test = scores(F[te], L[te])
    foreign = {k: scores(*sets[k]) for k in ("pbc_dev", "cnmc", "synthetic", "corrupt_blur", "corrupt_other_stain")}
    thr_unc = card.uncertain_threshold
    out = {"model": card.name, "threshold_rule": "95th percentile of the validation side's score",
           "n": {"train": int(len(tr)), "val": int(len(va)), "test": int(len(te)),
                 **{k: int(len(sets[k][0])) for k in foreign}}, "scores": {}}
    for name in s_val:
        thr = float(np.quantile(s_val[name], 0.95))
        row = {"in_lab_test_flagged": float((s_test[name] > thr).mean()),
               "in_lab_test_flagged_or_uncertain": float(((s_test[name] > thr) | (conf_test < thr_unc)).mean())}
        for k, (sc, conf) in foreign.items():
            flagged = sc[name] > thr
            row[k] = {"auroc": float(roc_auc_score(np.r_[np.zeros(len(te)), np.ones(len(sc[name]))],
                                                   np.r_[s_test[name], sc[name]])),
                      "flagged": float(flagged.mean()),
                      "flagged_or_uncertain": float((flagged | (conf < thr_unc)).mean()),
                      "confident_call": float((~flagged & (conf >= thr_unc)).mean())}
        out["scores"][name] = row
    for name, row in out["scores"].items():
        print(f"{name:12s} in-lab test flagged {row['in_lab_test_flagged']:.3f} (or uncertain "
              f"{row['in_lab_test_flagged_or_uncertain']:.3f})")
        for k in foreign:
            r = row[k]
            print(f"    {k:20s} AUROC {r['auroc']:.3f}  flagged {r['flagged']:.3f}  flagged|uncertain "
                  f"{r['flagged_or_uncertain']:.3f}  confident call {r['confident_call']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
