"""Model architectures, by name. The trainer adds its candidates here; inference builds
whatever a model card names. A registry (dict), not an if/elif chain."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(builder):
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} registered twice")
        ARCHITECTURES[name] = builder
        return builder

    return deco


def build(name: str, num_classes: int, **params) -> nn.Module:
    try:
        builder = ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    return builder(num_classes=num_classes, **params)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


@register("seed_cnn3")
class SeedCNN3(nn.Module):
    """The first seed report's final CNN: 3 conv blocks (32/64/128, 3x3, BatchNorm,
    max-pool), dropout, dense 256, dropout, classifier.

    The report flattened the last feature map; at 128 px that is a 32768x256 dense layer
    (8.4 M parameters, 33 MB). Pooling to 4x4 first keeps the same structure at 2 MB.
    """

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.3):
        super().__init__()
        w = width
        self.features = nn.Sequential(_conv_block(3, w), _conv_block(w, 2 * w), _conv_block(2 * w, 4 * w))
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(4 * w * 16, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))
