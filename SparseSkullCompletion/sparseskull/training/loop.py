"""Headless training of the paper's network: `sparseskull train` or `python -m sparseskull.train`.

One run writes into one folder:
- ``checkpoint.pt``: model, optimiser, schedule and step, written atomically every N steps, at the
  end and on Ctrl-C/SIGTERM; ``--resume DIR`` continues exactly (each step's batch is drawn from a
  generator seeded by (seed, step, rank), so nothing else needs restoring).
- ``metrics.csv`` and ``curves.png``: loss, learning rate and validation DSC per step.
- ``progress.json``: the latest step, loss, DSC and state (running, done, interrupted, failed), for
  a GUI to poll.
- ``model.safetensors``: the exported model with its metadata (weights.py), at the end.

Several processes (``torchrun --nproc_per_node N -m sparseskull.train ...``) each draw their own
pairs and average gradients with torch.distributed (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from sparseskull import __version__
from sparseskull.data.augment import Augmentation
from sparseskull.data.io import atomic_write
from sparseskull.data.pairs import (
    CROP_AT,
    TASKS,
    BadCaseError,
    PairSampler,
    collate,
    dice_by_batch,
    load_skulls,
    minus,
    split,
    with_input,
)
from sparseskull.data.synth.defects import DEFECT_CLASSES
from sparseskull.implant.options import MAX_PASSES
from sparseskull.nets.sparse_net import (
    SparseCompletionNet,
    completion_loss,
    parse_channels,
    widen,
)
from sparseskull.runtime import pick_device
from sparseskull.sparse.backends import from_backend, to_backend

CHECKPOINT_FORMAT = "sparseskull-checkpoint"
CHECKPOINT_VERSION = 1
CSV_FIELDS = ("step", "loss", "lr", "val_dsc", "val_implant_dsc", "val_input_dsc", "seconds")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message says why."""


@dataclass
class TrainConfig:
    data: str
    out: str
    task: str = "completion"
    resolution: int = 64
    sr_from: int | None = None
    channels: str = "ch1"
    skips: bool = False  # the reference code's skip connections (encoder level united with the decoder's)
    steps: int = 2000
    batch_size: int = 4
    lr: float = 2e-3
    lr_final: float = 0.05  # the cosine schedule ends at lr * lr_final
    warmup: int = 20
    validation: float = 0.2  # fraction (< 1) or count of skulls held out
    val_every: int = 100
    val_passes: int = 1  # network passes the validation votes over, shifted and mirrored as in the pipeline (implant/network.py)
    checkpoint_every: int = 100
    seed: int = 0
    classes: tuple[str, ...] = DEFECT_CLASSES
    new_defects: float = 0.5  # share of pairs with a defect cut on the fly where stored ones exist
    flip_axes: tuple[int, ...] = (0,)
    rotate_deg: float = 5.0
    shift: int = 8
    crop: int | None = None  # train on boxes of this many voxels a side around random bone (large grids); None: whole skulls
    crop_at: str = "bone"  # "defect": boxes around the missing bone, validated on the missing bone's box (a refinement network)
    tau: float = 0.0
    new_point_weight: float = 1.0  # the loss's weight of the points not in the input (completion_loss); 1: the paper's mean
    max_cases: int | None = None
    device: str = "auto"
    backend: str = "torch"
    amp: str = "auto"  # auto: bf16/fp16 autocast on CUDA, off elsewhere
    workers: int = 0
    threads: int | None = None
    init: str | None = None  # a model file whose weights start the run (fine-tuning); schedule and optimizer start afresh
    skip_bad_cases: bool = False  # an unreadable case stops the run unless asked to go on without it (the model file lists it)

    # settings that may differ on --resume without changing the loss sequence
    RUNTIME = ("device", "workers", "threads", "out", "data", "val_passes")

    def __post_init__(self) -> None:
        self.classes, self.flip_axes = tuple(self.classes), tuple(self.flip_axes)
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.task == "super-resolution" and self.sr_from is None:
            raise ValueError("super-resolution needs --sr-from (the coarse resolution, e.g. 64)")
        if self.task == "completion" and self.sr_from is not None:
            raise ValueError("--sr-from is for --task super-resolution")
        parse_channels(self.channels)
        if not self.new_point_weight > 0:
            raise ValueError(f"--new-point-weight must be positive; got {self.new_point_weight}")
        unknown = set(self.classes) - set(DEFECT_CLASSES)
        if unknown:
            raise ValueError(f"unknown defect classes {sorted(unknown)}; choose from {', '.join(DEFECT_CLASSES)}")
        for name in ("steps", "batch_size", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not 1 <= self.val_passes <= MAX_PASSES:
            raise ValueError(f"--val-passes must be between 1 and {MAX_PASSES}; got {self.val_passes}")
        if self.backend not in ("torch", "minkowski"):
            raise ValueError(f"--backend must be torch or minkowski for training (spconv has no CPU backward); got {self.backend!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision."""
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    if config.amp in ("auto", "bf16"):
        if device.type != "cuda" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if config.amp == "fp16":
        return torch.float16
    raise ValueError(f"--amp must be auto, off, bf16 or fp16; got {config.amp!r}")


def lr_factor(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine from 1 to ``lr_final`` over the remaining steps."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    t = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


# ---------------------------------------------------------------------------- files, written atomically


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1)))


