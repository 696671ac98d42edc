"""Does a completion model fit its training skulls better than its validation skulls? The training loop's own
validation score (coarse implant DSC of the network alone, one pass, fixed pairs: half the skulls' own defects,
half generated SkullBreak-class ones) on both halves of the split, for each model given.

    python scripts/fit_gap.py --packed .gpu/c128.pkl.gz skullfix-skip-ch1-128 runs/x/model.safetensors

A large gap (training well above validation) says the data limit the model; none says capacity, steps or the task
do. The split, the pairs and the scoring are `sparseskull train`'s (seed 0, 15 validation skulls). A tool, not a test.
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="shipped model names or .safetensors paths")
    p.add_argument("--packed", type=Path, help="skulls packed by scripts/train_packed.py pack (else --data is read)")
    p.add_argument("--data", help="a SkullFix-layout folder")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--validation", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    import torch
    from sparseskull.data.augment import Augmentation
    from sparseskull.data.pairs import PairSampler, load_skulls, split
    from sparseskull.nets.catalogue import resolve_model
    from sparseskull.nets.files import load_model
    from sparseskull.training.loop import TrainConfig, validate

    torch.set_num_threads(a.threads)
    if a.packed:
        sys.path.insert(0, str(HERE))
        from train_packed import _expand

        with gzip.open(a.packed, "rb") as f:
            skulls = _expand(pickle.load(f))  # our own file, made by train_packed.py pack
    elif a.data:
        skulls = load_skulls(a.data, a.resolution, None)
    else:
        p.error("give --packed or --data")
    train_skulls, val_skulls = split(skulls, a.validation, a.seed)
    config = TrainConfig(data="", out="")
    aug = Augmentation(config.flip_axes, config.rotate_deg, config.shift)
    halves = {name: PairSampler(s, "completion", aug, config.classes).fixed(a.seed) for name, s in
              (("training", train_skulls), ("validation", val_skulls))}
    print(f"{len(train_skulls)} training and {len(val_skulls)} validation skulls at {a.resolution}; "
          "coarse implant DSC of the network alone, one pass")
    print("| model | training skulls | validation skulls | gap |\n|---|---|---|---|")
    for name in a.models:
        model, info = load_model(resolve_model(name), task="completion")
        cfg = replace(config, batch_size=4, tau=info.tau)
        score = {half: validate(model, pairs, cfg, torch.device("cpu"))["implant_dsc"] for half, pairs in halves.items()}
        print(f"| {name} | {score['training']:.4f} | {score['validation']:.4f} | {score['training'] - score['validation']:+.4f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
