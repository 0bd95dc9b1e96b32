"""Model packages: a directory holding ``model.safetensors`` and ``card.json``.

Loading never unpickles: weights come from safetensors and are checked against the
SHA-256 in the card before use, so a swapped or damaged file is refused.

A card comes from outside (a colleague's package, a mailed model file, a hand edit), so it
is validated by a schema (``CardSchema``, pydantic) every time it is read: on register,
import and load. The JSON text is bounded in size and nesting depth before it is parsed,
its name is a plain, safe file name, every number is finite and in range, the classes are
the taxonomy's and as many as the weights' outputs. A rejected card is one
``ModelPackageError`` sentence naming the field and the problem.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.config import Paths, resources_dir
from core.errors import ModelPackageError
from core.imaging.preprocessing import CELL_BACKGROUNDS, INTERPOLATIONS, MAX_CELL_MARGIN_UM, Preprocessing
from core.models.taxonomy import TAXONOMIES

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FORMAT = 1

INTENDED_USE = (
    "Research and decision support for trained laboratory staff only. Not a diagnostic "
    "device: every result must be reviewed by a qualified person."
)

# ---- limits on what a card may say -------------------------------------------------------------

MAX_CARD_BYTES = 4 << 20  # the default card is 30 KB; a retrained one with full history < 200 KB
MAX_JSON_DEPTH = 64  # json.loads recurses: 100,000 nested lists raise RecursionError
MAX_NAME_LENGTH = 100
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 16, 1024  # 1024 px: 3 MB per uint8 image, 12 MB as float
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0  # the trainer fits T in [0.05, 20]
# A cell model's cut-out side: a white cell is 6-30 um across (core/cells/finder.py), so a square
# narrower than 5 um cannot hold one and one wider than 200 um holds a crowd, not a cell.
MIN_CELL_SIDE_UM, MAX_CELL_SIDE_UM = 5.0, 200.0
# The side a cell model is given when its card names none: what the bundled ALL-vs-normal card
# states (25 um: C-NMC's frame from its cells' measured widths), so an older registered copy of
# that card, written before it stated a side, cuts its cells the same way.
DEFAULT_CELL_SIDE_UM = 25.0

# A model name is a directory name in the registry and appears in file names: letters, digits,
# '.', '_', '-', starting with a letter or digit (so never '.', '..' or a hidden temp name),
# not ending with '.', and none of the names Windows reserves for devices.
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}")
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_SHA256 = r"^[0-9a-f]{64}$"

# The final (classifier) layer of each architecture in core/models/architectures.py, by weight
# tensor name: its first dimension is the number of classes the weights predict. It is here,
# torch-free, because cards are checked where torch is never imported (CPU classify reads the
# safetensors header only); a test checks it against the architectures registry. A card
# naming an architecture not listed here is refused.
CLASSIFIER_WEIGHTS: dict[str, str] = {
    "seed_cnn3": "classifier.5.weight",
    "seed_baseline": "classifier.2.weight",
    "se_cnn": "classifier.3.weight",
    "effnet_lite0": "_fc.weight",
    "effnet_lite1": "_fc.weight",
}


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (f"use 1-{MAX_NAME_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(no spaces, no path separators)")
    if name.endswith(".") or name.split(".")[0].casefold() in _WINDOWS_DEVICES:
        return "it is a device name on Windows or ends with '.'"
    return None


def validate_model_name(name: object) -> str:
    """``name`` if it is safe as a directory name inside the model registry, else a
    ModelPackageError saying why."""
    problem = _name_problem(name)
    if problem:
        raise ModelPackageError(f"model name {_shown(name)} is not allowed: {problem}")
    return name  # type: ignore[return-value]


# ---- the schema ------------------------------------------------------------------------------

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Sha256 = Annotated[str, Field(strict=True, pattern=_SHA256)]


class PreprocessingSchema(BaseModel):
    """Range checks on a card's ``preprocessing``; core.imaging.preprocessing.Preprocessing stays the
    one definition of the steps and their defaults (a missing key takes its default there)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input_size: Annotated[int, Field(ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE)] = None  # type: ignore[assignment]
    interpolation: str = None  # type: ignore[assignment]
    mean: Annotated[list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]],
                    Field(min_length=3, max_length=3)] = None  # type: ignore[assignment]
    std: Annotated[list[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]],
                   Field(min_length=3, max_length=3)] = None  # type: ignore[assignment]
    corner_mask: Annotated[list[Annotated[float, Field(ge=0, le=0.5, allow_inf_nan=False)]],
                           Field(min_length=2, max_length=2)] | None = None
    cell_background: str = None  # type: ignore[assignment]
    cell_margin_um: Annotated[float, Field(ge=0, le=MAX_CELL_MARGIN_UM, allow_inf_nan=False)] = None  # type: ignore[assignment]

    @field_validator("cell_background")
    @classmethod
    def _known_background(cls, v: str) -> str:
        if v not in CELL_BACKGROUNDS:
            raise ValueError(f"unknown cell_background {v!r}; known: {', '.join(CELL_BACKGROUNDS)}")
        return v

    @field_validator("interpolation")
    @classmethod
    def _known_interpolation(cls, v: str) -> str:
        if v not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {v!r}; known: {', '.join(INTERPOLATIONS)}")
        return v


