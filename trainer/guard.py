"""Fitting the foreign-image guard (core/models/guard.py) on a trained model's embeddings.

Fitted on the training side only; the threshold is the validation side's 95th percentile,
so about 5% of in-lab images are flagged. Chosen by measurement against energy, max-softmax,
relative Mahalanobis and k-nearest-neighbour scores (trainer/experiments/ood_guard.py,
figures in docs/trainer.md).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from core.models.architectures import LogitsAndEmbedding
from core.models.guard import CITATION, GUARD_FILE, GUARD_METHOD, ForeignImageGuard
from core.models.package import sha256_file
from core.imaging.preprocessing import Preprocessing

from . import augment as aug
from core.models.package import verify_package
from trainer.quantize import _write_card
from core.imaging.images import SUPPORTED_EXTENSIONS, decode_rgb, read_file
from core.models.package import load_model
from trainer.quantize import split_as_trained
from core.app.sample import smear_image
from core.models.taxonomy import TAXONOMIES

FLAG_RATE = 0.05  # share of in-lab (validation) images the threshold flags
MAX_DIM = 1280  # wider embeddings are first projected on their principal directions (file <= 7 MB)


@torch.no_grad()
def logits_and_embeddings(model: torch.nn.Module, images: np.ndarray, prep: Preprocessing,
                          device: torch.device | str = "cpu", batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, S, S, 3) through ``prep.apply`` -> (logits, embeddings), float64, computed in fp32."""
    wrapped = LogitsAndEmbedding(model).eval()
    device = torch.device(device)
    logits, emb = [], []
    for i in range(0, len(images), batch_size):
        x = prep.normalise(torch.as_tensor(images[i : i + batch_size]).to(device))
        lo, em = wrapped(x)
        logits.append(lo.float().cpu())
        emb.append(em.float().cpu())
    if not logits:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return torch.cat(logits).double().numpy(), torch.cat(emb).double().numpy()


MAX_OTHER_CENTRES = 8


def fit_guard(train_emb: np.ndarray, train_labels: np.ndarray, val_emb: np.ndarray,
              flag_rate: float = FLAG_RATE, other_emb: np.ndarray | None = None) -> tuple[ForeignImageGuard, dict]:
    """Class means and a shared Ledoit-Wolf covariance from the training side; the threshold
    from the validation side. ``other_emb``: images reviewers called "Other"; their centres
    (k-means, at most 8) are kept so that they and images like them come out flagged.
    Returns the guard and what the card records about it."""
    from sklearn.covariance import LedoitWolf

    train_emb = np.asarray(train_emb, np.float64)
    projection = np.eye(train_emb.shape[1])
    if train_emb.shape[1] > MAX_DIM:  # e.g. seed_baseline's 3,072: keep the leading directions
        from sklearn.decomposition import PCA

        k = min(MAX_DIM, len(train_emb) - 1)
        projection = PCA(n_components=k, random_state=0).fit(train_emb).components_.T  # (D, k)
    proj = train_emb @ projection
    classes = np.unique(train_labels)
    means = np.stack([proj[train_labels == c].mean(0) for c in classes])
    centred = proj - means[np.searchsorted(classes, train_labels)]
    precision = LedoitWolf().fit(centred).precision_
    precision = (precision + precision.T) / 2
    chol = np.linalg.cholesky(precision)  # precision = L L^T
    whitening = projection @ chol  # (D, k): distance = ||(f - mean) @ whitening||^2
    provisional = ForeignImageGuard(whitening.astype(np.float32), (means @ chol).astype(np.float32), 1.0)
    ref = provisional.distances(val_emb if len(val_emb) else train_emb)
    threshold = float(np.quantile(ref, 1.0 - flag_rate))
    other_means = None
    if other_emb is not None and len(other_emb):
        from sklearn.cluster import KMeans

        z_other = np.asarray(other_emb, np.float64) @ whitening
        k = min(MAX_OTHER_CENTRES, len(z_other))
        other_means = KMeans(n_clusters=k, n_init=4, random_state=0).fit(z_other).cluster_centers_.astype(np.float32)
    guard = ForeignImageGuard(provisional.whitening, provisional.class_means, threshold, other_means)
    info = {"method": GUARD_METHOD, "citation": CITATION, "file": GUARD_FILE, "threshold": round(threshold, 4),
            "flag_rate_target": flag_rate, "n_fit": int(len(train_emb)), "n_threshold": int(len(val_emb)),
            "threshold_from": "validation side" if len(val_emb) else "training side (no validation images)",
            "dim": int(train_emb.shape[1]), "classes_fitted": [int(c) for c in classes],
            "n_other": 0 if other_emb is None else int(len(other_emb)),
            "other_centres": 0 if other_means is None else int(len(other_means))}
    return guard, info


