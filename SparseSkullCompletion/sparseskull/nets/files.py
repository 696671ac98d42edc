"""Model files: safetensors weights with JSON metadata, checked on load (no pickle ever runs).

The metadata says what the model is (architecture, channels, task, the input resolution and voxel
spacing it expects, tau), how it was trained and how good it is, and carries a SHA-256 of the
tensors, so that a corrupted, truncated or foreign file is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sparseskull import __version__
from sparseskull.data.io import atomic_write
from sparseskull.nets.sparse_net import SparseCompletionNet

FORMAT = "sparseskull-model"
FORMAT_VERSION = 1
TASKS = ("completion", "super-resolution")
SPARSE = "SparseCompletionNet"  # the paper's network: what `complete` runs
DENSE = "DenseCompletionNet"  # its dense counterpart: the baseline of `evaluate --baselines dense` only
ARCHITECTURES = (SPARSE, DENSE)


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class ModelInfo:
    channels: tuple[int, ...]
    task: str = "completion"
    resolution: int = 512  # in-plane grid size the model was trained at (512 = full CT resolution)
    input_resolution: int | None = None  # super-resolution: the coarse grid it upsamples from
    spacing_mm: tuple[float, float, float] | None = None
    tau: float = 0.0
    architecture: str = SPARSE
    skips: bool = False  # the decoder unites each level with the encoder's (files without the key: False)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    package_version: str = __version__

    def __post_init__(self) -> None:  # JSON gives lists back: keep tuples
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.spacing_mm is not None:
            object.__setattr__(self, "spacing_mm", tuple(float(v) for v in self.spacing_mm))
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d tensors too
    return h.hexdigest()


def save_model(model: SparseCompletionNet, path: str | os.PathLike, info: ModelInfo, half: bool = False) -> Path:
    """Write weights and metadata atomically (a temporary file, then a rename). ``half``: store the convolutions'
    weights in float16, half the file (a wide network's 72 MB become 36 MB); biases and batch norms stay float32, and
    loading casts back to float32, so the model computes in float32 with its weights rounded to float16's 11 bits."""
    from safetensors.torch import save_file

    if tuple(info.channels) != tuple(model.channels):
        raise ValueError(f"info.channels {info.channels} differ from the model's {model.channels}")
    if bool(info.skips) != bool(getattr(model, "skips", False)):
        raise ValueError(f"info.skips {info.skips} differs from the model's {getattr(model, 'skips', False)}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        tensors = {k: v.half() if v.dim() >= 2 and v.is_floating_point() else v for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "sha256": _digest(tensors), **asdict(info)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"sparseskull": json.dumps(meta)}))


def weights_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a model file's tensors, as its metadata records it (what an evaluation is tied to)."""
    return str(_open(Path(path))[0].get("sha256"))


def read_info(path: str | os.PathLike) -> ModelInfo:
    """The metadata of a model file, checked for format (tensors not loaded)."""
    return _open(Path(path))[1]


def _open(path: Path) -> tuple[dict, ModelInfo]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("sparseskull")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable safetensors model file ({exc})") from None
    if raw is None:
        raise ModelFileError(f"{path}: a safetensors file without sparseskull metadata: not a sparseskull model")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise ModelFileError(f"{path}: its sparseskull metadata is not valid JSON (corrupted)") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format {meta.get('format')!r} v{meta.get('format_version')}; this version reads {FORMAT} v{FORMAT_VERSION}")
    fields = {k: meta[k] for k in ModelInfo.__dataclass_fields__ if k in meta}
    try:
        info = ModelInfo(**fields)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: invalid metadata ({exc})") from None
    return meta, info


def _network(architecture: str):
    if architecture == DENSE:
        from sparseskull.nets.dense_net import DenseCompletionNet

        return DenseCompletionNet
    return SparseCompletionNet


def load_model(path: str | os.PathLike, task: str | None = None, device: str | torch.device = "cpu",
               architectures: tuple[str, ...] = (SPARSE,)) -> tuple[SparseCompletionNet, ModelInfo]:
    """Load and verify a model file; ``task``, when given, must match the model's, and its architecture
    must be one of ``architectures`` (the dense baseline, ``DenseCompletionNet``, only where asked for)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta, info = _open(path)
    if info.architecture not in ARCHITECTURES:
        raise ModelFileError(f"{path}: architecture {info.architecture!r} is not one this version runs")
    if info.architecture not in architectures:
        what = "the dense baseline (for `sparseskull evaluate --baselines dense`)" if info.architecture == DENSE else info.architecture
        raise ModelFileError(f"{path}: {what}, not a {' or '.join(architectures)} model")
    if task is not None and info.task != task:
        raise ModelFileError(f"{path}: a {info.task} model, but a {task} model is needed")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several kinds for truncated or damaged files
        raise ModelFileError(f"{path}: the weights cannot be read ({exc}); the file is damaged") from None
    if _digest(tensors) != meta.get("sha256"):
        raise ModelFileError(f"{path}: the weights do not match their checksum: the file is corrupted")
    try:
        model = _network(info.architecture)(info.channels, **({"skips": True} if info.skips else {}))
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError) as exc:  # torch lists every mismatched tensor on its own line: say how many, show the first
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        more = f" and {len(lines) - 2} more" if len(lines) > 2 else ""
        raise ModelFileError(f"{path}: the weights do not fit a {info.architecture} with channels {list(info.channels)} "
                             f"({detail}{more}); the file's metadata does not describe its weights") from None
    except TypeError as exc:  # e.g. skips asked of the dense network, which has none
        raise ModelFileError(f"{path}: invalid metadata for {info.architecture} ({exc})") from None
    return model.to(device).eval(), info
