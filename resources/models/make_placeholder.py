"""Recreate the placeholder model package (untrained, seeded weights).

    python -m resources.models.make_placeholder OUT_DIR

It exists only so the pipeline runs end to end before a trained model ships; its
predictions mean nothing. The trainer replaces it as resources/models/default.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from core.models.architectures import build
from core.models.package import ModelCard, save_package
from core.imaging.preprocessing import Preprocessing
from core.models.taxonomy import TAXONOMIES


def make(out: Path) -> ModelCard:
    torch.manual_seed(0)
    classes = list(TAXONOMIES["all_subtype"].classes)
    model = build("seed_cnn3", num_classes=len(classes))
    card = ModelCard(
        name="placeholder-untrained-v0",
        architecture="seed_cnn3",
        taxonomy="all_subtype",
        classes=classes,
        preprocessing=Preprocessing().to_dict(),
        placeholder=True,
        created_at="2026-11-23T00:00:00+00:00",
        notes="PLACEHOLDER: randomly initialised, untrained weights. Predictions are meaningless.",
    )
    return save_package(out, model.state_dict(), card)


if __name__ == "__main__":
    print(make(Path(sys.argv[1])).to_json())
