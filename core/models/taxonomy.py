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
}

# Folder names used by the public datasets -> (taxonomy, class). Keys are normalised
# with normalise_alias(): case-folded, brackets and separators collapsed.
_ALIASES: dict[str, tuple[str, str]] = {
    # Taleqani ALL dataset (Aria, Ghaderzadeh et al.), both the "Original" and Kaggle names
    "benign": ("all_subtype", "Benign"),
    "early": ("all_subtype", "Early Pre-B"),
    "pre": ("all_subtype", "Pre-B"),
    "pro": ("all_subtype", "Pro-B"),
    "malignant early pre b": ("all_subtype", "Early Pre-B"),
    "malignant pre b": ("all_subtype", "Pre-B"),
    "malignant pro b": ("all_subtype", "Pro-B"),
    "early pre b": ("all_subtype", "Early Pre-B"),
    "pre b": ("all_subtype", "Pre-B"),
    "pro b": ("all_subtype", "Pro-B"),
    # C-NMC 2019 (binary)
    "all": ("all_vs_normal", "ALL"),
    "hem": ("all_vs_normal", "Normal"),
    "normal": ("all_vs_normal", "Normal"),
}


def normalise_alias(name: str) -> str:
    out = name.casefold()
    for ch in "[]()_-.":
        out = out.replace(ch, " ")
    return " ".join(out.split())


def resolve_alias(folder_name: str, taxonomy: str | None = None) -> tuple[str, str] | None:
    """Map a dataset folder name to (taxonomy, class), or None when it is not a known class.

    A folder named exactly like a class of a taxonomy (e.g. "Pre-B") is accepted too.
    """
    key = normalise_alias(folder_name)
    hit = _ALIASES.get(key)
    if hit is None:
        for tax in TAXONOMIES.values():
            for cls in tax.classes:
                if normalise_alias(cls) == key:
                    hit = (tax.name, cls)
                    break
            if hit:
                break
    if hit is not None and taxonomy is not None and hit[0] != taxonomy:
        return None
    return hit


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
