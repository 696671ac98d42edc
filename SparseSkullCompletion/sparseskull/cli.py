"""The `sparseskull` command: thin subcommands over the core package."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from sparseskull import __version__


def _cmd_make_data(args) -> int:
    from sparseskull.data.synth.make_data import make_data

    t0 = time.perf_counter()
    manifest = make_data(
        args.out, args.cases, seed=args.seed, size=args.size, resolutions=None if args.resolutions is None else tuple(args.resolutions), ct=args.ct, workers=args.workers
    )
    print(f"wrote {len(manifest['cases'])} cases to {args.out} in {time.perf_counter() - t0:.1f} s (manifest: cases.json)")
    return 0


_progress: dict = {"stage": None}
"""The stage a run is in, for the message when it runs out of memory."""


def _stage_printer():
    """Progress per pipeline stage on stderr: '[3/8] model grid (1.2 s)'."""
    t0 = time.perf_counter()

    def show(name: str, index: int, total: int) -> None:
        _progress["stage"] = name
        print(f"[{index + 1}/{total}] {name} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)

    return show


def _summary(report: dict, out: str) -> None:
    implant = report["implant"]
    if report["defect_found"]:
        mesh = report["mesh"]
        print(f"implant: {implant['volume_cm3']:.1f} cm^3 ({mesh['volume_cm3']:.1f} cm^3 as mesh, {mesh['area_cm2']:.0f} cm^2, "
              f"{mesh['triangles']:,} triangles, watertight: {mesh['watertight']}), STL in {mesh['space']}")
    else:
        print(report["message"])
    for w in report.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    sr = report.get("super_resolution")
    print(f"model {report['model']['name']}{' + ' + sr['model'] + (' (skipped)' if sr.get('skipped') else '') if sr else ''} on {report['device']} ({report['backend']}); {report['seconds']['total'] + report['seconds'].get('write', 0):.1f} s; "
          + ("peak memory unknown on this platform" if report.get("peak_mib") is None else f"peak memory {report['peak_mib']:.0f} MiB"))
    print(f"outputs in {out}/: {', '.join(report.get('files', []))}")


def _cmd_demo(args) -> int:
    from sparseskull.evaluation.demo import run_demo

    report = run_demo(args.out, threshold_hu=args.threshold_hu, picture=not args.no_picture, model=args.model, device=args.device,
                      backend=args.backend, progress=_stage_printer(), span_opening=args.span,
                      passes=args.passes)
    truth = report["vs_truth"]
    hd95 = "-" if truth["implant_hd95_mm"] is None else f"{truth['implant_hd95_mm']:.2f} mm"
    print(f"against the sample's ground truth: implant DSC {truth['implant_dsc']:.3f}, bDSC {truth['implant_bdsc']:.3f}, HD95 {hd95}; "
          f"completed skull DSC {truth['completion_dsc']:.4f} (input alone {truth['input_alone_dsc']:.4f}); "
          f"implant {truth['implant_volume_cm3']:.1f} cm^3 (truth {truth['truth_implant_volume_cm3']:.1f})")
    _summary(report, args.out)
    return 0


def complete_options(args):
    """The CompleteOptions that `sparseskull complete`'s arguments ask for (implant.options.options_to_args is the inverse)."""
    from sparseskull.implant.options import options_from_args

    return options_from_args(args)


def _option_arguments(p: argparse.ArgumentParser, names=None) -> None:
    """Flags built from CompleteOptions' schema (implant.options): every option with a flag, or those in ``names``."""
    from sparseskull.implant.options import CompleteOptions, option_flags
    from sparseskull.sparse import BACKENDS  # the names only: no torch

    default = CompleteOptions()
    for f in option_flags():
        if names is not None and f.name not in names:
            continue
        meta, value = f.metadata, getattr(default, f.name)
        if meta["sets"] is not None:
            p.add_argument(meta["flag"], dest=f.name, action="store_const", const=meta["sets"], default=value, help=meta["help"])
            continue
        choices = BACKENDS if f.name == "backend" else meta["choices"]
        shown = "" if value is None else f" (default {value})"
        p.add_argument(meta["flag"], dest=f.name, type=meta["type"] or type(value), choices=choices, default=value, help=meta["help"] + shown)


def _cmd_complete(args) -> int:
    from sparseskull.implant.pipeline import run_complete

    result = run_complete(args.input, args.out, complete_options(args), progress=_stage_printer())
    _summary(result.report, args.out)
    return 0


