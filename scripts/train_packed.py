"""Train on a machine that has neither the data set nor SimpleITK (a lent GPU machine, say): pack the skulls here,
train there with `sparseskull train`'s own loop and options.

    python scripts/train_packed.py pack --data <SkullFix> --resolution 128 --out skulls128.pkl.gz
    python scripts/train_packed.py train --packed skulls128.pkl.gz [--tf32] -- --out runs/gpu1 --resolution 128 --skips ...

``pack`` stores what ``load_skulls`` returns (the skulls on the training grid, about 3.4 MB for SkullFix's 75 at 128);
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


def pack(data: str, resolution: int, out: Path) -> Path:
    from sparseskull.data.pairs import load_skulls

    skulls = load_skulls(data, resolution)
    with gzip.open(out, "wb", compresslevel=6) as f:
        pickle.dump(skulls, f, protocol=5)
    print(f"{out}: {len(skulls)} skulls at {resolution}, {out.stat().st_size / 2**20:.1f} MiB")
    return out


def train(packed: Path, argv: list[str], tf32: bool = False) -> int:
    import torch
    from sparseskull.training import loop

    with gzip.open(packed, "rb") as f:
        skulls = pickle.load(f)  # our own file, made by `pack` above: never unpickle one from elsewhere
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
    a.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train", help="sparseskull train on packed skulls; its options follow --")
    t.add_argument("--packed", type=Path, required=True)
    t.add_argument("--tf32", action="store_true")
    t.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.what == "pack":
        pack(args.data, args.resolution, args.out)
        return 0
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return train(args.packed, rest, args.tf32)


if __name__ == "__main__":
    sys.exit(main())
