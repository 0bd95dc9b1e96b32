"""Subject split (C-NMC-style names), per-subject metrics, the multi-lab augmentation
options, and a tiny `hemascan train --split subject` end to end. Synthetic images only
(core.app.sample), named like C-NMC files; the check on the real share skips without it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.app.sample import smear_image
from trainer.data import cnmc_name_parts, make_split, scan_class_folders, subject_of, subject_split
from trainer.metrics import classification_metrics, per_group_metrics

CNMC = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "cnmc-train"

# subject -> number of cells; ALL patients by number, normal donors H<n> (C-NMC style)
ALL_SUBJECTS = {"3": 10, "7": 6, "12": 8, "20": 5, "21": 7, "30": 4}
NORMAL_DONORS = {"H1": 12, "H2": 10}


def _cnmc_like(root: Path, pool: Path, all_subjects=ALL_SUBJECTS, donors=NORMAL_DONORS) -> Path:
    """Synthetic ALL/Normal images renamed UID_<subject>_<smear>_<cell>_all|hem.jpg; a smear
    image holds up to 3 cells."""
    for folder, src, subjects, tag in (("all", "ALL", all_subjects, "all"), ("hem", "Normal", donors, "hem")):
        files = sorted((pool / src).iterdir())
        (root / folder).mkdir(parents=True)
        k = 0
        for subject, n in subjects.items():
            for cell in range(n):
                shutil.copy(files[k % len(files)], root / folder / f"UID_{subject}_{10 + cell // 3}_{cell % 3 + 1}_{tag}.jpg")
                k += 1
    return root


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """Synthetic cells in ALL/ and Normal/: core.app.sample's blast shapes (Pro-B for ALL, the
    small round Benign one for Normal). core.app.sample.generate(taxonomy="all_vs_normal") has
    no shapes for these classes yet (KeyError 'ALL')."""
    import cv2

    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(2)
    for folder, shape in (("ALL", "Pro-B"), ("Normal", "Benign")):
        (root / folder).mkdir()
        for i in range(24):
            img = smear_image(shape, rng, 64)
            cv2.imwrite(str(root / folder / f"sample-{folder}-{i + 1:04d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture
def cnmc_like(tmp_path, pool) -> Path:
    return _cnmc_like(tmp_path / "cnmc", pool)


def test_subject_parsed_from_cnmc_names():
    assert cnmc_name_parts("UID_51_116_1_all.jpg") == ("51", "116")
    assert cnmc_name_parts(Path("/x/hem/UID_H10_100_3_hem.bmp")) == ("H10", "100")
    assert subject_of("uid_h3_7_2_hem.JPG") == "H3"  # case of the prefix does not matter
    # donor H10 and patient 10 are different people
    assert subject_of("UID_10_1_1_all.jpg") != subject_of("UID_H10_1_1_hem.jpg")
    for other in ("WBC-Benign-001.jpg", "sample-ALL-0001.jpg", "UID_x_1_1_all.jpg", "UID_51.jpg", "x_UID_51_1_1_all.jpg"):
        assert subject_of(other) is None, other


def _sides(ds, sp) -> dict[str, set[str]]:
    out = {}
    for side in ("train", "val", "test"):
        for i in getattr(sp, side):
            out.setdefault(subject_of(ds.paths[i]), set()).add(side)
    return out


@pytest.mark.parametrize("fold", [0, 1, 2, 3, 4])
def test_subject_split_holds_out_whole_subjects_with_both_classes_in_test(cnmc_like, fold):
    ds = scan_class_folders(cnmc_like)
    assert ds.taxonomy == "all_vs_normal" and ds.counts() == {"ALL": 40, "Normal": 22}
    sp = make_split(ds, "subject", fold=fold)
    # every image exactly once
    assert sorted(np.concatenate([sp.train, sp.val, sp.test]).tolist()) == list(range(len(ds)))
    sides = _sides(ds, sp)
    test_subjects = {s for s, v in sides.items() if "test" in v}
    # a test subject is nowhere else (no image of a test patient or donor is trained or validated on)
    assert all(sides[s] == {"test"} for s in test_subjects)
    assert test_subjects == set(sp.info["test_subjects"])
    # both classes are in test, and each class keeps a training subject
    assert set(ds.labels[sp.test].tolist()) == {0, 1}
    assert set(ds.labels[sp.train].tolist()) == {0, 1}
    # ALL (6 subjects) validates on held-out subjects; Normal (2 donors) on later smear
    # images of the training donor, never on an image (smear) that is also trained on
    for s, v in sides.items():
        if not s.startswith("H"):
            assert len(v) == 1, (s, v)
    donor_train = [s for s in NORMAL_DONORS if s not in test_subjects]
    assert len(donor_train) == 1 and sides[donor_train[0]] == {"train", "val"}
    smear = {side: {cnmc_name_parts(ds.paths[i]) for i in getattr(sp, side)} for side in ("train", "val")}
    assert not smear["train"] & smear["val"]


def test_subject_split_is_deterministic_and_ignores_files_without_a_subject(cnmc_like, pool):
    ds = scan_class_folders(cnmc_like)
    a, b = subject_split(ds, fold=4), subject_split(scan_class_folders(cnmc_like), fold=4)
    assert a.describe() == b.describe()
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("train", "val", "test"))
    # rotating the fold moves the test side
    assert subject_split(ds, fold=3).info["test_subjects"] != a.info["test_subjects"]
    # a second source without subjects in the names (e.g. Taleqani fields): training only,
    # and the C-NMC sides do not change
    for folder, src in (("all", "ALL"), ("hem", "Normal")):
        for f in sorted((pool / src).iterdir())[:5]:
            shutil.copy(f, cnmc_like / folder / f"taleqani-{f.name}")
    mixed = scan_class_folders(cnmc_like)
    c = subject_split(mixed, fold=4)
    extra = {i for i, p in enumerate(mixed.paths) if subject_of(p) is None}
    assert len(extra) == 10 and extra <= set(c.train.tolist())
    assert c.info["n_without_subject_in_train"] == 10
    for k in ("test_subjects", "val_subjects", "train_subjects"):
        assert c.info[k] == a.info[k]
    assert sorted(str(mixed.paths[i].name) for i in c.test) == sorted(str(ds.paths[i].name) for i in a.test)


def test_subject_split_refuses_what_it_cannot_do(tmp_path, pool):
    one_donor = _cnmc_like(tmp_path / "one", pool, donors={"H1": 8})
    with pytest.raises(ValueError, match="one subject"):
        subject_split(scan_class_folders(one_donor))
    plain = tmp_path / "plain"
    shutil.copytree(pool, plain)
    with pytest.raises(ValueError, match="no file name carries a subject"):
        make_split(scan_class_folders(plain), "subject")


@pytest.mark.skipif(not CNMC.is_dir(), reason=f"C-NMC share not found at {CNMC}")
def test_subject_split_on_the_cnmc_share_is_the_documented_one():
    ds = scan_class_folders(CNMC)
    sp = subject_split(ds, fold=4)
    assert sp.info["test_subjects"] == ["33", "38", "H10"]
    assert sp.info["val_subjects"] == ["23", "46"]
    assert sp.info["train_subjects"] == ["16", "30", "32", "51", "H14"]
    assert (len(sp.train), len(sp.val), len(sp.test)) == (1563, 332, 726)
    assert subject_split(ds, fold=3).info["test_subjects"] == ["23", "46", "H14"]


def test_per_subject_metrics_and_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.1, 0.9]])
    groups = ["51", "51", "51", "7", "H2", "H2", "H10", "H10"]
    per = per_group_metrics(y, probs, groups, ["ALL", "Normal"])
    assert list(per) == ["7", "51", "H2", "H10"]  # numbers in numeric order
    assert {k: per["51"][k] for k in ("n", "class", "predicted")} == {"n": 3, "class": "ALL",
                                                                     "predicted": {"ALL": 2, "Normal": 1}}
    assert per["51"]["accuracy"] == pytest.approx(2 / 3)
    assert per["51"]["mean_confidence"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert per["H10"]["accuracy"] == 0.5 and per["H10"]["class"] == "Normal"
    m = classification_metrics(y, probs, ["ALL", "Normal"])
    # recall ALL 3/4, Normal 3/4 -> balanced accuracy = macro recall
    assert m["balanced_accuracy"] == m["macro_recall"] == 0.75
    skewed = classification_metrics(np.array([0, 0, 0, 1]), np.array([[1, 0], [1, 0], [1, 0], [1, 0.0]]), ["ALL", "Normal"])
    assert skewed["accuracy"] == 0.75 and skewed["balanced_accuracy"] == 0.5  # all called ALL is not 75% good


# ---- multi-lab augmentation ----------------------------------------------------------

def _cell_on_black(size=64) -> torch.Tensor:
    img = torch.zeros(3, size, size, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (size // 5) ** 2
    img[:, disc] = torch.tensor([110, 60, 150], dtype=torch.uint8).view(3, 1)
    return img


def test_smear_background_replaces_black_and_keeps_the_cell():
    from trainer.augment import smear_background

    img = _cell_on_black()
    out = smear_background(img, torch.Generator().manual_seed(0))
    assert out[:, :6, :6].float().mean() > 150  # the black corner is now a pale field
    c = img.shape[1] // 2
    assert torch.equal(out[:, c - 4 : c + 4, c - 4 : c + 4], img[:, c - 4 : c + 4, c - 4 : c + 4])
    field = torch.full((3, 64, 64), 220, dtype=torch.uint8)  # no black background: unchanged
    assert torch.equal(smear_background(field, torch.Generator().manual_seed(0)), field)


def test_zoom_and_blur():
    from trainer.augment import gaussian_blur, zoom

    img = _cell_on_black()
    assert torch.equal(zoom(img, 0.0), img)
    area = lambda t: int((t[0] > 50).sum())  # noqa: E731
    assert area(zoom(img, np.log(1.5))) > 1.8 * area(img) > 1.8 * area(zoom(img, -np.log(1.5))) * 1.8
    b = gaussian_blur(img, 2.0)
    assert b.shape == img.shape and b.float().std() < img.float().std()


def test_new_augment_options_are_off_by_default():
    from trainer.augment import AugmentConfig, Augmenter

    batch = _cell_on_black().permute(1, 2, 0).unsqueeze(0).repeat(4, 1, 1, 1)
    plain = Augmenter(AugmentConfig())(batch, torch.Generator().manual_seed(3))
    explicit = Augmenter(AugmentConfig(background_p=0.0, scale=0.0, blur_p=0.0))(batch, torch.Generator().manual_seed(3))
    assert torch.equal(plain, explicit)
    multi = Augmenter(AugmentConfig(background_p=1.0, scale=0.2, blur_p=1.0, hed_p=0.0, grayscale_p=0.0, corner_p=0.0,
                                    rotate_degrees=0.0))(batch, torch.Generator().manual_seed(3))
    assert (multi[:, :4, :4].float().mean() > 100) and not torch.equal(multi, plain)


# ---- end to end ----------------------------------------------------------------------

def test_train_and_evaluate_with_the_subject_split(cli, tmp_path, pool, db):
    data = _cnmc_like(tmp_path / "cnmc", pool)
    rc, out, err = cli("train", "--data", data, "--arch", "seed_baseline", "--epochs", 2, "--input-size", 32,
                       "--split", "subject", "--name", "tiny-avn", "--threads", 2, "--no-int8",
                       "--augment", "background_p=0.5,scale=0.2,blur_p=0.2")
    assert rc == 0, err
    assert "held-out test per subject" in out
    from sqlalchemy import select

    from core.storage import ModelVersion

    with db.session() as s:
        card = s.scalars(select(ModelVersion).where(ModelVersion.name == "tiny-avn")).one().card
    assert card["taxonomy"] == "all_vs_normal" and card["classes"] == ["ALL", "Normal"]
    assert card["training_data"]["config"]["augment"] == {"background_p": 0.5, "scale": 0.2, "blur_p": 0.2}
    split = card["metrics"]["split"]
    as_is = card["metrics"]["as_is"]
    per = as_is["per_subject"]
    assert split["method"] == "subject" and sorted(per) == sorted(split["test_subjects"])
    assert {v["class"] for v in per.values()} == {"ALL", "Normal"}
    assert sum(v["n"] for v in per.values()) == as_is["n"] == split["n_test"]
    correct = sum(v["predicted"][v["class"]] for v in per.values())
    assert correct == round(as_is["accuracy"] * as_is["n"])  # the per-subject counts add up to the test accuracy
    assert "balanced_accuracy" in as_is

    js = tmp_path / "m.json"
    rc, out, err = cli("evaluate", "--model", "tiny-avn", "--data", data, "--split", "subject", "--json", js,
                       "--variants", "as_is")
    assert rc == 0, err
    m = json.loads(js.read_text())
    assert m["accuracy"] == as_is["accuracy"]  # reproduces the card, subject by subject
    assert {k: (v["n"], v["predicted"]) for k, v in m["per_subject"].items()} == \
        {k: (v["n"], v["predicted"]) for k, v in per.items()}
    # a folder of one class from elsewhere: the share called Normal
    other = tmp_path / "other" / "lymphocyte"
    other.mkdir(parents=True)
    for f in sorted((pool / "Normal").iterdir())[:6]:
        shutil.copy(f, other / f.name)
    rc, out, err = cli("evaluate", "--model", "tiny-avn", "--data", other.parent, "--label-all", "Normal",
                       "--json", js, "--variants", "as_is")
    assert rc == 0, err
    m = json.loads(js.read_text())
    assert m["n"] == 6 and m["per_class"]["Normal"]["support"] == 6
    rc, out, err = cli("train", "--data", data, "--split", "subject", "--augment", "colour=1", "--epochs", 1)
    assert rc != 0 and "--augment" in (out + err)
