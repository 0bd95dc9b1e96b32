"""Class-folder datasets, image caches and leakage-aware splits.

A dataset is a folder of class folders whose names resolve through
``core.models.taxonomy.resolve_alias`` (Taleqani Benign/Early/Pre/Pro, C-NMC all/hem, or the
class names themselves).

Splits
------
``patient`` (default, "pseudo-patient"): neighbouring file numbers come from the same
slides, so each class's files are sorted by their number and cut into ``n_chunks``
contiguous chunks; whole chunks go to test / validation / train. Exact duplicates
(SHA-256) and near duplicates (perceptual hash within ``phash_distance`` bits) are then
joined into one group with union-find and the whole group moved to the side of its
first member, so no copy of a test image is trained on.
``random``: stratified image-level split (``sklearn.model_selection.train_test_split``),
for comparison only: it leaks slides and overstates accuracy.
``subject``: by subject (patient or donor) parsed from the file name (C-NMC 2019:
``UID_<subject>_<smear image>_<cell>_<all|hem>``); no subject is ever on two sides. See
:func:`subject_split` for the rule.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import HemascanError
from core.imaging.images import SUPPORTED_EXTENSIONS, decode_rgb, read_file
from core.imaging.duplicates import duplicate_pairs as core_duplicate_pairs
from core.imaging.duplicates import hash_int, perceptual_hash, union_find
from core.imaging.preprocessing import Preprocessing
from core.models.taxonomy import TAXONOMIES, folder_taxonomies, shared_taxonomy

# Fewer training images of a class than this and the foreign-image guard's covariance (and the
# class itself) cannot be fitted: refused before training, not after it.
MIN_TRAIN_PER_CLASS = 2


class DatasetError(HemascanError, ValueError):
    """A folder of class folders that cannot be trained or evaluated on (one sentence, exit 2)."""


_NUM = re.compile(r"(\d+)(?!.*\d)")


@dataclass
class Dataset:
    root: Path
    taxonomy: str
    classes: list[str]
    paths: list[Path]
    labels: np.ndarray  # int64 class index per image
    sha256: list[str] = field(default_factory=list)
    phash: np.ndarray | None = None  # uint64 per image

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx) -> "Dataset":
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(
            self.root, self.taxonomy, self.classes, [self.paths[i] for i in idx], self.labels[idx],
            [self.sha256[i] for i in idx] if self.sha256 else [],
            self.phash[idx] if self.phash is not None else None,
        )

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}


def file_number(path: Path) -> int:
    m = _NUM.search(path.stem)
    return int(m.group(1)) if m else -1


def scan_class_folders(root: Path, taxonomy: str | None = None) -> Dataset:
    """Read ``root/<class folder>/*`` with aliases. Unknown folders are ignored; all
    recognised folders must belong to one taxonomy."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    by_folder: dict[Path, dict[str, str]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        hits = folder_taxonomies(sub.name)
        if taxonomy is not None:
            hits = {taxonomy: hits[taxonomy]} if taxonomy in hits else {}
        if hits:
            by_folder[sub] = hits
    if not by_folder:
        if taxonomy is not None:
            raise DatasetError(f"no folder under {root} is named after a class of {taxonomy} "
                               f"({', '.join(TAXONOMIES[taxonomy].classes)}) or one of its aliases")
        raise DatasetError(f"no class folders under {root} (expected e.g. Benign/Early/Pre/Pro or all/hem)")
    tax = shared_taxonomy([sub.name for sub in by_folder], taxonomy)
    if tax is None:
        seen = sorted({next(iter(hits)) for hits in by_folder.values()})
        raise DatasetError(f"class folders under {root} mix taxonomies {seen}; pass taxonomy=")
    found: dict[str, list[Path]] = {}
    for sub, hits in by_folder.items():
        files = sorted(
            (f for f in sub.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_EXTENSIONS),
            key=lambda f: (file_number(f), f.name),
        )
        found.setdefault(hits[tax], []).extend(files)
    classes = list(TAXONOMIES[tax].classes)
    paths, labels = [], []
    for ci, cls in enumerate(classes):
        for f in found.get(cls, []):
            paths.append(f)
            labels.append(ci)
    return Dataset(root, tax, classes, paths, np.asarray(labels, dtype=np.int64))


def scan_as_one_class(root: Path, taxonomy: str, cls: str) -> Dataset:
    """Every image under ``root`` (any folders) labelled ``cls`` of ``taxonomy``: e.g. a
    folder of normal cells from another lab, to measure the share called something else."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    classes = list(TAXONOMIES[taxonomy].classes)
    if cls not in classes:
        raise DatasetError(f"{cls!r} is not a class of {taxonomy} ({', '.join(classes)})")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_EXTENSIONS)
    if not files:
        raise DatasetError(f"no images under {root}")
    return Dataset(root, taxonomy, classes, files, np.full(len(files), classes.index(cls), dtype=np.int64))


def compute_hashes(ds: Dataset) -> Dataset:
    """SHA-256 of the bytes and the perceptual hash of every image: core.imaging.duplicates', the
    same as `scan` stores, so the trainer and retrain see the same near duplicates."""
    shas, ph = [], []
    for p in ds.paths:
        data = read_file(str(p))
        shas.append(hashlib.sha256(data).hexdigest())
        ph.append(hash_int(perceptual_hash(data)))
    ds.sha256 = shas
    ds.phash = np.asarray(ph, dtype=np.uint64)
    return ds


def duplicate_pairs(ds: Dataset, phash_distance: int = 4) -> list[tuple[int, int]]:
    """Index pairs that are exact (same SHA-256) or near (phash Hamming <= d) duplicates."""
    if ds.phash is None:
        compute_hashes(ds)
    return core_duplicate_pairs(ds.sha256, ds.phash, phash_distance)


@dataclass
class Split:
    method: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"method": self.method, "n_train": int(len(self.train)), "n_val": int(len(self.val)),
                "n_test": int(len(self.test)), **self.info}


def check_trainable(ds: Dataset, train_idx: np.ndarray, split: Split) -> None:
    """Refuse, before any training, a split with a class of fewer than
    :data:`MIN_TRAIN_PER_CLASS` training images or no validation image: such a run trained
    for nothing and crashed fitting the guard once training had finished."""
    counts = np.bincount(ds.labels[train_idx], minlength=len(ds.classes))
    few = [f"{c} ({n})" for c, n in zip(ds.classes, counts) if n < MIN_TRAIN_PER_CLASS]
    if few or not len(split.val):
        raise DatasetError(
            f"too few images to train on in {ds.root}: "
            + (f"the training side has under {MIN_TRAIN_PER_CLASS} images of {', '.join(few)}" if few else
               "the validation side is empty")
            + f" ({len(ds)} images, split {split.method}); add images or choose another --split")


def patient_split(ds: Dataset, fold: int = 4, n_chunks: int = 10, test_chunks: int = 2, val_chunks: int = 1,
                  phash_distance: int = 4, dedup: bool = True) -> Split:
    """Pseudo-patient split (see module doc). Per class, chunks are contiguous ranges of
    the file numbering; test = chunks ``fold*test_chunks ..`` (mod n_chunks), validation =
    the chunk(s) just before the test chunks, train = the rest. ``fold=4`` with the
    defaults holds out the last 20% of every class's numbering and validates on the 10%
    before it."""
    n = len(ds)
    side = np.zeros(n, dtype=np.int8)  # 0 train, 1 val, 2 test
    test_set = {(fold * test_chunks + k) % n_chunks for k in range(test_chunks)}
    first_test = (fold * test_chunks) % n_chunks
    val_set = {(first_test - 1 - k) % n_chunks for k in range(val_chunks)}
    chunk_of = np.zeros(n, dtype=np.int64)
    for ci in range(len(ds.classes)):
        idx = np.nonzero(ds.labels == ci)[0]
        if len(idx) == 0:
            continue
        order = idx[np.argsort([file_number(ds.paths[i]) for i in idx], kind="stable")]
        chunks = np.array_split(order, n_chunks)
        for k, ch in enumerate(chunks):
            chunk_of[ch] = k
            side[ch] = 2 if k in test_set else 1 if k in val_set else 0
    moved = 0
    n_pairs = 0
    if dedup:
        pairs = duplicate_pairs(ds, phash_distance)
        n_pairs = len(pairs)
        root = union_find(n, pairs)
        new_side = side[root]
        moved = int((new_side != side).sum())
        side = new_side
    info = {"fold": fold, "n_chunks": n_chunks, "test_chunks": sorted(test_set), "val_chunks": sorted(val_set),
            "phash_distance": phash_distance, "duplicate_pairs": n_pairs, "moved_for_duplicates": moved}
    return Split("patient", np.nonzero(side == 0)[0], np.nonzero(side == 1)[0], np.nonzero(side == 2)[0], info)


def random_split(ds: Dataset, seed: int = 0, test_size: float = 0.2, val_size: float = 0.1) -> Split:
    """Stratified image-level split (leaky on this data; for comparison only)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(ds))
    rest, test = train_test_split(idx, test_size=test_size, stratify=ds.labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_size / (1 - test_size), stratify=ds.labels[rest], random_state=seed)
    return Split("random", np.sort(train), np.sort(val), np.sort(test), {"seed": seed})


def no_split(ds: Dataset, fold: int = 4) -> Split:
    """Train on everything except the patient split's validation chunk (kept for early
    stopping and calibration): the pseudo-patient test chunks are merged into train."""
    sp = patient_split(ds, fold=fold)
    train = np.sort(np.concatenate([sp.train, sp.test]))
    return Split("all-but-val", train, sp.val, np.array([], dtype=np.int64), {**sp.info, "note": "test chunk merged into train"})


# ---- subject split (C-NMC 2019 and any data named the same way) ---------------------

_CNMC_NAME = re.compile(r"^UID_(H?\d+)_(\d+)_", re.IGNORECASE)


def cnmc_name_parts(path: Path | str) -> tuple[str, str] | None:
    """(subject, smear image) from a C-NMC 2019 file name, or None for any other name.

    ``UID_51_116_1_all.jpg`` -> ("51", "116"): ALL patient 51, smear image 116, cell 1;
    ``UID_H10_100_1_hem.jpg`` -> ("H10", "100"): normal (healthy) donor H10. The subject
    keeps its ``H`` so an ALL patient and a normal donor with the same number stay apart."""
    m = _CNMC_NAME.match(Path(path).name)
    if m is None:
        return None
    return m.group(1).upper(), m.group(2)


def subject_of(path: Path | str) -> str | None:
    """The subject (patient / donor) id in a C-NMC-style file name, or None."""
    parts = cnmc_name_parts(path)
    return parts[0] if parts else None


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _balanced_groups(subjects: list[str], counts: dict[str, int], k: int) -> list[list[str]]:
    """Largest subject first (ties: natural order of the id), each into the group holding
    the fewest images so far (ties: the lower group). Deterministic."""
    groups: list[list[str]] = [[] for _ in range(k)]
    load = [0] * k
    for s in sorted(subjects, key=lambda s: (-counts[s], _natural_key(s))):
        g = min(range(k), key=lambda i: (load[i], i))
        groups[g].append(s)
        load[g] += counts[s]
    return groups


def subject_split(ds: Dataset, fold: int = 4, n_groups: int = 5, val_fraction: float = 0.15,
                  phash_distance: int = 4) -> Split:
    """Split by subject: whole subjects go to test, validation or train.

    Per class, the subjects of that class (a subject belongs to the class most of its
    images have) are dealt into ``k = min(n_groups, n_subjects)`` groups of similar image
    count (:func:`_balanced_groups`). Test = group ``fold % k``; validation = group
    ``(fold - 1) % k`` when ``k >= 3``. A class with only two subjects (C-NMC: two normal
    donors) cannot spare one for validation: its validation images are the last
    ``val_fraction`` of each training subject's smear images (by smear-image number), so
    validation for that class is NOT subject-held-out (it only picks the epoch and the
    temperature; the test side is). Every class needs >= 2 subjects, so both classes are
    in test. Files whose name carries no subject (another source, e.g. Taleqani fields
    mixed in for training) all go to train and are counted in ``info``.

    On C-NMC 2019 (``cnmc-train``), fold 4 (the default) tests on ALL patients 33 and 38
    and normal donor H10, validates on ALL patients 23 and 46 (+ later smear images of
    donor H14), and trains on ALL patients 16, 30, 32, 51 and donor H14; an odd fold tests
    on donor H14 instead.
    """
    n = len(ds)
    subj = [subject_of(p) for p in ds.paths]
    has = np.array([s is not None for s in subj])
    if not has.any():
        raise DatasetError("split 'subject': no file name carries a subject id (expected C-NMC names such as "
                         "UID_51_116_1_all.jpg / UID_H10_100_1_hem.jpg)")
    per_subject: dict[str, np.ndarray] = {}
    for i, s in enumerate(subj):
        if s is not None:
            per_subject.setdefault(s, []).append(i)
    per_subject = {s: np.asarray(ix) for s, ix in per_subject.items()}
    owner = {s: int(np.bincount(ds.labels[ix], minlength=len(ds.classes)).argmax()) for s, ix in per_subject.items()}
    counts = {s: len(ix) for s, ix in per_subject.items()}
    side = np.zeros(n, dtype=np.int8)  # 0 train, 1 val, 2 test; files without a subject stay train
    sides: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    val_within: dict[str, list[str]] = {}
    for ci, cls in enumerate(ds.classes):
        subs = [s for s in per_subject if owner[s] == ci]
        if not subs:
            continue
        if len(subs) < 2:
            raise DatasetError(f"split 'subject': class {cls!r} has one subject ({subs[0]}); at least two are needed "
                             "to hold one out for testing")
        k = min(n_groups, len(subs))
        groups = _balanced_groups(subs, counts, k)
        test_g = fold % k
        val_g = (fold - 1) % k if k >= 3 else None
        for g, members in enumerate(groups):
            where = 2 if g == test_g else 1 if g == val_g else 0
            for s in members:
                side[per_subject[s]] = where
                sides[("train", "val", "test")[where]].append(s)
        if val_g is None:  # validation from the training subjects' later smear images
            for s in (m for g, ms in enumerate(groups) if g != test_g for m in ms):
                ix = per_subject[s]
                smear = np.array([int(cnmc_name_parts(ds.paths[i])[1]) for i in ix])
                order = sorted(set(smear.tolist()))
                n_val = max(1, int(round(len(order) * val_fraction))) if len(order) > 1 else 0
                held = set(order[len(order) - n_val:])
                side[ix[np.isin(smear, list(held))]] = 1
                val_within[s] = [str(v) for v in sorted(held)]
    for key in sides:
        sides[key] = sorted(sides[key], key=_natural_key)
    info = {"fold": fold, "n_groups": n_groups, "test_subjects": sides["test"], "val_subjects": sides["val"],
            "train_subjects": sides["train"],
            "val_smear_images_of_train_subjects": val_within,
            "subject_class": {s: ds.classes[owner[s]] for s in sorted(per_subject, key=_natural_key)},
            "subject_images": {s: counts[s] for s in sorted(per_subject, key=_natural_key)},
            "n_without_subject_in_train": int((~has).sum())}
    if ds.phash is not None:  # reported, never moved: moving would put a subject on two sides
        pairs = duplicate_pairs(ds, phash_distance)
        info["duplicate_pairs"] = len(pairs)
        info["duplicate_pairs_across_sides"] = sum(1 for a, b in pairs if side[a] != side[b])
    return Split("subject", np.nonzero(side == 0)[0], np.nonzero(side == 1)[0], np.nonzero(side == 2)[0], info)


SPLIT_METHODS = ("patient", "subject", "random", "all")


def make_split(ds: Dataset, method: str, seed: int = 0, fold: int = 4, dedup: bool = True) -> Split:
    if method == "subject":
        return subject_split(ds, fold=fold)
    if method == "patient":
        return patient_split(ds, fold=fold, dedup=dedup)
    if method == "random":
        return random_split(ds, seed=seed)
    if method == "all":
        return no_split(ds, fold=fold)
    raise DatasetError(f"unknown split method {method!r} ({', '.join(SPLIT_METHODS)})")


def dedup_indices(ds: Dataset, idx: np.ndarray, phash_distance: int = 4) -> np.ndarray:
    """Keep the first member of every exact/near duplicate group among ``idx``."""
    sub = ds.subset(idx)
    root = union_find(len(sub), duplicate_pairs(sub, phash_distance))
    keep = np.nonzero(root == np.arange(len(sub)))[0]
    return np.asarray(idx)[keep]


def load_images(ds: Dataset, prep: Preprocessing, cache_dir: Path | None = None, progress=None) -> np.ndarray:
    """Decode + ``prep.apply`` every image -> uint8 (N, S, S, 3). Cached as .npy keyed by
    file list, sizes, mtimes and preprocessing when ``cache_dir`` is given."""
    key = None
    if cache_dir is not None:
        h = hashlib.sha256(json.dumps(prep.to_dict(), sort_keys=True).encode())
        for p in ds.paths:
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        key = Path(cache_dir) / f"images-{h.hexdigest()[:20]}.npy"
        if key.is_file():
            return np.load(key, mmap_mode=None)
    s = prep.input_size
    out = np.empty((len(ds), s, s, 3), dtype=np.uint8)
    for i, p in enumerate(ds.paths):
        out[i] = prep.apply(decode_rgb(read_file(str(p))))
        if progress is not None and (i % 64 == 0 or i == len(ds) - 1):
            progress(i + 1, len(ds))
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        tmp = key.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(key)
    return out
