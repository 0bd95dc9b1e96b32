"""The seed experiments, reproduced on one dataset and one split (``hemascan compare``).

Rows (second seed's table, then the first seed's pair):
  cnn        seed final CNN (seed_cnn3), duplicates kept
  cnn_dedup  the same CNN with hash-based duplicate removal (exact SHA-256 and perceptual
             hash within 4 bits; one image kept per duplicate group, on every side)
  svm        StandardScaler + PCA + SMOTE + SVC, GridSearchCV (imblearn Pipeline)
  rf         flips/rot90 augmentation + PCA + SMOTE + RandomForest (imblearn Pipeline)
  cnn_svm    the trained CNN's penultimate features + StandardScaler + SVC
  baseline   seed baseline CNN (1 conv block) vs the final CNN (row ``cnn``)
All rows: accuracy, macro precision/recall/F1 on the held-out test side, training time;
the CNN rows also ECE (uncalibrated softmax) and, on the ``subject`` split, accuracy per
held-out subject. Any split of ``trainer.data.make_split`` works, and any class-folder
dataset: the binary C-NMC task is ``--data cnmc-train`` (all/hem -> ALL/Normal).
:func:`compare_splits` runs several splits and puts them side by side.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from core.jobs import Progress

from .data import compute_hashes, dedup_indices, load_images, make_split, scan_class_folders, subject_of
from .metrics import classification_metrics, markdown_table, per_group_markdown, per_group_metrics, softmax
from trainer.engine import TrainConfig, run
from core.models.architectures import build
from core.imaging.preprocessing import Preprocessing
from trainer.engine import predict_logits  # noqa: F401
from trainer.data import duplicate_pairs

ROWS = ["cnn", "cnn_dedup", "svm", "rf", "cnn_svm", "baseline"]


@dataclass
class CompareConfig:
    data: str
    split: str = "patient"
    fold: int = 4
    input_size: int = 64
    epochs: int = 8
    seed: int = 0
    cache_dir: str | None = None
    pixel_size: int = 32  # raw-pixel features for SVM / RF
    only: list[str] | None = None
    out_dir: str | None = None
    threads: int | None = None
    extra: dict = field(default_factory=dict)


def _metrics_row(name: str, y, pred_or_probs, classes, seconds: float, note: str = "", subjects=None) -> dict:
    """Metrics of one method. ``pred_or_probs``: labels (no ECE) or probabilities."""
    probs = pred_or_probs
    has_probs = probs.ndim == 2
    if not has_probs:
        probs = np.eye(len(classes))[probs]
    m = classification_metrics(y, probs, classes)
    row = {"method": name, "accuracy": m["accuracy"], "precision": m["macro_precision"], "recall": m["macro_recall"],
           "f1": m["macro_f1"], "ece": m["ece"] if has_probs else None, "train_seconds": seconds, "n_test": m["n"],
           "note": note}
    if subjects is not None and any(subjects):
        row["per_subject"] = per_group_metrics(y, probs, subjects, classes)
    return row


def _pixels(images: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]).reshape(len(images), -1).astype(np.float32) / 255.0


def _train_cnn(cfg: CompareConfig, arch: str, ds_root: str, out_dir, dedup: bool, cancel):
    tc = TrainConfig(data=ds_root, arch=arch, pretrained=False, input_size=cfg.input_size, corner_mask=None,
                     epochs=cfg.epochs, batch_size=32, lr=3e-3, patience=99, split=cfg.split, fold=cfg.fold,
                     seed=cfg.seed, dedup_train=dedup, augment={"strength": 0.5, "grayscale_p": 0.0, "hed_p": 0.0},
                     eval_robustness=False, eval_ood=False, colour_baseline=False, package=False,
                     out_dir=str(out_dir), cache_dir=cfg.cache_dir, threads=cfg.threads)
    return run(tc, cancel=cancel)


def compare(cfg: CompareConfig, cancel=None):
    """Job generator; returns {"rows": [...], "markdown": str, "split": {...}}.

    Without cfg.out_dir the CNN runs go to a temporary folder removed at the end."""
    import tempfile
    from pathlib import Path

    if cfg.out_dir:
        return (yield from _compare(cfg, Path(cfg.out_dir), cancel))
    with tempfile.TemporaryDirectory(prefix="hemascan-compare-") as tmp:
        return (yield from _compare(cfg, Path(tmp), cancel))


def _compare(cfg: CompareConfig, out_dir, cancel):
    from pathlib import Path

    from imblearn.over_sampling import SMOTE
    from imblearn.pipeline import Pipeline
    from safetensors.torch import load_file
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    wanted = cfg.only or ROWS
    yield Progress("compare", 0, len(wanted), "reading data")
    ds = compute_hashes(scan_class_folders(Path(cfg.data)))
    split = make_split(ds, cfg.split, seed=cfg.seed, fold=cfg.fold)
    prep = Preprocessing(input_size=cfg.input_size, interpolation="area")
    images = load_images(ds, prep, Path(cfg.cache_dir) if cfg.cache_dir else None)
    classes = ds.classes
    tr, te = split.train, split.test
    ytr, yte = ds.labels[tr], ds.labels[te]
    rows: list[dict] = []
    done = 0

    def step(msg):
        nonlocal done
        done += 1
        return Progress("compare", done, len(wanted), msg)

    def cnn_row(arch, dedup, label, note):
        sub = out_dir / f"{arch}{'-dedup' if dedup else ''}"
        summary = yield from _train_cnn(cfg, arch, cfg.data, sub, dedup, cancel)
        if summary["status"] != "completed":
            return None, None
        model = build(arch, len(classes))
        model.load_state_dict(load_file(str(sub / "best.safetensors")))
        model.eval()
        test_idx = te
        if dedup:  # also drop test images that duplicate another image anywhere
            keep_all = set(dedup_indices(ds, np.arange(len(ds))).tolist())
            test_idx = np.array([i for i in te if i in keep_all])
        logits = predict_logits(model, images[test_idx], prep)
        row = _metrics_row(label, ds.labels[test_idx], softmax(logits), classes, summary["train_seconds"], note,
                           [subject_of(ds.paths[i]) for i in test_idx])
        return row, model

    cnn_model = None
    if "cnn" in wanted or "cnn_svm" in wanted or "baseline" in wanted:
        row, cnn_model = yield from cnn_row("seed_cnn3", False, "Seed final CNN (3 blocks), duplicates kept",
                                            f"{cfg.epochs} epochs, {cfg.input_size}px")
        if row:
            rows.append({"key": "cnn", **row})
        yield step("CNN")
    if "cnn_dedup" in wanted:
        train_kept = dedup_indices(ds, tr)
        row, _ = yield from cnn_row("seed_cnn3", True, "Seed final CNN, hash-based duplicate removal",
                                    f"removed {len(tr) - len(train_kept)} train duplicates (sha256 + phash<=4)")
        if row:
            rows.append({"key": "cnn_dedup", **row})
        yield step("CNN dedup")

    cv = StratifiedKFold(3, shuffle=True, random_state=cfg.seed)
    if "svm" in wanted or "rf" in wanted:
        xtr_px, xte_px = _pixels(images[tr], cfg.pixel_size), _pixels(images[te], cfg.pixel_size)
    if "svm" in wanted and not (cancel is not None and cancel.is_set()):
        t0 = time.perf_counter()
        pipe = Pipeline([("scale", StandardScaler()), ("pca", PCA(svd_solver="full", random_state=cfg.seed)),
                         ("smote", SMOTE(random_state=cfg.seed)), ("svc", SVC())])
        grid = GridSearchCV(pipe, {"pca__n_components": [0.8, 0.95], "svc__C": [1, 10], "svc__gamma": ["scale"]},
                            cv=cv, scoring="f1_macro", n_jobs=1)
        grid.fit(xtr_px, ytr)
        rows.append({"key": "svm", **_metrics_row("SVM (scaling + PCA + SMOTE + grid search)", yte, grid.predict(xte_px),
                                                   classes, time.perf_counter() - t0, f"best {grid.best_params_}")})
        yield step("SVM")
    if "rf" in wanted and not (cancel is not None and cancel.is_set()):
        t0 = time.perf_counter()
        aug_x = [images[tr], images[tr][:, :, ::-1], images[tr][:, ::-1, :], np.rot90(images[tr], 1, axes=(1, 2))]
        x_aug = np.concatenate([_pixels(np.ascontiguousarray(a), cfg.pixel_size) for a in aug_x])
        y_aug = np.concatenate([ytr] * len(aug_x))
        pipe = Pipeline([("pca", PCA(n_components=0.9, svd_solver="full", random_state=cfg.seed)), ("smote", SMOTE(random_state=cfg.seed)),
                         ("rf", RandomForestClassifier(n_estimators=300, n_jobs=1, random_state=cfg.seed))])
        pipe.fit(x_aug, y_aug)
        rows.append({"key": "rf", **_metrics_row("Random forest (augmentation x4 + PCA + SMOTE)", yte, pipe.predict(xte_px),
                                                  classes, time.perf_counter() - t0, "flips + rot90")})
        yield step("RF")
    if "cnn_svm" in wanted and cnn_model is not None:
        t0 = time.perf_counter()
        feats = _cnn_features(cnn_model, images, prep)
        pipe = Pipeline([("scale", StandardScaler()), ("svc", SVC(C=1.0))])
        pipe.fit(feats[tr], ytr)
        cnn_row_time = next((r["train_seconds"] for r in rows if r["key"] == "cnn"), 0.0)
        rows.append({"key": "cnn_svm", **_metrics_row("CNN features + SVM", yte, pipe.predict(feats[te]), classes,
                                                       time.perf_counter() - t0 + cnn_row_time,
                                                       "seed_cnn3 penultimate (256-d) features; time includes the CNN")})
        yield step("CNN+SVM")
    if "baseline" in wanted:
        row, _ = yield from cnn_row("seed_baseline", False, "Seed baseline CNN (1 conv block, 12 filters 4x4)",
                                    f"{cfg.epochs} epochs, {cfg.input_size}px")
        if row:
            rows.append({"key": "baseline", **row})
        yield step("baseline CNN")
    cols = [("method", "method"), ("accuracy", "accuracy"), ("precision", "precision (macro)"),
            ("recall", "recall (macro)"), ("f1", "F1 (macro)"), ("ece", "ECE"), ("train_seconds", "train time (s)"),
            ("n_test", "n test"), ("note", "note")]

    side = np.zeros(len(ds), int)
    side[split.val], side[split.test] = 1, 2
    pairs = duplicate_pairs(ds, 4)
    leaks = sum(1 for a, b in pairs if {side[a], side[b]} == {0, 2})
    exact = [(a, b) for a, b in pairs if ds.sha256[a] == ds.sha256[b]]
    exact_leaks = sum(1 for a, b in exact if {side[a], side[b]} == {0, 2})
    header = (f"Seed experiments on {Path(cfg.data).name}, {split.method} split (train {len(tr)}, test {len(te)}); "
              f"{len(pairs)} exact/near-duplicate pairs (sha256, phash<=4), {leaks} of them straddling train and test "
              f"({len(exact)} exact pairs, {exact_leaks} straddling).")
    if split.method == "subject":
        info = split.info
        header += (f" Test subjects {', '.join(info['test_subjects'])}; validation subjects "
                   f"{', '.join(info['val_subjects']) or 'none'}; train subjects {', '.join(info['train_subjects'])}.")
    md = header + "\n\n" + markdown_table(rows, cols)
    for r in rows:
        if r.get("per_subject"):
            md += f"\n\nPer held-out subject, {r['method']}:\n\n" + per_group_markdown(r["per_subject"], classes)
    return {"rows": rows, "markdown": md, "split": split.describe(), "config": cfg.__dict__}


@torch.no_grad()
def _cnn_features(model, images: np.ndarray, prep, batch: int = 128) -> np.ndarray:
    """Penultimate activations of seed_cnn3 (input to the last Linear)."""
    model.eval()
    head = model.classifier[:-1]  # everything up to the final Linear
    out = []
    for i in range(0, len(images), batch):
        x = prep.normalise(torch.from_numpy(images[i : i + batch]))
        out.append(head(model.pool(model.features(x))).numpy())
    return np.concatenate(out)


def compare_splits(cfg: CompareConfig, splits: list[str], cancel=None):
    """Job generator: :func:`compare` on each split (same data, rows, epochs, seed), then
    one side-by-side table (accuracy and macro recall per split). Returns {"by_split":
    {split: result}, "markdown": str}."""
    import dataclasses
    from pathlib import Path

    results: dict[str, dict] = {}
    for sp in splits:
        sub = dataclasses.replace(cfg, split=sp, out_dir=str(Path(cfg.out_dir) / sp) if cfg.out_dir else None)
        results[sp] = yield from compare(sub, cancel=cancel)
    methods: list[str] = []
    for res in results.values():
        methods += [r["method"] for r in res["rows"] if r["method"] not in methods]
    table = []
    for m in methods:
        row = {"method": m}
        for sp, res in results.items():
            hit = next((r for r in res["rows"] if r["method"] == m), None)
            if hit:
                row[f"{sp}_acc"], row[f"{sp}_rec"], row[f"{sp}_n"] = hit["accuracy"], hit["recall"], hit["n_test"]
        table.append(row)
    cols = [("method", "method")]
    for sp in results:
        cols += [(f"{sp}_acc", f"{sp}: accuracy"), (f"{sp}_rec", f"{sp}: macro recall"), (f"{sp}_n", f"{sp}: n test")]
    md = "\n\n".join(res["markdown"] for res in results.values())
    md += f"\n\nSide by side ({', '.join(results)} splits of {Path(cfg.data).name}):\n\n" + markdown_table(table, cols)
    return {"by_split": results, "markdown": md, "side_by_side": table}
