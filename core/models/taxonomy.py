"""Class taxonomies and the aliases that map public datasets' folder names onto them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Taxonomy:
    name: str
    title: str
    classes: tuple[str, ...]
    input_kind: str = "field"  # what one input is: "field" (a smear field) or "cell" (one cut-out cell)
    # the class a differential reports as the blast percentage (core/review/differential.py); None: none
    blast_class: str | None = None


# The reserved review label every taxonomy has: the image fits none of its classes (another
# cell type, an artefact, out of focus, a smudge cell). A reviewer's answer, never a model's
# output and never a training target of a real class (retrain uses it for the guard instead).
OTHER = "Other"
OTHER_TITLE = "Other / not assessable"


TAXONOMIES: dict[str, Taxonomy] = {
    "all_subtype": Taxonomy(
        "all_subtype", "ALL subtype (4 classes)", ("Benign", "Early Pre-B", "Pre-B", "Pro-B")
    ),
    "all_vs_normal": Taxonomy("all_vs_normal", "ALL vs normal (2 classes)", ("ALL", "Normal"), "cell",
                              blast_class="ALL"),  # C-NMC's "ALL" cells are lymphoblasts
    # a white-cell differential on cut-out cells (issue 23); Platelet: clumps the cell finder passes on
    "wbc_differential": Taxonomy(
        "wbc_differential", "White-cell differential (9 classes)",
        ("Blast", "Lymphocyte", "Neutrophil", "Monocyte", "Eosinophil", "Basophil", "Immature granulocyte",
         "Erythroblast", "Platelet"),
        "cell", blast_class="Blast",
    ),
}

# Folder names used by the public datasets -> class, per taxonomy. Keys are normalised with
# normalise_alias(): case-folded, brackets and separators collapsed. One folder name may mean a
# class in several taxonomies (C-NMC's "all" is ALL in all_vs_normal and Blast in
# wbc_differential); without a taxonomy named, the first taxonomy here that knows it wins.
_ALIASES: dict[str, dict[str, str]] = {
    "all_subtype": {
        # Taleqani ALL dataset (Aria, Ghaderzadeh et al.), both the "Original" and Kaggle names
        "benign": "Benign",
        "early": "Early Pre-B",
        "pre": "Pre-B",
        "pro": "Pro-B",
        "malignant early pre b": "Early Pre-B",
        "malignant pre b": "Pre-B",
        "malignant pro b": "Pro-B",
        "early pre b": "Early Pre-B",
        "pre b": "Pre-B",
        "pro b": "Pro-B",
    },
    "all_vs_normal": {
        # C-NMC 2019 (binary)
        "all": "ALL",
        "hem": "Normal",
        "normal": "Normal",
    },
    "wbc_differential": {
        # C-NMC: ALL cells are lymphoblasts; "hem" cells are normal lymphoid cells
        "all": "Blast",
        "blast": "Blast",
        "blasts": "Blast",
        "lymphoblast": "Blast",
        "hem": "Lymphocyte",
        # PBC (Acevedo et al.) folder names, and wbc-masks' (Zheng et al.)
        "basophil": "Basophil",
        "eosinophil": "Eosinophil",
        "erythroblast": "Erythroblast",
        "ig": "Immature granulocyte",
        "immature granulocyte": "Immature granulocyte",
        "immature granulocytes": "Immature granulocyte",
        "lymphocyte": "Lymphocyte",
        "monocyte": "Monocyte",
        "neutrophil": "Neutrophil",
        "platelet": "Platelet",
        "platelets": "Platelet",
    },
}


def normalise_alias(name: str) -> str:
    out = name.casefold()
    for ch in "[]()_-.":
        out = out.replace(ch, " ")
    return " ".join(out.split())


def resolve_alias(folder_name: str, taxonomy: str | None = None) -> tuple[str, str] | None:
    """Map a dataset folder name to (taxonomy, class), or None when it is not a known class.

    A folder named exactly like a class of a taxonomy (e.g. "Pre-B") is accepted too. Without
    ``taxonomy`` the first taxonomy that knows the name wins (see folder_taxonomies for all).
    """
    hits = folder_taxonomies(folder_name)
    if taxonomy is not None:
        return (taxonomy, hits[taxonomy]) if taxonomy in hits else None
    return next(iter(hits.items()), None)


def folder_taxonomies(folder_name: str) -> dict[str, str]:
    """Every taxonomy a folder name means a class of, in TAXONOMIES' order: {taxonomy: class}."""
    key = normalise_alias(folder_name)
    hits: dict[str, str] = {}
    for tax in TAXONOMIES.values():
        cls = _ALIASES.get(tax.name, {}).get(key)
        if cls is None:
            cls = next((c for c in tax.classes if normalise_alias(c) == key), None)
        if cls is not None:
            hits[tax.name] = cls
    return hits


def shared_taxonomy(folder_names, taxonomy: str | None = None) -> str | None:
    """The taxonomy a set of class-folder names is read in: ``taxonomy`` when given, else the
    first taxonomy (TAXONOMIES' order) that every recognised name belongs to ("all" +
    "lymphocyte": wbc_differential; "all" + "hem": all_vs_normal). None when the recognised
    names share no taxonomy, or none is recognised. Names that mean no class are ignored."""
    if taxonomy is not None:
        return taxonomy
    hits = [h for h in (folder_taxonomies(n) for n in set(folder_names)) if h]
    if not hits:
        return None
    return next((t for t in TAXONOMIES if all(t in h for h in hits)), None)


def review_labels(taxonomy: str) -> tuple[str, ...]:
    """What a reviewer may answer: the taxonomy's classes, then "Other"."""
    return (*get_taxonomy(taxonomy).classes, OTHER)


def blast_class(taxonomy: str | None) -> str | None:
    """The class of ``taxonomy`` a differential counts as blasts (None: it has none, or unknown)."""
    tax = TAXONOMIES.get(taxonomy or "")
    return tax.blast_class if tax else None


def get_taxonomy(name: str) -> Taxonomy:
    try:
        return TAXONOMIES[name]
    except KeyError:
        raise KeyError(f"unknown taxonomy {name!r}; known: {', '.join(TAXONOMIES)}") from None
