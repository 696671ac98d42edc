"""Defects unlike SkullFix's, on real skulls: the complete skulls of a SkullFix folder's validation cases with a new
defect of each SkullBreak class (bilateral, frontoorbital, parietotemporal, random_1, random_2) cut at full resolution,
written in the SkullBreak layout for `sparseskull evaluate`, which then reports implant DSC per class.

    python scripts/make_class_defects.py --skullfix ../shared/data/autoimplant2020 --out class_defects --model skip-ch1-128
    sparseskull evaluate --data class_defects --out eval_classes --model skip-ch1-128

The cases are the model's validation split (its metadata lists them), or ``--cases``. Deterministic: the defect of
case C and class K is drawn from a generator seeded by (``--seed``, C, K). The files stay outside the repository
(the data's licence, see ../shared/data/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sparseskull.data.anatomy import braincase_centre
from sparseskull.data.io import read_mask, write_volume
from sparseskull.data.synth.defects import DEFECT_CLASSES, BonePoints, cut_random_defect
from sparseskull.nets.catalogue import resolve_model
from sparseskull.nets.files import read_info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skullfix", required=True, help="the SkullFix folder (complete_skull/NNN.nrrd)")
    p.add_argument("--out", required=True, help="a new folder: complete_skull/, defective_skull/<class>/, implant/<class>/")
    p.add_argument("--model", default=None, help="take the cases from this model's validation split")
    p.add_argument("--cases", nargs="+", default=None, help="these case ids instead")
    p.add_argument("--classes", nargs="+", default=list(DEFECT_CLASSES), choices=DEFECT_CLASSES)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    cases = a.cases or read_info(resolve_model(a.model)).training.get("val_case_ids")
    if not cases:
        p.error("give --cases, or a --model whose metadata lists its validation cases")
    out, sf = Path(a.out), Path(a.skullfix)
    if (out / "complete_skull").exists():
        p.error(f"{out} already holds a data set")
    for case in cases:
        complete = read_mask(sf / "complete_skull" / f"{case}.nrrd")
        points = BonePoints.of(complete)
        centre = braincase_centre(complete)
        write_volume(complete, out / "complete_skull" / f"{case}.nrrd")
        for k, cls in enumerate(a.classes):
            rng = np.random.default_rng([a.seed, int(case), DEFECT_CLASSES.index(cls)])
            defect = cut_random_defect(points, cls, rng, centre_lps=centre)
            write_volume(defect.defective, out / "defective_skull" / cls / f"{case}.nrrd")
            write_volume(defect.implant, out / "implant" / cls / f"{case}.nrrd")
        print(f"case {case}: {len(a.classes)} defects", flush=True)
    print(f"{out}: {len(cases)} skulls x {len(a.classes)} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
