"""Time `sparseskull complete`'s stages on one skull, on a device and on the same machine's CPU as the reference.

    python scripts/time_pipeline.py pack <mask.nrrd> --out case.npz            # here: the mask as bits, with its geometry
    python scripts/time_pipeline.py time case.npz --device cuda --json t.json  # there: CUDA twice (cold, warm), then CPU

It exists for a lent GPU machine, which has neither SimpleITK (reading) nor VTK (meshing and writing): the mask
travels as a NumPy file, the pipeline runs on it in memory, and ``--no-mesh`` stands a stub in for the mesh stage.
The read, mesh and write stages are then the ones measured by `/usr/bin/time sparseskull complete` on a machine that
has those libraries (docs/pipeline.md). Each run is a fresh pipeline call; the first on CUDA includes loading the
models and starting CUDA. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def pack(mask: Path, out: Path) -> Path:
    from sparseskull.data.io import read_mask

    v = read_mask(mask)
    a = np.asarray(v.array, bool)
    np.savez_compressed(out, bits=np.packbits(a), shape=np.array(a.shape), spacing=np.array(v.spacing_mm),
                        origin=np.array(v.origin_lps), direction=v.direction)
    print(f"{out}: {a.shape}, {out.stat().st_size / 2**20:.1f} MiB")
    return out


def load(path: Path):
    from sparseskull.data.volume import Volume

    z = np.load(path)
    shape = tuple(int(v) for v in z["shape"])
    arr = np.unpackbits(z["bits"], count=int(np.prod(shape))).reshape(shape)
    return Volume(arr, tuple(z["spacing"]), tuple(z["origin"]), z["direction"])


def stub_mesh() -> None:
    """No VTK on this machine: the mesh stage does nothing (and is timed elsewhere)."""
    import sparseskull.implant.mesh as mesh

    class Check:
        triangles, watertight, volume_mm3, area_mm2 = 0, False, 0.0, 0.0

    mesh.mask_to_mesh = lambda *a, **k: None
    mesh.check_mesh = lambda poly: Check()


def time_once(volume, device: str, **options) -> dict:
    import torch
    from sparseskull.implant.options import CompleteOptions
    from sparseskull.implant.pipeline import complete_skull

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    r = complete_skull(volume, CompleteOptions(device=device, **options))
    if cuda:
        torch.cuda.synchronize()
    return {"device": device, "wall_s": round(time.perf_counter() - t, 3), "seconds": r.report["seconds"],
            "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
            "peak_rss_mib": max(r.report["peak_mib_after"].values()), "implant_voxels": r.report["implant"]["voxels"],
            "super_resolution": (r.report["super_resolution"] or {}).get("model"), "options": options}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("pack", help="a mask file to a NumPy file with its geometry")
    a.add_argument("mask", type=Path)
    a.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("time", help="the pipeline's stages on a packed mask")
    t.add_argument("volume", type=Path)
    t.add_argument("--device", default="cuda")
    t.add_argument("--repeat", type=int, default=2, help="runs on the device (the first one cold)")
    t.add_argument("--no-reference", action="store_true", help="skip the run on this machine's CPU")
    t.add_argument("--no-mesh", action="store_true", help="stub the mesh stage (no VTK here)")
    t.add_argument("--super-resolution", default="auto", help="as `sparseskull complete --super-resolution`")
    t.add_argument("--model", default=None)
    t.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.what == "pack":
        pack(args.mask, args.out)
        return 0
    if args.no_mesh:
        stub_mesh()
    volume = load(args.volume)
    options = {"super_resolution": args.super_resolution, "model": args.model}
    runs = [time_once(volume, args.device, **options) for _ in range(args.repeat)]
    if not args.no_reference and args.device != "cpu":
        runs.append(time_once(volume, "cpu", **options))
    stages = [s for s in runs[0]["seconds"] if s != "total"]
    print("| run | " + " | ".join(stages) + " | total |")
    print("|---" * (len(stages) + 2) + "|")
    for i, r in enumerate(runs):
        label = r["device"] + (" (cold)" if i == 0 and r["device"] != "cpu" else "")
        print(f"| {label} | " + " | ".join(f"{r['seconds'].get(s, 0):.2f}" for s in stages) + f" | {r['seconds']['total']:.2f} |")
    if len(runs) > args.repeat:
        print(f"CPU over {args.device} (warm), whole pipeline: {runs[-1]['seconds']['total'] / runs[args.repeat - 1]['seconds']['total']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
