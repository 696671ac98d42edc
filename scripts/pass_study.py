"""How many network passes, and how many of their votes a voxel needs: the study behind `--passes` and its vote rules
(implant/network.py), on a model's validation skulls, on the model's own grid (no pipeline around it: minutes, not the
quarter hour of `sparseskull evaluate`).

    python scripts/pass_study.py --data ../shared/data/autoimplant2020 --model skullfix-skip-ch1-128
    python scripts/pass_study.py --data ../shared/data/autoimplant2020 --model skullfix-sr-skip-w16-128-256

A completion model is scored by the implant DSC of what it generates (completed minus defective, against the true
implant) on each validation skull's own defect; a super-resolution model by the DSC of its output against the fine copy
of each validation skull. Each row: a number of passes and the votes (out of them) a voxel needs. The validation skulls
choose this setting, as they choose between models; the pipeline's figures come from `sparseskull evaluate --passes`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sparseskull.data.dataset import find_cases
from sparseskull.data.pairs import load_skulls, read_at, upsample_nearest
from sparseskull.evaluation.metrics import dice
from sparseskull.implant.grid import GRID_MARGIN
from sparseskull.implant.network import voted_points
from sparseskull.nets.catalogue import resolve_model
from sparseskull.nets.files import load_model

PASSES = (1, 2, 4, 8)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the SkullFix folder the model was trained on")
    p.add_argument("--model", default=None, help="a shipped model's name or a path (default: the default model)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, info = load_model(resolve_model(args.model), device="cpu")
    cases = info.training.get("val_case_ids")
    if not cases:
        raise SystemExit(f"{args.model}: its file lists no validation cases")
    scores: dict[tuple[int, int], list[float]] = {}
    if info.task == "completion":
        for skull in load_skulls(args.data, info.resolution, case_ids=cases):
            _, defective = skull.defects[0]  # the case's own SkullFix defect
            truth = skull.complete.array & ~defective
            for n in PASSES:
                votes = voted_points(model, np.argwhere(defective), defective.shape, "torch", "cpu", info.tau, n)
                for k in range(1, max(1, n // 2) + 1):
                    scores.setdefault((n, k), []).append(dice((votes >= k) & ~defective, truth))
    else:
        seen = set()
        for case in find_cases(args.data):
            if case.case_id not in cases or case.case_id in seen or case.complete is None:
                continue
            seen.add(case.case_id)
            fine = np.asarray(read_at(case.complete, info.resolution).array, bool)
            coarse = np.asarray(read_at(case.complete, info.input_resolution).array, bool)
            nearest = upsample_nearest(coarse, info.resolution // info.input_resolution, fine.shape)
            for n in PASSES:
                votes = voted_points(model, np.argwhere(nearest), fine.shape, "torch", "cpu", info.tau, n, corner=GRID_MARGIN)
                for k in range(1, n + 1):
                    scores.setdefault((n, k), []).append(dice(votes >= k, fine))
    what = "implant DSC (generated voxels)" if info.task == "completion" else "DSC against the fine copy"
    print(f"{args.model or 'default'} ({info.task}), {len(next(iter(scores.values())))} validation skulls: mean {what}")
    print("| passes | votes needed | mean | skulls better than one pass |")
    print("|---|---|---|---|")
    one = np.array(scores[(1, 1)])
    for (n, k), v in sorted(scores.items()):
        print(f"| {n} | {k} | {np.mean(v):.4f} | {int(np.sum(np.array(v) > one))} of {len(v)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
