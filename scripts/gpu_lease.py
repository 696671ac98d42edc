"""Fit training runs into one call on a lent GPU machine: time the pipeline, calibrate, train, pack the results.

    python scripts/gpu_lease.py --budget 550 --out "$OUT" --time-case case.npz \\
        --run w16 "--packed sr256.pkl.gz --tf32 -- --task super-resolution --resolution 256 --sr-from 128 --skips ..." \\
        --run w32 "--packed sr256.pkl.gz --tf32 -- ... --channels 32,32,32,32,64,64,128"

A lease here is 15 minutes of device time for the whole session, start included, and one call runs at most 10, so
everything that needs the GPU goes into one prepared call. In order:

1. ``--time-case``: `scripts/time_pipeline.py time` on that packed mask (CUDA cold and warm, then the CPU; mesh stubbed);
2. every ``--run`` at once for ``--calibrate`` steps, to measure each one's seconds a step with the others running;
3. every run again, its ``--steps`` fitted to the time left (so its learning-rate schedule ends), validated halfway
   and at the end; a run still going near the deadline gets SIGTERM, which saves its checkpoint;
4. each run's metrics, config and model (or checkpoint) packed into ``OUT/<name>.tar.gz``: a model over 15 MiB
   re-saved with float16 convolution weights, and a package still over 15 MiB split into ``<name>.tar.gz.part0``,
   ``part1``, ... (the tool returns at most 8 files of 16 MiB, 64 MiB in all; what it leaves out can be fetched from
   ``--work`` by a next call while the machine is warm).

Each ``--run`` is ``train_packed.py train``'s arguments (``--packed``, ``--tf32``, then ``--`` and `sparseskull train`'s
options), without ``--out``, ``--steps`` and ``--val-every``, which this script sets. Prepare everything here (packed
skulls, packed case, ``--init`` models) in a folder that git ignores and the call carries. A tool, not a test.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Lease:
    def __init__(self, budget: float, out: Path, work: Path):
        self.t0, self.budget, self.out, self.work = time.time(), budget, out, work
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "lease.log", "a")

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def say(self, *parts) -> None:
        msg = f"[{time.time() - self.t0:6.1f}s] " + " ".join(str(p) for p in parts)
        print(msg, flush=True)
        self.log.write(msg + "\n")
        self.log.flush()


def launch(name: str, args: str, out: Path, steps: int, val_every: int, log: Path) -> subprocess.Popen:
    before, sep, after = args.partition(" -- ")
    if not sep:
        raise ValueError(f"--run {name}: give train_packed.py's options, then ' -- ', then sparseskull train's")
    argv = [sys.executable, str(HERE / "train_packed.py"), "train", *shlex.split(before), "--", "--out", str(out),
            "--steps", str(steps), "--val-every", str(val_every), "--no-progress", *shlex.split(after)]
    return subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def rows(run: Path) -> list[dict]:
    try:
        with open(run / "metrics.csv") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def stop(procs: dict, sig=signal.SIGKILL) -> None:
    for p in procs.values():
        if p.poll() is None:
            os.killpg(p.pid, sig)


def calibrate(lease: Lease, runs: dict, steps: int, limit: float) -> tuple[dict, float]:
    """Seconds a step for each run, all running at once (the runs' own `seconds` column, after 4 warm-up steps);
    and the longest start-up (process start to first step)."""
    t = time.time()
    dirs = {n: lease.work / f"calibrate-{n}" for n in runs}
    procs = {n: launch(n, a, dirs[n], 10**6, 10**6, lease.work / f"calibrate-{n}.log") for n, a in runs.items()}
    first: dict[str, float] = {}
    try:
        while time.time() - t < limit and not all(len(rows(d)) >= steps or procs[n].poll() is not None for n, d in dirs.items()):
            time.sleep(2)
            for n, d in dirs.items():
                if n not in first and rows(d):
                    first[n] = time.time() - t
    finally:
        stop(procs)
    rate = {}
    for n, d in dirs.items():
        s = [float(r["seconds"]) for r in rows(d)]
        if len(s) >= 8:
            rate[n] = (s[-1] - s[3]) / (len(s) - 4)
        else:
            lease.say(n, f"not calibrated ({len(s)} steps):", (lease.work / f"calibrate-{n}.log").read_text()[-2000:])
    lease.say("seconds a step:", {n: round(r, 3) for n, r in rate.items()}, "start-up:", {n: round(v) for n, v in first.items()})
    return rate, max(first.values(), default=30.0)


def train(lease: Lease, runs: dict, rate: dict, startup: float, reserve: float) -> list[str]:
    budget = lease.left() - startup - reserve
    procs, dirs = {}, {}
    for n, r in rate.items():
        steps = int(budget / r * 0.9)
        if steps < 20:
            lease.say(n, f"skipped: {budget:.0f} s left fit only {steps} steps")
            continue
        dirs[n] = lease.work / f"run-{n}"
        lease.say(n, f"{steps} steps at {r:.3f} s a step ({budget:.0f} s)")
        procs[n] = launch(n, runs[n], dirs[n], steps, max(10, steps // 2), lease.out / f"{n}.log")
    while any(p.poll() is None for p in procs.values()):
        time.sleep(3)
        if lease.left() < 30:  # out of time: SIGTERM saves each checkpoint (`sparseskull train --export` makes a model)
            lease.say("deadline: stopping the runs")
            stop(procs, signal.SIGTERM)
            break
    for n, p in procs.items():
        try:
            p.wait(timeout=25)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
        lease.say(n, "exit", p.returncode, "last row:", (rows(dirs[n]) or [{}])[-1])
    for n, d in dirs.items():
        model = d / "model.safetensors"
        if model.exists() and model.stat().st_size > PART_BYTES:
            shrink(model)
        tar_path = lease.out / f"{n}.tar.gz"
        with tarfile.open(tar_path, "w:gz") as tar:
            for f in ("metrics.csv", "config.json", "model.safetensors"):
                if (d / f).exists():
                    tar.add(d / f, arcname=f"{n}/{f}")
            if not model.exists() and (d / "checkpoint.pt").exists():
                tar.add(d / "checkpoint.pt", arcname=f"{n}/checkpoint.pt")
        parts = split(tar_path)
        if len(parts) > 1:
            lease.say(n, f"{tar_path.name} in {len(parts)} parts (join: cat {n}.tar.gz.part* > {n}.tar.gz)")
    return list(dirs)


PART_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB, at most 8 of them and 64 MiB in all


def shrink(model: Path) -> None:
    """A model file too large to come back whole, re-saved with float16 convolution weights (half the size; the
    same as `package_model.py --float16` does when shipping)."""
    from sparseskull.nets.files import load_model, save_model

    net, info = load_model(model)
    save_model(net, model, info, half=True)


def split(path: Path) -> list[Path]:
    """``path`` as it is when it fits in one returned file, else in numbered parts of PART_BYTES (the file removed)."""
    if path.stat().st_size <= PART_BYTES:
        return [path]
    parts = []
    with open(path, "rb") as f:
        while chunk := f.read(PART_BYTES):
            parts.append(path.with_name(f"{path.name}.part{len(parts)}"))
            parts[-1].write_bytes(chunk)
    path.unlink()
    return parts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, required=True, help="seconds this call may take (leave the call's timeout some room)")
    p.add_argument("--out", type=Path, required=True, help="what comes back: lease.log, timing.json, <run>.log, <run>.tar.gz")
    p.add_argument("--work", type=Path, default=Path("/tmp/lease"), help="the runs' folders")
    p.add_argument("--time-case", type=Path, help="a mask packed by `scripts/time_pipeline.py pack`: time the pipeline first")
    p.add_argument("--device", default="cuda")
    p.add_argument("--run", nargs=2, action="append", default=[], metavar=("NAME", "ARGS"))
    p.add_argument("--calibrate", type=int, default=40, help="steps of the calibration runs")
    p.add_argument("--rate", type=float, help="seconds a step, known from an earlier call: skip the calibration")
    p.add_argument("--reserve", type=float, default=60, help="seconds kept for validation, export and packing")
    a = p.parse_args()
    lease = Lease(a.budget, a.out, a.work)
    probe = "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
    lease.say("PyTorch and device:", subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip())  # for the card
    if a.time_case:
        cmd = [sys.executable, str(HERE / "time_pipeline.py"), "time", str(a.time_case), "--device", a.device, "--no-mesh",
               "--json", str(a.out / "timing.json")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        lease.say("pipeline timing:", r.returncode, "\n" + r.stdout + r.stderr[-2000:])
    runs = dict(a.run)
    if runs:
        if a.rate:
            rate, startup = {n: a.rate for n in runs}, 40.0
        else:
            rate, startup = calibrate(lease, runs, a.calibrate, limit=min(120.0, lease.left() / 3))
        train(lease, runs, rate, startup, a.reserve)
    lease.say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
