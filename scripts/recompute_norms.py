"""Recompute a model's batch-norm running statistics over its own training skulls: each norm's mean and biased
variance averaged over batches drawn as its training drew them (augmentation and new defects from its record), in
place of the moving averages training left ("precise BN", Wu and Johnson 2021). The question it answers: do a model's
running statistics cost it accuracy? Score the result beside the original: a completion model with scripts/class_study.py,
a super-resolution model with `sparseskull evaluate --model <it>` (boxes of its training crop, as it was trained).

    python scripts/recompute_norms.py skullfix-skip-ch2-128 --data ../shared/data/autoimplant2020 --out recomputed.safetensors

A tool for an experiment, not a test; ship the result with scripts/package_model.py like any run's model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sparseskull.data.augment import Augmentation
from sparseskull.data.pairs import PairSampler, collate, load_skulls
from sparseskull.nets.catalogue import resolve_model
from sparseskull.nets.files import load_model, save_model
from sparseskull.sparse.backends import ops_for
from sparseskull.sparse.nn import SparseBatchNorm


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a shipped model's name or a .safetensors path (completion or super-resolution)")
    p.add_argument("--data", required=True, help="the data set it was trained on; its validation skulls are left out")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, info = load_model(resolve_model(a.model))
    record, val = info.training, set(info.training.get("val_case_ids") or [])
    aug = record["augmentation"]
    sr_from = info.input_resolution if info.task == "super-resolution" else None
    skulls = [s for s in load_skulls(a.data, info.resolution, sr_from=sr_from) if s.case_id not in val]
    sampler = PairSampler(skulls, info.task, Augmentation(tuple(aug["flip_axes"]), aug["rotate_deg"], aug["shift"]),
                          tuple(aug["classes"]), aug["new_defects"], crop=record.get("crop"), crop_at=record.get("crop_at", "bone"))
    norms = [m for m in model.modules() if isinstance(m, SparseBatchNorm)]
    sums: dict[SparseBatchNorm, list] = {m: [0, 0.0, 0.0, []] for m in norms}
    before = {m: m.running_var.double().mean().item() for m in norms}  # training mode moves them; compare with these

    def record_batch(norm, inputs, _output):
        feats = ops_for(inputs[0]).features(inputs[0]).detach().double()
        if len(feats) > 1:  # a single point is normalised with the running statistics, which then stay
            var, mean = torch.var_mean(feats, dim=0, correction=0)
            s = sums[norm]
            s[0], s[1], s[2] = s[0] + 1, s[1] + mean, s[2] + var
            s[3].append(len(feats))

    hooks = [m.register_forward_hook(record_batch) for m in norms]
    rng = np.random.default_rng(a.seed)
    model.train()
    with torch.no_grad():
        for _ in range(a.batches):
            x, target = collate(sampler.batch(rng, a.batch_size))
            model(x, target=target)  # the training path: each level keeps its predicted points and the target's
    for h in hooks:
        h.remove()
    print("norm: median points a batch, new / old variance (mean over channels)")
    for name, m in model.named_modules():
        if m in sums and sums[m][0]:
            n, mean, var, points = sums[m]
            print(f"  {name}: {int(np.median(points))}, {float((var / n).mean()) / before[m]:.3f}")
            m.running_mean.copy_(mean / n)
            m.running_var.copy_(var / n)
    model.eval()
    save_model(model, a.out, info)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
