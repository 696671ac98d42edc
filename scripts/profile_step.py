"""Where a training step's time goes: torch.profiler's operator table for a few steps of the training loop's own
model, loss and optimiser on real skulls (batches drawn before timing: data loading is not in it).

    python scripts/profile_step.py --data ../shared/data/autoimplant2020 --resolution 128 --model skullfix-skip-ch1-128
    python scripts/profile_step.py --data ../shared/data/autoimplant2020 --resolution 64
    python scripts/profile_step.py --data ../shared/data/autoimplant2020 --resolution 256 --crop 128 --crop-at defect --steps 0

It also prints how long drawing the batches took (augmentation, new defects, crops: what the loader's workers do each
step); --steps 0 stops there.

Without --model the network is an untrained ch1 skip network (it keeps more points than a trained one, so its steps
are slower). The share of aten::mm and aten::addmm_ is the step's GEMM; the rest is what to cut.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sparseskull.data.augment import Augmentation
from sparseskull.data.pairs import PairSampler, collate, load_skulls
from sparseskull.nets.catalogue import resolve_model
from sparseskull.nets.files import load_model
from sparseskull.nets.sparse_net import SparseCompletionNet
from sparseskull.training.loop import completion_loss
from torch.profiler import ProfilerActivity, profile

GEMM = ("aten::mm", "aten::addmm", "aten::addmm_")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a SkullFix-layout folder")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--sr-from", type=int, default=None, help="super-resolution: the coarse resolution (crops of --crop)")
    p.add_argument("--crop", type=int, default=None)
    p.add_argument("--crop-at", default="bone", choices=("bone", "defect"))
    p.add_argument("--model", default=None, help="a model's weights to start from (name or path)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="profiled steps, after one warm-up step (0: time the drawing only)")
    p.add_argument("--skulls", type=int, default=12, help="skulls to draw the batches from")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = "super-resolution" if args.sr_from else "completion"
    skulls = load_skulls(args.data, args.resolution, sr_from=args.sr_from, limit=args.skulls)
    if args.model:
        model, _ = load_model(resolve_model(args.model), task=task)
    else:
        torch.manual_seed(0)
        model = SparseCompletionNet("ch1", skips=True)
    model.train()
    sampler = PairSampler(skulls, task, Augmentation(), crop=args.crop, crop_at=args.crop_at)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    pairs = [sampler.batch(rng, args.batch_size) for _ in range(max(args.steps, 1) + 1)]
    drawn = time.perf_counter() - t0
    print(f"drawing {sum(map(len, pairs))} pairs: {drawn:.2f} s, {drawn / sum(map(len, pairs)):.3f} s a pair")
    if args.steps == 0:
        return 0
    batches = [collate(b) for b in pairs]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)

    def step(x, target):
        loss = completion_loss(model(x, target=target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(*batches[0])
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, target in batches[1:]:
            step(x, target)
    seconds = (time.perf_counter() - t0) / args.steps
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM)
    print(f"{task} at {args.resolution}, batch {args.batch_size}: {seconds:.3f} s a step (profiled); GEMM {100 * gemm / total:.0f}% of the operators' time")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
