"""Training pairs for the two tasks, drawn from skulls on disk (real or generated).

- Completion: a defective skull -> its complete skull. The defect is either one stored with the
  data set or a new one cut on the fly from the complete skull (SkullBreak classes), so a few
  complete skulls give endless pairs.
- Super-resolution: the complete skull at a coarse resolution, upsampled to the training grid ->
  the complete skull at the training resolution (64->128, 64->256, 64->512, 128->256, ...).

Each pair is augmented (flip, small rotation, shift) and returned as voxel coordinates; a batch
is several pairs with batch indices. Every draw takes its randomness from the generator it is
given, so a step's batch depends only on (seed, step): that is what makes --resume exact.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sparseskull.data.augment import Augmentation, augment
from sparseskull.data.dataset import find_cases
from sparseskull.data.io import VolumeReadError, read_mask, write_volume
from sparseskull.data.resample import PAPER_RESOLUTIONS, downsample_to, upsample_nearest
from sparseskull.data.synth.defects import DEFECT_CLASSES, BonePoints, cut_random_defect
from sparseskull.data.volume import Volume, bounding_box
from sparseskull.sparse.tensor import CoordinateSet, SparseTensor

TASKS = ("completion", "super-resolution")
CROP_AT = ("bone", "defect")
VALIDATION_BOX_MARGIN = 16
"""Voxels of context around the missing bone in a validation box (``crop_at="defect"``): as the pipeline's refinement
box around the coarse implant (implant/superres.py's ``BOX_MARGIN``)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSESKULL_CACHE", Path.home() / ".cache" / "sparseskull")) / "coarse"


def read_at(path: Path, resolution: int, cache: bool = True) -> Volume:
    """A mask at the paper's ``resolution`` (in-plane grid size): read as is when it already has that
    size, else downsampled from full resolution, with the copy cached on disk because reading and downsampling a
    512^2 x Z mask takes seconds. The cache is keyed by the file's content (hashing a compressed mask takes
    milliseconds), so a copied, moved or re-mounted data set still finds its copies."""
    path = Path(path)
    cache = cache and path.is_file()  # a mask is one file (a folder would be a DICOM series: read it each time)
    if cache:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        key = hashlib.sha256(f"{digest}|{resolution}".encode()).hexdigest()[:24]
        cached = cache_dir() / f"{key}.nrrd"
        if cached.is_file():
            return read_mask(cached)
    mask = read_mask(path)
    if mask.shape[0] != resolution:
        mask = downsample_to(mask, resolution)
        if cache:
            write_volume(mask, cached)
    return mask


@dataclass
class Skull:
    """One skull at the training resolution: its complete mask, the defective masks stored with it,
    and (super-resolution) its coarse copy upsampled to the training grid."""

    case_id: str
    complete: Volume
    defects: list[tuple[str | None, np.ndarray]] = field(default_factory=list)
    coarse: np.ndarray | None = None
    _bone: BonePoints | None = field(default=None, repr=False)

    @property
    def bone(self) -> BonePoints:
        if self._bone is None:
            self._bone = BonePoints.of(self.complete)
        return self._bone


def load_skulls(
    root,
    resolution: int = 64,
    sr_from: int | None = None,
    classes: tuple[str, ...] | None = None,
    case_ids: list[str] | None = None,
    progress=None,
    limit: int | None = None,
    skipped: list[dict] | None = None,
) -> list[Skull]:
    """The skulls of a data set (SkullFix, SkullBreak or complete-only layout) at ``resolution``.

    Coarse copies written by ``make-data`` are used where they exist; otherwise masks are read at full
    resolution and downsampled (and cached). ``sr_from``: also make the super-resolution input.
    ``limit``: only the first ``limit`` skulls (by id).
    ``skipped``: a list to collect the cases that cannot be read ({"case", "file", "reason"}) and go on without
    them; without it the first such file stops the load with a one-line error naming it (a truncated download
    or a mask on another grid must not silently shrink a training set).
    """
    if resolution not in PAPER_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {PAPER_RESOLUTIONS}; got {resolution}")
    if sr_from is not None and (sr_from not in PAPER_RESOLUTIONS or sr_from >= resolution):
        raise ValueError(f"super-resolution goes from a coarser grid to a finer one; got {sr_from} -> {resolution}")
    full = find_cases(root, None, classes)
    try:
        copies = {(c.case_id, c.defect_class): c for c in find_cases(root, resolution, classes)} if resolution != 512 else {}
    except FileNotFoundError:
        copies = {}
    by_id: dict[str, list] = {}
    for case in full:
        by_id.setdefault(case.case_id, []).append(case)
    if case_ids is not None:
        missing = sorted(set(case_ids) - set(by_id))
        if missing:
            raise ValueError(f"{root}: no case {', '.join(missing)}")
        by_id = {cid: by_id[cid] for cid in case_ids}
    if limit is not None:
        by_id = dict(sorted(by_id.items())[:limit])
    skulls = []
    items = list(by_id.items())
    for cid, cases in (progress(items, desc=f"loading skulls at {resolution}", unit="skull") if progress else items):
        first = copies.get((cid, cases[0].defect_class), cases[0])
        if first.complete is None:
            continue  # no ground truth: nothing to train on
        try:
            skulls.append(_load_skull(cid, cases, first.complete, copies, resolution, sr_from))
        except BadCaseError as exc:
            if skipped is None:
                raise
            skipped.append({"case": cid, "file": str(exc.path), "reason": exc.reason})
    if not skulls:
        raise ValueError(f"{root}: no case has a complete skull, so there is no ground truth to train on")
    return skulls


class BadCaseError(ValueError):
    """One case's file that cannot be trained on (unreadable, empty, or on another grid than its complete skull);
    the message names the file and says what is wrong."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def _read_case_file(path, resolution: int) -> Volume:
    try:
        mask = read_at(path, resolution)
    except VolumeReadError as exc:  # its message is "PATH: not a readable 3D image (why)"
        raise BadCaseError(path, str(exc).removeprefix(f"{path}: ")) from None
    if not mask.array.any():
        raise BadCaseError(path, "the mask is empty (no bone voxel)")
    return mask


def _load_skull(cid: str, cases: list, complete_path, copies: dict, resolution: int, sr_from: int | None) -> Skull:
    complete = _read_case_file(complete_path, resolution)
    defects = []
    for case in cases:
        stored = copies.get((case.case_id, case.defect_class), case).defective
        if stored is not None:
            d = _read_case_file(stored, resolution)
            if d.shape != complete.shape:
                raise BadCaseError(stored, f"grid {d.shape} differs from its complete skull's {complete.shape}")
            defects.append((case.defect_class, np.asarray(d.array, dtype=bool) & np.asarray(complete.array, dtype=bool)))
    coarse = None
    if sr_from is not None:
        low = _read_case_file(cases[0].complete, sr_from)
        coarse = upsample_nearest(np.asarray(low.array, dtype=bool), resolution // sr_from, complete.shape)
    return Skull(cid, complete.with_array(np.asarray(complete.array, dtype=bool)), defects, coarse)


def split(skulls: list[Skull], validation: float, seed: int) -> tuple[list[Skull], list[Skull]]:
    """A fixed train/validation split by skull (never by defect: one skull's defects stay together).
    ``validation``: a fraction (< 1) or a count of skulls."""
    n = len(skulls)
    k = int(round(validation * n)) if validation < 1 else int(validation)
    if n < 2 and validation > 0:
        return skulls, skulls  # one skull: validate on it (an overfitting run)
    k = min(max(k, 1 if validation > 0 else 0), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:k].tolist())
    return [s for i, s in enumerate(skulls) if i not in val], [skulls[i] for i in val]


@dataclass(frozen=True)
class Pair:
    """Input and target voxel coordinates (N, 3), on one grid."""

    inputs: np.ndarray
    target: np.ndarray
    case_id: str
    defect: str | None


class PairSampler:
    """Draws augmented training pairs for a task from a list of skulls."""

    def __init__(
        self,
        skulls: list[Skull],
        task: str = "completion",
        augmentation: Augmentation = Augmentation(),
        classes: tuple[str, ...] = DEFECT_CLASSES,
        new_defects: float = 0.5,
        crop: int | None = None,
        crop_at: str = "bone",
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        if crop_at not in CROP_AT:
            raise ValueError(f"crop_at must be one of {', '.join(CROP_AT)}; got {crop_at!r}")
        if crop_at == "defect" and task != "completion":
            raise ValueError("boxes around the defect are for completion; super-resolution has no defect")
        if not skulls:
            raise ValueError("no skulls to draw training pairs from")
        if task == "super-resolution" and any(s.coarse is None for s in skulls):
            raise ValueError("super-resolution pairs need the skulls' coarse copies: load them with sr_from")
        self.skulls, self.task, self.augmentation, self.classes = skulls, task, augmentation, tuple(classes)
        self.new_defects = new_defects
        if crop is not None and crop < 16:
            raise ValueError(f"a training crop must be at least 16 voxels a side; got {crop}")
        self.crop, self.crop_at = crop, crop_at

    def _centre(self, skull: Skull, inputs: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Where a training box is centred: a random bone voxel, or (``crop_at="defect"``) the middle of the missing
        bone's bounding box, so the box holds the defect and its rim as the pipeline's box around the coarse implant does."""
        if self.crop_at == "defect":
            box = bounding_box(target & ~inputs)
            if box is not None:
                return np.array([(sl.start + sl.stop) // 2 for sl in box])
        return skull.bone.ijk[int(rng.integers(len(skull.bone.ijk)))]

    def _masks(self, skull: Skull, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str | None]:
        complete = np.asarray(skull.complete.array, dtype=bool)
        if self.task == "super-resolution":
            return skull.coarse, complete, None
        if skull.defects and rng.random() >= self.new_defects:
            cls, defective = skull.defects[int(rng.integers(len(skull.defects)))]
            return defective, complete, cls
        cls, defective = self._new_defect(skull, rng)
        return defective, complete, cls

    def _new_defect(self, skull: Skull, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        """A random defect of a random class among ``classes``, cut from the complete skull."""
        cls = self.classes[int(rng.integers(len(self.classes)))]
        return cls, np.asarray(cut_random_defect(skull.bone, cls, rng).defective.array, dtype=bool)

    def draw(self, rng: np.random.Generator) -> Pair:
        skull = self.skulls[int(rng.integers(len(self.skulls)))]
        inputs, target, cls = self._masks(skull, rng)
        if self.crop is not None:  # cut a box with room for the rotation first: augmenting a whole 256 grid takes seconds
            centre = self._centre(skull, inputs, target, rng)
            half = int(np.ceil(self.crop * 0.75))
            box = tuple(slice(max(0, int(c) - half), int(c) + half) for c in centre)
            inputs, target = inputs[box], target[box]  # the target holds bone near the centre: never empty
        t, x = augment([target, inputs], rng, self.augmentation, skull.complete.spacing_mm)
        if self.crop is not None:
            centre = (t.min(axis=0) + t.max(axis=0)) // 2
            if self.crop_at == "defect":  # the augmented defect's middle, moved by up to an eighth of the box per axis
                missing = t[~_rows_in(t, x)]
                if len(missing):
                    jitter = self.crop // 8
                    centre = (missing.min(axis=0) + missing.max(axis=0)) // 2 + rng.integers(-jitter, jitter + 1, 3)
            t, x = crop_pair(t, x, self.crop, rng, self.augmentation.shift, centre=centre)
        return Pair(x, t, skull.case_id, cls)

    def batch(self, rng: np.random.Generator, size: int) -> list[Pair]:
        return [self.draw(rng) for _ in range(size)]

    def fixed(self, seed: int = 0) -> list[Pair]:
        """Validation pairs, the same every time: every stored defect, or one random defect per skull
        (seeded by its id) where none is stored; no augmentation."""
        pairs = []
        for skull in self.skulls:
            complete = np.asarray(skull.complete.array, dtype=bool)
            if self.task == "super-resolution":
                masks = [(None, skull.coarse)]
            elif skull.defects:
                masks = skull.defects
            else:
                rng = np.random.default_rng([seed, int(hashlib.sha256(skull.case_id.encode()).hexdigest()[:8], 16)])
                masks = [self._new_defect(skull, rng)]
            for cls, inputs in masks:
                target = complete
                if self.crop_at == "defect":  # as the pipeline's box: the missing bone's box and a rim of context
                    box = bounding_box(complete & ~inputs, VALIDATION_BOX_MARGIN) or tuple(slice(0, n) for n in complete.shape)
                    target, inputs = complete[box], inputs[box]
                t, x = augment([target, inputs], np.random.default_rng(0), Augmentation.none())
                pairs.append(Pair(x, t, skull.case_id, cls))
        return pairs


def _rows_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each voxel coordinate (row) of ``a``, whether ``b`` holds it (both non-negative, as :func:`augment` returns
    them): a lookup in a grid of ``b`` (a hashed set difference took 0.3 s a pair at 256)."""
    grid = np.zeros(tuple(np.maximum(a.max(axis=0), b.max(axis=0)) + 1), bool)
    grid[tuple(b.T)] = True
    return grid[tuple(a.T)]


def crop_pair(target: np.ndarray, inputs: np.ndarray, size: int, rng: np.random.Generator, shift: int = 0,
              centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The coordinates of both masks inside one box of ``size`` voxels a side, centred on the target voxel nearest
    ``centre`` (default: a random target voxel; either way the box holds bone), moved to start at a random voxel in [0, shift] per axis (every alignment with the
    network's strides, as :func:`augment` does for whole skulls). Training on boxes keeps a 256 or 512 grid's step
    small; the network is convolutional, so inference still runs on the whole skull."""
    if centre is None:
        centre = target[int(rng.integers(len(target)))]
    else:
        centre = target[int(np.argmin(np.abs(target - np.asarray(centre)).sum(axis=1)))]
    lo = centre - size // 2
    offset = (rng.integers(0, shift + 1, 3) if shift > 0 else np.zeros(3, np.int64)) - lo

    def inside(c):
        keep = np.all((c >= lo) & (c < lo + size), axis=1)
        return c[keep] + offset

    t, x = inside(target), inside(inputs)
    if len(x) == 0:  # a box on a spur that the coarse copy lost: keep its input non-empty with the target's centre voxel
        x = (centre + offset)[None]
    return t, x


def collate(pairs: list[Pair], device="cpu") -> tuple[SparseTensor, CoordinateSet]:
    """A batch: the inputs as one sparse tensor (features 1) and the targets' coordinate set."""
    def stack(arrays):
        return torch.from_numpy(np.concatenate([np.concatenate([np.full((len(a), 1), b), a], axis=1) for b, a in enumerate(arrays)]).astype(np.int64))

    empty = [p.case_id for p in pairs if len(p.inputs) == 0]
    if empty:
        raise ValueError(f"empty input skull in case {', '.join(empty)}")
    coords = stack([p.inputs for p in pairs]).to(device)
    x = SparseTensor.from_coords(coords, torch.ones(len(coords), 1, device=device))
    target, _ = CoordinateSet.from_coords(stack([p.target for p in pairs]).to(device))
    return x, target


def with_input(pred: CoordinateSet, inputs: CoordinateSet) -> CoordinateSet:
    """The completed skull as the paper defines it (Eq. 4: C_out = [C_in; C_imp]): the input's voxels
    and the generated ones."""
    return CoordinateSet(torch.unique(torch.cat([pred.keys, inputs.keys.to(pred.keys.device)])), pred.stride)


def minus(a: CoordinateSet, b: CoordinateSet) -> CoordinateSet:
    """The coordinates of ``a`` not in ``b`` (e.g. implant = completed minus defective)."""
    return CoordinateSet(a.keys[~torch.isin(a.keys, b.keys.to(a.keys.device))], a.stride)


def dice_by_batch(pred: CoordinateSet, target: CoordinateSet, batch_size: int) -> list[float]:
    """DSC of the predicted and target coordinates of each batch item (0 when both are empty)."""
    hit = torch.isin(pred.keys, target.keys)
    pb, tb = pred.coords[:, 0].long(), target.coords[:, 0].long()
    inter = torch.bincount(pb[hit], minlength=batch_size)
    n_pred, n_true = torch.bincount(pb, minlength=batch_size), torch.bincount(tb, minlength=batch_size)
    total = (n_pred + n_true).clamp(min=1)
    return (2.0 * inter / total).tolist()
