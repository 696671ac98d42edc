"""The pipeline's fine stage with its votes combined: the default pair's super-resolution network and a refining
completion network (a 256 model trained with ``--crop-at defect``) voting together in the same box, and each alone
at other vote thresholds; the implant through the whole pipeline (cleaning included) per rule.

    python scripts/stage_vote_study.py --data <SkullFix> --cases 000 001 002 004 008 009 --refiner <a refiner>

Per case, the completion model runs once, then each stage model once (8 passes each, the pipeline's default); the
votes are kept (s: super-resolution passes keeping a voxel, r: refiner passes generating it, 0-8 each) and every rule
below decides the stage's voxels, which go through the same region, cleaning and CT grid as ``sparseskull complete``.
Prints per case and rule the implant DSC, the stage's implant before cleaning (DSC, precision, coverage), then means.
A decision aid on training skulls (ids outside the validation split), so the validation split stays a check.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import sparseskull.implant.superres as superres
from sparseskull.evaluation.evaluate import Remembered
from sparseskull.implant.network import NetworkCompleter
from sparseskull.implant.options import CompleteOptions
from sparseskull.implant.pipeline import complete_skull
from sparseskull.implant.superres import SuperResolver, sr_votes
from sparseskull.nets.catalogue import find_pair
from sr_box_study import read_cases, stage_scores  # scripts/ is on the path of a script run from it

PASSES = 8
RULES = {  # s: super-resolution votes, r: refiner votes, each of PASSES passes
    "pair (s>=4, the default)": lambda s, r: s >= sr_votes(PASSES),
    "s>=3": lambda s, r: s >= 3,
    "s>=5": lambda s, r: s >= 5,
    "s>=6": lambda s, r: s >= 6,
    "refiner (r>=2, its default)": lambda s, r: r >= 2,
    "union": lambda s, r: (s >= 4) | (r >= 2),
    "both": lambda s, r: (s >= 4) & (r >= 2),
    "s+r>=4": lambda s, r: s.astype(int) + r >= 4,
    "s+r>=6": lambda s, r: s.astype(int) + r >= 6,
    "s+r>=8": lambda s, r: s.astype(int) + r >= 8,
    "s+r>=10": lambda s, r: s.astype(int) + r >= 10,
}


class Votes:
    """Stands in for the stage's ``voted_points``: records the votes it computes, or hands back a decided mask as full
    votes (PASSES) so the stage keeps exactly that mask. A study's hook, not the pipeline's: the stage has no other."""

    def __init__(self, voted_points):
        self.voted_points, self.last, self.decided = voted_points, None, None

    def __call__(self, *args, **kwargs):
        if self.decided is not None:
            return self.decided
        self.last = self.voted_points(*args, **kwargs)
        return self.last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--refiner", required=True, help="a refining completion model at the super-resolution model's grid")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()
    options = CompleteOptions(preview=False, passes=PASSES)
    pair = find_pair(options.model)
    if pair is None:
        raise SystemExit(f"{options.model} is not a pair: there is no super-resolution stage to combine")
    completer = NetworkCompleter(pair.completion, passes=PASSES)
    sr, refiner = SuperResolver(pair.super_resolution, passes=PASSES), SuperResolver(a.refiner, passes=PASSES)
    if not refiner.refines:
        raise SystemExit(f"{a.refiner} is not a refining completion model")
    votes = Votes(superres.voted_points)
    superres.voted_points = votes
    rows = []
    for case_id, truth, defective in read_cases(a.data, a.cases):
        completion = Remembered(completer)
        votes.decided = None
        complete_skull(defective, options, completer=completion, super_resolver=sr)
        s = votes.last
        complete_skull(defective, options, completer=completion, super_resolver=refiner)
        r = votes.last
        assert s.shape == r.shape  # the same box: the region comes from the same completion
        for name, rule in RULES.items():
            votes.decided = (rule(s, r) * PASSES).astype(np.uint8)
            stage = Remembered(sr)  # a super-resolution stage keeps what sr_votes(PASSES) of the (decided) votes keep
            result = complete_skull(defective, options, completer=completion, super_resolver=stage)
            row = {"case": case_id, "rule": name, **stage_scores(result, stage, truth)}
            rows.append(row)
            print(row, flush=True)
    print(f"means over {len(a.cases)} cases: implant DSC, before cleaning DSC / precision / coverage")
    for name in RULES:
        mine = [r for r in rows if r["rule"] == name]
        print(f"  {name:28s} {statistics.mean(r['implant_dsc'] for r in mine):.4f}   "
              + " / ".join(f"{statistics.mean(r[k] for r in mine):.3f}" for k in ("raw_dsc", "raw_precision", "raw_coverage")))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
