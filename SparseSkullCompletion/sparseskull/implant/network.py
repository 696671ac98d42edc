"""The trained network as the pipeline's completion step: the input voxels plus those it generates (the
paper's Eq. 4), on the model's grid."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sparseskull.implant.options import MAX_PASSES, InputError, check_passes

if TYPE_CHECKING:
    from sparseskull.implant.grid import ModelGrid

def network_points(model, ijk: np.ndarray, backend: str, device, tau: float, max_points: int | None = None) -> np.ndarray:
    """The voxel coordinates (M x 3) the network outputs for input voxels ``ijk`` (N x 3, one skull), in inference;
    ``max_points``: the most points a decoder level may create (a PointExplosionError beyond: memory stays bounded)."""
    import torch

    from sparseskull.sparse.backends import from_backend, to_backend
    from sparseskull.sparse.tensor import SparseTensor

    coords = torch.from_numpy(np.concatenate([np.zeros((len(ijk), 1), np.int64), ijk], axis=1)).to(device)
    x = SparseTensor.from_coords(coords, torch.ones(len(coords), 1, device=device))
    with torch.inference_mode():
        out = model(to_backend(x, backend), tau=tau, **({"max_points": max_points} if max_points else {}))
    return from_backend(out.output).coords[:, 1:].cpu().numpy() if out.output is not None else np.zeros((0, 3), int)


# The network's output depends on where the skull sits on its stride-2 to stride-64 grids, and it misses different
# parts of a skull at different placements. So both networks may run more than once (test-time augmentation): pass i
# on the skull shifted by PASS_OFFSETS[i] voxels, every odd pass mirrored along the array's first axis (the
# left-right mirror training augments with), and each output voxel counts the passes that put it there. Completion
# keeps a generated voxel that a quarter of the passes generate, super-resolution a voxel that half of them keep
# (chosen on the validation split, docs/models.md).
PASS_OFFSETS = ((0, 0, 0), (0, 0, 0), (1, 1, 1), (1, 1, 1), (2, 0, 1), (3, 2, 0), (0, 3, 2), (2, 1, 3))
assert len(PASS_OFFSETS) == MAX_PASSES


def pass_votes(passes: int) -> int:
    """How many of ``passes`` must generate a voxel for completion to keep it: a quarter of them, at least one."""
    return max(1, passes // 4)


def voted_points(model, ijk: np.ndarray, shape, backend: str, device, tau: float, passes: int = 1, corner: int | None = None,
                 max_points: int | None = None) -> np.ndarray:
    """Per voxel of a grid of ``shape``, how many of ``passes`` shifted and mirrored passes of the network over the input
    voxels ``ijk`` output it. ``corner``: first move the input's bounding-box corner to this many voxels from the
    origin (where training put it: the super-resolution crops), else the passes shift the grid as it is."""
    check_passes(passes)
    shape = np.asarray(shape)
    votes = np.zeros(tuple(int(n) for n in shape), np.uint8)
    for i in range(passes):
        inputs = ijk.copy()
        mirror = i % 2 == 1
        if mirror:
            inputs[:, 0] = shape[0] - 1 - inputs[:, 0]
        base = inputs.min(axis=0) - corner if corner is not None else np.zeros(3, np.int64)
        shift = base - np.asarray(PASS_OFFSETS[i])  # the network sees inputs - shift
        pred = network_points(model, inputs - shift, backend, device, tau, max_points=max_points) + shift
        if mirror:
            pred[:, 0] = shape[0] - 1 - pred[:, 0]
        pred = pred[np.all((pred >= 0) & (pred < shape), axis=1)]
        hit = np.zeros(votes.shape, bool)  # one vote per pass, however often a pass lists a voxel
        hit[tuple(pred.T)] = True
        votes += hit
    return votes


def run_network(model, coarse: np.ndarray, backend: str, device, tau: float, passes: int = 1) -> np.ndarray:
    """Complete a coarse skull: the input voxels plus those the network generates (paper Eq. 4), voted over
    ``passes`` shifted and mirrored passes (1: one pass on the skull as it is)."""
    check_passes(passes)
    ijk = np.argwhere(coarse)
    if len(ijk) == 0:
        raise InputError("the skull vanishes at the model's resolution (too thin or too small for this model)")
    return coarse | (voted_points(model, ijk, coarse.shape, backend, device, tau, passes) >= pass_votes(passes))


class NetworkCompleter:
    """The trained network as the pipeline's completion step: a model file (a shipped model's name, a
    path, or None for the default), on a device and a sparse backend. ``architectures``: those accepted
    (default: the sparse network only; the dense baseline must be asked for)."""

    def __init__(self, spec=None, device: str = "auto", backend: str = "torch", architectures: tuple[str, ...] | None = None,
                 passes: int = 1):
        from sparseskull.nets.catalogue import resolve_model
        from sparseskull.nets.files import DENSE, SPARSE, load_model
        from sparseskull.runtime import pick_device
        from sparseskull.sparse.backends import BACKENDS

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.path = resolve_model(spec)
        self.device = pick_device(device)
        self.model, self.info = load_model(self.path, device=self.device, architectures=architectures or (SPARSE,))
        self.dense = self.info.architecture == DENSE  # the dense baseline (evaluate --baselines dense)
        self.backend = "dense" if self.dense else backend
        if self.info.task != "completion":
            raise InputError(f"{self.path}: a {self.info.task} model; completing a skull needs a completion model")
        if self.info.spacing_mm is None:
            raise InputError(f"{self.path}: the model file does not say its voxel spacing, so the CT cannot be brought to its grid")
        self.name = Path(self.path).stem
        self.passes = 1 if self.dense else check_passes(passes)  # the dense baseline runs once

    def __call__(self, coarse: np.ndarray, grid: "ModelGrid | None" = None) -> np.ndarray:
        if self.dense:
            from sparseskull.nets.dense_net import complete_dense

            return complete_dense(self.model, coarse, device=self.device)
        return run_network(self.model, coarse, self.backend, self.device, self.info.tau, self.passes)

