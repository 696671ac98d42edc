"""The trained models shipped with the extension (``Resources/Models``), found by name or path.

Each shipped model is ``<name>.safetensors`` with a model card ``<name>.md`` beside it. The
default model, the one "Complete skull" uses, is named in ``Resources/Models/default.txt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sparseskull.weights import ModelInfo, read_info


def models_dir() -> Path:
    """``SparseSkullCompletion/Resources/Models`` beside the core package; ``$SPARSESKULL_MODELS`` overrides it."""
    env = os.environ.get("SPARSESKULL_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "Resources" / "Models"


@dataclass(frozen=True)
class ShippedModel:
    name: str
    path: Path
    info: ModelInfo

    @property
    def card(self) -> Path:
        return self.path.with_suffix(".md")


def list_models(folder: Path | None = None) -> list[ShippedModel]:
    folder = models_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        return []
    return [ShippedModel(p.stem, p, read_info(p)) for p in sorted(folder.glob("*.safetensors"))]


def default_model_name(folder: Path | None = None) -> str | None:
    folder = models_dir() if folder is None else Path(folder)
    named = folder / "default.txt"
    if named.is_file():
        return named.read_text().strip() or None
    completion = [m.name for m in list_models(folder) if m.info.task == "completion"]
    return completion[0] if completion else None


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
        names = ", ".join(m.name for m in list_models(folder)) or "none"
        raise FileNotFoundError(f"no shipped model named {spec!r} (shipped: {names}); or give a path to a .safetensors file")
    return shipped
