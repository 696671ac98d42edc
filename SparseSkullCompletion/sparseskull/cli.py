"""The `sparseskull` command: thin subcommands over the core package."""

from __future__ import annotations

import argparse
import json
import sys
import time

from sparseskull import __version__


def _cmd_make_data(args) -> int:
    from sparseskull.synth.make_data import make_data

    t0 = time.perf_counter()
    manifest = make_data(
        args.out, args.cases, seed=args.seed, size=args.size, resolutions=None if args.resolutions is None else tuple(args.resolutions), ct=args.ct, workers=args.workers
    )
    print(f"wrote {len(manifest['cases'])} cases to {args.out} in {time.perf_counter() - t0:.1f} s (manifest: cases.json)")
    return 0


def _cmd_demo(args) -> int:
    from sparseskull.demo import run_demo

    report = run_demo(args.out, threshold_hu=args.threshold_hu, picture=not args.no_picture)
    print(json.dumps(report, indent=1))
    print(f"outputs in {args.out}/: skull_mask.nrrd, report.json" + ("" if args.no_picture else ", preview.png"))
    return 0


def _cmd_make_sample(args) -> int:
    from sparseskull.sample import make_sample

    print(f"wrote the sample to {make_sample(args.out)}")
    return 0


def _cmd_bench(args) -> int:
    from sparseskull.bench import bench_engine, bench_train

    if args.what == "train":
        result = bench_train(args.resolutions, args.backends or ["torch"], steps=args.steps, threads=args.threads, json_path=args.json)
        print(f"{'res':>4} {'grid':>16} {'backend':>10} {'input vox':>10} {'target vox':>10} {'s/step':>7} {'peak MiB':>9}")
        for r in result["rows"]:
            if "step_s" in r:
                print(f"{r['resolution']:>4} {'x'.join(map(str, r['grid'])):>16} {r['backend']:>10} {r['input_voxels']:>10,} {r['target_voxels']:>10,} {r['step_s']:>7.3f} {r['peak_mib']:>9.0f}")
            else:
                print(f"{r['resolution']:>4} {'x'.join(map(str, r['grid'])):>16} {r['backend']:>10}  {r.get('error')}")
        print(f"ratios: {json.dumps(result['ratios'])}")
        return 0

    grids = list(args.grids) + ([512] if args.big else [])
    result = bench_engine(grids, args.backends, threads=args.threads, json_path=args.json)
    print(f"{'grid':>5} {'voxels':>9} {'backend':>10} {'map s':>8} {'fwd s':>8} {'fwd+bwd s':>10} {'peak MiB':>9}")
    for r in result["rows"]:
        if "fwd_s" in r:
            cells = [f"{v:.3f}" if v is not None else "-" for v in (r["map_s"], r["fwd_s"], r["fwdbwd_s"])]
            print(f"{r['grid']:>5} {r['voxels']:>9} {r['backend']:>10} {cells[0]:>8} {cells[1]:>8} {cells[2]:>10} {r['peak_mib']:>9.0f}")
        else:
            print(f"{r['grid']:>5} {'':>9} {r['backend']:>10}  {r.get('note') or r.get('error')}")
    print(f"matmul: {result['matmul_gflops']} GFLOP/s on {result['threads']} threads; ratios: {json.dumps(result['ratios'])}")
    return 0


def _cmd_train(argv: list[str]) -> int:
    from sparseskull.train import main as train_main

    return train_main(argv, prog="sparseskull train")


def _cmd_info(args) -> int:
    from sparseskull.model import SparseCompletionNet, layer_table

    model = SparseCompletionNet(args.channels)
    rows = layer_table(model)
    print(f"SparseCompletionNet, channels {list(model.channels)} (Li et al. 2023, Table 1)")
    print(f"{'layer':<22} {'kind':<27} {'kernel':>6} {'stride':>6} {'in':>5} {'out':>5} {'params':>10}")
    for r in rows:
        print(f"{r['layer']:<22} {r['kind']:<27} {r['kernel']:>6} {r['stride']:>6} {r['in']:>5} {r['out']:>5} {r['params']:>10,}")
    total = model.parameter_count()
    print(f"total parameters: {total:,} ({total / 1e6:.3f}M; convolutions with batch norm, classifiers with bias)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseskull",
        description="Sparse CNN skull shape completion and cranial implant design (Li et al. 2023).",
    )
    parser.add_argument("--version", action="version", version=f"sparseskull {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the main job on the bundled sample and print metrics against its ground truth")
    p.add_argument("--out", default="demo_out", help="output folder (replaced when the run succeeds; default: demo_out)")
    p.add_argument("--threshold-hu", type=float, default=300.0, help="bone threshold in HU (default 300)")
    p.add_argument("--no-picture", action="store_true", help="skip the preview PNG")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("make-data", help="generate skulls, SkullBreak-class defects and CTs in the SkullBreak layout")
    p.add_argument("out", help="output folder (must not hold a data set already)")
    p.add_argument("--cases", type=int, default=10, help="number of skulls (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole set (default 0)")
    p.add_argument("--size", type=int, default=512, help="in-plane grid size of the full resolution (default 512)")
    p.add_argument("--resolutions", type=int, nargs="*", default=None, help="coarse copies to write (default: 64 128 256, those below --size)")
    p.add_argument("--ct", choices=["one", "all", "none"], default="one", help="CTs: of one defect class per case (default), all, none")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: one per core)")
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("bench", help="benchmarks (commands, not tests): `bench engine` one sparse layer, `bench train` training steps")
    p.add_argument("what", choices=["engine", "train"], help="engine: one 3x3x3 16->16 layer on ellipsoid shells; train: ch1 training steps on a generated skull")
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256], help="train: the paper's resolutions to time (default 64 128 256)")
    p.add_argument("--steps", type=int, default=5, help="train: timed steps after two warm-up steps (default 5)")
    p.add_argument("--grids", type=int, nargs="+", default=[128, 256], help="cube sizes (default 128 256)")
    p.add_argument("--big", action="store_true", help="add 512^3 (about 9 GiB and minutes per backend)")
    p.add_argument("--backends", nargs="+", default=None, help="torch minkowski spconv dense (default: every installed one, and dense)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--json", default=None, help="write the results as JSON to this file")
    p.set_defaults(func=_cmd_bench)

    # listed for --help only: main() hands `train` its own options (train.py parses them), so that
    # `sparseskull --help` need not import torch
    sub.add_parser("train", add_help=False, help="train the network (completion or super-resolution); `sparseskull train --help`")

    p = sub.add_parser("info", help="print the network's layer table (the paper's Table 1) and parameter count")
    p.add_argument("--channels", default="ch1", help="ch1, ch2 or seven comma-separated channel counts (default ch1)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("make-sample", help="rebuild the bundled sample (deterministic)")
    p.add_argument("--out", default=None, help="folder (default: the module's Resources/Sample)")
    p.set_defaults(func=_cmd_make_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":  # train.py parses its own options
        return _cmd_train(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("sparseskull: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as exc:
        print(f"sparseskull {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