class Int8Schema(BaseModel):
    """The int8 record the trainer adds (trainer/quantize.py); free-form besides these."""

    model_config = ConfigDict(extra="allow", strict=True)

    files: dict[str, Sha256] | None = None
    agreement: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    weights_sha256: Sha256 | None = None

    @field_validator("files")
    @classmethod
    def _plain_file_names(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for name in v or {}:
            problem = _name_problem(name)
            if problem:
                raise ValueError(f"int8 file name {_shown(name)} is not a plain file name in the package: {problem}")
        return v


class GuardSchema(BaseModel):
    """The foreign-image guard record (core/models/guard.py, trainer/guard.py): a file of the package
    and its SHA-256; free-form besides these."""

    model_config = ConfigDict(extra="allow", strict=True)

    file: str
    sha256: Sha256

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, v: str) -> str:
        problem = _name_problem(v)
        if problem or v in (CARD_FILE, WEIGHTS_FILE):
            raise ValueError(f"guard file name {_shown(v)} is not a plain file name of its own in the package"
                             + (f": {problem}" if problem else ""))
        return v


class CardSchema(BaseModel):
    """What a model card (card.json) may contain. Unknown top-level keys are ignored (a newer
    card's extra notes); everything the application acts on is checked."""

    model_config = ConfigDict(extra="ignore", strict=True)

    name: str
    architecture: str
    taxonomy: str
    classes: Annotated[list[str], Field(min_length=2, max_length=256)]
    preprocessing: PreprocessingSchema
    weights_sha256: Sha256
    arch_params: dict[str, Any] = {}
    temperature: Annotated[float, Field(ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE, allow_inf_nan=False)] = 1.0
    uncertain_threshold: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    metrics: dict[str, Any] = {}
    training_data: dict[str, Any] = {}
    created_at: str = ""
    parent: str | None = None
    placeholder: bool = False
    int8: Int8Schema = Int8Schema()
    guard: GuardSchema | None = None  # {} in a card: no guard
    input: Literal["field", "cell"] = "field"
    cell_side_um: Annotated[float, Field(ge=MIN_CELL_SIDE_UM, le=MAX_CELL_SIDE_UM, allow_inf_nan=False)] | None = None
    cell_crops: Literal["whole", "cut_out"] = "whole"
    intended_use: str = ""
    notes: str = ""
    format_version: Annotated[int, Field(ge=1)] = CARD_FORMAT

    @field_validator("name", "parent")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        problem = None if v is None else _name_problem(v)
        if problem:
            raise ValueError(f"model name {_shown(v)} is not allowed: {problem}")
        return v

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, v: str) -> str:
        if v not in CLASSIFIER_WEIGHTS:
            raise ValueError(f"unknown architecture {_shown(v)}; known: {', '.join(sorted(CLASSIFIER_WEIGHTS))}")
        return v

    @field_validator("taxonomy")
    @classmethod
    def _known_taxonomy(cls, v: str) -> str:
        if v not in TAXONOMIES:
            raise ValueError(f"unknown taxonomy {_shown(v)}; known: {', '.join(TAXONOMIES)}")
        return v

    @field_validator("arch_params")
    @classmethod
    def _scalar_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > 32:
            raise ValueError(f"{len(v)} parameters; at most 32")
        for key, value in v.items():
            if not key.isidentifier():
                raise ValueError(f"parameter name {_shown(key)} is not an identifier")
            if not isinstance(value, (bool, int, float)) or (isinstance(value, float) and not np.isfinite(value)):
                raise ValueError(f"{key} must be a finite number or true/false, not {_shown(value)}")
        return v

    @field_validator("guard", mode="before")
    @classmethod
    def _no_guard(cls, v: Any) -> Any:
        return None if v == {} else v

    @field_validator("format_version")
    @classmethod
    def _not_newer(cls, v: int) -> int:
        if v > CARD_FORMAT:
            raise ValueError(f"card format {v} was written by a newer hemascan (this one reads up to {CARD_FORMAT})")
        return v

    @model_validator(mode="after")
    def _classes_are_the_taxonomys(self) -> "CardSchema":
        expected = list(TAXONOMIES[self.taxonomy].classes)
        if self.classes != expected:
            raise ValueError(f"classes {self.classes} are not those of taxonomy {self.taxonomy!r} "
                             f"({', '.join(expected)}, in this order)")
        return self


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _card_error(exc: ValidationError, source: str) -> ModelPackageError:
    """One sentence for the first problem pydantic found: the field, what is wrong, the value."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    got = ""
    if first["type"] not in ("missing", "value_error") and not isinstance(first.get("input"), (dict, list)):
        got = f" (got {_shown(first.get('input'))})"
    more = f"; and {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
    return ModelPackageError(f"{source} is invalid: {where + ': ' if where else ''}{msg}{got}{more}")


# ---- JSON text from outside --------------------------------------------------------------------

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def json_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest (brackets inside strings do not count),
    without parsing it: json.loads recurses and fails with RecursionError on deep input."""
    skeleton = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8", "replace"), np.uint8)
    steps = np.isin(skeleton, _OPEN).astype(np.int64) - np.isin(skeleton, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


def load_json(raw: bytes, what: str, max_bytes: int = MAX_CARD_BYTES) -> Any:
    """Parse JSON that came from outside: bounded size and nesting depth, UTF-8 text."""
    if len(raw) > max_bytes:
        raise ModelPackageError(f"{what} is too large (over {max_bytes / 2**20:g} MiB); refusing it")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ModelPackageError(f"cannot read {what}: it is not UTF-8 text") from None
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ModelPackageError(f"{what} is nested {depth} levels deep (at most {MAX_JSON_DEPTH}); refusing it")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelPackageError(f"cannot read {what}: {exc}") from None


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
    # The foreign-image guard beside the weights (core/models/guard.py): {"file", "sha256", ...}; {} when none.
    guard: dict[str, Any] = field(default_factory=dict)
    # What one input of the model is: "field", a whole smear field (the subtype model), or "cell",
    # one white cell cut out of a field (core/inference/cells.py finds and cuts the cells).
    input: str = "field"
    # A cell model only: the side, in micrometres, of the square cut-out it was trained on; each
    # found cell is cut out at this physical size whatever the camera, then resized to the
    # preprocessing's input_size. None: DEFAULT_CELL_SIDE_UM. A field model ignores it.
    cell_side_um: float | None = None
    # A cell model only: how a pre-cut single-cell crop (an image the finder judges to be one
    # cell) is given to it: "whole", through the preprocessing as any image (a model trained on
    # whole crops), or "cut_out" like every cell of a field (a model trained on cut-outs: the
    # crop's cell at cell_side_um with the card's background, whatever the crop's framing).
    cell_crops: str = "whole"
    intended_use: str = INTENDED_USE
    notes: str = ""
    format_version: int = CARD_FORMAT

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    @property
    def cut_out_side_um(self) -> float:
        """The side in micrometres at which a cell model's cells are cut out."""
        return float(self.cell_side_um) if self.cell_side_um is not None else DEFAULT_CELL_SIDE_UM

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any, source: str = "model card") -> "ModelCard":
        """A card from JSON data, validated by CardSchema (ModelPackageError if not valid)."""
        if not isinstance(d, dict):
            raise ModelPackageError(f"{source} is not a JSON object")
        try:
            CardSchema.model_validate(d)
        except ValidationError as exc:
            raise _card_error(exc, source) from None
        # strict validation: the values that passed are the JSON values, kept as written
        card = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        try:
            card.prep  # noqa: B018 - the one definition of preprocessing accepts it too
        except (TypeError, ValueError) as exc:
            raise ModelPackageError(f"{source} is invalid: preprocessing: {exc}") from None
        return card