def _cmd_evaluate(args) -> int:
    from sparseskull.evaluation.evaluate import (
        METRICS,
        SR_METRICS,
        evaluate,
        evaluate_sr,
    )
    from sparseskull.implant.options import CompleteOptions
    from sparseskull.nets.catalogue import resolve_model
    from sparseskull.nets.files import read_info

    if read_info(resolve_model(args.model)).task == "super-resolution":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        summary = evaluate_sr(args.data, args.out, args.model, cases=args.cases, limit=args.limit, device=args.device,
                              backend=args.backend, json_path=args.json, passes=args.passes)
        print(f"{summary['model']} (super-resolution {summary['from']} -> {summary['to']}) on {summary['cases']} skulls: "
              + ", ".join(f"{k} {summary[k]:.4f}" for k in SR_METRICS))
        print(f"report: {args.out}/report.md, per skull: {args.out}/cases.csv")
        return 0
    options = CompleteOptions(device=args.device, backend=args.backend, preview=False, threads=args.threads, span_opening=args.span,
                              passes=args.passes, super_resolution=args.super_resolution)
    summary = evaluate(args.data, args.out, model=args.model, cases=args.cases, limit=args.limit, options=options, json_path=args.json,
                       baselines=tuple(args.baselines), pictures=args.pictures, dense_model=args.dense_model,
                       record=args.record)
    stats = summary["statistics"]
    print(f"{summary['model']} on {summary['cases']} cases, {'the opening spanned' if args.span else 'its own implant'}, "
          f"{summary['passes']} network pass{'es' if summary['passes'] > 1 else ''}:")
    for key in METRICS:
        s = stats[key]
        print(f"  {key:<18} mean {s['mean'] if s['mean'] is None else round(s['mean'], 4)}  median {s['median'] if s['median'] is None else round(s['median'], 4)}  (n {s['n']})")
    other = ("network alone", summary.get("network_alone")) if args.span else ("spanned (--span)", summary.get("spanned"))
    rows = ([other] if other[1] else []) + [(f"baseline {name}", means) for name, means in summary["baselines"].items()]
    for name, means in rows:
        print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items() if v is not None))
    print(f"report: {args.out}/report.md, per case: {args.out}/cases.csv")
    return 0


def _cmd_models(args) -> int:
    from sparseskull.nets.catalogue import (
        available_models,
        default_model_name,
        find_pair,
        list_pairs,
        models_dir,
    )

    models = available_models(baselines=True)
    if not models:
        print(f"no shipped models in {models_dir()}")
        return 1
    default = default_model_name()
    pair = find_pair(default)
    defaults = {pair.completion, pair.super_resolution} if pair else {default}  # a default pair marks both its models
    def cell(v, digits: int, width: int) -> str:
        return f"{'-' if v is None else f'{v:.{digits}f}':>{width}}"

    def mark(m) -> str:
        return " (default)" if m.shipped and m.name in defaults else " (baseline)" if m.baseline else "" if m.shipped else " (yours)"

    w = max(32, *(len(m.name + mark(m)) for m in models))  # the name column fits the longest name
    print(f"{'name':<{w}} {'task':<16} {'resolution':>10} {'skips':>5} {'spacing mm':>16} | {'alone DSC':>9} {'implant DSC':>11} {'bDSC':>6} "
          f"{'HD95 mm':>8} | {'coarse val':>10}")
    for m in models:
        i = m.info
        spacing = "x".join(f"{v:.2f}" for v in i.spacing_mm) if i.spacing_mm else "-"
        res = f"{i.input_resolution}->{i.resolution}" if i.task == "super-resolution" else str(i.resolution)
        full = m.evaluation or {}
        spanned = (full.get("pipeline") or {}).get("span_opening", True)  # records before 2026-11-26 were of the spanned pipeline
        alone = (full.get("network_alone") or {}).get("implant_dsc") if spanned else full.get("implant_dsc")
        print(f"{m.name + mark(m):<{w}} {i.task:<16} {res:>10} {'yes' if i.skips else 'no':>5} {spacing:>16} | {cell(alone, 3, 9)} {cell(full.get('implant_dsc'), 3, 11)} "
              f"{cell(full.get('implant_bdsc'), 3, 6)} {cell(full.get('implant_hd95_mm'), 1, 8)} | {cell(i.metrics.get('val_implant_dsc'), 3, 10)}")
    print("implant DSC, bDSC, HD95: `sparseskull evaluate` means on the held-out skulls, full grid, through the whole pipeline\n"
          "(<name>.evaluation.json); alone DSC: the network's own implant there (the pipeline without --span), where recorded;\n"
          "coarse val: implant DSC on the training grid when training ended;\n"
          "baseline: the dense network of the paper's comparison, for `sparseskull evaluate --baselines dense` only")
    pairs = list_pairs()
    if pairs:
        print("\npairs (completion, then super-resolution to a finer grid; use one with --model NAME):")
        for p in pairs:
            print(f"  {p.name + (' (default)' if p.name == default else ''):<32} {p.completion} -> {p.super_resolution}"
                  + (f"  ({p.label})" if p.label else ""))
    print(f"model cards: {models_dir()}/<name>.md; use one with --model NAME")
    for m in models:
        if not m.shipped:
            print(f"yours: {m.name} = {m.path} (use it with --model PATH)")
    return 0


