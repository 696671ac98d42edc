"""The super-resolution stage on the whole skull against boxes around the implant's region: seconds and implant DSC.

    python scripts/sr_box_study.py --data <SkullFix> --cases 000 001 002 004 008 009 --margins whole 32 16
    python scripts/sr_box_study.py --data <SkullFix> --cases ... --model skullfix-skip-ch2-128 --super-resolution <a refiner> --margins 16 48

Runs the default pair (completion, then super-resolution; the default passes) through the pipeline once per margin
(`SuperResolver(box_margin=...)`, `whole` for the whole skull), the completion step's output shared, and prints per
case and margin the stage's seconds, the implant's DSC against the case's true implant, its voxel count and the truth's,
then the means. It also scores the implant as the stage hands it on, before the cleaning (the pipeline's own
``to_ct_grid`` of the stage's output): its DSC, the share of it that is true implant (precision), the share of the
true implant it covers (coverage), and the share of the truth the cleaning then drops. Choose on training skulls (the ids not in the validation split) so that the validation split stays a check.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
from sparseskull.data.dataset import find_cases
from sparseskull.data.io import read_mask
from sparseskull.evaluation.evaluate import Remembered
from sparseskull.evaluation.metrics import dice
from sparseskull.implant.grid import to_ct_grid
from sparseskull.implant.network import NetworkCompleter
from sparseskull.implant.options import CompleteOptions
from sparseskull.implant.pipeline import complete_skull
from sparseskull.implant.superres import SuperResolver
from sparseskull.nets.catalogue import find_pair


def read_cases(data, case_ids):
    """Each of ``case_ids`` of a SkullFix-layout folder: its id, true implant (a bool array) and defective skull."""
    cases = {c.case_id: c for c in find_cases(data)}
    for case_id in case_ids:
        case = cases[case_id]
        yield case_id, np.asarray(read_mask(case.implant).array, bool), read_mask(case.defective)


def stage_scores(result, stage: Remembered, truth: np.ndarray) -> dict:
    """A pipeline run's implant against the true one, and the stage's implant before the cleaning (``stage``: the
    Remembered stage of that run; its output put on the CT grid as the pipeline's "CT grid" step does)."""
    implant = np.asarray(result.implant.array, bool)
    raw = to_ct_grid(*stage.last[1][:3], result.defective)
    hit, n_truth = int((raw & truth).sum()), max(1, int(truth.sum()))
    return {"implant_dsc": round(float(dice(implant, truth)), 4), "voxels": int(implant.sum()), "truth_voxels": int(truth.sum()),
            "raw_dsc": round(float(dice(raw, truth)), 4), "raw_voxels": int(raw.sum()),
            "raw_precision": round(hit / max(1, int(raw.sum())), 3), "raw_coverage": round(hit / n_truth, 3),
            "truth_lost_by_cleaning": round(int((raw & truth & ~implant).sum()) / n_truth, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--margins", nargs="+", default=["whole", "32", "16"], help="fine voxels of context, or 'whole'")
    p.add_argument("--model", help="a completion model (default: the default pair's); give --super-resolution with it")
    p.add_argument("--super-resolution", help="the stage's model: super-resolution or a refining completion model at 256")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()
    options = CompleteOptions(preview=False)
    if a.model:
        if not a.super_resolution:
            raise SystemExit("--model needs --super-resolution: the stage to study")
        completion_model, stage = a.model, a.super_resolution
    else:
        pair = find_pair(options.model)
        if pair is None:
            raise SystemExit(f"{options.model} is not a pair: there is no super-resolution stage to study")
        completion_model, stage = pair.completion, a.super_resolution or pair.super_resolution
    completer = NetworkCompleter(completion_model, passes=options.passes)
    margins = [None if m == "whole" else int(m) for m in a.margins]
    resolvers = {m: SuperResolver(stage, passes=options.passes, box_margin=m) for m in margins}
    rows = []
    for case_id, truth, defective in read_cases(a.data, a.cases):
        completion = Remembered(completer)  # the completion network once per case: only the stage differs
        for m in margins:
            resolver = Remembered(resolvers[m])  # keeps the stage's output (``last``) for the implant before cleaning
            result = complete_skull(defective, options, completer=completion, super_resolver=resolver)
            row = {"case": case_id, "margin": "whole" if m is None else m, "seconds": result.report["seconds"]["super-resolution"],
                   **stage_scores(result, resolver, truth)}
            rows.append(row)
            print(row, flush=True)
    for m in margins:
        mine = [r for r in rows if r["margin"] == ("whole" if m is None else m)]
        print(f"margin {'whole' if m is None else m}: implant DSC {statistics.mean(r['implant_dsc'] for r in mine):.4f}, "
              f"stage {statistics.mean(r['seconds'] for r in mine):.1f} s (mean of {len(mine)})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
