"""Classical baselines with scikit-learn / imbalanced-learn pipelines: the colour-histogram
MLP (shows how much of the data's signal is colour alone) and the seed experiments that
``hemascan compare`` reproduces."""
from __future__ import annotations

import time

import numpy as np

from . import augment as aug
from .metrics import classification_metrics


def colour_histograms(images: np.ndarray, bins: int = 32) -> np.ndarray:
    """uint8 (N,H,W,3) -> per-channel normalised intensity histograms (N, 3*bins). No shape
    information at all."""
    n = len(images)
    flat = images.reshape(n, -1, 3)
    out = np.empty((n, 3 * bins), dtype=np.float32)
    for c in range(3):
        ch = flat[:, :, c].astype(np.int64) * bins // 256
        out[:, c * bins : (c + 1) * bins] = np.apply_along_axis(np.bincount, 1, ch, minlength=bins) / flat.shape[1]
    return out


def colour_histogram_model(seed: int = 0):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=seed))


def colour_histogram_baseline(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                              classes: list[str], seed: int = 0) -> dict:
    """Fit the colour-histogram MLP on the training images and evaluate it as is, in
    grayscale and stain-perturbed (same perturbations as the CNN)."""
    t0 = time.perf_counter()
    clf = colour_histogram_model(seed).fit(colour_histograms(x_train), y_train)
    fit_s = time.perf_counter() - t0
    out = {"model": "StandardScaler + MLP(64) on 3x32-bin RGB histograms", "train_seconds": fit_s}
    for name, x in (("as_is", x_test), ("grayscale", aug.to_grayscale(x_test)),
                    ("stain_perturbed", aug.stain_perturb(x_test, seed=seed))):
        probs = clf.predict_proba(colour_histograms(x))
        full = np.zeros((len(x), len(classes)))
        full[:, clf.classes_] = probs
        m = classification_metrics(y_test, full, classes)
        out[name] = {k: m[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "ece", "n")}
    return out