def _cmd_make_sample(args) -> int:
    from sparseskull.data.sample import make_sample

    print(f"wrote the sample to {make_sample(args.out)}")
    return 0


def _bench_network(args) -> int:
    from pathlib import Path

    from sparseskull.evaluation.bench import NETWORK_RESOLUTIONS, bench_network
    from sparseskull.sparse.backends import available_backends

    data = args.data
    if data is None:
        beside = Path(__file__).resolve().parents[3] / "shared" / "data" / "autoimplant2020"
        data = str(beside) if (beside / "complete_skull").is_dir() else None
    backends = [b for b in (args.backends or available_backends()) if b != "spconv"]  # spconv: no CPU training; see README
    result = bench_network(data, args.case, args.resolutions or NETWORK_RESOLUTIONS, backends, modes=args.modes, dense=not args.no_dense,
                           steps=args.steps or 2, threads=args.threads, memory_limit_gib=args.memory_limit_gib, json_path=args.json,
                           plot_path=args.plot)
    print(f"skull: {result['case']}; {result['threads']} threads; limit {result['memory_limit_gib']} GiB per run")
    print(f"{'res':>4} {'grid':>13} {'mode':>9} {'network':>18} {'seconds':>8} {'peak MiB':>9}  points kept per decoder level")
    for r in result["rows"]:
        name = "dense" if r["model"] == "dense" else f"sparse {r['backend']}"
        grid = "x".join(map(str, r["grid"]))
        if "seconds" in r:
            kept = r.get("points", {}).get("kept_per_level", [])
            print(f"{r['resolution']:>4} {grid:>13} {r['mode']:>9} {name:>18} {r['seconds']:>8.3f} {r['peak_mib']:>9.0f}  {kept}")
        else:
            print(f"{r['resolution']:>4} {grid:>13} {r['mode']:>9} {name:>18}  {r['error']}")
    for key, value in result["ratios"].items():
        print(f"  {key}: {value}")
    return 0


def _cmd_bench(args) -> int:
    from sparseskull.evaluation.bench import bench_engine, bench_train

    if args.what == "network":
        return _bench_network(args)
    if args.what == "train":
        result = bench_train(args.resolutions or [64, 128, 256], args.backends or ["torch"], steps=args.steps or 5, threads=args.threads, json_path=args.json,
                             batch_sizes=args.batch_sizes)
        print(f"{'res':>4} {'grid':>16} {'backend':>10} {'batch':>5} {'input vox':>10} {'target vox':>10} {'s/step':>7} {'peak MiB':>9}")
        for r in result["rows"]:
            head = f"{r['resolution']:>4} {'x'.join(map(str, r['grid'])):>16} {r['backend']:>10} {r['batch']:>5}"
            if "step_s" in r:
                print(f"{head} {r['input_voxels']:>10,} {r['target_voxels']:>10,} {r['step_s']:>7.3f} {r['peak_mib']:>9.0f}")
            else:
                print(f"{head}  {r.get('error')}")
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
    from sparseskull.training.loop import main as train_main

    return train_main(argv, prog="sparseskull train")


