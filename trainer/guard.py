"""Fitting the foreign-image guard (core/models/guard.py) on a trained model's embeddings.

Fitted on the training side only. The threshold is set on images of patients the model did
not train on (:func:`held_out_validation`: the validation block without images of training
patients or slides) so that at most 5% of a NEW patient's images are flagged: a conformal
bound over the held-out patients (:func:`conformal_threshold`), not the pooled validation
images' 95th percentile, which flagged 8.4% of the field model's test block (later patients
lie further from training than the few validation patients). Chosen by measurement against
energy, max-softmax, relative Mahalanobis and k-nearest-neighbour scores
(trainer/experiments/ood_guard.py, figures in docs/trainer.md).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from core.models.architectures import LogitsAndEmbedding
from core.models.guard import CITATION, GUARD_FILE, GUARD_METHOD, ForeignImageGuard
from core.models.package import sha256_file
from core.imaging.preprocessing import Preprocessing

from . import augment as aug
from .data import file_number, subject_of
from core.models.package import verify_package
from trainer.quantize import _write_card
from core.imaging.images import SUPPORTED_EXTENSIONS, decode_rgb, read_file
from core.models.package import load_model
from trainer.quantize import split_as_trained
from core.app.sample import smear_image
from core.models.taxonomy import TAXONOMIES

FLAG_RATE = 0.05  # share of a new patient's in-lab images the threshold may flag
# ... for this share of new patients (the conformal bound over held-out patients' own thresholds)
PATIENT_COVERAGE = 0.9
# The patient split has no patient ids: neighbouring file numbers come from the same slides, so
# runs of this many neighbouring held-out images stand in for patients (Taleqani: ~31 images per
# patient), and validation images this close to a training image of their class may share its
# slide and are left out of the threshold.
PSEUDO_PATIENT_RUN = 20
SLIDE_NEIGHBOURS = 10
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


def conformal_threshold(distances: np.ndarray, groups=None, flag_rate: float = FLAG_RATE,
                        coverage: float = PATIENT_COVERAGE) -> tuple[float, dict]:
    """The distance above which an image is flagged, from held-out images' distances.

    With ``groups`` (a patient id per image): each patient's own threshold (the one that flags
    ``flag_rate`` of its images), then the split-conformal bound over patients, the
    ceil((G+1) * coverage)-th smallest of the G: a new patient exchangeable with these has at
    most ``flag_rate`` of its images flagged with probability >= ``coverage``. Pooling the
    images instead lets the few patients of the validation block stand for every new one.
    Without groups (each image on its own): the split-conformal quantile of the images,
    ceil((n+1) * (1 - flag_rate))-th smallest. Returns (threshold, what the card records)."""
    d = np.asarray(distances, np.float64)
    if groups is None:
        n = len(d)
        k = int(np.ceil((n + 1) * (1.0 - flag_rate)))
        return float(np.sort(d)[min(k, n) - 1]), {
            "threshold_rule": f"split-conformal {1 - flag_rate:.0%} quantile of {n} held-out images"}
    groups = np.asarray([str(g) for g in groups], dtype=object)
    names = sorted(set(groups))
    per_patient = np.sort([np.quantile(d[groups == g], 1.0 - flag_rate) for g in names])
    g = len(per_patient)
    k = int(np.ceil((g + 1) * coverage))
    rule = (f"split-conformal bound over {g} held-out patients: the {min(k, g)}th smallest of their own "
            f"{1 - flag_rate:.0%} quantiles, so that <= {flag_rate:.0%} of a new patient's images are flagged "
            f"for {coverage:.0%} of new patients")
    if k > g:
        rule += " (too few patients to promise that: the largest is used)"
    return float(per_patient[min(k, g) - 1]), {"threshold_rule": rule, "n_threshold_patients": g}


def held_out_validation(ds, split) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Which validation images the guard's threshold may be set on, and their patients:
    (positions in ``split.val``, a patient id per kept image or None, a phrase for the card).

    subject split: only subjects no training image comes from (C-NMC's two normal donors are
    validated on their own later smear images: left out). patient split: validation images
    more than ``SLIDE_NEIGHBOURS`` file numbers away from every training image of their class
    (neighbouring numbers share a slide), grouped in runs of ``PSEUDO_PATIENT_RUN`` neighbours.
    random split: every validation image, on its own (no patient is held out)."""
    val = np.asarray(split.val, dtype=np.int64)
    if split.method == "subject":
        train_subjects = {subject_of(ds.paths[i]) for i in split.train}
        subjects = [subject_of(ds.paths[i]) for i in val]
        keep = np.array([s is not None and s not in train_subjects for s in subjects], dtype=bool)
        kept = np.nonzero(keep)[0]
        return kept, np.array([subjects[i] for i in kept], dtype=object), \
            f"{len(kept)} validation images of {len({subjects[i] for i in kept})} subjects not trained on"
    if split.method not in ("patient", "all-but-val"):
        return np.arange(len(val)), None, f"{len(val)} validation images ({split.method} split: not patient-held-out)"
    numbers = np.array([file_number(p) for p in ds.paths])
    train = np.asarray(split.train, dtype=np.int64)
    keep = np.zeros(len(val), dtype=bool)
    groups = np.empty(len(val), dtype=object)
    for ci in range(len(ds.classes)):
        pos = np.nonzero(ds.labels[val] == ci)[0]
        if not len(pos):
            continue
        train_numbers = np.sort(numbers[train[ds.labels[train] == ci]])
        pos = pos[np.argsort(numbers[val[pos]], kind="stable")]
        n = numbers[val[pos]]
        if len(train_numbers):
            at = np.clip(np.searchsorted(train_numbers, n), 1, len(train_numbers)) - 1
            near = np.minimum(np.abs(n - train_numbers[at]),
                              np.abs(n - train_numbers[np.minimum(at + 1, len(train_numbers) - 1)]))
            pos = pos[near > SLIDE_NEIGHBOURS]
        keep[pos] = True
        for r, start in enumerate(range(0, len(pos), PSEUDO_PATIENT_RUN)):
            groups[pos[start : start + PSEUDO_PATIENT_RUN]] = f"{ds.classes[ci]}:{r}"
    kept = np.nonzero(keep)[0]
    return kept, groups[kept], (f"{len(kept)} validation images of slides not trained on (more than "
                                f"{SLIDE_NEIGHBOURS} file numbers from training), in runs of "
                                f"{PSEUDO_PATIENT_RUN} neighbours as patients")


