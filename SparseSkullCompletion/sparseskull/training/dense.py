"""The paper's dense baseline: Table 1's layers as dense ``conv3d`` (``dense_model``), trained with
Dice loss, and run in place of the sparse network on the pipeline's coarse grid.

Training draws the same pairs as the sparse network (``pairs.PairSampler``: the data set's own
defects and new ones cut on the fly, the same augmentation and the same fixed validation split) and
writes them into a dense grid whose sizes are multiples of the total stride (64). The loss is the
soft Dice of every decoder level against the complete skull max-pooled to that level, averaged over
levels, as the sparse loss averages its BCE over levels. The completed skull is the input plus the
voxels whose last-level probability is above one half (the sparse network's Eq. 4 union).

This is a baseline for ``sparseskull evaluate --baselines dense``, not a model for patients.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparseskull.data.augment import Augmentation
from sparseskull.data.pairs import PairSampler, load_skulls, split
from sparseskull.data.synth.defects import DEFECT_CLASSES
from sparseskull.evaluation.metrics import dice
from sparseskull.nets.dense_net import (
    DenseCompletionNet,
    complete_dense,
    densify,
    dice_loss,
    grid_shape,
)
from sparseskull.nets.files import DENSE
from sparseskull.nets.sparse_net import parse_channels

ARCHITECTURE = DENSE  # what its model files say they hold


def level_losses(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice loss over the decoder levels, each against the target max-pooled to its size."""
    terms = []
    for lg in logits:
        factor = target.shape[2] // lg.shape[2]
        t = nn.functional.max_pool3d(target, factor) if factor > 1 else target
        terms.append(dice_loss(lg, t))
    return torch.stack(terms).mean()


def validate(model: DenseCompletionNet, pairs) -> dict:
    """Mean completion DSC and implant DSC (added voxels against complete minus input) on fixed pairs."""
    model.eval()
    dsc, implant = [], []
    for p in pairs:
        shape = tuple(int(max(p.inputs[:, i].max(), p.target[:, i].max()) + 1) for i in range(3))
        x, t = (densify([c], shape)[0, 0].numpy() > 0 for c in (p.inputs, p.target))
        pred = complete_dense(model, x)
        dsc.append(dice(pred, t))
        implant.append(dice(pred & ~x, t & ~x))
    model.train()
    return {"dsc": float(np.mean(dsc)), "implant_dsc": float(np.mean(implant))}


def train_dense(data, out, resolution: int = 64, steps: int = 2000, batch_size: int = 2, lr: float = 1e-3,
                validation: float = 15, val_every: int = 250, seed: int = 0, threads: int | None = None,
                channels="ch1", shift: int = 4, progress: bool = True) -> Path:
    """Train the dense baseline on a SkullFix/SkullBreak-layout folder; writes ``out/model.safetensors``
    (with the validation split and scores in its metadata) and ``out/metrics.csv``."""
    from sparseskull.nets.files import ModelInfo, save_model

    if batch_size < 2:
        raise ValueError("the dense baseline trains with a batch of 2 or more: at 64 its bottleneck is one voxel, and batch norm needs two values")
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    skulls = load_skulls(data, resolution)
    train_skulls, val_skulls = split(skulls, validation, seed)
    aug = Augmentation((0,), 5.0, shift)
    sampler = PairSampler(train_skulls, "completion", aug, DEFECT_CLASSES, 0.5)
    val_pairs = PairSampler(val_skulls, "completion", aug, DEFECT_CLASSES).fixed(seed) if val_skulls else []
    torch.manual_seed(seed)
    model = DenseCompletionNet(channels).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr * 0.05)
    fields = ["step", "loss", "seconds", "val_dsc", "val_implant_dsc"]
    csv_file = open(out / "metrics.csv", "w")  # written as it goes, so a long run can be watched
    csv_file.write(",".join(fields) + "\n")
    start, val = time.perf_counter(), None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="dense baseline", unit="step")
    try:
        for step in range(1, steps + 1):
            batch = sampler.batch(np.random.default_rng([seed, step]), batch_size)
            shape = grid_shape(np.max([np.maximum(p.inputs.max(0), p.target.max(0)) + 1 for p in batch], axis=0))
            x, t = densify([p.inputs for p in batch], shape), densify([p.target for p in batch], shape)
            loss = level_losses(model(x), t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss = float(loss.detach())
            row = {"step": step, "loss": round(loss, 6), "seconds": round(time.perf_counter() - start, 2)}
            if val_pairs and (step % val_every == 0 or step == steps):
                val = validate(model, val_pairs)
                row.update({f"val_{k}": round(v, 6) for k, v in val.items()})
            csv_file.write(",".join(str(row.get(k, "")) for k in fields) + "\n")
            csv_file.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", **({"val_implant": f"{val['implant_dsc']:.3f}"} if val else {}))
    finally:
        csv_file.close()
        if bar is not None:
            bar.close()
    spacing = np.mean([s.complete.spacing_mm for s in train_skulls], axis=0)
    info = ModelInfo(
        channels=parse_channels(channels), task="completion", resolution=resolution, input_resolution=resolution,
        spacing_mm=tuple(round(float(v), 4) for v in spacing), architecture=ARCHITECTURE,
        training={"data": str(data), "loss": "soft Dice, mean over decoder levels", "train_skulls": len(train_skulls),
                  "val_skulls": len(val_skulls), "val_case_ids": [s.case_id for s in val_skulls], "steps": steps,
                  "batch_size": batch_size, "lr": lr, "augmentation": {"flip_axes": [0], "rotate_deg": 5.0, "shift": shift,
                  "new_defects": 0.5, "classes": list(DEFECT_CLASSES)}, "seed": seed,
                  "seconds": round(time.perf_counter() - start, 1), "device": "cpu",
                  "threads": torch.get_num_threads()},
        metrics={"val_dsc": val["dsc"] if val else None, "val_implant_dsc": val["implant_dsc"] if val else None},
    )
    path = save_model(model, out / "model.safetensors", info)
    (out / "summary.json").write_text(json.dumps({"model": str(path), **info.metrics}, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m sparseskull.training.dense", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--validation", type=float, default=15)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    path = train_dense(a.data, a.out, a.resolution, a.steps, a.batch_size, a.lr, a.validation, a.val_every,
                       threads=a.threads, progress=not a.no_progress)
    print(f"dense baseline: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