def match_parent_on_lab(guard: ForeignImageGuard, info: dict, lab_emb: np.ndarray, parent_flagged: np.ndarray,
                        parent_name: str) -> tuple[ForeignImageGuard, dict]:
    """A retrained version's guard, its threshold raised (never lowered) so that on the lab's own
    images it flags no more than its parent's guard flagged: the threshold from a few dozen
    validation images flagged a quarter of them (667 of 2,730, against the parent's 59). Images
    nearer an "Other" centre stay flagged whatever the threshold."""
    d, outside = guard.flags(lab_emb)
    allowed = int(np.asarray(parent_flagged).sum())
    before = int(outside.sum())
    threshold = guard.threshold
    if before > allowed:
        near_other = outside & ~(d > guard.threshold)
        rest = np.sort(d[~near_other])[::-1]
        k = max(0, allowed - int(near_other.sum()))  # images the distance may still flag
        if k < len(rest):
            threshold = max(threshold, float(rest[k]))  # d > rest[k]: the k farthest (ties aside)
        guard = ForeignImageGuard(guard.whitening, guard.class_means, threshold, guard.other_means)
    after = int(guard.flags(lab_emb)[1].sum())
    info = {**info, "threshold": round(threshold, 4),
            "lab_check": {"n": int(len(d)), "parent": parent_name, "parent_flagged": allowed,
                          "flagged_before": before, "flagged": after,
                          "rule": "threshold raised (never lowered) until the lab's own images are flagged "
                                  "no more often than by the parent's guard"}}
    if before > allowed:
        info["threshold_from"] = f"{info.get('threshold_from', 'validation side')}, raised to match {parent_name} on the lab's own images"
    return guard, info


def write_guard(package: Path, guard: ForeignImageGuard, info: dict) -> dict:
    """Write guard.safetensors into ``package``; returns the card record with its SHA-256."""
    path = Path(package) / GUARD_FILE
    tmp = path.with_name(f".tmp-{GUARD_FILE}")
    guard.save(tmp)
    os.chmod(tmp, 0o644)  # packages are shared read-only data (installers, other users)
    tmp.replace(path)
    return {**info, "file": GUARD_FILE, "sha256": sha256_file(path)}


def add_guard(package: Path, guard: ForeignImageGuard, info: dict) -> dict:
    """Put the guard into a package and record it (with its SHA-256) in the card."""


    package = Path(package)
    card = verify_package(package)
    card.guard = write_guard(package, guard, info)
    _write_card(package, card)
    verify_package(package)
    return card.guard


def _folder_images(folder: Path, prep: Preprocessing) -> np.ndarray:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in SUPPORTED_EXTENSIONS and p.is_file())
    return np.stack([prep.apply(decode_rgb(read_file(str(f)))) for f in files]) if files else np.zeros((0,))


def foreign_figures(guard: ForeignImageGuard, d_in: np.ndarray, conf_foreign: np.ndarray, emb_foreign: np.ndarray,
                    uncertain_threshold: float | None) -> dict:
    """How the guard treats a foreign set, against the in-lab test side's distances ``d_in``."""
    from .metrics import ood_auroc  # heavy: imports scikit-learn

    d_out = guard.distances(emb_foreign)
    flagged = d_out > guard.threshold
    uncertain = conf_foreign < (uncertain_threshold or 0.0)
    return {"n": int(len(d_out)), "auroc": round(ood_auroc(-d_in, -d_out), 4), "flagged": round(float(flagged.mean()), 4),
            "flagged_or_uncertain": round(float((flagged | uncertain).mean()), 4),
            "confident_call": round(float((~flagged & ~uncertain).mean()), 4)}


def guard_from_folder(package: Path, data: Path, foreign: dict[str, Path] | None = None,
                      cache_dir: Path | None = None, progress=None) -> dict:
    """Fit (or refit) a package's guard on the training side of the split it was trained
    with, threshold on its validation side; measure it on the test side, on generated
    foreign images (synthetic, blurred, another stain) and on each folder of ``foreign``."""

    from .metrics import softmax  # heavy: imports scikit-learn

    package = Path(package)
    model, card = load_model(package)
    ds, split, images = split_as_trained(card, data, cache_dir, progress)
    prep = card.prep
    _, e_tr = logits_and_embeddings(model, images[split.train], prep)
    _, e_va = logits_and_embeddings(model, images[split.val], prep) if len(split.val) else (None, np.zeros((0, 0)))
    guard, info = fit_guard(e_tr, ds.labels[split.train], e_va)
    info["fitted_on"] = f"{len(split.train)} training images of {Path(data).name} ({split.method} split)"
    if len(split.test):
        xt = images[split.test]
        _, e_te = logits_and_embeddings(model, xt, prep)
        d_in = guard.distances(e_te)
        info["in_lab_test_flagged"] = round(float((d_in > guard.threshold).mean()), 4)
        info["n_in_lab_test"] = int(len(xt))
        sets = dict(ood_sets(xt, prep))
        for name, folder in (foreign or {}).items():
            sets[name] = _folder_images(folder, prep)
        info["foreign"] = {}
        for name, x in sets.items():
            if len(x) == 0:
                continue
            lo, em = logits_and_embeddings(model, x, prep)
            conf = softmax(lo, float(card.temperature or 1.0)).max(1)
            info["foreign"][name] = foreign_figures(guard, d_in, conf, em, card.uncertain_threshold)
    info["measured_with"] = "torch fp32 embeddings"
    add_guard(package, guard, info)
    return info

def ood_sets(images: np.ndarray, prep: Preprocessing, n_synthetic: int = 120, seed: int = 0) -> dict[str, np.ndarray]:
    """Out-of-distribution inputs built from the in-distribution test images (blurred,
    other stain) and synthetic smear-like sample images (core.app.sample)."""

    rng = np.random.default_rng(seed)
    classes = TAXONOMIES["all_subtype"].classes
    synth = np.stack([prep.apply(smear_image(classes[i % 4], rng, 224)) for i in range(n_synthetic)])
    return {"synthetic_sample_images": synth, "blurred_sigma3": aug.blur(images, 3.0), "other_stain_hue180": aug.other_stain(images)}
