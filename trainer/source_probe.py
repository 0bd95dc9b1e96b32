"""The source probe: can the SOURCE of a cut-out be told from what is not the cell?

A model trained on several data sets can learn where a cell comes from instead of what it is
(C-NMC's cells sit on black and are all ALL or normal lymphoid cells; PBC's sit among red cells).
The probe blanks the cell itself in every cut-out (``blank_cells``: painted over with one colour,
so only the surroundings -- and the outline -- remain) and trains a classifier to tell the sources
apart from those images (logistic regression on features, cross-validated). Near chance: nothing
outside the cell tells the source; far above: a model could learn the source from it.
"""
from __future__ import annotations

import numpy as np

BLANK_COLOUR = (124, 116, 104)  # the ImageNet mean: "nothing" to a pretrained backbone


def blank_cells(images: np.ndarray, masks: np.ndarray, colour=BLANK_COLOUR) -> np.ndarray:
    """uint8 (N, S, S, 3) with every pixel inside the cell's mask (N, S, S) painted ``colour``."""
    out = np.array(images, copy=True)
    out[np.asarray(masks, bool)] = np.asarray(colour, np.uint8)
    return out


def pixel_features(images: np.ndarray, side: int = 16) -> np.ndarray:
    """A small thumbnail of each image, flattened (N, side*side*3) in [0, 1]: features for the
    probe where no backbone is wanted (tests)."""
    import cv2  # heavy: imports OpenCV

    return np.stack([cv2.resize(np.asarray(im), (side, side), interpolation=cv2.INTER_AREA).reshape(-1)
                     for im in images]).astype(np.float32) / 255.0


def source_probe(features: np.ndarray, sources, folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated logistic regression telling ``sources`` apart from ``features``.
    Returns balanced accuracy, chance (1 / number of sources), per-source recall and n."""
    from sklearn.linear_model import LogisticRegression  # heavy: imports scikit-learn
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, np.float64)
    names, y = np.unique(np.asarray(sources).astype(str), return_inverse=True)
    pred = np.empty_like(y)
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        scaler = StandardScaler().fit(x[tr])
        clf = LogisticRegression(C=0.1, max_iter=500, class_weight="balanced").fit(scaler.transform(x[tr]), y[tr])
        pred[te] = clf.predict(scaler.transform(x[te]))
    recall = {str(n): float((pred[y == k] == k).mean()) for k, n in enumerate(names)}
    return {"balanced_accuracy": float(np.mean(list(recall.values()))), "chance": 1.0 / len(names),
            "per_source_recall": recall, "n": {str(n): int((y == k).sum()) for k, n in enumerate(names)}}


__all__ = ["BLANK_COLOUR", "blank_cells", "pixel_features", "source_probe"]
