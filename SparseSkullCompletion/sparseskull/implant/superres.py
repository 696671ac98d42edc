"""The super-resolution stage: the completed skull on the completion model's coarse grid, brought to a grid 2 or 4 times
finer by a second network (the paper's shape super-resolution), so the implant has the finer grid's shape rather than
the coarse grid's blocks.

The network's input is the coarse completed skull upsampled (nearest) to the fine grid, exactly as it was trained
(``sparseskull train --task super-resolution``); its output is the skull on the fine grid. The defect's place comes
from the completion: the fine implant is the super-resolved skull minus the defective skull *within one coarse voxel
of the coarse implant*, so a surface that moved by a voxel elsewhere on the skull never becomes implant. Since nothing
else is kept, the network runs on the box around that region with some context (``BOX_MARGIN``), not the whole skull.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from sparseskull.data.resample import block_fraction
from sparseskull.data.volume import Volume, bounding_box
from sparseskull.implant.grid import GRID_MARGIN, ModelGrid, model_factors
from sparseskull.implant.network import pass_votes, voted_points
from sparseskull.implant.options import InputError, check_passes
from sparseskull.sparse.functional import PointExplosionError

POINT_CAP = 4  # a decoder level may hold at most this many times the input's points: the skull on a finer grid, not a flood
BOX_MARGIN = 16
"""Fine voxels of context around the implant's region in the box the network runs on (None: the whole skull). Only the
region's voxels are kept, and the models were trained on boxes of 64 and 96 voxels: on 6 training skulls (000, 001,
002, 004, 008, 009; default pair, 8 passes; scripts/sr_box_study.py) the implant's DSC was the same to +-0.0015 with 16 or 32 voxels as with
the whole skull, and the stage took 3.7 s (16) or 5.2 s (32) against 17.1 s on the 2-core CPU (docs/pipeline.md)."""


def sr_votes(passes: int) -> int:
    """How many of ``passes`` must keep a voxel for super-resolution to keep it: half of them (rounded up)."""
    return (passes + 1) // 2


def nearest_index(n_fine: int, fine_factor: int, coarse_factor: int, n_coarse: int) -> np.ndarray:
    """For each fine voxel along one axis, the coarse voxel holding its centre (both grids start at the same input voxel)."""
    centre = np.arange(n_fine) * fine_factor + fine_factor / 2.0
    return np.minimum((centre // coarse_factor).astype(np.int64), n_coarse - 1)


def to_fine(coarse: np.ndarray, grid: ModelGrid, fine_factors) -> np.ndarray:
    """A coarse-grid mask (with its margin) on the finer grid that covers the same input voxels (nearest)."""
    size = [n * f for n, f in zip(coarse.shape, grid.factors)]
    shape = [-(-s // ff) for s, ff in zip(size, fine_factors)]
    idx = [nearest_index(n, ff, fc, nc) for n, ff, fc, nc in zip(shape, fine_factors, grid.factors, coarse.shape)]
    return coarse[np.ix_(*idx)]


def fine_grid(skull: Volume, grid: ModelGrid, coarse_shape, fine_factors) -> tuple[np.ndarray, ModelGrid]:
    """The defective skull block-averaged onto the fine grid that covers the coarse grid's region (margin included)."""
    f = np.asarray(fine_factors)
    start = grid.lo - grid.margin * np.asarray(grid.factors)  # input voxel of the coarse grid's first voxel
    size = np.array([n * fc for n, fc in zip(coarse_shape, grid.factors)])
    shape = -(-size // f)
    crop = np.zeros(tuple(int(v) for v in shape * f), dtype=bool)
    lo, hi = np.maximum(start, 0), np.minimum(start + crop.shape, skull.shape)
    if np.all(hi > lo):
        crop[tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))] = np.asarray(skull.array, bool)[
            tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))]
    fine_in = block_fraction(crop, fine_factors) >= 0.5
    return fine_in, ModelGrid(start, tuple(int(v) for v in f), tuple(int(v) for v in shape), 0)