def save_checkpoint(path: Path, model, optimizer, scaler, step: int, config: TrainConfig, history: dict) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        "config": json.dumps(asdict(config)),
        "history": json.dumps(history),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint safely (weights_only: no pickle code runs) and check what it is."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and EOF errors all mean the same thing here
        raise CheckpointError(f"{path}: the checkpoint is damaged and cannot be read ({type(exc).__name__}); "
                              "delete it to start afresh") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a sparseskull training checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')}; this version reads {CHECKPOINT_VERSION}")
    return state


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    def series(key):
        return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]

    val, implant, baseline = series("val_dsc"), series("val_implant_dsc"), series("val_input_dsc")
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    ax[0].plot(steps, loss, lw=0.8, color="tab:blue", alpha=0.5, label="loss")
    if len(loss) >= 10:
        k = max(5, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax[0].plot(steps[k - 1 :], smooth, color="tab:blue", label=f"mean of {k}")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("BCE over decoder levels")
    ax[0].legend()
    ax[0].grid(alpha=0.3)
    if val:
        ax[1].plot(*zip(*val), "o-", color="tab:green", label="super-resolved skull" if title.startswith("super-resolution") else "completed skull")
        best = max(val, key=lambda v: v[1])
        ax[1].set_title(f"best {best[1]:.4f} at step {best[0]}", fontsize=9)
    if implant:
        ax[1].plot(*zip(*implant), "s-", color="tab:orange", label="implant (completed minus input)")
    if baseline:
        ax[1].axhline(baseline[-1][1], color="grey", ls="--", lw=1, label=f"input alone {baseline[-1][1]:.3f}")
    if val or implant:
        ax[1].legend(fontsize=8)
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("validation DSC")
    ax[1].grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


# ---------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    opened_group: bool = False  # this run opened the process group, so it closes it

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """torchrun sets WORLD_SIZE/RANK; then gradients are averaged over the processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    opened = not dist.is_initialized()
    if opened:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), opened)


def _leave_distributed(dist_info: Dist) -> None:
    """Every process waits for rank 0's export, then the process group this run opened is closed. A process that
    left while rank 0 still exported was killed at exit by gloo's threads (SIGABRT, "terminate called without an active
    exception"), and torchrun then stopped rank 0 before it wrote the model: 3 of 24 runs on a 2-core CPU."""
    if dist_info.world == 1:
        return
    import torch.distributed as dist

    dist.barrier()
    if dist_info.opened_group:
        dist.destroy_process_group()


def _all_reduce_mean(tensors, dist_info: Dist) -> None:
    if dist_info.world == 1:
        return
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t)
        t.div_(dist_info.world)


