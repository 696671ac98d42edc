"""Benchmarks (commands, not tests).

`sparseskull bench engine`: one 3x3x3 16->16 sparse convolution on ellipsoid shells, per backend.
`sparseskull bench train`: training steps of the paper's network (ch1) on one generated skull at the
paper's resolutions (64^2 x Z/8 to 512^2 x Z), per backend.

Each (grid, backend) runs in its own process, so its peak RSS is its own. Times are medians of a
few repeats on the configured threads; ratios compare backends measured in the same run, because
absolute CPU times drift on shared machines.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def _timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_mib() -> float:
    """This process's peak resident memory. VmHWM starts afresh at exec; ru_maxrss (the fallback off
    Linux) carries the parent's high-water mark into a child, which would hide the child's own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


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
    row["peak_mib"] = _peak_mib()
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
            cmd = [sys.executable, "-m", "sparseskull.bench", str(grid), backend, str(threads)]
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


def _train_steps(pair_file: str, backend: str, threads: int, steps: int) -> dict:
    """Time ``steps`` training steps (batch 1, Adam) after two warm-up steps, in this process."""
    import numpy as np
    import torch

    from sparseskull.model import SparseCompletionNet, completion_loss
    from sparseskull.pairs import Pair, collate
    from sparseskull.sparse.backends import to_backend

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = np.load(pair_file)
    x, target = collate([Pair(data["inputs"], data["target"], "bench", "parietotemporal")])
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
    return {"backend": backend, "input_voxels": len(x), "target_voxels": len(target), "step_s": round(statistics.median(times), 3),
            "kept_per_level": kept, "peak_mib": _peak_mib(), "threads": threads}


def bench_train(resolutions=(64, 128, 256), backends=("torch",), steps: int = 5, threads: int = 2, seed: int = 5, json_path: str | None = None) -> dict:
    """Per resolution and backend: median seconds per training step (batch 1) and peak memory, on one
    generated skull with a parietotemporal defect, the network untrained (it keeps more points than
    a trained one, so these are upper bounds)."""
    import tempfile

    import numpy as np

    from sparseskull.augment import Augmentation, augment
    from sparseskull.resample import downsample_to
    from sparseskull.synth.defects import cut_random_defect
    from sparseskull.synth.skull import generate_skull

    skull = generate_skull(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for res in resolutions:
            complete = skull.mask if res == skull.mask.shape[0] else downsample_to(skull.mask, res)
            defect = cut_random_defect(complete, "parietotemporal", np.random.default_rng(0))
            target, inputs = augment([complete.array, defect.defective.array], np.random.default_rng(0), Augmentation.none())
            pair_file = str(Path(tmp) / f"pair{res}.npz")
            np.savez(pair_file, inputs=inputs, target=target)
            for backend in backends:
                cmd = [sys.executable, "-m", "sparseskull.bench", "train", pair_file, backend, str(threads), str(steps)]
                run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                row = {"resolution": res, "grid": list(complete.shape)}
                if run.returncode != 0:
                    row.update(backend=backend, error=(run.stderr.strip().splitlines() or ["failed"])[-1])
                else:
                    row.update(json.loads(run.stdout.strip().splitlines()[-1]))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    result = {"threads": threads, "steps": steps, "rows": rows, "ratios": {}}
    by = {(r["resolution"], r["backend"]): r for r in rows if "step_s" in r}
    for (res, backend), r in by.items():
        if backend != "torch" and (res, "torch") in by:
            result["ratios"][f"{res}: torch_vs_{backend}_step"] = round(by[(res, "torch")]["step_s"] / r["step_s"], 3)
            result["ratios"][f"{res}: torch_vs_{backend}_peak_mib"] = round(by[(res, "torch")]["peak_mib"] / r["peak_mib"], 3)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    if sys.argv[1] == "train":
        print(json.dumps(_train_steps(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
    else:
        grid, backend, threads = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
        print(json.dumps(_run_one(grid, backend, threads)))
