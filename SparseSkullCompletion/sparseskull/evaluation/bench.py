"""Benchmarks (commands, not tests).

`sparseskull bench engine`: one 3x3x3 16->16 sparse convolution on ellipsoid shells, per backend.
`sparseskull bench train`: training steps of the paper's network (ch1) on one generated skull at the
paper's resolutions (64^2 x Z/8 to 512^2 x Z), per backend.

Each (grid, backend) runs in its own process, so its peak RSS is its own. Times are medians of a
few repeats on the configured threads; ratios compare backends measured in the same run, because
absolute CPU times drift on shared machines.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sparseskull.runtime import limit_address_space, peak_mib

CHANNELS = 16
KERNEL = 3


def shell_coords(grid: int):
    """Voxels of an ellipsoid shell filling a grid^3 cube (6.65% occupancy, as in the notes' reference measurements)."""
    import torch

    r = (torch.arange(grid, dtype=torch.float32) - (grid - 1) / 2) / (grid / 2)
    x, y, z = torch.meshgrid(r / 0.92, r / 0.80, r / 0.86, indexing="ij")
    rho = torch.sqrt(x * x + y * y + z * z)
    shell = (rho < 1.0) & (rho > 0.928)
    idx = shell.nonzero()
    return torch.cat([torch.zeros(len(idx), 1, dtype=idx.dtype), idx], dim=1), shell


def _repeat(fn, repeats: int):
    """Seconds of each of ``repeats`` calls of ``fn``, and what the last call returned."""
    times, last = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t0)
    return times, last


def _timed(fn, repeats: int = 3) -> float:
    return statistics.median(_repeat(fn, repeats)[0])


def _run_one(grid: int, backend: str, threads: int) -> dict:
    import torch

    from sparseskull.sparse import SparseTensor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    coords, shell = shell_coords(grid)
    n = len(coords)
    feats = torch.randn(n, CHANNELS)
    weight = torch.randn(KERNEL**3, CHANNELS, CHANNELS) * 0.05
    row = {"grid": grid, "voxels": n, "backend": backend, "threads": threads}
    if backend == "dense":
        dense = torch.zeros(1, CHANNELS, grid, grid, grid)
        dense[0, :, shell] = feats.T
        w = weight.reshape(3, 3, 3, CHANNELS, CHANNELS).permute(4, 3, 0, 1, 2).contiguous()
        x = dense.requires_grad_(True)
        wd = w.requires_grad_(True)
        with torch.no_grad():
            row["fwd_s"] = _timed(lambda: torch.nn.functional.conv3d(x, wd, padding=1))
        row["map_s"] = 0.0

        def fwdbwd():
            torch.nn.functional.conv3d(x, wd, padding=1).sum().backward()

        row["fwdbwd_s"] = _timed(fwdbwd)
    elif backend == "torch":
        from sparseskull.sparse import conv
        from sparseskull.sparse.kernel_map import cached_map
        from sparseskull.sparse.tensor import CoordinateSet

        def build():
            cs, _ = CoordinateSet.from_coords(coords)
            cached_map(cs, cs, KERNEL, 1, +1)

        row["map_s"] = _timed(build)
        x = SparseTensor.from_coords(coords, feats)
        w = weight.clone().requires_grad_(True)
        conv(x, w, None, KERNEL, 1)  # builds and caches the map
        row["pairs"] = next(iter(x.cset.maps.values()))[1].pairs
        with torch.no_grad():
            row["fwd_s"] = _timed(lambda: conv(x, w, None, KERNEL, 1))
        xf = x.replace(feats.clone().requires_grad_(True))
        row["fwdbwd_s"] = _timed(lambda: conv(xf, w, None, KERNEL, 1).feats.sum().backward())
    elif backend == "minkowski":
        from sparseskull.sparse.backends import minkowski
        from sparseskull.sparse.nn import SparseConv3d

        ME = minkowski._me()
        layer = SparseConv3d(CHANNELS, CHANNELS, KERNEL, bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)

        def fresh(grad=False):
            f = feats.clone().requires_grad_(grad)
            return ME.SparseTensor(f, coordinates=coords.int())

        def first():
            with torch.no_grad():
                layer(fresh())

        first_s = _timed(first)
        x = fresh()
        with torch.no_grad():
            layer(x)
            row["fwd_s"] = _timed(lambda: layer(x))
        row["map_s"] = max(0.0, first_s - row["fwd_s"])
        def fwdbwd():  # a new leaf on the same coordinate manager: its kernel maps stay cached
            leaf = minkowski.with_features(x, x.F.detach().clone().requires_grad_(True))
            layer(leaf).F.sum().backward()

        row["fwdbwd_s"] = _timed(fwdbwd)
    elif backend == "spconv":
        from sparseskull.sparse.backends import spconv
        from sparseskull.sparse.nn import SparseConv3d

        layer = SparseConv3d(CHANNELS, CHANNELS, KERNEL, bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
            x = spconv.to_spconv(SparseTensor.from_coords(coords, feats))
            row["fwd_s"] = _timed(lambda: layer(x))  # spconv builds its pairs inside every call
        row["map_s"] = None
        row["fwdbwd_s"] = None
        row["note"] = "spconv: no backward on CPU; one thread on CPU (its multi-threaded CPU path races)"
    else:
        raise ValueError(f"unknown backend {backend!r}")
    row["peak_mib"] = peak_mib()
    return row


def matmul_gflops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 432), torch.randn(432, 16)
    big_a, big_b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = _timed(lambda: big_a @ big_b, 5)
    skinny = _timed(lambda: a @ b, 5)
    return max(2 * 2048**3 / best, 2 * 4096 * 432 * 16 / skinny) / 1e9


