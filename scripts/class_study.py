"""Implant DSC per defect class on the model's own grid, for one or more completion models: the generated voxels of 8
network passes (2 votes, as `sparseskull complete` keeps them) against the true implant, before the pipeline around the
network (a minute a model, not the 40 minutes of `sparseskull evaluate` on SkullFix and the class defects).

    python scripts/class_study.py --skullfix ../shared/data/autoimplant2020 --classes class_defects \\
        skullfix-skip-ch1-128 runs/ft128/model.safetensors

``--classes``: a folder from `python scripts/make_class_defects.py` (the validation skulls' defects of each SkullBreak
class); ``--skullfix``: the SkullFix folder, scored on each model's validation skulls' own defects. A decision aid for
which models to evaluate in full; the project's figures come from `sparseskull evaluate`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sparseskull.data.pairs import load_skulls
from sparseskull.evaluation.metrics import dice
from sparseskull.implant.network import run_network
from sparseskull.nets.catalogue import resolve_model
from sparseskull.nets.files import load_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="completion models: shipped names or .safetensors paths")
    p.add_argument("--skullfix", required=True, help="the SkullFix folder (each model's validation skulls are scored)")
    p.add_argument("--classes", required=True, help="a class-defects folder (scripts/make_class_defects.py)")
    p.add_argument("--passes", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.models:
        model, info = load_model(resolve_model(spec), task="completion", device="cpu")
        scores: dict[str, list[float]] = {}
        for data, ids in ((args.classes, None), (args.skullfix, info.training.get("val_case_ids"))):
            for skull in load_skulls(data, info.resolution, case_ids=ids):
                for cls, defective in skull.defects:
                    done = run_network(model, defective, "torch", "cpu", info.tau, passes=args.passes)
                    scores.setdefault(cls or "skullfix", []).append(dice(done & ~defective, skull.complete.array & ~defective))
        classes = [x for k, v in scores.items() if k != "skullfix" for x in v]
        print(f"{spec}: " + ", ".join(f"{k} {np.mean(v):.3f} (n {len(v)})" for k, v in scores.items())
              + f"; the classes together {np.mean(classes):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