def package_files(card: ModelCard) -> list[str]:
    """The files a package consists of: card, weights, and the int8 model and foreign-image
    guard its card lists. Register copies and model files carry exactly these."""
    guard = [card.guard["file"]] if (card.guard or {}).get("file") else []
    return [CARD_FILE, WEIGHTS_FILE, *sorted((card.int8 or {}).get("files") or {}), *guard]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_card(package: Path) -> ModelCard:
    card_path = Path(package) / CARD_FILE
    try:
        with card_path.open("rb") as fh:
            raw = fh.read(MAX_CARD_BYTES + 1)  # never more than the limit, whatever the file's size
    except FileNotFoundError:
        raise ModelPackageError(f"no model card at {card_path}") from None
    except OSError as exc:
        raise ModelPackageError(f"cannot read model card {card_path}: {exc.strerror or exc}") from None
    return ModelCard.from_dict(load_json(raw, f"model card {card_path}"), f"model card {card_path}")


def weights_output_size(weights: Path, architecture: str) -> int:
    """The number of classes the weights predict, from the safetensors header alone (the
    shape of the architecture's classifier layer; nothing is loaded, no torch)."""
    from safetensors import SafetensorError, safe_open

    tensor = CLASSIFIER_WEIGHTS[architecture]
    try:
        with safe_open(str(weights), framework="numpy") as f:
            if tensor not in f.keys():
                raise ModelPackageError(f"model weights {weights} have no {tensor!r} layer: "
                                        f"they are not a {architecture!r} model")
            shape = f.get_slice(tensor).get_shape()
    except (SafetensorError, OSError) as exc:
        raise ModelPackageError(f"model weights {weights} are not a readable safetensors file: {exc}") from None
    if len(shape) != 2:
        raise ModelPackageError(f"model weights {weights}: layer {tensor!r} has shape {shape}, not a classifier's")
    return int(shape[0])


