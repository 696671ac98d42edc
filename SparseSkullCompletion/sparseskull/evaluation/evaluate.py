"""`sparseskull evaluate`: the pipeline users run, scored case by case the way the field scores implants.

Each case's defective skull goes through :func:`sparseskull.implant.pipeline.complete_skull` (the code behind
`sparseskull complete` and the Slicer module), from the mask on its own full grid to the implant on
that grid, and is compared with the case's ground truth: completion DSC and RE, and the AutoImplant
implant metrics DSC, bDSC (10 mm) and HD95 (mm). Outputs: ``cases.csv``, ``summary.json``,
``report.md`` and ``boxplots.png`` in the output folder (all or nothing), and ``--json FILE``.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from sparseskull.data.dataset import find_cases
from sparseskull.data.io import read_mask, staged_output
from sparseskull.evaluation.metrics import dice, implant_metrics, reconstruction_error
from sparseskull.implant.grid import GRID_MARGIN
from sparseskull.implant.network import NetworkCompleter
from sparseskull.implant.options import CompleteOptions
from sparseskull.implant.pipeline import complete_skull

METRICS = ("completion_dsc", "completion_re", "implant_dsc", "implant_bdsc", "implant_hd95_mm")


BASELINES = ("opening", "mirror", "dense")  # opening: no network, the vault's largest opening spanned
DENSE_BASELINE = "dense-ch1-64"  # the shipped dense network (Table 1's layers, Dice loss)


def score_case(case, completer, options: CompleteOptions, baselines: tuple[str, ...] = (), picture: Path | None = None,
               dense=None, super_resolver=None) -> dict:
    """One case through the pipeline, against its ground truth (and the baselines asked for); with
    ``picture``, its input, prediction and ground truth side by side as a PNG there. ``dense``: the
    dense baseline's completer, run through the same pipeline (same grid, cleaning and reach filter)."""
    t0 = time.perf_counter()
    defective = read_mask(case.defective)
    if case.complete is not None:
        complete = read_mask(case.complete)
    elif case.implant is not None:
        complete = defective.with_array(np.asarray(defective.array, bool) | read_mask(case.implant).array)
    else:
        raise FileNotFoundError(f"case {case.name}: no complete skull or implant to compare with")
    if not complete.same_grid(defective):
        raise ValueError(f"case {case.name}: the complete and defective skulls are on different grids")
    truth_implant = np.asarray(complete.array, bool) & ~np.asarray(defective.array, bool)
    memo = Remembered(completer)
    sr = Remembered(super_resolver) if super_resolver is not None else None
    result = complete_skull(defective, options, completer=memo, super_resolver=sr)
    m = implant_metrics(result.implant.array, truth_implant, defective.array, defective.spacing_mm)
    cm3 = defective.voxel_volume_mm3 / 1000.0
    if picture is not None:
        from sparseskull.implant.render import comparison_figure

        comparison_figure(defective, result.implant, defective.with_array(truth_implant), picture,
                          f"case {case.case_id}{' (' + case.defect_class + ')' if case.defect_class else ''}: implant DSC {m['dsc']:.3f}, "
                          f"bDSC {m['bdsc']:.3f}, HD95 {m['hd95_mm']:.2f} mm")
    extra: dict = {}
    # the same network output cleaned the other way: the network's own implant beside the spanned pipeline, or the
    # spanned plate beside the network's own implant (what spanning would add)
    other = complete_skull(defective, replace(options, span_opening=not options.span_opening), completer=memo, super_resolver=sr)
    b = implant_metrics(other.implant.array, truth_implant, defective.array, defective.spacing_mm)
    tag = "network_" if options.span_opening else "spanned_"
    extra.update({f"{tag}implant_dsc": b["dsc"], f"{tag}implant_bdsc": b["bdsc"], f"{tag}implant_hd95_mm": b["hd95_mm"],
                  f"{tag}completion_dsc": dice(other.completed.array, complete.array),
                  f"{tag}completion_re": reconstruction_error(other.completed.array, complete.array)})
    if "mirror" in baselines:
        from sparseskull.evaluation.baselines import mirror_completion
        from sparseskull.implant.clean import clean_implant

        mirrored, _ = mirror_completion(defective)
        # cleaned as a user of the manual method would (specks, pieces away from the rim), without the network's reach
        # filter; spanned like the network's implant when the pipeline spans (the same final step for both)
        implant, _ = clean_implant(mirrored & ~np.asarray(defective.array, bool), defective, options.min_implant_mm3, 0.0, options.keep_fraction,
                                   span_opening=options.span_opening)
        b = implant_metrics(implant, truth_implant, defective.array, defective.spacing_mm)
        extra.update({"mirror_implant_dsc": b["dsc"], "mirror_implant_bdsc": b["bdsc"], "mirror_implant_hd95_mm": b["hd95_mm"],
                      "mirror_completion_dsc": dice(np.asarray(defective.array, bool) | implant, complete.array)})
    if "opening" in baselines:
        from sparseskull.evaluation.baselines import opening_completion

        done, _ = opening_completion(defective, options.min_implant_mm3, options.keep_fraction)
        implant = done & ~np.asarray(defective.array, bool)
        b = implant_metrics(implant, truth_implant, defective.array, defective.spacing_mm)
        extra.update({"opening_implant_dsc": b["dsc"], "opening_implant_bdsc": b["bdsc"], "opening_implant_hd95_mm": b["hd95_mm"],
                      "opening_completion_dsc": dice(done, complete.array), "opening_completion_re": reconstruction_error(done, complete.array)})
    if "dense" in baselines:
        d = complete_skull(defective, options, completer=dense, super_resolver=None)
        b = implant_metrics(d.implant.array, truth_implant, defective.array, defective.spacing_mm)
        extra.update({"dense_implant_dsc": b["dsc"], "dense_implant_bdsc": b["bdsc"], "dense_implant_hd95_mm": b["hd95_mm"],
                      "dense_completion_dsc": dice(d.completed.array, complete.array),
                      "dense_completion_re": reconstruction_error(d.completed.array, complete.array)})
    return {
        "case": case.case_id,
        "defect_class": case.defect_class or "",
        "completion_dsc": dice(result.completed.array, complete.array),
        "completion_re": reconstruction_error(result.completed.array, complete.array),
        "implant_dsc": m["dsc"],
        "implant_bdsc": m["bdsc"],
        "implant_hd95_mm": m["hd95_mm"],
        "input_alone_dsc": dice(defective.array, complete.array),
        "implant_centroid_error_mm": (float(np.linalg.norm(result.implant.centroid_lps() - defective.with_array(truth_implant).centroid_lps()))
                                      if result.implant.array.any() and truth_implant.any() else float("nan")),
        "implant_cm3": float(result.implant.array.sum()) * cm3,
        "truth_implant_cm3": float(truth_implant.sum()) * cm3,
        "seconds": time.perf_counter() - t0,
        **extra,
    }


