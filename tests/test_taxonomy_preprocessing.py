import numpy as np
import pytest

from core.imaging.preprocessing import Preprocessing
from core.models.taxonomy import TAXONOMIES, resolve_alias


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("Benign", ("all_subtype", "Benign")),
        ("Early", ("all_subtype", "Early Pre-B")),
        ("Pre", ("all_subtype", "Pre-B")),
        ("Pro", ("all_subtype", "Pro-B")),
        ("[Malignant] early Pre-B", ("all_subtype", "Early Pre-B")),
        ("[Malignant] Pro-B", ("all_subtype", "Pro-B")),
        ("all", ("all_vs_normal", "ALL")),
        ("hem", ("all_vs_normal", "Normal")),
        ("Pre-B", ("all_subtype", "Pre-B")),
        ("misc", None),
    ],
)
def test_aliases_map_public_dataset_folders(folder, expected):
    assert resolve_alias(folder) == expected


def test_alias_restricted_to_taxonomy():
    assert resolve_alias("hem", "all_subtype") is None
    assert resolve_alias("Benign", "all_subtype") == ("all_subtype", "Benign")


def test_two_taxonomies():
    assert TAXONOMIES["all_subtype"].classes == ("Benign", "Early Pre-B", "Pre-B", "Pro-B")
    assert TAXONOMIES["all_vs_normal"].classes == ("ALL", "Normal")


def test_preprocessing_roundtrip_and_shapes():
    prep = Preprocessing(input_size=64, interpolation="area", corner_mask=(0.1, 0.2))
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    rgb = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    out = prep.apply(rgb)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # corner blanked to the normalisation mean, which normalises to ~0
    corner = out[64 - 6 :, 64 - 13 :]
    assert np.all(np.abs(corner.astype(int) - (np.array(prep.mean) * 255).astype(int)) <= 1)


def test_normalise_gives_channels_last_float():
    import torch

    prep = Preprocessing(input_size=8)
    batch = torch.full((2, 8, 8, 3), 255, dtype=torch.uint8)
    x = prep.normalise(batch)
    assert x.shape == (2, 3, 8, 8)
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = (1.0 - prep.mean[0]) / prep.std[0]
    assert torch.allclose(x[:, 0], torch.full_like(x[:, 0], expected), atol=1e-5)


def test_wbc_differential_aliases_map_public_folder_names():
    from core.models.taxonomy import folder_taxonomies, resolve_alias

    # C-NMC's folders mean a class in two taxonomies; without one named the older binary one wins
    assert resolve_alias("all") == ("all_vs_normal", "ALL")
    assert resolve_alias("all", "wbc_differential") == ("wbc_differential", "Blast")
    assert resolve_alias("Blast") == ("wbc_differential", "Blast")
    assert resolve_alias("hem", "wbc_differential") == ("wbc_differential", "Lymphocyte")
    assert folder_taxonomies("hem") == {"all_vs_normal": "Normal", "wbc_differential": "Lymphocyte"}
    # PBC folder names
    assert resolve_alias("ig") == ("wbc_differential", "Immature granulocyte")
    assert resolve_alias("platelet") == ("wbc_differential", "Platelet")
    assert resolve_alias("Pre-B", "wbc_differential") is None


def test_class_folders_take_the_taxonomy_every_folder_shares(tmp_path):
    import numpy as np
    from PIL import Image

    from trainer.data import scan_class_folders

    for folder in ("all", "lymphocyte", "neutrophil"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / folder / "a.png")
    ds = scan_class_folders(tmp_path)
    # "all" alone would be all_vs_normal; beside PBC names it can only be the differential's Blast
    assert ds.taxonomy == "wbc_differential"
    assert ds.counts()["Blast"] == 1 and ds.counts()["Neutrophil"] == 1
