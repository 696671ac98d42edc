"""The trained models shipped with the extension (``Resources/Models``), found by name or path.

Each shipped model is ``<name>.safetensors`` with a model card ``<name>.md`` beside it. The
default model, the one "Complete skull" uses, is named in ``Resources/Models/default.txt``.
Models a user trained are registered in ``~/.sparseskull/models.json`` (``$SPARSESKULL_HOME``
overrides the folder), so that Slicer's model list shows them beside the shipped ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sparseskull.nets.files import SPARSE, ModelInfo, read_info
from sparseskull.resources import resource_dir


def models_dir() -> Path:
    """``SparseSkullCompletion/Resources/Models`` beside the core package (a wheel's copy where there is none, see
    :mod:`sparseskull.resources`); ``$SPARSESKULL_MODELS`` overrides it."""
    env = os.environ.get("SPARSESKULL_MODELS")
    return Path(env) if env else resource_dir("Models")


@dataclass(frozen=True)
class ShippedModel:
    name: str
    path: Path
    info: ModelInfo
    shipped: bool = True  # False: a model the user trained and registered

    @property
    def label(self) -> str:
        """How model lists show it: 'skullfix-ch1-64 (64^2)', or 'my-run (64^2, yours)'."""
        return f"{self.name} ({self.info.resolution}^2{'' if self.shipped else ', yours'})"

    @property
    def baseline(self) -> bool:
        """A baseline shipped for `sparseskull evaluate` (the dense network), not offered for completing skulls."""
        return self.info.architecture != SPARSE

    @property
    def card(self) -> Path:
        return self.path.with_suffix(".md")

    @property
    def evaluation(self) -> dict | None:
        """The full-grid scores beside the model (``<name>.evaluation.json``, written by `sparseskull evaluate
        --record`: its means on the model's held-out skulls), or None; None too when they were measured on
        other weights (their ``model_sha256`` is not this file's)."""
        from sparseskull.nets.files import ModelFileError, weights_digest

        try:
            scores = json.loads(evaluation_path(self.path).read_text())
            if scores.get("model_sha256") != weights_digest(self.path):
                return None
            return scores
        except (OSError, ValueError, AttributeError, ModelFileError):
            return None


def evaluation_path(model_path: Path) -> Path:
    """Where a model's recorded evaluation lives: ``<name>.evaluation.json`` beside it."""
    return Path(model_path).with_suffix(".evaluation.json")


def list_models(folder: Path | None = None, baselines: bool = False) -> list[ShippedModel]:
    """The shipped models; ``baselines``: the evaluation baselines (the dense network) too."""
    folder = models_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        return []
    found = [ShippedModel(p.stem, p, read_info(p)) for p in sorted(folder.glob("*.safetensors"))]
    return [m for m in found if baselines or not m.baseline]


def default_model_name(folder: Path | None = None) -> str | None:
    folder = models_dir() if folder is None else Path(folder)
    named = folder / "default.txt"
    if named.is_file():
        return named.read_text().strip() or None
    completion = [m.name for m in list_models(folder) if m.info.task == "completion"]
    return completion[0] if completion else None


@dataclass(frozen=True)
class ModelPair:
    """A completion model and the super-resolution model that takes its output to a finer grid, offered as one choice
    (``Resources/Models/pairs.json``: ``{"pairs": [{"name", "completion", "super_resolution", "label"}]}``)."""

    name: str
    completion: str
    super_resolution: str
    label: str = ""


def list_pairs(folder: Path | None = None) -> list[ModelPair]:
    """The shipped pairs whose two models are both shipped."""
    folder = models_dir() if folder is None else Path(folder)
    try:
        entries = json.loads((folder / "pairs.json").read_text()).get("pairs", [])
    except (OSError, ValueError, AttributeError):
        return []
    pairs = []
    for e in entries:
        try:
            pair = ModelPair(str(e["name"]), str(e["completion"]), str(e["super_resolution"]), str(e.get("label", "")))
        except (KeyError, TypeError):
            continue
        if (folder / f"{pair.completion}.safetensors").is_file() and (folder / f"{pair.super_resolution}.safetensors").is_file():
            pairs.append(pair)
    return pairs


def find_pair(spec, folder: Path | None = None) -> ModelPair | None:
    """The shipped pair named ``spec`` (None: the default, when default.txt names a pair), or None."""
    if spec is None:
        spec = default_model_name(folder)
    return next((p for p in list_pairs(folder) if p.name == spec), None) if spec is not None else None


def resolve_model(spec: str | os.PathLike | None = None, folder: Path | None = None) -> Path:
    """A model file from a shipped model's name, a path, or None for the default."""
    folder = models_dir() if folder is None else Path(folder)
    if spec is None:
        name = default_model_name(folder)
        if name is None:
            raise FileNotFoundError(f"no shipped model in {folder}: give --model PATH (a file from `sparseskull train`)")
        spec = name
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists() or os.sep in str(spec):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
        return path
    shipped = folder / f"{spec}.safetensors"
    if not shipped.is_file():
        pair = find_pair(spec, folder)
        if pair is not None:
            return folder / f"{pair.completion}.safetensors"
        names = ", ".join([m.name for m in list_models(folder, baselines=True)] + [p.name for p in list_pairs(folder)]) or "none"
        raise FileNotFoundError(f"no shipped model named {spec!r} (shipped: {names}); or give a path to a .safetensors file")
    return shipped


def user_models_file() -> Path:
    home = os.environ.get("SPARSESKULL_HOME")
    return (Path(home) if home else Path.home() / ".sparseskull") / "models.json"


def _registered_paths() -> list[str]:
    try:
        paths = json.loads(user_models_file().read_text()).get("models", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [p for p in paths if isinstance(p, str)]


def register_model(path: str | os.PathLike) -> ShippedModel:
    """Add a trained model file to the user's list (checked first: a model from another program is refused)."""
    from sparseskull.data.io import atomic_write

    path = Path(path).resolve()
    info = read_info(path)  # FileNotFoundError / ModelFileError with the reason
    paths = [p for p in _registered_paths() if Path(p) != path] + [str(path)]
    target = user_models_file()
    atomic_write(target, lambda tmp: Path(tmp).write_text(json.dumps({"models": paths}, indent=1) + "\n"))
    return ShippedModel(_registered_name(path), path, info, shipped=False)


def _registered_name(path: Path) -> str:
    """A trained run's model is ``<run>/model.safetensors``: the run folder names it."""
    return path.parent.name if path.stem == "model" else path.stem


def registered_models() -> list[ShippedModel]:
    """The user's registered models whose files still exist and read as sparseskull models."""
    from sparseskull.nets.files import ModelFileError

    found = []
    for p in _registered_paths():
        try:
            found.append(ShippedModel(_registered_name(Path(p)), Path(p), read_info(p), shipped=False))
        except (FileNotFoundError, ModelFileError):
            continue
    return found


def available_models(baselines: bool = False) -> list[ShippedModel]:
    """The shipped models, then the user's registered ones (``baselines``: the dense baseline too)."""
    return [m for m in list_models(baselines=True) + registered_models() if baselines or not m.baseline]
