"""The foreign-image guard: does an image look like what the model was trained on?

Each model package may carry ``guard.safetensors``: class-conditional Gaussians with one
shared covariance on the network's penultimate embedding (the input of its final linear
layer), fitted by the trainer on the training side only (trainer/guard.py). An image's score
is its Mahalanobis distance to the nearest class mean (Lee et al., "A Simple Unified
Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018).
Above the threshold, set on validation patients the model did not train on so that at most 5%
of a new patient's in-lab images are flagged (trainer/guard.py: a conformal bound over those
patients), the prediction is *outside the model's experience*: its class is not reliable.

The file holds the whitening matrix ``W`` (precision = W W^T, so a distance is a plain
squared norm after one matrix product), the class means already multiplied by ``W``, and the
threshold. It is listed in the card with its SHA-256 and refused when modified, like the
weights. Scoring costs one (D x D) product per image: 1280 x 1280 for EfficientNet-Lite0,
about 1% of the network's own arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import ModelPackageError
from core.models.package import sha256_file

GUARD_FILE = "guard.safetensors"
GUARD_METHOD = "mahalanobis-tied-ledoit-wolf"
CITATION = "Lee et al., NeurIPS 2018 (Mahalanobis distance on the penultimate embedding)"


@dataclass(frozen=True)
class ForeignImageGuard:
    whitening: np.ndarray  # (D, K) float32: K = D, or the K principal directions of a wide embedding
    class_means: np.ndarray  # (C', K) float32, already whitened; the classes the training side had
    threshold: float
    # Centres (whitened) of images reviewers called "Other" (fits no class): an image nearer to
    # one of these than to every class mean is outside the model's experience too.
    other_means: np.ndarray | None = None  # (M, K) float32
    # The class each row of class_means stands for (int64, C'), so that a class may have several
    # centres: a retrain keeps its parent's and adds the new lab's (trainer.guard.extend_guard).
    # None: one centre per class, the card's classes_fitted in order (guards written before).
    centre_classes: np.ndarray | None = None
    # The lab whose cells reviewers labelled (a retrain of a cell model): its cells are admitted
    # when BOTH their embedding lies within ``lab_radius`` of one of ``lab_means`` (whitened) AND
    # their lab signature (core.cells.signature) within ``lab_signature_threshold`` (squared
    # Mahalanobis) of the reviewed cells'. The parent's threshold alone kept the reviewed lab's
    # cells flagged; a wider radius alone opened it for every unreviewed lab (docs/retrain.md).
    lab_means: np.ndarray | None = None  # (L, K) float32, whitened
    lab_radius: float | None = None
    lab_signature_mean: np.ndarray | None = None  # (F,) float32
    lab_signature_precision: np.ndarray | None = None  # (F, F) float32
    lab_signature_threshold: float | None = None

    @property
    def has_lab(self) -> bool:
        return self.lab_means is not None and len(self.lab_means) > 0 and self.lab_signature_mean is not None

    def lab_distances(self, embeddings: np.ndarray) -> np.ndarray | None:
        """Squared distance to the nearest of the reviewed lab's centres (None without a lab)."""
        if not self.has_lab:
            return None
        return self._nearest(np.asarray(embeddings, dtype=np.float32) @ self.whitening, self.lab_means)

    def signature_distances(self, signatures: np.ndarray | None) -> np.ndarray | None:
        """Squared Mahalanobis distance of lab signatures (N, F) to the reviewed lab's."""
        if not self.has_lab or signatures is None:
            return None
        v = np.asarray(signatures, np.float64) - self.lab_signature_mean.astype(np.float64)
        return np.einsum("ij,jk,ik->i", v, self.lab_signature_precision.astype(np.float64), v)

    @property
    def dim(self) -> int:
        return int(self.whitening.shape[0])

    def classes_of_centres(self, classes_fitted: list[int] | None = None) -> list[int]:
        """The class index each row of class_means stands for (``classes_fitted``: the card's,
        for a guard that does not name them)."""
        if self.centre_classes is not None:
            return [int(c) for c in self.centre_classes]
        return list(classes_fitted) if classes_fitted is not None else list(range(len(self.class_means)))

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each embedding (N, D) to its nearest class centre."""
        return self._nearest(np.asarray(embeddings, dtype=np.float32) @ self.whitening, self.class_means)

    def _nearest(self, z: np.ndarray, means: np.ndarray) -> np.ndarray:
        d = (z * z).sum(1, keepdims=True) - 2.0 * z @ means.T + (means ** 2).sum(1)
        return np.maximum(d.min(1), 0.0)

    @property
    def has_other(self) -> bool:
        return self.other_means is not None and len(self.other_means) > 0

    def other_distances(self, embeddings: np.ndarray) -> np.ndarray | None:
        """Squared distance to the nearest "Other" centre (None when reviewers gave none)."""
        if not self.has_other:
            return None
        return self._nearest(np.asarray(embeddings, dtype=np.float32) @ self.whitening, self.other_means)

    def verdict(self, distances: np.ndarray, other_distances: np.ndarray | None = None,
                lab_distances: np.ndarray | None = None, signature_distances: np.ndarray | None = None) -> np.ndarray:
        """Outside the model's experience: too far from every class (unless the reviewed lab's
        embedding and signature both admit it), or nearer an "Other" centre."""
        outside = np.asarray(distances) > self.threshold
        if self.has_lab and lab_distances is not None and signature_distances is not None:
            outside &= ~((np.asarray(lab_distances) <= self.lab_radius)
                         & (np.asarray(signature_distances) <= self.lab_signature_threshold))
        if other_distances is not None:
            outside |= np.asarray(other_distances) < distances
        return outside

    def flags(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distances, outside the model's experience) for a batch of embeddings."""
        d = self.distances(embeddings)
        return d, self.verdict(d, self.other_distances(embeddings))

    def tensors(self) -> dict[str, np.ndarray]:
        return {"whitening": np.ascontiguousarray(self.whitening, np.float32),
                "class_means": np.ascontiguousarray(self.class_means, np.float32),
                "threshold": np.array([self.threshold], np.float32),
                **({"other_means": np.ascontiguousarray(self.other_means, np.float32)}
                   if self.other_means is not None and len(self.other_means) else {}),
                **({"centre_classes": np.ascontiguousarray(self.centre_classes, np.int64)}
                   if self.centre_classes is not None else {}),
                **({"lab_means": np.ascontiguousarray(self.lab_means, np.float32),
                    "lab_radius": np.array([self.lab_radius], np.float32),
                    "lab_signature_mean": np.ascontiguousarray(self.lab_signature_mean, np.float32),
                    "lab_signature_precision": np.ascontiguousarray(self.lab_signature_precision, np.float32),
                    "lab_signature_threshold": np.array([self.lab_signature_threshold], np.float32)}
                   if self.has_lab else {})}

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file(self.tensors(), str(path), metadata={"method": GUARD_METHOD})