def verify_package(package: Path, card: ModelCard | None = None) -> ModelCard:
    """Check the card (schema), that the weights file matches the card's SHA-256, and that
    the weights predict as many classes as the card lists."""
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
    n_out = weights_output_size(weights, card.architecture)
    if n_out != len(card.classes):
        raise ModelPackageError(
            f"model card {package / CARD_FILE} is invalid: classes lists {len(card.classes)} classes "
            f"but the weights predict {n_out} (layer {CLASSIFIER_WEIGHTS[card.architecture]!r})"
        )
    return card


def save_package(package: Path, state_dict: dict, card: ModelCard) -> ModelCard:
    """Write weights + card into ``package`` atomically (temp dir, then rename), so a
    crash never leaves a half-written model where a model is expected. The card is
    validated before anything is written, the package as a whole before it is renamed."""
    from safetensors.torch import save_file

    package = Path(package)
    # the weights hash is not known yet: check everything else now, before touching the disk
    ModelCard.from_dict({**asdict(card), "weights_sha256": "0" * 64, "int8": {}, "guard": {}}, f"model card for {package}")
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
        card.guard = {}  # so does the foreign-image guard (trainer/guard.py adds one)
        (tmp / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
        for f in (WEIGHTS_FILE, CARD_FILE):  # shared read-only data (installers, other users)
            os.chmod(tmp / f, 0o644)
        verify_package(tmp)  # what load will check: e.g. classes vs the weights' outputs
        os.replace(tmp, package)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def load_model(package: Path, device: str = "cpu"):
    """Return (torch module in eval mode, card). Verifies the hash first, and that every
    weight has the shape the architecture (with the card's arch_params) expects, on a
    skeleton without memory, before building the real model."""
    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from core.models.architectures import build  # heavy: imports torch

    package = Path(package)
    card = verify_package(package)
    what = f"architecture {card.architecture!r}" + (f" with arch_params {card.arch_params}" if card.arch_params else "")
    try:
        with torch.device("meta"):  # shapes only: a card's huge width allocates nothing
            skeleton = build(card.architecture, num_classes=len(card.classes), **card.arch_params)
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelPackageError(f"cannot build model {what}: {exc}") from None
    try:
        with safe_open(str(package / WEIGHTS_FILE), framework="numpy") as f:
            actual = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ModelPackageError(f"model weights in {package} are not readable: {exc}") from None
    if expected != actual:
        wrong = sorted(set(expected) ^ set(actual)) or sorted(k for k in expected if expected[k] != actual[k])
        k = wrong[0]
        raise ModelPackageError(f"model weights do not fit {what}: {k!r} is {actual.get(k, 'missing')} in the "
                                f"weights, {expected.get(k, 'absent')} in the model ({len(wrong)} such tensors)")
    try:
        model = build(card.architecture, num_classes=len(card.classes), **card.arch_params)
        state = load_file(str(package / WEIGHTS_FILE), device=str(device))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError, TypeError) as exc:
        raise ModelPackageError(f"model weights do not fit {what}: {exc}") from None
    return model.to(device).eval(), card

