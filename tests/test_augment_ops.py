"""trainer/colour.py: the trainer's colour and rotation operations without torchvision
(the CPU installer has none, issue 13.3).

Two kinds of test:
- against torchvision.transforms.v2.functional where torchvision is installed (skipped
  otherwise): random uint8 images of odd sizes, synthetic smears, real smears when
  ../shared/datasets is present, a flat gray image, and batches;
- without torchvision: identities and limits that follow from the definitions, and the
  whole augmentation plus one training step in a subprocess where ``import torchvision``
  fails.

Tolerance against torchvision. The ops compute the same floating-point expressions in the
same order, so on one machine and torch build the results are identical pixel for pixel
(measured with torchvision 0.29.1: 0 pixels differ in any op). The tests allow what another
torchvision release or a reordered expression could change without changing the meaning: a
float that lands one ulp on the other side of an integer before uint8 truncation (blends,
grayscale, hue's x * 255.999) or of .5 before rounding (rotation) moves a pixel by one level,
so max |difference| <= 1; hue may differ by 2 because an ulp in h can also move the pixel
into the neighbouring sector of the hue circle, where two of p, q, t are each off by one
level. And at most 0.1% of values may differ at all, so a systematic change (rounding in
place of truncation, a different luma weight) is caught, which max <= 1 alone would not.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import colour

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "datasets" / "all-taleqani"
FILL = [124, 116, 104]  # the augmenter's fill: ImageNet mean in uint8


def _images() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = [("random 37x53", torch.randint(0, 256, (3, 37, 53), generator=g, dtype=torch.uint8)),
           ("random 64x64", torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)),
           ("flat gray", torch.full((3, 16, 16), 128, dtype=torch.uint8))]
    from core.app.sample import smear_image

    rng = np.random.default_rng(5)
    for cls in ("Benign", "Pro-B"):
        out.append((f"synthetic {cls}", torch.from_numpy(smear_image(cls, rng, 96)).permute(2, 0, 1).contiguous()))
    if REAL.is_dir():  # real smears (Taleqani), downsized to keep the test fast
        import cv2

        for p in sorted(REAL.glob("*/*"))[::700][:4]:
            im = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if im is not None:
                im = cv2.resize(cv2.cvtColor(im, cv2.COLOR_BGR2RGB), (128, 128), interpolation=cv2.INTER_AREA)
                out.append((f"real {p.name}", torch.from_numpy(im).permute(2, 0, 1).contiguous()))
    return out


IMAGES = _images()


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str, tol: int = 1) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, what
    d = (ours.int() - ref.int()).abs()
    assert int(d.max()) <= tol, f"{what}: max |diff| {int(d.max())} > {tol}"
    assert float((d > 0).float().mean()) <= 1e-3, f"{what}: {int((d > 0).sum())} of {d.numel()} values differ"


@pytest.fixture(scope="module")
def F():
    return pytest.importorskip("torchvision.transforms.v2.functional")


@pytest.mark.parametrize("name,img", IMAGES, ids=[n for n, _ in IMAGES])
def test_colour_ops_match_torchvision(F, name, img):
    for f in (0.0, 0.4, 0.7, 1.0, 1.3, 2.5):
        _assert_close(colour.adjust_brightness(img, f), F.adjust_brightness(img, f), f"{name} brightness {f}")
        _assert_close(colour.adjust_contrast(img, f), F.adjust_contrast(img, f), f"{name} contrast {f}")
        _assert_close(colour.adjust_saturation(img, f), F.adjust_saturation(img, f), f"{name} saturation {f}")
    for h in (-0.5, -0.15, -0.01, 0.0, 0.07, 0.15, 0.5):
        _assert_close(colour.adjust_hue(img, h), F.adjust_hue(img, h), f"{name} hue {h}", tol=2)
    for n in (1, 3):
        _assert_close(colour.rgb_to_grayscale(img, n), F.rgb_to_grayscale(img, num_output_channels=n),
                      f"{name} grayscale x{n}")


@pytest.mark.parametrize("name,img", IMAGES, ids=[n for n, _ in IMAGES])
def test_rotate_matches_torchvision(F, name, img):
    for angle in (-15.0, -7.3, 0.0, 3.2, 15.0, 33.0, 90.0, 180.0, 270.0, 400.0):
        for fill in (FILL, None):
            ref = F.rotate(img, angle, interpolation=F.InterpolationMode.BILINEAR, fill=fill)
            _assert_close(colour.rotate(img, angle, fill=fill), ref, f"{name} rotate {angle} fill {fill}")
        ref = F.rotate(img, angle, interpolation=F.InterpolationMode.NEAREST, fill=FILL)
        _assert_close(colour.rotate(img, angle, fill=FILL, interpolation="nearest"), ref, f"{name} rotate nearest {angle}")


def test_batches_and_floats_match_torchvision(F):
    g = torch.Generator().manual_seed(2)
    batch = torch.randint(0, 256, (4, 3, 24, 40), generator=g, dtype=torch.uint8)
    _assert_close(colour.adjust_hue(batch, 0.5), F.adjust_hue(batch, 0.5), "batch hue", tol=2)
    _assert_close(colour.adjust_contrast(batch, 1.6), F.adjust_contrast(batch, 1.6), "batch contrast")
    _assert_close(colour.rgb_to_grayscale(batch, 3), F.rgb_to_grayscale(batch, num_output_channels=3), "batch gray")
    ref = F.rotate(batch, 12.0, interpolation=F.InterpolationMode.BILINEAR, fill=FILL)
    _assert_close(colour.rotate(batch, 12.0, fill=FILL), ref, "batch rotate")
    x = batch.float() / 255  # float images in [0, 1]: same within float rounding
    for ours, ref in ((colour.adjust_hue(x, 0.2), F.adjust_hue(x, 0.2)),
                      (colour.adjust_saturation(x, 0.3), F.adjust_saturation(x, 0.3)),
                      (colour.rotate(x, -9.0, fill=[0.5, 0.4, 0.3]),
                       F.rotate(x, -9.0, interpolation=F.InterpolationMode.BILINEAR, fill=[0.5, 0.4, 0.3]))):
        assert ours.dtype == ref.dtype and torch.allclose(ours, ref, atol=1e-6)


def test_augmentations_match_the_torchvision_pipeline(F, monkeypatch):
    """The whole Augmenter and the evaluation perturbations, with torchvision's functions
    swapped in for ours, give the same images (same random draws, same ops)."""
    from trainer import augment

    g = torch.Generator().manual_seed(4)
    batch = torch.randint(0, 256, (6, 48, 48, 3), generator=g, dtype=torch.uint8)
    cfg = augment.AugmentConfig(background_p=0.5, scale=0.2, blur_p=0.5)
    ours = augment.Augmenter(cfg)(batch, torch.Generator().manual_seed(9))
    np_batch = batch.numpy()
    ours_eval = [augment.to_grayscale(np_batch), augment.stain_perturb(np_batch, seed=3), augment.other_stain(np_batch)]

    class TV:
        rgb_to_grayscale = staticmethod(F.rgb_to_grayscale)
        adjust_brightness = staticmethod(F.adjust_brightness)
        adjust_contrast = staticmethod(F.adjust_contrast)
        adjust_saturation = staticmethod(F.adjust_saturation)
        adjust_hue = staticmethod(F.adjust_hue)

        @staticmethod
        def rotate(img, angle, fill=None):
            return F.rotate(img, angle, interpolation=F.InterpolationMode.BILINEAR, fill=fill)

    monkeypatch.setattr(augment, "colour", TV)
    ref = augment.Augmenter(cfg)(batch, torch.Generator().manual_seed(9))
    _assert_close(ours, ref, "Augmenter")
    ref_eval = [augment.to_grayscale(np_batch), augment.stain_perturb(np_batch, seed=3), augment.other_stain(np_batch)]
    for name, a, b in zip(("to_grayscale", "stain_perturb", "other_stain"), ours_eval, ref_eval):
        _assert_close(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)), name, tol=2)


# ---- without torchvision ----------------------------------------------------------------

@pytest.mark.parametrize("name,img", IMAGES, ids=[n for n, _ in IMAGES])
def test_identity_parameters_give_the_input_back(name, img):
    assert torch.equal(colour.adjust_brightness(img, 1.0), img)
    assert torch.equal(colour.adjust_contrast(img, 1.0), img)
    assert torch.equal(colour.adjust_saturation(img, 1.0), img)
    assert torch.equal(colour.adjust_hue(img, 0.0), img)
    for angle in (0.0, 360.0, -720.0):
        assert torch.equal(colour.rotate(img, angle, fill=FILL), img)
    assert torch.equal(colour.rotate(img, 180.0), img.flip(-1).flip(-2))


def test_hue_round_trip_is_exact_for_every_colour():
    levels = torch.arange(256, dtype=torch.uint8)
    every = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(3, 256, 65536)
    assert torch.equal(colour.adjust_hue(every, 0.0), every)


def test_limits_follow_the_definitions():
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, 20, 30), generator=g, dtype=torch.uint8)
    gray = colour.rgb_to_grayscale(img, 3)
    assert gray.shape == img.shape and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    luma = 0.2989 * img[0].double() + 0.587 * img[1].double() + 0.114 * img[2].double()
    assert (gray[0].double() - luma.floor()).abs().max() <= 1  # truncated luma
    assert colour.rgb_to_grayscale(img, 1).shape == (1, 20, 30)
    assert int(colour.adjust_brightness(img, 0.0).max()) == 0
    assert torch.equal(colour.adjust_brightness(img, 256.0), torch.where(img > 0, 255, 0).to(torch.uint8))
    flat = colour.adjust_contrast(img, 0.0)
    assert int(flat.max()) - int(flat.min()) == 0  # every pixel the mean gray level
    assert torch.equal(colour.adjust_saturation(img, 0.0), luma.floor().to(torch.uint8).expand(3, -1, -1))
    px = lambda *rgb: torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1)  # noqa: E731
    assert colour.adjust_hue(px(255, 0, 0), 0.5).flatten().tolist() == [0, 255, 255]  # red -> cyan
    assert colour.adjust_hue(px(255, 0, 0), 1 / 3).flatten().tolist() == [0, 255, 0]  # red -> green
    assert colour.adjust_hue(px(90, 90, 90), 0.3).flatten().tolist() == [90, 90, 90]  # gray has no hue
    sq = torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8)
    assert torch.equal(colour.rotate(sq, 90.0), torch.rot90(sq, 1, dims=(-2, -1)))
    assert torch.equal(colour.rotate(sq, -90.0), torch.rot90(sq, 3, dims=(-2, -1)))
    rot = colour.rotate(torch.full((3, 40, 40), 200, dtype=torch.uint8), 45.0, fill=FILL)
    assert rot[:, 0, 0].tolist() == FILL and rot[:, 20, 20].tolist() == [200, 200, 200]  # corners filled
    for bad in (lambda: colour.adjust_hue(img, 0.6), lambda: colour.adjust_contrast(img, -1),
                lambda: colour.rgb_to_grayscale(img[:2]), lambda: colour.rotate(img, 5, interpolation="bicubic")):
        with pytest.raises(ValueError):
            bad()


def test_augmenter_is_reproducible_and_off_at_strength_zero():
    from trainer.augment import AugmentConfig, Augmenter

    g = torch.Generator().manual_seed(3)
    batch = torch.randint(0, 256, (5, 32, 32, 3), generator=g, dtype=torch.uint8)
    aug = Augmenter(AugmentConfig(background_p=0.5, scale=0.2, blur_p=0.5))
    a = aug(batch, torch.Generator().manual_seed(1))
    assert a.shape == batch.shape and a.dtype == torch.uint8
    assert torch.equal(a, aug(batch, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, batch)
    assert torch.equal(Augmenter(AugmentConfig(strength=0.0))(batch, torch.Generator().manual_seed(1)), batch)


_NO_TORCHVISION = textwrap.dedent("""
    import sys
    sys.modules["torchvision"] = None  # `import torchvision` (and any submodule) now raises ImportError
    try:
        import torchvision  # noqa: F401
        raise SystemExit("torchvision still importable")
    except ImportError:
        pass
    import importlib, pkgutil
    import numpy as np, torch
    import trainer
    for m in pkgutil.walk_packages(trainer.__path__, "trainer."):
        importlib.import_module(m.name)  # every trainer module imports without torchvision
    import core.app.cli, trainer.cli
    from core.models.architectures import build
    from core.imaging.preprocessing import Preprocessing
    from trainer.augment import AugmentConfig, Augmenter, other_stain, stain_perturb, to_grayscale
    from trainer.engine import train_one_epoch

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3] * 2)
    aug = Augmenter(AugmentConfig(background_p=0.5, scale=0.2, blur_p=0.5))
    out = aug(torch.from_numpy(images), torch.Generator().manual_seed(0))
    assert out.shape == (8, 32, 32, 3) and out.dtype == torch.uint8
    for f in (to_grayscale, stain_perturb, other_stain):
        assert f(images).shape == images.shape
    torch.manual_seed(0)
    model = build("seed_cnn3", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_one_epoch(model, images, labels, np.arange(8), optimizer=opt, scheduler=None,
                            criterion=torch.nn.CrossEntropyLoss(), prep=Preprocessing(input_size=32),
                            augmenter=aug, device=torch.device("cpu"), batch_size=4, epoch_seed=0)
    assert stats["n"] == 8 and np.isfinite(stats["loss"]), stats
    assert not any(k == "torchvision" or k.startswith("torchvision.") for k, v in sys.modules.items() if v is not None)
    print("trained without torchvision", stats["loss"])
""")


@pytest.mark.slow
def test_training_runs_without_torchvision(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HEMASCAN_DATA_DIR": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, "-c", _NO_TORCHVISION], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trained without torchvision" in r.stdout
