"""Fitting the foreign-image guard (core/guard.py) on a trained model's embeddings.

Fitted on the training side only; the threshold is the validation side's 95th percentile,
so about 5% of in-lab images are flagged. Chosen by measurement against energy, max-softmax,
relative Mahalanobis and k-nearest-neighbour scores (trainer/experiments/ood_guard.py,
figures in docs/trainer.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.architectures import LogitsAndEmbedding
from core.guard import CITATION, GUARD_FILE, GUARD_METHOD, ForeignImageGuard
from core.modelpkg import sha256_file
from core.preprocessing import Preprocessing

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


def fit_guard(train_emb: np.ndarray, train_labels: np.ndarray, val_emb: np.ndarray,
              flag_rate: float = FLAG_RATE) -> tuple[ForeignImageGuard, dict]:
    """Class means and a shared Ledoit-Wolf covariance from the training side; the threshold
    from the validation side. Returns the guard and what the card records about it."""
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
    guard = ForeignImageGuard(provisional.whitening, provisional.class_means, threshold)
    info = {"method": GUARD_METHOD, "citation": CITATION, "file": GUARD_FILE, "threshold": round(threshold, 4),
            "flag_rate_target": flag_rate, "n_fit": int(len(train_emb)), "n_threshold": int(len(val_emb)),
            "threshold_from": "validation side" if len(val_emb) else "training side (no validation images)",
            "dim": int(train_emb.shape[1]), "classes_fitted": [int(c) for c in classes]}
    return guard, info


def write_guard(package: Path, guard: ForeignImageGuard, info: dict) -> dict:
    """Write guard.safetensors into ``package``; returns the card record with its SHA-256."""
    path = Path(package) / GUARD_FILE
    tmp = path.with_name(f".tmp-{GUARD_FILE}")
    guard.save(tmp)
    tmp.replace(path)
    return {**info, "file": GUARD_FILE, "sha256": sha256_file(path)}


def add_guard(package: Path, guard: ForeignImageGuard, info: dict) -> dict:
    """Put the guard into a package and record it (with its SHA-256) in the card."""
    from core.modelpkg import verify_package

    from .quantize import _write_card

    package = Path(package)
    card = verify_package(package)
    card.guard = write_guard(package, guard, info)
    _write_card(package, card)
    verify_package(package)
    return card.guard