def int8_files(package: Path, card: ModelCard) -> Path:
    """The verified int8 IR's .xml path (its .bin beside it); refuses modified files."""
    files = (card.int8 or {}).get("files") or {}
    xml = next((name for name in files if name.endswith(".xml")), None)
    if xml is None or Path(xml).with_suffix(".bin").name not in files:
        raise ModelPackageError(f"model card for {card.name} lists no complete int8 model")
    for name, sha in files.items():
        path = Path(package) / name
        if Path(name).name != name:
            raise ModelPackageError(f"model card names an int8 file outside its package: {name!r}")
        if not path.is_file():
            raise ModelPackageError(f"int8 model file missing: {path}")
        if sha256_file(path) != sha:
            raise ModelPackageError(f"int8 model file {path} does not match its card: refusing a modified model")
    return Path(package) / xml


# ---- where packages live: the bundled ones, and a version's folder in the registry ----------

DEFAULT_MODEL_DIR = "default"
# The bundled cell model made active on a first start (others bundled are registered only).
DEFAULT_CELL_MODEL_DIR = "wbc-differential"


def bundled_default_package() -> Path:
    return resources_dir() / "models" / DEFAULT_MODEL_DIR


def package_path(paths: Paths, name: str) -> Path:
    """Where the registry keeps version ``name``: a plain entry of the models directory, never
    anywhere else (the name is checked, and the path must not lead out through a link)."""
    validate_model_name(name)
    dest = paths.models / name
    if dest.is_symlink() or dest.resolve().parent != paths.models.resolve():
        raise ModelPackageError(f"model {name!r}: {dest} is a link leading outside the model registry; "
                                "refusing to write or delete through it")
    return dest


def bundled_packages() -> list[Path]:
    """Every model package shipped in resources/models, the default first (it is registered,
    and listed, before the others: the ALL-vs-normal model, ...)."""
    root = resources_dir() / "models"
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if (p / CARD_FILE).is_file())
    return sorted(found, key=lambda p: p.name != DEFAULT_MODEL_DIR)