def bench_engine(grids=(128, 256), backends=None, threads: int = 2, json_path: str | None = None) -> dict:
    from sparseskull.sparse.backends import available_backends

    backends = list(backends) if backends else available_backends() + ["dense"]
    rows = []
    for grid in grids:
        for backend in backends:
            if backend == "dense" and grid > 256:
                rows.append({"grid": grid, "backend": "dense", "note": "does not fit (a 16-channel 512^3 grid needs 8 GiB per tensor)"})
                continue
            cmd = [sys.executable, "-m", "sparseskull.evaluation.bench", str(grid), backend, str(threads)]
            run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if run.returncode != 0:
                rows.append({"grid": grid, "backend": backend, "error": run.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    gflops = matmul_gflops(threads)
    result = {"threads": threads, "matmul_gflops": round(gflops, 1), "rows": rows, "ratios": {}}
    by = {(r["grid"], r["backend"]): r for r in rows if "fwd_s" in r}
    ref_grid = 256 if (256, "torch") in by else max((g for g, b in by if b == "torch"), default=None)
    if ref_grid is not None:
        t = by[(ref_grid, "torch")]
        # fwd + backward (grad of input, grad of weight) = 3 GEMMs over the real neighbour pairs
        limit_s = 3 * 2 * t["pairs"] * CHANNELS * CHANNELS / (gflops * 1e9)
        result["ratios"]["grid"] = ref_grid
        result["ratios"]["torch_vs_limit"] = round(t["fwdbwd_s"] / limit_s, 2)
        result["limit_fwdbwd_s"] = round(limit_s, 4)
        for other in ("minkowski", "spconv", "dense"):
            o = by.get((ref_grid, other))
            if o is None:
                continue
            if o.get("fwdbwd_s"):
                result["ratios"][f"torch_vs_{other}"] = round(t["fwdbwd_s"] / o["fwdbwd_s"], 3)
            result["ratios"][f"torch_vs_{other}_fwd"] = round(t["fwd_s"] / o["fwd_s"], 3)
            result["ratios"][f"torch_vs_{other}_peak_mib"] = round(t["peak_mib"] / o["peak_mib"], 3)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _train_steps(pair_file: str, backend: str, threads: int, steps: int, batch: int = 1) -> dict:
    """Time ``steps`` training steps (Adam; ``batch`` copies of the pair) after two warm-up steps, in this process."""
    import numpy as np
    import torch

    from sparseskull.data.pairs import Pair, collate
    from sparseskull.nets.sparse_net import SparseCompletionNet, completion_loss
    from sparseskull.sparse.backends import to_backend

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = np.load(pair_file)
    x, target = collate([Pair(data["inputs"], data["target"], "bench", "parietotemporal")] * batch)
    model = SparseCompletionNet("ch1").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times, kept = [], None
    for i in range(steps + 2):
        t0 = time.perf_counter()
        out = model(to_backend(x, backend), target=target)
        loss = completion_loss(out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
        kept = [lvl.kept for lvl in out.levels]
    return {"backend": backend, "batch": batch, "input_voxels": len(x), "target_voxels": len(target), "step_s": round(statistics.median(times), 3),
            "kept_per_level": kept, "peak_mib": peak_mib(), "threads": threads}


def bench_train(resolutions=(64, 128, 256), backends=("torch",), steps: int = 5, threads: int = 2, seed: int = 5, json_path: str | None = None,
                batch_sizes=(1,)) -> dict:
    """Per resolution, backend and batch size: median seconds per training step and peak memory (each in its own
    process), on one generated skull with a parietotemporal defect (a batch is copies of it), the network
    untrained (it keeps more points than a trained one, so these are upper bounds). Several batch sizes at 64
    are the paper's Table 5."""
    import tempfile

    import numpy as np

    from sparseskull.data.augment import Augmentation, augment
    from sparseskull.data.resample import downsample_to
    from sparseskull.data.synth.defects import cut_random_defect

    skull = _generated_skull(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for res in resolutions:
            complete = skull.mask if res == skull.mask.shape[0] else downsample_to(skull.mask, res)
            defect = cut_random_defect(complete, "parietotemporal", np.random.default_rng(0))
            target, inputs = augment([complete.array, defect.defective.array], np.random.default_rng(0), Augmentation.none())
            pair_file = str(Path(tmp) / f"pair{res}.npz")
            np.savez(pair_file, inputs=inputs, target=target)
            for backend in backends:
                for batch in batch_sizes:
                    cmd = [sys.executable, "-m", "sparseskull.evaluation.bench", "train", pair_file, backend, str(threads), str(steps), str(batch)]
                    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                    row = {"resolution": res, "grid": list(complete.shape)}
                    if run.returncode != 0:
                        row.update(backend=backend, batch=batch, error=(run.stderr.strip().splitlines() or ["failed"])[-1])
                    else:
                        row.update(json.loads(run.stdout.strip().splitlines()[-1]))
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    result = {"threads": threads, "steps": steps, "rows": rows, "ratios": {}}
    by = {(r["resolution"], r["backend"]): r for r in rows if "step_s" in r and r["batch"] == batch_sizes[0]}
    for (res, backend), r in by.items():
        if backend != "torch" and (res, "torch") in by:
            result["ratios"][f"{res}: torch_vs_{backend}_step"] = round(by[(res, "torch")]["step_s"] / r["step_s"], 3)
            result["ratios"][f"{res}: torch_vs_{backend}_peak_mib"] = round(by[(res, "torch")]["peak_mib"] / r["peak_mib"], 3)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


# ---------------------------------------------------------------------------- bench network

NETWORK_RESOLUTIONS = (64, 128, 256, 512)


def _dense_grid(coords, shape):
    """The (1, 1, X, Y, Z) occupancy grid of voxel coordinates, each size rounded up to the network's total stride."""
    import numpy as np

    from sparseskull.nets.dense_net import densify, grid_shape

    return densify([coords], grid_shape(np.maximum(np.asarray(shape), coords.max(axis=0) + 1)))


def _network_one(pair_file: str, mode: str, kind: str, backend: str, threads: int, steps: int, weights: str | None) -> dict:
    """One (mode, network, backend) measurement in this process: median seconds of ``steps`` runs after
    one warm-up, this process's peak memory, and the points of each decoder level."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = np.load(pair_file)
    row = {"mode": mode, "model": kind, "backend": backend if kind == "sparse" else "torch-dense", "threads": threads}
    runs = steps + 1  # one warm-up, then the timed repeats
    if kind == "dense":
        from sparseskull.nets.dense_net import DenseCompletionNet, dice_loss
        from sparseskull.nets.sparse_net import TOTAL_STRIDE

        x, target = _dense_grid(data["inputs"], data["shape"]), _dense_grid(data["target"], data["shape"])
        target = target[..., : x.shape[2], : x.shape[3], : x.shape[4]]
        model = DenseCompletionNet("ch1")
        row["dense_grid"] = list(x.shape[2:])
        if mode == "train":
            model.train()
            if all(n == TOTAL_STRIDE for n in x.shape[2:]):  # a 1-voxel bottleneck has no batch statistics: the
                for m in model.modules():  # batch norms use running ones (the same arithmetic)
                    if isinstance(m, torch.nn.BatchNorm3d):
                        m.eval()
                row["note"] = "batch norms on running statistics (1-voxel bottleneck)"
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step():
                loss = dice_loss(model(x)[-1], target)
                opt.zero_grad()
                loss.backward()
                opt.step()

            times, _ = _repeat(step, runs)
        else:
            model.eval()
            with torch.inference_mode():
                times, _ = _repeat(lambda: model(x), runs)
    else:
        from sparseskull.data.pairs import Pair, collate
        from sparseskull.nets.sparse_net import SparseCompletionNet, completion_loss
        from sparseskull.sparse.backends import to_backend

        x, target = collate([Pair(data["inputs"], data["target"], "bench", "bench")])
        if weights:
            from sparseskull.nets.files import load_model

            model, info = load_model(weights)
            tau = float(info.tau)
        else:
            model, tau = SparseCompletionNet("ch1"), 0.0
        # without a trained model, pruning keeps exactly the ground truth's points: a trained network's counts
        row["pruning"] = "trained network" if weights else "ground truth (untrained weights)"

        def points(out):  # (generated, kept) per decoder level; the output itself is dropped at once
            return [(len(lvl.logits), lvl.kept) for lvl in out.levels]

        if mode == "train":
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step():
                out = model(to_backend(x, backend), target=target, oracle=not weights)
                loss = completion_loss(out)
                opt.zero_grad()
                loss.backward()
                opt.step()
                return points(out)

            times, levels = _repeat(step, runs)
        else:
            model.eval()
            with torch.inference_mode():
                times, levels = _repeat(lambda: points(model(to_backend(x, backend), target=None if weights else target, tau=tau,
                                                             oracle=not weights)), runs)
        row["points"] = {"input": int(len(x)), "target": int(len(target)),
                         "generated_per_level": [g for g, _ in levels], "kept_per_level": [k for _, k in levels]}
    row["seconds"] = round(statistics.median(times[1:]) if len(times) > 1 else times[0], 3)
    row["first_s"] = round(times[0], 3)
    row["peak_mib"] = peak_mib()
    return row


def _skull_pair(case, resolution: int, seed: int):
    """(complete, defective) masks at ``resolution``: a real case's, or a generated skull's with a
    parietotemporal defect."""

    from sparseskull.data.resample import downsample_to

    if case is not None:
        from sparseskull.data.io import read_mask

        complete, defective = read_mask(case.complete), read_mask(case.defective)
    else:
        complete, defective = _generated_pair(seed)
    if resolution != complete.shape[0]:
        complete, defective = downsample_to(complete, resolution), downsample_to(defective, resolution)
    return complete, defective


@functools.lru_cache(maxsize=1)
def _generated_skull(seed: int):
    """The generated skull at 512^2 x Z the benchmarks run on, made once per seed (7 s) for every benchmark in a process."""
    from sparseskull.data.synth.skull import generate_skull

    return generate_skull(seed)


@functools.lru_cache(maxsize=1)
def _generated_pair(seed: int):
    """A generated skull and its defective copy at 512^2 x Z, made once per seed for every resolution and run."""
    import numpy as np

    from sparseskull.data.synth.defects import cut_random_defect

    complete = _generated_skull(seed).mask
    return complete, cut_random_defect(complete, "parietotemporal", np.random.default_rng(0)).defective


def _memory_limit_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20 * 0.8, 1)
    except OSError:
        pass
    return 16.0


def bench_network(data: str | None = None, case_id: str | None = None, resolutions=NETWORK_RESOLUTIONS, backends=("torch",),
                  modes=("train", "inference"), dense: bool = True, steps: int = 2, threads: int = 2, seed: int = 5,
                  memory_limit_gib: float | None = None, json_path: str | None = None, plot_path: str | None = None) -> dict:
    """The whole network (ch1, batch 1) at each resolution: training step and inference, time and peak
    memory, sparse on each backend and dense where it fits, on one real skull (or a generated one).

    Each measurement runs in its own process under an address-space limit (``memory_limit_gib``, default
    80% of this machine's memory): one that runs out is reported as "does not fit" instead of taking the
    machine down. Inference uses the shipped model at the resolution it was trained for; at the others,
    untrained weights with ground-truth pruning stand in for a trained network's point counts.
    """
    import tempfile

    import numpy as np

    from sparseskull.data.augment import Augmentation, augment

    case = None
    if data is not None:
        from sparseskull.data.dataset import find_cases

        cases = [c for c in find_cases(data) if c.complete is not None and c.defective is not None]
        if not cases:
            raise ValueError(f"{data}: no case with both a complete and a defective skull")
        case = next((c for c in cases if c.case_id == case_id), None) if case_id else cases[0]
        if case is None:
            raise ValueError(f"{data}: no case {case_id!r}")
    shipped = _shipped_by_resolution()
    limit = memory_limit_gib or _memory_limit_gib()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for res in resolutions:
            complete, defective = _skull_pair(case, res, seed)
            target, inputs = augment([complete.array, defective.array], np.random.default_rng(0), Augmentation.none())
            pair_file = str(Path(tmp) / f"pair{res}.npz")
            np.savez(pair_file, inputs=inputs, target=target, shape=np.array(complete.shape))
            base = {"resolution": res, "grid": list(complete.shape), "skull_voxels": int(np.count_nonzero(complete.array)),
                    "input_voxels": int(len(inputs))}
            runs = [(mode, "sparse", b) for mode in modes for b in backends]
            if dense:
                runs += [(mode, "dense", "torch") for mode in modes]
            for mode, kind, backend in runs:
                weights = shipped.get(res) if (mode == "inference" and kind == "sparse") else None
                cmd = [sys.executable, "-m", "sparseskull.evaluation.bench", "network", pair_file, mode, kind, backend, str(threads), str(steps),
                       str(limit), weights or ""]
                run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                row = dict(base, mode=mode, model=kind, backend=backend if kind == "sparse" else "torch-dense")
                if run.returncode == 0:
                    row.update(json.loads(run.stdout.strip().splitlines()[-1]))
                else:
                    tail = (run.stderr.strip().splitlines() or [f"exit code {run.returncode}"])[-1]
                    oom = run.returncode in (-9, 137) or any(k in run.stderr for k in ("MemoryError", "not enough memory", "Cannot allocate memory", "DefaultCPUAllocator"))
                    row.update(error=f"does not fit in {limit:g} GiB" if oom else tail)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    result = {"threads": threads, "steps": steps, "memory_limit_gib": limit, "case": case.case_id if case else f"generated skull seed {seed}",
              "rows": rows, "ratios": _network_ratios(rows)}
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    if plot_path:
        plot_network(result, plot_path)
    return result


def _shipped_by_resolution() -> dict[int, str]:
    """The shipped ch1 completion models by the resolution they were trained for."""
    from sparseskull.nets.catalogue import list_models
    from sparseskull.nets.sparse_net import CHANNEL_PRESETS

    return {m.info.resolution: str(m.path) for m in list_models() if m.info.task == "completion" and tuple(m.info.channels) == tuple(CHANNEL_PRESETS["ch1"])}


def _network_ratios(rows: list[dict]) -> dict:
    ok = {(r["resolution"], r["mode"], r["model"], r["backend"]): r for r in rows if "seconds" in r}
    ratios = {}
    for (res, mode, kind, backend), r in ok.items():
        torch_row = ok.get((res, mode, "sparse", "torch"))
        if torch_row is None or r is torch_row:
            continue
        name = "dense" if kind == "dense" else backend
        ratios[f"{res} {mode}: torch/{name} time"] = round(torch_row["seconds"] / r["seconds"], 3)
        ratios[f"{res} {mode}: torch/{name} peak memory"] = round(torch_row["peak_mib"] / r["peak_mib"], 3)
    return ratios


def plot_network(result: dict, path: str | os.PathLike) -> Path:
    """The paper's Table 4 / Fig. 5 as curves (time and memory against resolution, sparse vs dense), and
    inference time against the number of skull voxels, with a line proportional to the voxels from 256 up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "seconds" in r]
    colours = {"torch": "tab:green", "minkowski": "tab:blue", "torch-dense": "tab:red"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for mode, kind, backend in sorted({(r["mode"], r["model"], r["backend"]) for r in rows}):
        pts = sorted((r["resolution"], r["seconds"], r["peak_mib"]) for r in rows if (r["mode"], r["model"], r["backend"]) == (mode, kind, backend))
        label = f"{'dense' if kind == 'dense' else 'sparse ' + backend}, {mode}"
        style = dict(color=colours.get(backend, "tab:grey"), marker="o" if mode == "train" else "s", linestyle="-" if mode == "train" else "--")
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
        axes[1].plot([p[0] for p in pts], [p[2] / 1024 for p in pts], label=label, **style)
    missing = [r for r in result["rows"] if "seconds" not in r]
    for r in missing:  # e.g. the dense training step at 512: marked where it would be
        axes[1].annotate(f"{'dense' if r['model'] == 'dense' else r['backend']} {r['mode']}: {r.get('error', 'failed')}", (r["resolution"], result["memory_limit_gib"]),
                         fontsize=7, ha="right", color=colours.get(r["backend"], "k"))
        axes[1].plot([r["resolution"]], [result["memory_limit_gib"]], marker="x", color=colours.get(r["backend"], "k"))
    for ax, title, unit in ((axes[0], "time per training step / inference", "seconds"), (axes[1], "peak memory (process RSS)", "GiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([64, 128, 256, 512], ["64", "128", "256", "512"])
        ax.set_xlabel("resolution N (grid N x N x Z)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[2]
    for backend in sorted({r["backend"] for r in rows if r["model"] == "sparse"}):
        pts = sorted((r["skull_voxels"], r["seconds"], r["resolution"]) for r in rows
                     if r["model"] == "sparse" and r["backend"] == backend and r["mode"] == "inference")
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", color=colours.get(backend, "tab:grey"), label=f"sparse {backend}, inference")
        ref = [p for p in pts if p[2] >= 256]
        if len(ref) >= 2:
            (v0, t0, _), v1 = ref[0], ref[-1][0]
            ax.plot([v0, v1], [t0, t0 * v1 / v0], color=colours.get(backend, "tab:grey"), linestyle=":", alpha=0.7,
                    label=f"proportional to voxels from 256 ({backend})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("skull voxels")
    ax.set_ylabel("seconds")
    ax.set_title("inference time against skull size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"Sparse vs dense network (ch1, batch 1, {result['threads']} CPU threads), skull {result['case']}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    if sys.argv[1] == "network":
        pair, mode, kind, backend, threads, steps, limit, weights = sys.argv[2:10]
        import importlib

        # loaded before the limit, which then bounds what the measurement itself allocates
        for name in ("torch", "sparseskull.nets.dense_net", "sparseskull.nets.sparse_net", "sparseskull.data.pairs", "sparseskull.nets.files",
                     *(["MinkowskiEngine"] if backend == "minkowski" and kind == "sparse" else [])):
            importlib.import_module(name)
        limit_address_space(float(limit))
        print(json.dumps(_network_one(pair, mode, kind, backend, int(threads), int(steps), weights or None)))
    elif sys.argv[1] == "train":
        print(json.dumps(_train_steps(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int((sys.argv[6:7] or ["1"])[0]))))
    else:
        grid, backend, threads = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
        print(json.dumps(_run_one(grid, backend, threads)))
