"""What the clean stage's two filters take from a model's own implant, case by case: the same network output (the
networks run once a case) through `sparseskull complete`'s pipeline four ways, with both filters (the default), without
the occlusion filter (`--keep-behind-bone`), without the reach filter (`--min-depth-mm 0`), and without either.

    python scripts/filter_study.py --data class_defects --class frontoorbital

Prints implant DSC, bDSC and HD95 (mm) per case and way, then the means.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
from sparseskull.data.dataset import find_cases
from sparseskull.data.io import read_mask
from sparseskull.evaluation.evaluate import Remembered
from sparseskull.evaluation.metrics import implant_metrics
from sparseskull.implant.network import NetworkCompleter
from sparseskull.implant.options import CompleteOptions
from sparseskull.implant.pipeline import complete_skull
from sparseskull.implant.superres import SuperResolver
from sparseskull.nets.catalogue import default_model_name, find_pair

WAYS = {"both filters (default)": {}, "no occlusion filter": {"drop_behind_bone": False}, "no reach filter": {"min_depth_mm": 0.0},
        "neither": {"drop_behind_bone": False, "min_depth_mm": 0.0}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a SkullFix- or SkullBreak-layout folder")
    p.add_argument("--class", dest="defect_class", default=None, help="only this defect class")
    p.add_argument("--cases", nargs="+", default=None)
    p.add_argument("--model", default=None, help="a pair or completion model (default: the default)")
    p.add_argument("--passes", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    name = args.model or default_model_name()
    pair = find_pair(name)
    completer = NetworkCompleter(pair.completion if pair else name, device="cpu", passes=args.passes)
    resolver = SuperResolver(pair.super_resolution, device="cpu", passes=args.passes) if pair else None
    rows = []
    for case in find_cases(args.data):
        if (args.defect_class and case.defect_class != args.defect_class) or (args.cases and case.case_id not in args.cases):
            continue
        defective, complete = read_mask(case.defective), read_mask(case.complete)
        truth = np.asarray(complete.array, bool) & ~np.asarray(defective.array, bool)
        network = Remembered(completer)
        sr = Remembered(resolver) if resolver else None
        row = {}
        for way, changes in WAYS.items():
            result = complete_skull(defective, replace(CompleteOptions(passes=args.passes), **changes), completer=network, super_resolver=sr)
            m = implant_metrics(result.implant.array, truth, defective.array, defective.spacing_mm)
            row[way] = (m["dsc"], m["bdsc"], m["hd95_mm"])
        rows.append(row)
        print(f"{case.case_id} {case.defect_class or ''}: " + "; ".join(f"{w} {d:.3f} / {b:.3f} / {h:.2f}" for w, (d, b, h) in row.items()), flush=True)
    if not rows:
        raise SystemExit("no case matched")
    for way in WAYS:
        d, b, h = (np.mean([r[way][k] for r in rows]) for k in range(3))
        print(f"mean of {len(rows)}, {way}: implant DSC {d:.3f}, bDSC {b:.3f}, HD95 {h:.2f} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