class Remembered:
    """A pipeline step (the completion, the super-resolution stage) that answers a repeated call from memory, so the
    networks run once per case when the same output is cleaned two ways (with and without spanning). The call is
    known by its array arguments; the others (the skull, the grid) follow from them within one case and are rebuilt
    by every pipeline run, so they are not compared."""

    def __init__(self, step):
        self.step, self.last = step, None

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, *args):
        key = [a for a in args if isinstance(a, np.ndarray)]
        if self.last is not None and len(key) == len(self.last[0]) and all(
                a.shape == b.shape and np.array_equal(a, b) for a, b in zip(key, self.last[0])):
            return self.last[1]
        out = self.step(*args)
        self.last = ([a.copy() for a in key], out)
        return out


def summarise(rows: list[dict]) -> dict:
    """Mean, std, median per metric (HD95: over the cases where it is defined, with the count)."""
    out: dict = {}
    for key in [k for k in rows[0] if k not in ("case", "defect_class", "seconds", "implant_cm3", "truth_implant_cm3")]:
        values = np.array([r[key] for r in rows], dtype=float)
        finite = values[np.isfinite(values)]
        out[key] = {"mean": float(finite.mean()) if len(finite) else None, "std": float(finite.std()) if len(finite) else None,
                    "median": float(np.median(finite)) if len(finite) else None, "n": int(len(finite))}
    return out