def load_guard(package: Path, record: dict | None, n_classes: int) -> ForeignImageGuard | None:
    """The package's guard, checked against its card record ({"file", "sha256", ...}); None
    when the card has none. A modified or malformed guard file is refused."""
    if not record:
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file


    name = record.get("file")
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ModelPackageError(f"the model card names a guard file outside its package: {name!r}")
    path = Path(package) / name
    if not path.is_file():
        raise ModelPackageError(f"the foreign-image guard file is missing: {path}")
    if sha256_file(path) != record.get("sha256"):
        raise ModelPackageError(f"the foreign-image guard {path} does not match its card: refusing a modified file")
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelPackageError(f"the foreign-image guard {path} cannot be read: {exc}") from None
    w, m, thr = t.get("whitening"), t.get("class_means"), t.get("threshold")
    centre_classes = t.get("centre_classes")
    # one centre per class, unless each centre names its class (then a class may have several)
    n_centres_ok = m is not None and m.ndim == 2 and (
        1 <= m.shape[0] <= n_classes if centre_classes is None else
        (m.shape[0] >= 1 and centre_classes.ndim == 1 and len(centre_classes) == m.shape[0]
         and centre_classes.dtype.kind in "iu" and bool(((centre_classes >= 0) & (centre_classes < n_classes)).all())))
    ok = (w is not None and thr is not None and n_centres_ok and w.ndim == 2 and w.shape[1] <= w.shape[0]
          and m.shape[1] == w.shape[1] and thr.size == 1 and np.isfinite(w).all()
          and np.isfinite(m).all() and np.isfinite(thr).all() and float(thr.reshape(-1)[0]) > 0)
    other = t.get("other_means")
    if other is not None and not (other.ndim == 2 and other.shape[1] == w.shape[1] and np.isfinite(other).all()):
        ok = False
    lab = {k: t.get(k) for k in LAB_TENSORS}
    if any(v is not None for v in lab.values()):
        ok = ok and _lab_ok(lab, w.shape[1])
    if not ok:
        raise ModelPackageError(f"the foreign-image guard {path} is malformed (shapes or values)")
    lab_args = {} if lab["lab_means"] is None else dict(
        lab_means=lab["lab_means"].astype(np.float32), lab_radius=float(lab["lab_radius"].reshape(-1)[0]),
        lab_signature_mean=lab["lab_signature_mean"].astype(np.float32),
        lab_signature_precision=lab["lab_signature_precision"].astype(np.float32),
        lab_signature_threshold=float(lab["lab_signature_threshold"].reshape(-1)[0]))
    return ForeignImageGuard(w.astype(np.float32), m.astype(np.float32), float(thr.reshape(-1)[0]),
                             None if other is None else other.astype(np.float32),
                             None if centre_classes is None else centre_classes.astype(np.int64), **lab_args)


LAB_TENSORS = ("lab_means", "lab_radius", "lab_signature_mean", "lab_signature_precision", "lab_signature_threshold")


def _lab_ok(lab: dict, k: int) -> bool:
    """All five lab tensors, finite, of matching shapes, positive radius and threshold."""
    if any(v is None or not np.isfinite(v).all() for v in lab.values()):
        return False
    means, mean, prec = lab["lab_means"], lab["lab_signature_mean"], lab["lab_signature_precision"]
    return (means.ndim == 2 and means.shape[0] >= 1 and means.shape[1] == k and mean.ndim == 1
            and prec.shape == (len(mean), len(mean)) and lab["lab_radius"].size == 1
            and lab["lab_signature_threshold"].size == 1 and float(lab["lab_radius"].reshape(-1)[0]) > 0
            and float(lab["lab_signature_threshold"].reshape(-1)[0]) > 0)
