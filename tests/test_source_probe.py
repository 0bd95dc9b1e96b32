"""The source probe (trainer/source_probe.py) finds a background shortcut where there is one and
none once the cut-outs are normalised: synthetic cut-outs of two "sources" whose cells are drawn
alike, one source's cells on black (as C-NMC publishes them), the other's among pink red cells."""
from __future__ import annotations

import cv2
import numpy as np

from trainer.source_probe import blank_cells, pixel_features, source_probe

SIDE = 48


def _cutouts(n: int, background: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n cut-outs of one source (a purple round cell at a random place and size) and their masks."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        img = np.zeros((SIDE, SIDE, 3), np.uint8)
        if background == "red_cells":
            img[:] = (236, 226, 230)
            for _ in range(6):
                x, y = rng.integers(0, SIDE, 2)
                cv2.circle(img, (int(x), int(y)), 7, (222, 168, 172), -1)
        mask = np.zeros((SIDE, SIDE), np.uint8)
        c = SIDE // 2 + rng.integers(-3, 4, 2)
        r = int(rng.integers(12, 17))
        cv2.circle(mask, (int(c[0]), int(c[1])), r, 1, -1)
        colour = np.array([150, 100, 190]) + rng.integers(-20, 21, 3)
        img[mask > 0] = colour
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        images.append(img)
        masks.append(mask > 0)
    return np.stack(images), np.stack(masks)


def _two_sources():
    a, ma = _cutouts(60, "black", 1)
    b, mb = _cutouts(60, "red_cells", 2)
    return np.concatenate([a, b]), np.concatenate([ma, mb]), np.array(["a"] * 60 + ["b"] * 60)


def test_the_probe_sees_a_background_shortcut_with_the_cell_blanked_out():
    images, masks, sources = _two_sources()
    result = source_probe(pixel_features(blank_cells(images, masks)), sources)
    assert result["chance"] == 0.5
    assert result["balanced_accuracy"] > 0.95
    assert set(result["per_source_recall"]) == {"a", "b"}


def test_the_probe_is_near_chance_once_every_cut_out_is_masked_to_its_cell():
    images, masks, sources = _two_sources()
    normalised = images.copy()
    normalised[~masks] = 0  # cell_background "black": the same background for every source
    result = source_probe(pixel_features(blank_cells(normalised, masks)), sources)
    assert abs(result["balanced_accuracy"] - 0.5) < 0.15