def _boxplots(rows: list[dict], path: Path, title: str, methods: list[tuple[str, str]]) -> None:
    """One panel per metric, one box per method (``(label, column prefix)``: the model, then the baselines), as
    the paper's Figs 3-4 set the sparse network beside the dense one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14 if len(methods) < 3 else 16, 4))
    for ax, key, label in zip(axes, ("completion_dsc", "implant_dsc", "implant_bdsc", "implant_hd95_mm"),
                              ("completed skull DSC", "implant DSC", "implant bDSC", "implant HD95 (mm)")):
        shown = [(name, [r[prefix + key] for r in rows if np.isfinite(r.get(prefix + key, np.nan))]) for name, prefix in methods]
        shown = [(name, v) for name, v in shown if v]
        if not shown:
            ax.set_axis_off()
            continue
        ax.boxplot([v for _, v in shown], widths=0.5)
        for i, (_, values) in enumerate(shown, start=1):
            ax.scatter(np.random.default_rng(i).normal(i, 0.04, len(values)), values, s=10, alpha=0.6)
        ax.set_title(label)
        ax.set_xticks(range(1, len(shown) + 1), [name for name, _ in shown], fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _write_json(path, summary: dict) -> None:
    """The summary as JSON, written whole or not at all (a run stopped while writing keeps the previous file)."""
    from sparseskull.data.io import atomic_write

    text = json.dumps(summary, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def evaluate(data: str | os.PathLike, out: str | os.PathLike, model: str | None = None, cases: list[str] | None = None,
             limit: int | None = None, options: CompleteOptions | None = None, json_path: str | None = None, progress: bool = True,
             baselines: tuple[str, ...] = (), pictures: int | None = None, dense_model: str | None = None, record: bool = False) -> dict:
    """Score every case (or ``cases``, or the first ``limit``) into ``out``; ``pictures``: how many cases get
    a side-by-side picture in ``cases/`` (None: all, 0: none); ``dense_model``: the dense baseline's model
    (default: the shipped one); ``record``: also write the means beside the model file (``<name>.evaluation.json``)."""
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {', '.join(BASELINES)}")
    options = options or CompleteOptions(preview=False)
    options.preview = False
    from sparseskull.implant.pipeline import super_resolver_for

    model = model if model is not None else options.model
    completer = NetworkCompleter(model, options.device, options.backend, passes=options.passes)
    resolver = super_resolver_for(replace(options, model=model), completer)  # a pair's, or --super-resolution's
    dense = None
    if "dense" in baselines:
        from sparseskull.nets.files import DENSE

        dense = NetworkCompleter(dense_model or DENSE_BASELINE, options.device, architectures=(DENSE,))
        if dense.info.resolution != completer.info.resolution:
            raise ValueError(f"the dense baseline {dense.name} is a {dense.info.resolution}^2 model and {completer.name} a "
                             f"{completer.info.resolution}^2 one: compare models of one resolution")
    found = find_cases(data)
    if cases:
        wanted = set(cases)
        found = [c for c in found if c.case_id in wanted]
        missing = wanted - {c.case_id for c in found}
        if missing:
            raise FileNotFoundError(f"{data}: no case {', '.join(sorted(missing))}")
    found = [c for c in found if c.defective is not None]
    if limit:
        found = found[:limit]
    if not found:
        raise FileNotFoundError(f"{data}: no case with a defective skull to evaluate")
    iterator = found
    if progress:
        from tqdm import tqdm

        iterator = tqdm(found, desc="evaluate", unit="case")
    rows = []
    with staged_output(Path(out)) as stage:
        for i, case in enumerate(iterator):
            picture = stage / "cases" / f"{case.name.replace('/', '_')}.png" if pictures is None or i < pictures else None
            rows.append(score_case(case, completer, options, tuple(baselines), picture, dense, resolver))
            if progress:
                iterator.set_postfix(implant_dsc=f"{np.mean([r['implant_dsc'] for r in rows]):.3f}")
        summary = _write_report(rows, stage, data, completer, baselines, options, resolver)
    if json_path:
        _write_json(json_path, summary)
    if record:
        # the super-resolution stage's context around the implant's box (None: the whole skull)
        stages = {} if resolver is None else {"sr_box_margin": resolver.box_margin}
        record_evaluation(summary, resolver.path if resolver is not None else completer.path, options, [c.case_id for c in found], stages)
    return summary


def record_evaluation(summary: dict, model_path, options: CompleteOptions, case_ids: list[str], stages: dict | None = None) -> Path:
    """Write the means (and medians, baselines) beside the model as ``<name>.evaluation.json``, tied to its
    weights' checksum, for `sparseskull models` and the Slicer panel to show. ``stages``: settings of the pipeline's
    stages beyond ``options`` (the super-resolution stage's box margin), added to the record's "pipeline"."""
    import datetime

    from sparseskull import __version__
    from sparseskull.data.io import atomic_write
    from sparseskull.nets.catalogue import evaluation_path
    from sparseskull.nets.files import read_info, weights_digest

    stats = summary["statistics"]
    held_out = set(read_info(model_path).training.get("val_case_ids") or [])
    record = {
        **{k: None if summary[k] is None else round(summary[k], 4) for k in METRICS},
        "what": (f"sparseskull evaluate on {len(case_ids)} cases of {Path(summary['data']).name}"
                 + (" (all held out of the model's training)" if held_out and set(case_ids) <= held_out else "")
                 + ", through the complete pipeline on each case's full grid; means"),
        "model": summary["model"],  # "completion + super-resolution" for a pair (recorded beside the super-resolution model)
        "cases": case_ids,
        **{key: {k: None if v is None else round(v, 4) for k, v in summary[key].items()} for key in ("network_alone", "spanned") if key in summary},
        "pipeline": {"passes": options.passes, "min_depth_mm": options.min_depth_mm, "drop_behind_bone": options.drop_behind_bone, "span_opening": options.span_opening,
                     "min_implant_mm3": options.min_implant_mm3,
                     "clearance_mm": options.clearance_mm, "min_thickness_mm": options.min_thickness_mm,
                     **(stages or {})},
        "medians": {k: None if stats[k]["median"] is None else round(stats[k]["median"], 4) for k in ("implant_dsc", "implant_bdsc", "implant_hd95_mm")},
        "baselines": {b: {k: None if v is None else round(v, 4) for k, v in means.items()} for b, means in summary["baselines"].items()},
        "date": datetime.date.today().isoformat(),
        "package_version": __version__,
        "model_sha256": weights_digest(model_path),
    }
    return atomic_write(evaluation_path(Path(model_path)), lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))


SR_METRICS = ("sr_dsc", "interp_dsc", "nearest_dsc")


def score_sr_case(case, model, info, device, backend: str = "torch", passes: int = 1) -> dict:
    """One complete skull, as the paper scores super-resolution: its copy at the model's input resolution,
    upsampled to the model's resolution (nearest: the network's input) and completed there by the
    network (voting over ``passes`` as the pipeline's stage does), against the copy at the model's resolution; beside it
    the trilinear interpolation baseline."""
    from sparseskull.data.pairs import read_at, upsample_nearest
    from sparseskull.data.resample import upsample_linear
    from sparseskull.implant.network import voted_points
    from sparseskull.implant.superres import sr_votes

    t0 = time.perf_counter()
    fine = np.asarray(read_at(case.complete, info.resolution).array, bool)
    coarse = np.asarray(read_at(case.complete, info.input_resolution).array, bool)
    factor = info.resolution // info.input_resolution
    nearest = upsample_nearest(coarse, factor, fine.shape)
    ijk = np.argwhere(nearest)
    # the skull's corner where training put it (a few voxels in, as the pipeline's model grid does): a network with
    # six stride-2 levels answers differently when its input moves by other than a multiple of 64 voxels
    pred = voted_points(model, ijk, fine.shape, backend, device, info.tau, passes, corner=GRID_MARGIN) >= sr_votes(passes)
    return {"case": case.case_id, "defect_class": "", "sr_dsc": dice(pred, fine), "interp_dsc": dice(upsample_linear(coarse, factor, fine.shape), fine),
            "nearest_dsc": dice(nearest, fine), "sr_re": reconstruction_error(pred, fine), "seconds": time.perf_counter() - t0}


def evaluate_sr(data, out, model: str | None, cases: list[str] | None = None, limit: int | None = None, device: str = "auto",
                backend: str = "torch", json_path: str | None = None, progress: bool = True, passes: int = 1) -> dict:
    """Score a super-resolution model on the complete skulls of a data set (one row per skull): ``sr_dsc``
    against the interpolation baseline ``interp_dsc`` (and ``nearest_dsc``, the network's own input)."""
    from sparseskull.nets.catalogue import resolve_model
    from sparseskull.nets.files import load_model
    from sparseskull.runtime import pick_device

    path = resolve_model(model)
    dev = pick_device(device)
    net, info = load_model(path, task="super-resolution", device=dev)
    found, seen = [], set()
    for c in find_cases(data):
        if c.complete is not None and c.case_id not in seen and (not cases or c.case_id in cases):
            seen.add(c.case_id)
            found.append(c)
    if cases and set(cases) - seen:
        raise FileNotFoundError(f"{data}: no complete skull for case {', '.join(sorted(set(cases) - seen))}")
    found = found[:limit] if limit else found
    if not found:
        raise FileNotFoundError(f"{data}: no case with a complete skull to evaluate super-resolution on")
    iterator = found
    if progress:
        from tqdm import tqdm

        iterator = tqdm(found, desc="evaluate super-resolution", unit="skull")
    rows = [score_sr_case(c, net, info, dev, backend, passes) for c in iterator]
    stats = summarise(rows)
    name = Path(path).stem
    summary = {**{k: stats[k]["mean"] for k in SR_METRICS}, "cases": len(rows), "data": str(data), "model": name, "model_path": str(path),
               "task": "super-resolution", "from": info.input_resolution, "to": info.resolution, "device": str(dev), "backend": backend, "passes": passes,
               "statistics": stats}
    with staged_output(Path(out)) as stage:
        _write_table(rows, summary, stage)
        _sr_boxplot(rows, stage / "boxplots.png", f"{name}: super-resolution {info.input_resolution} -> {info.resolution}, {len(rows)} skulls")
        lines = [f"# Super-resolution `{name}` ({info.input_resolution} -> {info.resolution}) on {len(rows)} skulls of `{data}`", "",
                 "Each complete skull's copy at the coarse resolution, upsampled, against its copy at the fine one.", "",
                 "| method | DSC mean | std | median |", "|---|---|---|---|"]
        for key, label in (("sr_dsc", "super-resolution network"), ("interp_dsc", "trilinear interpolation"), ("nearest_dsc", "nearest (the network's input)")):
            st = stats[key]
            lines.append(f"| {label} | {_fmt(st['mean'])} | {_fmt(st['std'])} | {_fmt(st['median'])} |")
        lines += ["", "![box plots](boxplots.png)", "", "Per skull: `cases.csv`."]
        (stage / "report.md").write_text("\n".join(lines) + "\n")
    if json_path:
        _write_json(json_path, summary)
    return summary


def _sr_boxplot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = ("sr_dsc", "interp_dsc", "nearest_dsc")
    ax.boxplot([[r[k] for r in rows] for k in keys], widths=0.5)
    ax.set_xticks([1, 2, 3], ["network", "trilinear", "nearest"])
    ax.set_ylabel("DSC against the fine copy")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _write_table(rows: list[dict], summary: dict, stage: Path) -> None:
    """``cases.csv`` (one row per case) and ``summary.json`` into ``stage``."""
    with open(stage / "cases.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    (stage / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def _write_report(rows: list[dict], stage: Path, data, completer, baselines, options: CompleteOptions, resolver=None) -> dict:
    """cases.csv, summary.json, boxplots.png and report.md into ``stage``; returns the summary."""
    stats = summarise(rows)
    summary = {key: stats[key]["mean"] for key in METRICS}
    classes = sorted({r["defect_class"] for r in rows if r["defect_class"]})
    summary["by_class"] = {c: {key: summarise([r for r in rows if r["defect_class"] == c])[key]["mean"] for key in METRICS} for c in classes}
    summary["baselines"] = {b: {key: stats[f"{b}_{key}"]["mean"] for key in METRICS if f"{b}_{key}" in stats} for b in baselines}
    if "network_implant_dsc" in stats:  # the network's own implant (no spanning), beside the spanned pipeline's
        summary["network_alone"] = {key: stats[f"network_{key}"]["mean"] for key in METRICS}
    if "spanned_implant_dsc" in stats:  # the spanned plate, beside the network's own implant
        summary["spanned"] = {key: stats[f"spanned_{key}"]["mean"] for key in METRICS}
    summary.update({"cases": len(rows), "data": str(data), "model": completer.name + (f" + {resolver.name}" if resolver is not None else ""),
                    "model_path": str(completer.path), "super_resolution": resolver.name if resolver is not None else None,
                    "device": str(completer.device), "backend": completer.backend, "passes": completer.passes, "span_opening": options.span_opening,
                    "statistics": stats})
    _write_table(rows, summary, stage)
    name = summary["model"]
    if options.span_opening:  # the network's own implant first, then what spanning made of it
        methods = [("network alone", "network_", summary.get("network_alone")), (f"{name} spanned", "", summary)]
    else:
        methods = [(f"{name} (network alone)", "", summary), ("spanned (--span)", "spanned_", summary.get("spanned"))]
    methods = [m for m in methods if m[2] is not None] + [(b, f"{b}_", summary["baselines"][b]) for b in baselines]
    _boxplots(rows, stage / "boxplots.png", f"{name} on {len(rows)} cases of {Path(data).name}", [(label, prefix) for label, prefix, _ in methods])
    lines = [f"# Evaluation of `{name}` on {len(rows)} cases of `{data}`", "",
             "Each defective skull went through the `sparseskull complete` pipeline on its full grid"
             + (f", the network voting over {completer.passes} passes (`--passes`)" if completer.passes > 1 else "")
             + (", the opening spanned (`--span`)." if options.span_opening else ", the network's own implant (without `--span`)."), "",
             "| metric | mean | std | median | n |", "|---|---|---|---|---|"]
    for key, s in stats.items():
        lines.append(f"| {key} | {_fmt(s['mean'])} | {_fmt(s['std'])} | {_fmt(s['median'])} | {s['n']} |")
    lines += ["", "The network's own implant first (its output through the pipeline without spanning), then the same output with the"
              " opening spanned (`fill.span_defect`), then the baselines (means), each through the same pipeline and cleaning"
              " (opening: no network, the vault's largest opening found from the defective skull and spanned;"
              " mirror: reflected skull, cleaned without the reach filter"
              + (", spanned the same way" if options.span_opening else "") + "):", "",
              "| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(_fmt(means.get(k)) for k in METRICS) + " |" for label, _, means in methods]
    if summary["by_class"]:
        lines += ["", "By defect class (means):", "", "| class | n | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
        for c, means in summary["by_class"].items():
            n = sum(r["defect_class"] == c for r in rows)
            lines.append(f"| {c} | {n} | " + " | ".join(_fmt(means[k]) for k in METRICS) + " |")
    lines += ["", "![box plots](boxplots.png)", "", "Per case: `cases.csv`."]
    pictures = sorted((stage / "cases").glob("*.png")) if (stage / "cases").is_dir() else []
    if pictures:
        lines += ["", "## Cases", "", "Input, prediction and ground truth side by side (3D, and slices through the true implant):", ""]
        lines += [f"![{p.stem}](cases/{p.name})" for p in pictures]
    (stage / "report.md").write_text("\n".join(lines) + "\n")
    return summary