# ---------------------------------------------------------------------------- the loop


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to save and stop at the end of the current step."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a GUI): no handlers
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _StepBatches(torch.utils.data.Dataset):
    """The batch of each step, drawn from a generator seeded by (seed, step, rank): any worker can make
    any step's batch, and a resumed run draws exactly what the uninterrupted one would have."""

    def __init__(self, sampler: PairSampler, config: TrainConfig, rank: int, start: int):
        self.sampler, self.config, self.rank, self.start = sampler, config, rank, start

    def __len__(self) -> int:
        return max(0, self.config.steps - self.start)

    def __getitem__(self, i: int):
        step = self.start + i
        return self.sampler.batch(np.random.default_rng([self.config.seed, step, self.rank]), self.config.batch_size)


def _identity(batch):
    return batch


def validate(model, pairs, config: TrainConfig, device) -> dict:
    """Mean DSC over the fixed validation pairs, in eval mode. Completion: the completed skull is the
    input plus what the network generates (the paper's Eq. 4), so ``dsc`` starts at the input's own
    DSC against the complete skull (``input_dsc``); ``implant_dsc`` scores what was added (completed
    minus input) against the true implant (complete minus input), which is the part that is learned.
    With ``config.val_passes`` > 1 the network's passes vote as in the pipeline (:func:`validate_voted`)."""
    if config.val_passes > 1:
        return validate_voted(model, pairs, config, device)
    model.eval()
    dsc, implant, baseline = [], [], []
    with torch.no_grad():
        for i in range(0, len(pairs), config.batch_size):
            chunk = pairs[i : i + config.batch_size]
            x, target = collate(chunk, device)
            out = model(to_backend(x, config.backend), tau=config.tau)
            pred = from_backend(out.output).cset
            if config.task == "completion":
                pred = with_input(pred, x.cset)
                implant += dice_by_batch(minus(pred, x.cset), minus(target, x.cset), len(chunk))
            dsc += dice_by_batch(pred, target, len(chunk))
            baseline += dice_by_batch(x.cset, target, len(chunk))
    model.train()
    result = {"dsc": float(np.mean(dsc)), "input_dsc": float(np.mean(baseline))}
    if implant:
        result["implant_dsc"] = float(np.mean(implant))
    return result


def validate_voted(model, pairs, config: TrainConfig, device) -> dict:
    """:func:`validate`'s scores with the pipeline's test-time passes: ``config.val_passes`` passes over each skull,
    shifted and mirrored, voting as ``sparseskull complete`` does (completion keeps a generated voxel a quarter of the
    passes generate, super-resolution a voxel half of them keep, placed at the pipeline's corner). One pass can rank
    models differently from the pipeline's 8 (docs/models.md); this curve is the one the pipeline sees."""
    from sparseskull.evaluation.metrics import dice
    from sparseskull.implant.grid import GRID_MARGIN
    from sparseskull.implant.network import run_network, voted_points
    from sparseskull.implant.superres import sr_votes

    passes = config.val_passes
    completion = config.task == "completion"
    dsc, implant, baseline = [], [], []

    def mask(points, shape):
        out = np.zeros(shape, bool)
        out[tuple(points.T)] = True
        return out

    model.eval()
    try:
        for pair in pairs:
            shape = tuple(int(n) for n in np.maximum(pair.inputs.max(axis=0), pair.target.max(axis=0)) + 1 + 2 * GRID_MARGIN)
            given, target = mask(pair.inputs, shape), mask(pair.target, shape)
            if completion:  # the pipeline's own network step
                pred = run_network(model, given, config.backend, device, config.tau, passes)
                implant.append(dice(pred & ~given, target & ~given))
            else:  # as the super-resolution stage votes, from the corner where it places the skull
                pred = voted_points(model, pair.inputs, shape, config.backend, device, config.tau, passes, corner=GRID_MARGIN) >= sr_votes(passes)
            dsc.append(dice(pred, target))
            baseline.append(dice(given, target))
    finally:
        model.train()
    result = {"dsc": float(np.mean(dsc)), "input_dsc": float(np.mean(baseline))}
    if implant:
        result["implant_dsc"] = float(np.mean(implant))
    return result


