"""Time the spanning step (`--span`) on real skulls: the true implant's location given, the defective skull's grid.

    python scripts/time_span.py --data <SkullFix> --cases 046 005 [--repeats 3]

To compare two versions, run it again with PYTHONPATH=<a worktree of the older commit>/SparseSkullCompletion.
Prints, per case, the median seconds of `span_defect` and the plate's voxel count (so two versions can be checked to
give the same plate as well as timed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from sparseskull.data.dataset import find_cases
from sparseskull.data.io import read_mask
from sparseskull.implant.span import span_defect


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    import sparseskull

    print(f"sparseskull from {Path(sparseskull.__file__).parent}")  # a worktree of an older commit on PYTHONPATH times that one
    cases = {c.case_id: c for c in find_cases(a.data)}
    for case_id in a.cases:
        case = cases[case_id]
        skull, implant = read_mask(case.defective), np.asarray(read_mask(case.implant).array, bool)
        times = []
        for _ in range(a.repeats):
            start = time.perf_counter()
            plate, off = span_defect(implant, skull)
            times.append(time.perf_counter() - start)
        print(f"case {case_id}: span {statistics.median(times):.2f} s (median of {a.repeats}), plate {int(plate.sum()):,} voxels, "
              f"off {int(off.sum()):,}")


if __name__ == "__main__":
    main()