def threshold_images(ds, split) -> tuple[np.ndarray, np.ndarray | None, str]:
    """:func:`held_out_validation`, or the whole validation block (said so) where no patient
    is held out: the images every field guard's threshold is set on (training, ``hemascan
    guard`` and trainer.guard_refit alike)."""
    keep, groups, described = held_out_validation(ds, split)
    if not len(keep):
        keep, groups, described = np.arange(len(split.val)), None, f"{len(split.val)} validation images (no patient held out)"
    return keep, groups, described


def fit_guard_on_split(train_emb: np.ndarray, train_labels: np.ndarray, val_emb: np.ndarray, ds, split,
                       flag_rate: float = FLAG_RATE, other_emb: np.ndarray | None = None
                       ) -> tuple[ForeignImageGuard, dict]:
    """:func:`fit_guard` with the threshold on the held-out patients of ``split``'s validation
    block (``val_emb``: every image of ``split.val``, in order)."""
    keep, groups, described = threshold_images(ds, split)
    guard, info = fit_guard(train_emb, train_labels, np.asarray(val_emb)[keep], flag_rate, other_emb, groups)
    info["threshold_from"] = described
    return guard, info


def fit_guard(train_emb: np.ndarray, train_labels: np.ndarray, val_emb: np.ndarray,
              flag_rate: float = FLAG_RATE, other_emb: np.ndarray | None = None,
              val_groups=None) -> tuple[ForeignImageGuard, dict]:
    """Class means and a shared Ledoit-Wolf covariance from the training side; the threshold
    from held-out images ``val_emb`` (:func:`conformal_threshold`; ``val_groups``: their
    patients). ``other_emb``: images reviewers called "Other"; their centres (k-means, at
    most 8) are kept so that they and images like them come out flagged.
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
    if len(val_emb):
        threshold, rule = conformal_threshold(provisional.distances(val_emb), val_groups, flag_rate)
    else:
        threshold, rule = conformal_threshold(provisional.distances(train_emb), None, flag_rate)
    other_means = None
    if other_emb is not None and len(other_emb):
        from sklearn.cluster import KMeans

        z_other = np.asarray(other_emb, np.float64) @ whitening
        k = min(MAX_OTHER_CENTRES, len(z_other))
        other_means = KMeans(n_clusters=k, n_init=4, random_state=0).fit(z_other).cluster_centers_.astype(np.float32)
    guard = ForeignImageGuard(provisional.whitening, provisional.class_means, threshold, other_means)
    info = {"method": GUARD_METHOD, "citation": CITATION, "file": GUARD_FILE, "threshold": round(threshold, 4),
            "flag_rate_target": flag_rate, **rule, "n_fit": int(len(train_emb)), "n_threshold": int(len(val_emb)),
            "threshold_from": "validation side" if len(val_emb) else "training side (no validation images)",
            "dim": int(train_emb.shape[1]), "classes_fitted": [int(c) for c in classes],
            "n_other": 0 if other_emb is None else int(len(other_emb)),
            "other_centres": 0 if other_means is None else int(len(other_means))}
    return guard, info


LAB_MIN_CELLS = 20  # fewer reviewed training cells: no lab admission (18 signature numbers to fit)
LAB_ADMIT_QUANTILE = 95  # the reviewed cells' embedding distances to their lab's centres admitted
# The signature is fitted without the reviewed cells farthest from the rest (a crop whose scale the
# finder misjudged is cut out at another size and widened the fit until other labs passed: Raabin
# 67% admitted), and admits the 90th percentile of the kept cells' leave-one-out distances.
LAB_SIGNATURE_TRIM = 10  # percent
LAB_SIGNATURE_QUANTILE = 90


def fit_lab_admission(z: np.ndarray, labels: np.ndarray, signatures: np.ndarray) -> tuple[dict, dict]:
    """The reviewed lab's region: ``z`` its training cells' embeddings whitened by the guard,
    ``labels`` their classes, ``signatures`` their lab signatures (core.cells.signature). One
    centre per class; the radius admits 95% of the cells' distances to their nearest centre; the
    signature's mean and (Ledoit-Wolf) precision fitted on the 90% of the cells nearest the rest,
    its threshold at 90% of those cells' leave-one-out distances. Returns (ForeignImageGuard fields, card record); ({}, record saying why) with fewer
    than LAB_MIN_CELLS cells."""
    from sklearn.covariance import LedoitWolf  # heavy: imports scikit-learn

    z, labels, sig = np.asarray(z, np.float64), np.asarray(labels), np.asarray(signatures, np.float64)
    n = len(z)
    if n < LAB_MIN_CELLS or len(sig) != n:
        return {}, {"admitted": False, "n_cells": int(n),
                    "why": f"fewer than {LAB_MIN_CELLS} reviewed training cells with a lab signature"}
    classes = np.unique(labels)
    means = np.stack([z[labels == c].mean(0) for c in classes])
    d = ((z[:, None, :] - means[None]) ** 2).sum(-1).min(1)
    radius = float(np.percentile(d, LAB_ADMIT_QUANTILE))
    def mahalanobis(fit, x):
        v = x - fit.location_
        return np.einsum("ij,jk,ik->i", v, fit.precision_, v)

    first = mahalanobis(LedoitWolf().fit(sig), sig)
    sig = sig[first <= np.percentile(first, 100 - LAB_SIGNATURE_TRIM)]
    loo = np.array([mahalanobis(LedoitWolf().fit(np.delete(sig, i, axis=0)), sig[i:i + 1])[0]
                    for i in range(len(sig))])
    lw = LedoitWolf().fit(sig)
    threshold = float(np.percentile(loo, LAB_SIGNATURE_QUANTILE))
    fields = dict(lab_means=means.astype(np.float32), lab_radius=max(radius, 1e-6),
                  lab_signature_mean=lw.location_.astype(np.float32),
                  lab_signature_precision=lw.precision_.astype(np.float32),
                  lab_signature_threshold=max(threshold, 1e-6))
    return fields, {"admitted": True, "n_cells": int(n), "n_centres": int(len(classes)),
                    "radius": round(radius, 2), "signature_threshold": round(threshold, 2),
                    "rule": f"a cell the parent's threshold flags is admitted when its embedding lies within the "
                            f"{LAB_ADMIT_QUANTILE}th percentile of the reviewed cells' distances to the lab's centres "
                            f"AND its lab signature within the {LAB_SIGNATURE_QUANTILE}th percentile of their leave-one-out "
                            f"signature distances (the {LAB_SIGNATURE_TRIM}% farthest left out of the fit)",
                    "n_signature_fit": int(len(sig))}


def extend_guard(parent: ForeignImageGuard, parent_info: dict, new_emb: np.ndarray, new_labels: np.ndarray,
                 other_emb: np.ndarray | None = None, signatures: np.ndarray | None = None
                 ) -> tuple[ForeignImageGuard, dict]:
    """A retrained head's guard that keeps its parent's experience and adds the new lab's: the
    parent's whitening, centres, threshold and "Other" centres as they are, plus one centre per
    class of the new lab's reviewed training cells (their mean, whitened with the parent's
    covariance) and centres of the cells reviewers called "Other". For a head refit only: the
    backbone, so the embedding space, is the parent's.

    Refitting the guard on a few dozen reviewed cells plus replayed ones set its threshold on
    the new lab's ~10 validation cells, far from the replayed classes: it opened for labs
    nobody reviewed (bccd white cells flagged 86% by the parent, 4% after 50 reviewed cells of
    another lab; docs/retrain.md). Adding centres cannot flag anything the parent admitted."""
    new_emb = np.asarray(new_emb, np.float64)
    new_labels = np.asarray(new_labels)
    z = new_emb @ parent.whitening.astype(np.float64)
    classes = [int(c) for c in np.unique(new_labels)] if len(new_labels) else []
    added = np.stack([z[new_labels == c].mean(0) for c in classes]).astype(np.float32) if classes else \
        np.zeros((0, parent.class_means.shape[1]), np.float32)
    centre_classes = np.array(parent.classes_of_centres(parent_info.get("classes_fitted")) + classes, np.int64)
    other_means = parent.other_means
    if other_emb is not None and len(other_emb):
        from sklearn.cluster import KMeans  # heavy: imports scikit-learn

        z_other = np.asarray(other_emb, np.float64) @ parent.whitening.astype(np.float64)
        k = min(MAX_OTHER_CENTRES, len(z_other))
        new_other = KMeans(n_clusters=k, n_init=4, random_state=0).fit(z_other).cluster_centers_.astype(np.float32)
        other_means = new_other if other_means is None else np.concatenate([other_means, new_other])
    lab_fields, lab_info = ({}, {"admitted": False, "why": "no lab signatures given"}) if signatures is None else \
        fit_lab_admission(z, new_labels, signatures)
    guard = dataclasses.replace(parent, class_means=np.concatenate([parent.class_means, added]),
                                centre_classes=centre_classes, other_means=other_means, **lab_fields)
    keep = ("method", "citation", "file", "threshold", "flag_rate_target", "threshold_rule", "threshold_from",
            "n_threshold", "n_threshold_patients", "dim", "classes_fitted", "n_fit")
    info = {k: v for k, v in parent_info.items() if k in keep}
    info.update({"threshold": round(float(parent.threshold), 4),
                 "classes_fitted": sorted({int(c) for c in centre_classes}),
                 "n_centres": int(len(centre_classes)),
                 "added_centres": {"n_cells": int(len(new_labels)), "classes": classes,
                                   "rule": "the parent's whitening, centres and threshold kept; one centre per class "
                                           "of the reviewed training cells added"},
                 "lab_admission": lab_info,
                 "n_other": (parent_info.get("n_other") or 0) + (0 if other_emb is None else int(len(other_emb))),
                 "other_centres": 0 if other_means is None else int(len(other_means))})
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
        guard = dataclasses.replace(guard, threshold=threshold)
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
    guard, info = fit_guard_on_split(e_tr, ds.labels[split.train], e_va, ds, split)
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
    other stain), synthetic smear-like sample images (core.app.sample) and uniform noise."""

    rng = np.random.default_rng(seed)
    classes = TAXONOMIES["all_subtype"].classes
    synth = np.stack([prep.apply(smear_image(classes[i % 4], rng, 224)) for i in range(n_synthetic)])
    s = prep.input_size
    noise = rng.integers(0, 256, (n_synthetic, s, s, 3), dtype=np.uint8)
    return {"synthetic_sample_images": synth, "blurred_sigma3": aug.blur(images, 3.0), "other_stain_hue180": aug.other_stain(images),
            "uniform_noise": noise}