@dataclass
class TrainResult:
    out: Path
    step: int
    finished: bool
    val_dsc: float | None
    best_val_dsc: float | None
    seconds: float
    model_path: Path | None
    stopped_by: str | None = None


def _read_training(path) -> dict:
    from sparseskull.nets.files import read_info

    return read_info(path).training


def _check_init(config: TrainConfig) -> str:
    """The model file ``--init`` names (a shipped model's name or a path), checked against the run's network and task
    before any skull is loaded, so a wrong --init fails in a second, not after minutes of loading."""
    from sparseskull.nets.catalogue import resolve_model
    from sparseskull.nets.files import read_info

    path = resolve_model(config.init)
    info = read_info(path)
    if info.task != config.task:
        raise ValueError(f"--init {config.init}: a {info.task} model, but this run trains {config.task}")
    channels = list(parse_channels(config.channels))
    if list(info.channels) != channels:
        if any(o > n for o, n in zip(info.channels, channels)):
            raise ValueError(f"--init {config.init}: channels {list(info.channels)}, but this run trains {channels} "
                             "(a model can be widened, never narrowed)")
        print(f"note: --init {config.init} has channels {list(info.channels)}: widened to {channels}, computing the same "
              "function at the start (the new channels' weights into the old ones are zero)", file=sys.stderr)
    if bool(info.skips) != bool(config.skips):
        raise ValueError(f"--init {config.init}: {'with' if info.skips else 'without'} skip connections, but this run trains a network "
                         f"{'with' if config.skips else 'without'} them (--skips)")
    if info.resolution != config.resolution:
        print(f"note: --init {config.init} was trained at {info.resolution}; fine-tuning it at {config.resolution}", file=sys.stderr)
    return str(path)


def _init_from(model: SparseCompletionNet, path: str, task: str) -> None:
    """Start from a model file's weights (checked by :func:`_check_init`)."""
    from sparseskull.nets.files import load_model

    init, _ = load_model(path, task=task)
    if init.channels != model.channels:
        init = widen(init, model.channels)
    model.load_state_dict(init.state_dict())