def _cmd_info(args) -> int:
    from sparseskull.nets.sparse_net import SparseCompletionNet, layer_table

    model = SparseCompletionNet(args.channels)
    rows = layer_table(model)
    print(f"SparseCompletionNet, channels {list(model.channels)} (Li et al. 2023, Table 1)")
    print(f"{'layer':<22} {'kind':<27} {'kernel':>6} {'stride':>6} {'in':>5} {'out':>5} {'params':>10}")
    for r in rows:
        print(f"{r['layer']:<22} {r['kind']:<27} {r['kernel']:>6} {r['stride']:>6} {r['in']:>5} {r['out']:>5} {r['params']:>10,}")
    total = model.parameter_count()
    print(f"total parameters: {total:,} ({total / 1e6:.3f}M; convolutions with batch norm, classifiers with bias)")
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    _option_arguments(p, ("model", "passes", "device", "backend"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseskull",
        description="Sparse CNN skull shape completion and cranial implant design (Li et al. 2023).",
    )
    parser.add_argument("--version", action="version", version=f"sparseskull {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the main job on the bundled sample and print metrics against its ground truth")
    p.add_argument("--out", default="demo_out", help="output folder (replaced when the run succeeds; default: demo_out)")
    _option_arguments(p, ("threshold_hu",))
    p.add_argument("--no-picture", action="store_true", help="skip the preview PNG")
    p.add_argument("--span", action="store_true", help="span the opening: the plate completed from the bone around it (default: the network's own implant)")
    _model_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("complete", help="design an implant: head CT (or skull mask) in, implant STL, masks, report and preview out")
    p.add_argument("input", help="a head CT or skull mask: NRRD, NIfTI, MHA/MHD file, or a DICOM series folder")
    p.add_argument("--out", required=True, help="output folder (written only when the whole run succeeds)")
    _option_arguments(p)
    p.set_defaults(func=_cmd_complete)

    p = sub.add_parser("evaluate", help="run the complete pipeline on a data set with ground truth and score it (DSC, RE, bDSC, HD95)")
    p.add_argument("--data", required=True, help="a data set in the SkullFix or SkullBreak layout")
    p.add_argument("--out", required=True, help="report folder: cases.csv, summary.json, report.md, boxplots.png")
    _model_options(p)
    p.add_argument("--cases", nargs="+", default=None, help="only these case ids")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases")
    p.add_argument("--json", default=None, help="also write the summary (means as completion_dsc, implant_dsc, ...) to this file")
    p.add_argument("--baselines", nargs="*", default=[], choices=["opening", "mirror", "dense"],
                   help="also score these baselines (opening: no network, the vault's largest opening spanned; "
                        "mirror: reflect the skull about its mid-sagittal plane; "
                        "dense: the paper's dense network with Dice loss, through the same pipeline)")
    p.add_argument("--record", action="store_true",
                   help="write the means beside the model file (<name>.evaluation.json, tied to its weights), for `sparseskull models` and Slicer")
    p.add_argument("--dense-model", default=None, help="the dense baseline's model name or path (default: the shipped dense-ch1-64)")
    p.add_argument("--pictures", type=int, default=None, metavar="N",
                   help="input, prediction and truth side by side (cases/*.png) for the first N cases (default: all; 0: none)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--span", action="store_true", help="score the pipeline with the opening spanned (the network's own implant is scored beside it)")
    p.add_argument("--super-resolution", default="auto",
                   help="the super-resolution stage after a completion model, as in `complete`: a model name or path, 'none', or "
                        "'auto' (default: the pair's own, if --model names a pair)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("models", help="list the shipped trained models with their task, resolution and validation scores")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("make-data", help="generate skulls, SkullBreak-class defects and CTs in the SkullBreak layout")
    p.add_argument("out", help="output folder (must not hold a data set already)")
    p.add_argument("--cases", type=int, default=10, help="number of skulls (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole set (default 0)")
    p.add_argument("--size", type=int, default=512, help="in-plane grid size of the full resolution (default 512)")
    p.add_argument("--resolutions", type=int, nargs="*", default=None, help="coarse copies to write (default: 64 128 256, those below --size)")
    p.add_argument("--ct", choices=["one", "all", "none"], default="one", help="CTs: of one defect class per case (default), all, none")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: one per core)")
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("bench", help="benchmarks (commands, not tests): `bench engine` one sparse layer, `bench train` training steps, "
                                     "`bench network` the whole network sparse vs dense, 64 to 512")
    p.add_argument("what", choices=["engine", "train", "network"],
                   help="engine: one 3x3x3 16->16 layer on ellipsoid shells; train: ch1 training steps on a generated skull; "
                        "network: training step and inference of the whole network, sparse (each backend) and dense, on a real or generated skull")
    p.add_argument("--resolutions", type=int, nargs="+", default=None, help="the paper's resolutions to time (train: 64 128 256; network: 64 128 256 512)")
    p.add_argument("--steps", type=int, default=None, help="timed repeats after the warm-up (train: 5 after two; network: 2 after one)")
    p.add_argument("--data", default=None, help="network: a SkullFix/SkullBreak folder to take the skull from (default: ../shared/data/autoimplant2020 "
                                                "beside the repository when present, else a generated skull)")
    p.add_argument("--case", default=None, help="network: the case id (default: the first case)")
    p.add_argument("--modes", nargs="+", choices=["train", "inference"], default=["train", "inference"], help="network: what to time")
    p.add_argument("--no-dense", action="store_true", help="network: skip the dense counterpart")
    p.add_argument("--memory-limit-gib", type=float, default=None, help="network: address-space limit per measurement (default 80%% of RAM)")
    p.add_argument("--plot", default=None, help="network: write the curves (time and memory against resolution; time against voxels) to this PNG")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="train: skulls per step, each size in its own process "
                                                                            "(e.g. --resolutions 64 --batch-sizes 2 4 8 16 32: the paper's Table 5)")
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


