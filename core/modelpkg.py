"""Model packages: a directory holding ``model.safetensors`` and ``card.json``.

Loading never unpickles: weights come from safetensors and are checked against the
SHA-256 in the card before use, so a swapped or damaged file is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ModelPackageError
from .preprocessing import Preprocessing
from .taxonomy import TAXONOMIES

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FORMAT = 1

INTENDED_USE = (
    "Research and decision support for trained laboratory staff only. Not a diagnostic "
    "device: every result must be reviewed by a qualified person."
)


@dataclass
class ModelCard:
    name: str
    architecture: str
    taxonomy: str
    classes: list[str]
    preprocessing: dict[str, Any]
    arch_params: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    uncertain_threshold: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    parent: str | None = None
    weights_sha256: str = ""
    placeholder: bool = False
    # An int8 OpenVINO model the trainer shipped beside the weights (trainer/quantize.py):
    # {"format", "files": {name: sha256}, "agreement", "n_checked", "calibration", "made_with"}.
    int8: dict[str, Any] = field(default_factory=dict)
    intended_use: str = INTENDED_USE
    notes: str = ""
    format_version: int = CARD_FORMAT

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("name", "architecture", "taxonomy", "classes", "preprocessing") if k not in d]
        if missing:
            raise ModelPackageError(f"model card lacks required field(s): {', '.join(missing)}")
        card = cls(**{k: v for k, v in d.items() if k in known})
        if card.taxonomy in TAXONOMIES and list(TAXONOMIES[card.taxonomy].classes) != list(card.classes):
            raise ModelPackageError(
                f"model card classes {card.classes} do not match taxonomy {card.taxonomy!r}"
            )
        try:
            Preprocessing.from_dict(card.preprocessing)
        except (TypeError, ValueError) as exc:
            raise ModelPackageError(f"model card has invalid preprocessing: {exc}") from None
        return card


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_card(package: Path) -> ModelCard:
    package = Path(package)
    card_path = package / CARD_FILE
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelPackageError(f"no model card at {card_path}") from None
    except (OSError, ValueError) as exc:
        raise ModelPackageError(f"cannot read model card {card_path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelPackageError(f"model card {card_path} is not a JSON object")
    return ModelCard.from_dict(data)


def verify_package(package: Path, card: ModelCard | None = None) -> ModelCard:
    """Check that the weights file exists and matches the card's SHA-256."""
    package = Path(package)
    card = card or read_card(package)
    weights = package / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelPackageError(f"model weights missing: {weights}")
    actual = sha256_file(weights)
    if actual != card.weights_sha256:
        raise ModelPackageError(
            f"model weights {weights} do not match their card (SHA-256 {actual[:12]}... "
            f"!= {card.weights_sha256[:12] or '(none)'}...): refusing to load a modified model"
        )
    return card


def save_package(package: Path, state_dict: dict, card: ModelCard) -> ModelCard:
    """Write weights + card into ``package`` atomically (temp dir, then rename), so a
    crash never leaves a half-written model where a model is expected."""
    from safetensors.torch import save_file

    package = Path(package)
    if package.exists():
        raise ModelPackageError(f"model package already exists: {package}")
    package.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=package.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; packages are shared read-only data
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        card.weights_sha256 = sha256_file(tmp / WEIGHTS_FILE)
        card.int8 = {}  # an int8 model belongs to the weights it was made from (trainer/quantize.py adds one)
        (tmp / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
        for f in (WEIGHTS_FILE, CARD_FILE):  # shared read-only data (installers, other users)
            os.chmod(tmp / f, 0o644)
        os.replace(tmp, package)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def load_model(package: Path, device: str = "cpu"):
    """Return (torch module in eval mode, card). Verifies the hash first."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .architectures import build

    package = Path(package)
    card = verify_package(package)
    try:
        model = build(card.architecture, num_classes=len(card.classes), **card.arch_params)
    except (KeyError, TypeError) as exc:
        raise ModelPackageError(f"cannot build model architecture: {exc}") from None
    try:
        state = load_file(str(package / WEIGHTS_FILE), device=str(device))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ModelPackageError(f"model weights do not fit architecture {card.architecture!r}: {exc}") from None
    return model.to(device).eval(), card
