"""The colour check beside the foreign-image guard (core/imaging/stain.py, issue 23): a field whose
stained pixels are coloured unlike any Romanowsky stain is outside the model's experience; its
grayscale copy and the original are not; a classify run stores the flag with its reason."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import torch
from sqlalchemy import select

from core.app.sample import smear_image
from core.cells.synthetic import draw, standard_field
from core.imaging import stain
from core.inference.outcome import OUTSIDE_REASONS, Assessment, outside_sentence, prediction_rows
from tests.test_guard import tiny_guarded_model  # noqa: F401  (the module-scoped fixture)
from trainer import colour


def hue_rotated(x: np.ndarray, turns: float = 0.5) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x[None])).permute(0, 3, 1, 2)
    return colour.adjust_hue(t, turns).permute(0, 2, 3, 1).contiguous().numpy()[0]


def gray(x: np.ndarray) -> np.ndarray:
    return np.repeat((x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, -1).astype(np.uint8)


def fields() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [draw(standard_field(), 0.25), *(smear_image(c, rng) for c in ("ALL", "Normal")),
            smear_image("ALL", rng, segmented=True)]


def test_a_hue_rotated_field_is_flagged_its_grayscale_copy_and_the_original_pass():
    for f in fields():
        assert not stain.foreign_colour(f)[0]
        assert not stain.foreign_colour(gray(f))[0]  # no colour to judge: a robustness question, not foreign
        assert stain.foreign_colour(hue_rotated(f))[0]
        # a lab's own stain varies: a tenth of a turn either way stays a stained smear
        assert not stain.foreign_colour(np.stack([hue_rotated(f, 0.1), hue_rotated(f, -0.1)])).any()
    batch = np.stack([fields()[0], hue_rotated(fields()[0]), gray(fields()[0])])
    assert stain.foreign_colour(batch).tolist() == [False, True, False]  # one verdict per image of a batch


def test_the_stored_row_says_why_and_the_sentence_is_the_one_definition():
    card = SimpleNamespace(classes=["a", "b"], uncertain_threshold=0.5)
    a = Assessment(np.array([[0.9, 0.1]] * 3, np.float32), np.array([1.0, 9.0, 1.0]),
                   np.array([False, True, True]), np.array([False, False, True]))
    rows = prediction_rows([1, 2, 3], a, 7, card)
    assert [r["outside_reason"] for r in rows] == [None, None, "colour"]
    assert outside_sentence(True, "colour") == stain.REASON == OUTSIDE_REASONS["colour"]
    assert outside_sentence(False, None) is None and "trained on" in outside_sentence(True, None)


def test_classify_stores_a_recoloured_field_as_outside_with_its_reason(tiny_guarded_model, cli, db, tmp_path):  # noqa: F811
    import cv2

    from core.storage import ImageFile, Prediction

    root, summary = tiny_guarded_model
    rc, _, err = cli("models", "register", summary["package"], "--activate")
    assert rc == 0, err
    folder = tmp_path / "case"
    shutil.copytree(root / "data", folder / "lab")
    rng = np.random.default_rng(7)
    (folder / "recoloured").mkdir()
    for i in range(3):
        img = hue_rotated(smear_image("ALL", rng, size=64))
        cv2.imwrite(str(folder / "recoloured" / f"green-{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    rc, out, err = cli("classify", folder)
    assert rc == 0, err
    with db.session() as s:
        rows = s.execute(select(ImageFile.path, Prediction.out_of_distribution, Prediction.outside_reason)
                         .join(Prediction, Prediction.image_id == ImageFile.image_id)).all()
    recoloured = [(o, r) for p, o, r in rows if "recoloured" in p]
    assert recoloured == [(True, "colour")] * 3
    assert all(r is None for p, _, r in rows if "recoloured" not in p)  # the lab's own stain: never by colour
    assert f"of which 3: {stain.REASON}" in out
