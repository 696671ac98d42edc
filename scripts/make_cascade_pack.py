"""Super-resolution pairs whose coarse input is the completion network's own output, cropped around each defect: to
train a super-resolution model that also corrects what the completion gets wrong (a cascade), not only the blocks.

    python scripts/make_cascade_pack.py --data <SkullFix> --out cascade256.pkl.gz [--completion skullfix-skip-ch2-128]
    python scripts/train_packed.py train --packed cascade256.pkl.gz -- --task super-resolution --resolution 256 \\
        --sr-from 128 --skips --channels 32,32,32,32,64,64,128 --crop 64 --init skullfix-sr-skip-w32-128-256 ...

For every case with a defective skull: the completion model (8 passes, as the pipeline runs it) completes the
defective skull's 128 copy; the pair is that completed skull (the input, upsampled by the loader) against the complete
skull at 256, both cut to the box around the true implant widened by ``--margin`` coarse voxels. The file has
``scripts/train_packed.py pack``'s layout, so `train_packed.py train` reads it; its validation skulls are the same
split's (seed 0), cropped the same way, so the loop's validation figure is the boxes' DSC.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sparseskull.data.dataset import find_cases
from sparseskull.data.pairs import read_at
from sparseskull.data.volume import bounding_box
from sparseskull.implant.network import NetworkCompleter, run_network
from train_packed import sr_record, write_packed  # the packed file's layout, beside its reader (this folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--completion", default="skullfix-skip-ch2-128")
    p.add_argument("--passes", type=int, default=8)
    p.add_argument("--margin", type=int, default=12, help="coarse voxels around the true implant's box")
    a = p.parse_args()
    completer = NetworkCompleter(a.completion, device="cpu", passes=a.passes)
    coarse_res = completer.info.resolution
    fine_res, factor = 2 * coarse_res, 2
    stored = []
    for case in sorted(find_cases(a.data), key=lambda c: c.case_id):
        if case.defective is None or case.implant is None:
            continue
        defective = np.asarray(read_at(case.defective, coarse_res).array, bool)
        implant = np.asarray(read_at(case.implant, coarse_res).array, bool)
        complete = read_at(case.complete, fine_res)
        completed = run_network(completer.model, defective, completer.backend, completer.device, completer.info.tau, a.passes)
        box = bounding_box(implant | (completed & ~defective), a.margin)
        if box is None:
            continue
        fine = np.asarray(complete.array, bool)[tuple(slice(factor * s.start, factor * s.stop) for s in box)]
        low = completed[box]
        assert fine.shape[0] == factor * low.shape[0]  # the loader takes the factor from the first axis (Z may be one short)
        stored.append(sr_record(case.case_id, (complete.spacing_mm, complete.origin_lps, complete.direction), fine, low))
        gain = int((completed & ~defective).sum())
        print(f"{case.case_id}: box {low.shape} at {coarse_res}, {gain} generated voxels, true implant {int(implant.sum())}", flush=True)
    write_packed(a.out, {"sr_from": coarse_res, "skulls": stored})
    print(f"{a.out}: {len(stored)} boxes, {a.out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