STAGED_COMMANDS = ("complete", "demo", "evaluate")
"""Commands that write --out through data.io.staged_output: all of it when the run succeeds, nothing before."""


class Stopped(KeyboardInterrupt):
    """SIGTERM raised where the program is, so that it unwinds as on Ctrl-C: staging folders are removed and the run
    ends with one line and 128 + the signal's number, not with half an output folder (the default action ends the
    process on the spot)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def _sigterm_unwinds():
    """Turn SIGTERM into :class:`Stopped`; returns the handler to put back (None: left alone, because it is ignored
    or set by a host program, or this is not the main thread)."""
    try:
        if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
            return None
        return signal.signal(signal.SIGTERM, _raise_stopped)
    except (ValueError, AttributeError):  # not the main thread; no SIGTERM on this platform
        return None


def _out_of_memory(exc: BaseException, command: str) -> str | None:
    """The one line for running out of memory (Python/numpy's MemoryError, torch's CPU allocator, CUDA), or None."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    gpu = type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text
    if not (isinstance(exc, MemoryError) or gpu or (isinstance(exc, RuntimeError) and "can't allocate memory" in text)):
        return None
    what = "GPU memory" if gpu else "memory (RAM)"
    where = f" in stage '{_progress['stage']}'" if _progress["stage"] and command in ("complete", "demo") else ""
    detail = f" ({text[:160]})" if text else ""
    if command == "train":
        fix = "try --batch-size 1, --threads 1 or a smaller --resolution" + (", or --device cpu" if gpu else "")
    else:
        fix = ("try --device cpu, or " if gpu else "try --threads 1, or ") + "a model with a smaller grid (`sparseskull models`; --model NAME)"
    return f"ran out of {what}{where}{detail}; {fix}"


def main(argv: list[str] | None = None) -> int:
    """The command; every failure it expects ends with one line on stderr and an exit code, never a traceback:
    1 for bad input, a missing file or running out of memory; 130 for Ctrl-C and 143 for SIGTERM (the run unwinds,
    so --out is absent or as it was, never half written); 2 for bad arguments (argparse)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command, args = (argv[0] if argv else "") or "", None
    previous = _sigterm_unwinds()
    _progress["stage"] = None
    try:
        if command == "train":  # train.py parses its own options
            return _cmd_train(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        command = args.command
        if command in STAGED_COMMANDS:
            from sparseskull.data.io import recover_output

            recover_output(args.out)  # what a killed run left there, before this one is judged or run
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        staged = args is not None and command in STAGED_COMMANDS
        print(f"sparseskull {command}: stopped by {signal.Signals(signum).name}"
              + (f"; nothing half-written is left in {args.out} (a run replaces it only when it finishes)" if staged else ""), file=sys.stderr)
        return 128 + int(signum)
    except (MemoryError, RuntimeError) as exc:
        message = _out_of_memory(exc, command)
        if message is None:
            raise
        print(f"sparseskull {command}: error: {message}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # FileNotFoundError, PermissionError, a full disk, ...: the message names the file
        print(f"sparseskull {command}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
