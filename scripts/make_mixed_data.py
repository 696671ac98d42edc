"""The training set of the shipped `skullfix-gen-ch1-64`: the 60 SkullFix training skulls (linked, with their own
defects) and N generated complete skulls on a 256 x 256 x Z grid whose 4 x 4 x 4 blocks are exactly the model's
voxels, so that the generated skulls' 64 copies have the same physical spacing as the SkullFix copies. (Generated
data from `make-data` has random slice spacings: its 64 copies range from 4 to 10 mm between slices, against 4.98 mm
for SkullFix, which a fine-tune on it would have to unlearn.) New defects are cut on the fly in training.

    python scripts/make_mixed_data.py --skullfix ../shared/data/autoimplant2020 --out mixed --generated 60
    sparseskull train --data mixed --init skullfix-ch1-64 --steps 3500 --batch-size 4 --lr 1e-3 --validation 10 --threads 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sparseskull.data.io import write_volume
from sparseskull.data.synth.skull import generate_skull
from sparseskull.nets.catalogue import resolve_model
from sparseskull.nets.files import read_info

FIRST_SEED = 500_000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skullfix", required=True, help="the SkullFix folder (complete_skull, defective_skull, implant)")
    p.add_argument("--out", required=True)
    p.add_argument("--generated", type=int, default=60)
    p.add_argument("--model", default="skullfix-ch1-64", help="the model whose spacing and held-out cases are followed")
    a = p.parse_args()
    info = read_info(resolve_model(a.model))
    held_out = set(info.training.get("val_case_ids") or [])
    spacing = np.asarray(info.spacing_mm) / 4  # 256 grid, 4 x 4 x 4 blocks per model voxel
    out, sf = Path(a.out), Path(a.skullfix).resolve()
    for sub in ("complete_skull", "defective_skull", "implant"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    linked = 0
    for path in sorted((sf / "complete_skull").glob("*.nrrd")):
        if path.stem in held_out:
            continue  # the held-out skulls stay out of training
        for sub in ("complete_skull", "defective_skull", "implant"):
            link = out / sub / f"sf{path.stem}.nrrd"
            if not link.exists() and (sf / sub / path.name).exists():
                link.symlink_to(sf / sub / path.name)
        linked += 1
    for i in range(a.generated):
        skull = generate_skull(FIRST_SEED + i, size=256, spacing_mm=spacing)
        write_volume(skull.mask, out / "complete_skull" / f"gen{i:03d}.nrrd")
    print(f"{out}: {linked} SkullFix skulls (held out: {len(held_out)}), {a.generated} generated at {np.round(spacing, 4).tolist()} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