class SuperResolver:
    """A super-resolution model file as the pipeline's stage after completion (``spec``: a shipped model's name or a path)."""

    def __init__(self, spec, device="cpu", backend: str = "torch", model=None, info=None, passes: int = 1, box_margin: int | None = BOX_MARGIN):
        """``model`` and ``info``: a network in memory instead of a file (``spec`` then only names it); ``passes``: network
        passes, shifted and mirrored, a voxel kept where half of them keep it (implant/network.py); ``box_margin``: run the
        network on the box around the implant's region widened by this many fine voxels (None: on the whole skull)."""
        from sparseskull.nets.catalogue import resolve_model
        from sparseskull.nets.files import load_model

        self.device = device
        self.backend = backend
        self.passes = check_passes(passes)
        self.box_margin = box_margin
        if model is None:
            self.path = resolve_model(spec)
            self.model, self.info = load_model(self.path, device=device)
        else:
            self.path, self.model, self.info = str(spec), model, info
        if self.info.task not in ("super-resolution", "completion"):
            raise InputError(f"{self.path}: a {self.info.task} model, but the super-resolution stage needs a super-resolution model")
        # a completion model on the finer grid (trained with --crop-at defect) refines instead: it completes the box from
        # the defective skull itself on the fine grid, where a super-resolution model reshapes the coarse completion
        self.refines = self.info.task == "completion"
        if self.info.spacing_mm is None:
            raise InputError(f"{self.path}: the model file does not say its voxel spacing")
        self.name = Path(self.path).stem

    def check_feeds(self, completion_info) -> None:
        """Refuse a completion model whose grid is not this model's input grid (a refining model: not finer than it)."""
        if self.refines:
            if completion_info.resolution >= self.info.resolution:
                raise InputError(f"{self.name} completes at {self.info.resolution}, no finer than the completion model's {completion_info.resolution}")
            return
        if completion_info.resolution != self.info.input_resolution:
            raise InputError(f"{self.name} super-resolves from {self.info.input_resolution}, but the completion model works at "
                             f"{completion_info.resolution}: choose a super-resolution model from {completion_info.resolution}")

    def skip_reason(self, skull: Volume, grid: ModelGrid) -> str | None:
        """Why this CT has nothing to super-resolve (its voxels are as coarse as the model's output grid), or None."""
        if tuple(model_factors(skull, self.info.spacing_mm)) != tuple(grid.factors):
            return None
        return (f"the CT's voxels ({[round(s, 3) for s in skull.spacing_mm]} mm) are as coarse as {self.name}'s output grid, so the "
                "super-resolution stage was skipped: the implant comes from the completion model's grid")

    def __call__(self, skull: Volume, coarse_in: np.ndarray, coarse_out: np.ndarray, grid: ModelGrid) -> tuple[np.ndarray, np.ndarray, ModelGrid, dict]:
        """The defective and the completed skull on the fine grid, that grid, and what was done (see :meth:`skip_reason`
        first: a CT as coarse as the fine grid is refused here)."""
        skipped = self.skip_reason(skull, grid)
        if skipped:
            raise InputError(skipped)
        fine_factors = model_factors(skull, self.info.spacing_mm)
        fine_in, fgrid = fine_grid(skull, grid, coarse_out.shape, fine_factors)
        nearest = to_fine(coarse_out, grid, fine_factors)  # on fine_in's grid: both cover the coarse grid's region
        assert nearest.shape == fine_in.shape
        # the implant's place is the completion's: within one coarse voxel of its coarse implant
        near = ndimage.binary_dilation(coarse_out & ~coarse_in, np.ones((3, 3, 3), bool))
        region = to_fine(near, grid, fine_factors)
        if not nearest.any():
            raise InputError("the completed skull is empty on the model grid: nothing to super-resolve")
        box = tuple(slice(0, n) for n in nearest.shape)
        if self.box_margin is not None:  # only the region's voxels are kept: the network needs their box and some context
            box = bounding_box(region, self.box_margin)
        fine_out = np.zeros(nearest.shape, bool)
        given = fine_in if self.refines else nearest  # what the network sees: the defective skull, or the coarse completion
        ijk = np.argwhere(given[box]) if box is not None else np.zeros((0, 3), np.int64)
        if len(ijk):  # none: no implant (or no skull in its box), nothing for the network to refine
            # the skull's (or the box's) corner where training put it (a few voxels in): a six-level network answers
            # differently per alignment
            try:
                votes = voted_points(self.model, ijk, given[box].shape, self.backend, self.device, self.info.tau, self.passes,
                                     corner=GRID_MARGIN, max_points=POINT_CAP * len(ijk))
            except PointExplosionError as exc:
                raise InputError(f"super-resolution with {self.name} stopped: {exc}") from None
            # a refiner keeps what a quarter of its passes generate (completion's rule; the input is kept below), a
            # super-resolution model what half of them keep
            fine_out[box] = votes >= (pass_votes(self.passes) if self.refines else sr_votes(self.passes))
        completed = fine_in | (fine_out & region)
        spacing = [round(float(f * v), 3) for f, v in zip(fine_factors, skull.spacing_mm)]
        info = {"model": self.name, "from": round(self.info.resolution * fine_factors[0] / grid.factors[0]), "to": self.info.resolution,
                **({"refines": True} if self.refines else {}), "factors": list(fine_factors),
                "shape": [int(n) for n in fine_in.shape], "input_points": int(len(ijk)), "output_points": int(fine_out.sum()),
                "box": None if box is None else [[int(sl.start), int(sl.stop)] for sl in box],
                "passes": self.passes,
                "implant_points": int((completed & ~fine_in).sum()), "spacing_mm": spacing}
        if max(abs(a / b - 1) for a, b in zip(spacing, self.info.spacing_mm)) > 0.25:
            info["warning"] = (f"the CT's spacing does not divide into {self.name}'s: its grid has {spacing} mm voxels, the model was "
                               f"trained at {list(self.info.spacing_mm)} mm (a CT with thick slices gains little from super-resolution)")
        return fine_in, completed, fgrid, info