def _load_training_skulls(config: TrainConfig, progress, hint: bool) -> tuple[list, list[dict]]:
    """The data set's skulls, and the cases left out as unreadable (only with ``skip_bad_cases``; each one is said on
    stderr and goes into the model file's training record, so a model trained on fewer skulls says so)."""
    skipped: list[dict] | None = [] if config.skip_bad_cases else None
    try:
        skulls = load_skulls(config.data, config.resolution, config.sr_from, progress=progress, limit=config.max_cases, skipped=skipped)
    except BadCaseError as exc:
        fix = "; replace or remove it, or train without it with --skip-bad-cases" if hint else "; replace or remove it"
        raise ValueError(f"{exc}{fix}") from None
    for bad in skipped or []:
        print(f"warning: skipped case {bad['case']}: {bad['file']}: {bad['reason']}", file=sys.stderr)
    return skulls, skipped or []


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    out = Path(config.out)
    ckpt_path, csv_path = out / "checkpoint.pt", out / "metrics.csv"
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(json.loads(state["config"]))
        changed = [k for k in asdict(saved) if k not in TrainConfig.RUNTIME and asdict(saved)[k] != asdict(config)[k]]
        if changed:
            raise CheckpointError(f"{ckpt_path}: the run was started with other settings ({', '.join(changed)}); "
                                  "resume it with the settings it was started with, or start a new run in another folder")
    elif ckpt_path.exists():
        raise FileExistsError(f"{out} already holds a run (checkpoint.pt): use --resume to continue it, or another --out")

    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    dist_info = init_distributed(device)
    if dist_info.world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist_info.rank)))
        torch.cuda.set_device(device)
    dtype = amp_dtype(config, device)

    if config.init and state is None:
        config = replace(config, init=_check_init(config))  # the record names the file, not only a shipped name
    bar_factory = None
    if progress and dist_info.main:
        from tqdm import tqdm

        bar_factory = tqdm
    skulls, skipped = _load_training_skulls(config, bar_factory, hint=not resume)
    train_skulls, val_skulls = split(skulls, config.validation, config.seed)
    aug = Augmentation(config.flip_axes, config.rotate_deg, config.shift)
    sampler = PairSampler(train_skulls, config.task, aug, config.classes, config.new_defects, crop=config.crop, crop_at=config.crop_at)
    val_pairs = PairSampler(val_skulls, config.task, aug, config.classes, crop_at=config.crop_at).fixed(config.seed) if val_skulls else []

    torch.manual_seed(config.seed)
    model = SparseCompletionNet(config.channels, skips=config.skips).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    start, history = 0, {"best_val_dsc": None, "best_step": None, "seconds": 0.0}
    if config.init and state is None:
        _init_from(model, config.init, config.task)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{ckpt_path}: its weights do not fit this network ({exc})") from None
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, history = int(state["step"]), json.loads(state["history"])
    for group in optimizer.param_groups:
        group["lr"] = config.lr * lr_factor(config, start)

    rows = [r for r in read_metrics(csv_path) if int(r["step"]) <= start] if state is not None else []
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {**asdict(config), "package_version": __version__, "train_skulls": [s.case_id for s in train_skulls],
                                         "val_skulls": [s.case_id for s in val_skulls], "skipped_cases": skipped, "world_size": dist_info.world})
        atomic_write(csv_path, lambda tmp: _write_csv(tmp, rows))
    csv_file = open(csv_path, "a", newline="") if dist_info.main else None
    writer = csv.DictWriter(csv_file, fieldnames=CSV_FIELDS) if csv_file else None

    def status(state_name: str, step: int, loss=None, val=None, **extra):
        if dist_info.main:
            write_json(out / "progress.json", {"state": state_name, "step": step, "steps": config.steps, "loss": loss, "val_dsc": val,
                                               "best_val_dsc": history["best_val_dsc"], "seconds": history["seconds"], "pid": os.getpid(), **extra})

    def sync_norm_statistics():  # the batch norms' running statistics, averaged over the processes
        _all_reduce_mean([b for b in model.buffers() if b.dtype.is_floating_point], dist_info)

    def checkpoint(step: int):
        sync_norm_statistics()
        if dist_info.main:
            save_checkpoint(ckpt_path, model, optimizer, scaler, step, config, history)

    batches = iter(torch.utils.data.DataLoader(
        _StepBatches(sampler, config, dist_info.rank, start), batch_size=None, num_workers=config.workers, collate_fn=_identity,
    ))
    bar = None
    if bar_factory is not None:
        bar = bar_factory(total=config.steps, initial=start, desc=f"train {config.task} @{config.resolution}", unit="step", dynamic_ncols=True)
    step, val, loss_value, stopped_by = start, None, None, None
    t_last, last_status = time.perf_counter(), 0.0
    with _StopFlag() as stop:
        try:
            for step in range(start, config.steps):
                x, target = collate(next(batches), device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    out_net = model(to_backend(x, config.backend), target=target, mark_given=config.new_point_weight != 1.0)
                    loss = completion_loss(out_net, config.new_point_weight)
                optimizer.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaler is not None else loss).backward()
                _all_reduce_mean([p.grad for p in model.parameters() if p.grad is not None], dist_info)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(config, step + 1)
                loss_value = float(loss.detach())
                now = time.perf_counter()
                history["seconds"] += now - t_last
                t_last = now
                done = step + 1
                val = val_implant = None
                if val_pairs and (done % config.val_every == 0 or done == config.steps):
                    sync_norm_statistics()
                    if dist_info.main:
                        scores = validate(model, val_pairs, config, device)
                        val, val_implant = scores["dsc"], scores.get("implant_dsc")
                        history["val_input_dsc"], history["val_implant_dsc"] = scores["input_dsc"], val_implant
                        if history["best_val_dsc"] is None or val > history["best_val_dsc"]:
                            history["best_val_dsc"], history["best_step"] = val, done
                    t_last = time.perf_counter()  # validation time is not training time
                if writer:
                    writer.writerow({"step": done, "loss": f"{loss_value:.6g}", "lr": f"{optimizer.param_groups[0]['lr']:.6g}",
                                     "val_dsc": _cell(val), "val_implant_dsc": _cell(val_implant),
                                     "val_input_dsc": _cell(history.get("val_input_dsc") if val is not None else None),
                                     "seconds": f"{history['seconds']:.3f}"})
                    csv_file.flush()
                if bar is not None:
                    bar.update(1)
                    shown = {"val_dsc": val, "implant_dsc": val_implant}
                    bar.set_postfix(loss=f"{loss_value:.4f}", **{k: f"{v:.4f}" for k, v in shown.items() if v is not None})
                stop_now = _agree_on_stop(stop.signal, dist_info)
                if done % config.checkpoint_every == 0 or done == config.steps or stop_now:
                    checkpoint(done)
                if dist_info.main and (time.perf_counter() - last_status > 1.0 or val is not None):
                    status("running", done, loss_value, val)
                    last_status = time.perf_counter()
                step = done
                if stop_now:
                    stopped_by = signal.Signals(stop.signal or signal.SIGTERM).name
                    break
        except BaseException as exc:
            status("failed", step, loss_value, error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if bar is not None:
                bar.close()
            if csv_file:
                csv_file.close()

    finished = step >= config.steps
    _check_replicas_agree(model, dist_info)
    model_path = None
    if dist_info.main:
        rows = read_metrics(csv_path)
        if rows:
            plot_curves(rows, out / "curves.png", f"{config.task} at {config.resolution}, channels {config.channels}")
        if finished:
            model_path = export(model, config, out / "model.safetensors", train_skulls, val_skulls, history, val, device, skipped=skipped)
        status("done" if finished else "interrupted", step, loss_value, val)
    _leave_distributed(dist_info)
    return TrainResult(out, step, finished, val, history["best_val_dsc"], history["seconds"], model_path, stopped_by)


def _cell(v) -> str:
    return "" if v is None else f"{v:.6f}"


def _agree_on_stop(signum, dist_info: Dist) -> bool:
    if dist_info.world == 1:
        return signum is not None
    import torch.distributed as dist

    flag = torch.tensor([1.0 if signum is not None else 0.0])
    dist.all_reduce(flag)  # every process stops at the same step, or the next all-reduce would hang
    return bool(flag.item() > 0)


def _check_replicas_agree(model, dist_info: Dist) -> None:
    """Every process must end with rank 0's parameters (same init, averaged gradients); say so if not."""
    if dist_info.world == 1:
        return
    import torch.distributed as dist

    worst = torch.zeros(1)
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, 0)
        worst = torch.maximum(worst, (ref - p.detach()).abs().max().cpu().reshape(1))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    if float(worst) > 1e-5:
        raise RuntimeError(f"the training processes' parameters differ by up to {float(worst):.3g}: gradients were not averaged")


