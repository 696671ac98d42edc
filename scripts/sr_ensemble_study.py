"""Super-resolution models voting together: Table 6's DSC (each skull's coarse copy, upsampled, against its fine copy)
for each model alone (8 passes, half of them to keep a voxel, as `sparseskull evaluate` scores it) and for the
models' passes summed, a voxel kept where at least k of all the passes keep it.

    python scripts/sr_ensemble_study.py --data ../shared/data/autoimplant2020 --cases 005 006 ... \\
        skullfix-sr-skip-w16-128-256 runs/w32/model.safetensors

A decision aid (would an ensemble reach a target a single model misses?); the project's figures come from
`sparseskull evaluate`. About 25 s a skull for two 128 -> 256 models on two CPU threads.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from sparseskull.data.dataset import find_cases
from sparseskull.data.pairs import read_at, upsample_nearest
from sparseskull.data.resample import upsample_linear
from sparseskull.evaluation.metrics import dice
from sparseskull.implant.grid import GRID_MARGIN
from sparseskull.implant.network import voted_points
from sparseskull.implant.superres import sr_votes
from sparseskull.nets.catalogue import resolve_model
from sparseskull.nets.files import load_model

PASSES = 8


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="super-resolution models of one pair of grids: shipped names or .safetensors paths")
    p.add_argument("--data", required=True, help="a SkullFix-layout folder (its complete skulls are scored)")
    p.add_argument("--cases", nargs="+", required=True, help="case ids (the validation split)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = [(m, *load_model(resolve_model(m), task="super-resolution")) for m in args.models]
    grids = {(info.input_resolution, info.resolution) for _, _, info in loaded}
    if len(grids) != 1:
        raise SystemExit(f"the models super-resolve between different grids: {sorted(grids)}")
    (coarse_res, fine_res), = grids
    cases = [c for c in find_cases(args.data) if c.case_id in set(args.cases)]
    if len(cases) != len(set(args.cases)):
        raise SystemExit(f"found {len(cases)} of the {len(set(args.cases))} cases in {args.data}")
    total = len(loaded) * PASSES
    rows = []
    for case in cases:
        fine = np.asarray(read_at(case.complete, fine_res).array, bool)
        coarse = np.asarray(read_at(case.complete, coarse_res).array, bool)
        nearest = upsample_nearest(coarse, fine_res // coarse_res, fine.shape)
        ijk = np.argwhere(nearest)
        votes = [voted_points(model, ijk, fine.shape, "torch", "cpu", info.tau, PASSES, corner=GRID_MARGIN) for _, model, info in loaded]
        row = {"case": case.case_id, "interpolation": dice(upsample_linear(coarse, fine_res // coarse_res, fine.shape), fine)}
        for (name, _, _), v in zip(loaded, votes):
            row[name] = dice(v >= sr_votes(PASSES), fine)
        summed = np.sum(votes, axis=0)
        for k in range(max(1, total // 2 - 3), total // 2 + 3):
            row[f"all {total} passes, >= {k}"] = dice(summed >= k, fine)
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    print("mean over", len(rows), "skulls:")
    for key in rows[0]:
        if key != "case":
            print(f"  {key}: {np.mean([r[key] for r in rows]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
