"""Train on a machine that has neither the data set nor SimpleITK (a lent GPU machine, say): pack the skulls here,
train there with `sparseskull train`'s own loop and options.

    python scripts/train_packed.py pack --data <SkullFix> --resolution 128 --out skulls128.pkl.gz
    python scripts/train_packed.py train --packed skulls128.pkl.gz [--tf32] -- --out runs/gpu1 --resolution 128 --skips ...

``pack`` stores what ``load_skulls`` returns (the skulls on the training grid, about 3.4 MB for SkullFix's 75 at 128);
with ``--sr-from`` (super-resolution) it stores the complete skulls on both grids, bit-packed, and rebuilds the
upsampled input on loading, so that 75 skulls at 256 with their 128 copies fit in a few MB;
``train`` hands those to the training loop in place of reading ``--data`` (give ``--data`` anyway: it is recorded) and
passes every other option through. The split, the pairs and the model file are those of a run on the data itself.
``--tf32`` lets CUDA matmuls use TF32 (PyTorch's default is full float32): stages 2 and 3 of the shipped
``skullfix-skip-ch1-128`` ran this way on one H200.
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import sys
from pathlib import Path


def pack(data: str, resolution: int, out: Path, sr_from: int | None = None) -> Path:
    from sparseskull.data.pairs import load_skulls

    skulls = load_skulls(data, resolution, sr_from)
    if sr_from is None:
        stored = skulls
    else:
        from sparseskull.data.pairs import find_cases

        complete = {c.case_id: c.complete for c in find_cases(data, None)}
        stored = {"sr_from": sr_from, "skulls": [_compact(s, complete[s.case_id], sr_from) for s in skulls]}
    write_packed(out, stored)
    print(f"{out}: {len(skulls)} skulls at {resolution}{f' with their {sr_from} copies' if sr_from else ''}, "
          f"{out.stat().st_size / 2**20:.1f} MiB")
    return out


def write_packed(out: Path, stored) -> None:
    """``stored`` (``load_skulls``'s list, or ``{"sr_from": ..., "skulls": [sr_record(...), ...]}``) into ``out``."""
    with gzip.open(out, "wb", compresslevel=6) as f:
        pickle.dump(stored, f, protocol=5)


def sr_record(case_id: str, geometry, fine, low) -> dict:
    """A super-resolution pair as bits, as ``_expand`` reads it: the fine target (``geometry``: its spacing, origin and
    direction) and the coarse input (not upsampled)."""
    import numpy as np

    fine, low = np.asarray(fine, dtype=bool), np.asarray(low, dtype=bool)
    return {"case_id": case_id, "geometry": geometry, "shape": fine.shape, "bits": np.packbits(fine),
            "low_shape": low.shape, "low_bits": np.packbits(low)}


def _compact(skull, complete_path, sr_from: int) -> dict:
    """A super-resolution skull as bits: the fine complete skull and its coarse copy (not the upsampled input)."""
    from sparseskull.data.pairs import read_at

    v = skull.complete
    return sr_record(skull.case_id, (v.spacing_mm, v.origin_lps, v.direction), v.array, read_at(complete_path, sr_from).array)


def _expand(stored):
    """What ``pack`` wrote, back to ``load_skulls``'s list."""
    if isinstance(stored, list):
        return stored
    import numpy as np
    from sparseskull.data.pairs import Skull, upsample_nearest
    from sparseskull.data.volume import Volume

    skulls = []
    for s in stored["skulls"]:
        fine = np.unpackbits(s["bits"], count=int(np.prod(s["shape"]))).reshape(s["shape"]).astype(bool)
        low = np.unpackbits(s["low_bits"], count=int(np.prod(s["low_shape"]))).reshape(s["low_shape"]).astype(bool)
        factor = fine.shape[0] // low.shape[0]
        skulls.append(Skull(s["case_id"], Volume(fine, *s["geometry"]), [], upsample_nearest(low, factor, fine.shape)))
    return skulls


def train(packed: Path, argv: list[str], tf32: bool = False) -> int:
    import torch
    from sparseskull.training import loop

    with gzip.open(packed, "rb") as f:
        skulls = _expand(pickle.load(f))  # our own file, made by `pack` above: never unpickle one from elsewhere
    loop.load_skulls = lambda *args, **kwargs: skulls
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if "--data" not in argv:
        argv = ["--data", str(packed), *argv]
    return loop.main(argv, prog="train_packed.py train")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("pack", help="the skulls of a data set on the training grid, into one file")
    a.add_argument("--data", required=True)
    a.add_argument("--resolution", type=int, default=128)
    a.add_argument("--sr-from", type=int, default=None, help="super-resolution: also the skulls' copies at this coarser grid")
    a.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train", help="sparseskull train on packed skulls; its options follow --")
    t.add_argument("--packed", type=Path, required=True)
    t.add_argument("--tf32", action="store_true")
    t.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.what == "pack":
        pack(args.data, args.resolution, args.out, args.sr_from)
        return 0
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return train(args.packed, rest, args.tf32)


if __name__ == "__main__":
    sys.exit(main())