def _write_csv(path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in CSV_FIELDS} for r in rows)


def export(model, config: TrainConfig, path: Path, train_skulls, val_skulls, history, val, device, planned_steps: int | None = None,
           skipped: list[dict] | None = None) -> Path:
    from sparseskull.nets.files import ModelInfo, save_model

    spacing = np.mean([s.complete.spacing_mm for s in train_skulls], axis=0)
    info = ModelInfo(
        channels=parse_channels(config.channels),
        skips=config.skips,
        task=config.task,
        resolution=config.resolution,
        input_resolution=config.sr_from if config.task == "super-resolution" else config.resolution,
        spacing_mm=tuple(round(float(v), 4) for v in spacing),
        tau=config.tau,
        training={
            "data": str(config.data),
            "train_skulls": len(train_skulls),
            "val_skulls": len(val_skulls),
            "val_case_ids": [s.case_id for s in val_skulls],
            **({"skipped_cases": skipped} if skipped else {}),
            "steps": config.steps,
            **({"planned_steps": planned_steps, "note": f"exported from the checkpoint at step {config.steps} of {planned_steps} "
                "(the cosine schedule planned for the latter)"} if planned_steps and planned_steps != config.steps else {}),
            "skips": config.skips,
            "batch_size": config.batch_size,
            "lr": config.lr,
            **({"crop": config.crop} if config.crop else {}),
            **({"crop_at": config.crop_at} if config.crop_at != "bone" else {}),
            **({"new_point_weight": config.new_point_weight} if config.new_point_weight != 1.0 else {}),
            "augmentation": {"flip_axes": list(config.flip_axes), "rotate_deg": config.rotate_deg, "shift": config.shift,
                             "new_defects": config.new_defects, "classes": list(config.classes)},
            "seed": config.seed,
            "seconds": round(history["seconds"], 1),
            "device": str(device),
            "backend": config.backend,
            **({"init": str(config.init), "init_training": _read_training(config.init)} if config.init else {}),
        },
        metrics={"val_dsc": val, "val_implant_dsc": history.get("val_implant_dsc"), "val_input_dsc": history.get("val_input_dsc"),
                 "best_val_dsc": history["best_val_dsc"], "best_step": history["best_step"]},
    )
    return save_model(model.cpu(), path, info)


def export_checkpoint(run: str | os.PathLike, progress: bool = True) -> Path:
    """The model as it stands in a run's checkpoint, exported to ``RUN/model-step<N>.safetensors`` (a stopped or
    unfinished run: its metadata says the step it was taken at and the steps the schedule was planned for)."""
    from dataclasses import replace

    run = Path(run)
    state = load_checkpoint(run / "checkpoint.pt")
    config = TrainConfig.from_dict(json.loads(state["config"]))
    step, history = int(state["step"]), json.loads(state["history"])
    model = SparseCompletionNet(config.channels, skips=config.skips)
    model.load_state_dict(state["model"])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm
    skulls, skipped = _load_training_skulls(config, bar, hint=False)
    train_skulls, val_skulls = split(skulls, config.validation, config.seed)
    rows = [r for r in read_metrics(run / "metrics.csv") if int(r["step"]) <= step and r.get("val_dsc")]
    val = float(rows[-1]["val_dsc"]) if rows else None
    path = export(model.eval(), replace(config, steps=step), run / f"model-step{step}.safetensors", train_skulls, val_skulls, history, val,
                  "cpu", planned_steps=config.steps, skipped=skipped)
    return path


# ---------------------------------------------------------------------------- from another program (Slicer)


# ---------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig("", "")
    p.add_argument("--data", help="data set folder (SkullFix or SkullBreak layout, real or from `sparseskull make-data`)")
    p.add_argument("--out", help="run folder: checkpoint, metrics.csv, curves.png, model.safetensors")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where its checkpoint stopped")
    p.add_argument("--export", metavar="DIR", help="export the model in DIR's checkpoint as it stands (RUN/model-step<N>.safetensors), "
                   "without training")
    p.add_argument("--task", choices=TASKS, default=d.task)
    p.add_argument("--resolution", type=int, default=d.resolution, help="in-plane grid: 64, 128, 256 or 512 (default 64)")
    p.add_argument("--sr-from", type=int, default=None, help="super-resolution: the coarse resolution (e.g. 64)")
    p.add_argument("--channels", default=d.channels, help="ch1, ch2 or seven comma-separated counts (default ch1)")
    p.add_argument("--skips", action="store_true", help="skip connections: each decoder level keeps the encoder's points at its stride "
                   "(the paper's reference code; recommended)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="skulls per step and process")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (warm-up, then cosine decay)")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--validation", type=float, default=d.validation, help="held-out skulls: fraction (<1) or count")
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--val-passes", type=int, default=argparse.SUPPRESS, help="network passes the validation votes over, as the pipeline's "
                   f"--passes (default {d.val_passes}, or the resumed run's own; 8: the figure `sparseskull complete` sees, 8 times the "
                   "validation's time)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--classes", nargs="+", default=list(d.classes), help="defect classes cut on the fly")
    p.add_argument("--new-point-weight", type=float, default=d.new_point_weight,
                   help="the loss's weight of the points not in the input (the bone to add, the points to drop) against 1 for "
                   "the input's own (default 1: the paper's plain mean)")
    p.add_argument("--new-defects", type=float, default=d.new_defects, help="share of pairs with a new defect where the data has its own")
    p.add_argument("--flip-axes", type=int, nargs="*", default=list(d.flip_axes), help="array axes to mirror at random (default 0: left-right)")
    p.add_argument("--rotate-deg", type=float, default=d.rotate_deg)
    p.add_argument("--shift", type=int, default=d.shift)
    p.add_argument("--crop", type=int, default=None, help="train on boxes of N voxels a side around random bone (for 256 and 512 "
                   "grids; validation and inference use whole skulls)")
    p.add_argument("--crop-at", choices=CROP_AT, default=d.crop_at, help="centre the boxes on random bone (default) or on the defect, "
                   "validating on the box around each defect as the pipeline's refinement stage runs (completion)")
    p.add_argument("--tau", type=float, default=d.tau, help="inference pruning threshold on the logits")
    p.add_argument("--max-cases", type=int, default=None, help="use only the first N skulls")
    p.add_argument("--device", default=d.device, help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--backend", choices=["torch", "minkowski"], default=d.backend)
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default=d.amp, help="mixed precision (auto: on CUDA)")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--init", metavar="MODEL", default=None, help="start from this model's weights: a shipped model's name or a model file (fine-tuning; fresh optimizer and schedule)")
    p.add_argument("--skip-bad-cases", action="store_true", help="train without the cases whose files cannot be read (each is named on "
                   "stderr and listed in the model file's training record); without it the first such file stops the run")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args) -> tuple[TrainConfig, bool]:
    if args.resume:
        state = load_checkpoint(Path(args.resume) / "checkpoint.pt")
        saved = json.loads(state["config"])
        saved.update(out=args.resume, device=args.device, workers=args.workers, threads=args.threads)
        if hasattr(args, "val_passes"):  # else the run's own: its validation figures stay comparable along its curve
            saved["val_passes"] = args.val_passes
        if args.data:
            saved["data"] = args.data
        return TrainConfig.from_dict(saved), True
    if not args.data or not args.out:
        raise ValueError("give --data and --out (or --resume DIR)")
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    return config, False


def run(args) -> int:
    if args.export:
        print(f"exported: {export_checkpoint(args.export, progress=not args.no_progress)}")
        return 0
    config, resume = config_from_args(args)
    result = train(config, resume=resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if result.finished:
        print(f"trained {result.step} steps in {result.seconds:.0f} s; validation DSC {_fmt(result.val_dsc)} "
              f"(best {_fmt(result.best_val_dsc)}); model: {result.model_path}; curves: {result.out / 'curves.png'}")
        return 0
    print(f"stopped by {result.stopped_by} at step {result.step}; checkpoint saved: continue with "
          f"`sparseskull train --resume {result.out}`", file=sys.stderr)
    return 130 if result.stopped_by == "SIGINT" else 143


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def main(argv: list[str] | None = None, prog: str = "python -m sparseskull.train") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"sparseskull train: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
