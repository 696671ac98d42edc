"""Validation curves of several training runs on one picture: the implant DSC of each run's validation pairs
(coarse, the network alone: completed minus input against the true implant, on the model's own grid) and its
training loss, against steps. Reads each run folder's metrics.csv (written by `sparseskull train`).

    python scripts/plot_learning_curves.py runs/noskip64 runs/skip64 runs/skip128+runs/gpu1+runs/gpu2 --out Resources/learning_curves.png
    python scripts/plot_learning_curves.py --super-resolution runs/sr128-256 runs/sr128-256-w16 --out Resources/sr_curves_128_256.png

``A+B+C``: runs that continue each other (each started with ``--init`` from the one before), drawn as one curve
whose steps go on where the previous stage ended; a dotted line marks where each later stage starts.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def _label(run: Path) -> str:
    config = json.loads((run / "config.json").read_text())
    where = "GPU" if str(config.get("device", "")).startswith("cuda") else "CPU"
    weight = config.get("new_point_weight", 1.0)
    return (f"{config['resolution']}, {config['channels']}, {'skips' if config.get('skips') else 'no skips'}, "
            f"batch {config['batch_size']}, lr {config['lr']:g}, {config['steps']} steps {where}"
            + (f", new-point weight {weight:g}" if weight != 1.0 else ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders; A+B: B continues A")
    p.add_argument("--out", required=True)
    p.add_argument("--ylim", nargs=2, type=float, metavar=("LOW", "HIGH"), help="the validation panel's range (default 0 to 1 for completion)")
    p.add_argument("--super-resolution", action="store_true", help="super-resolution runs: their validation DSC of the whole fine skull "
                   "(val_dsc), with the network's input (nearest upsampling) dashed")
    a = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for spec in a.runs:
        stages = [Path(r) for r in spec.split("+")]
        val, steps, loss, starts, offset = [], [], [], [], 0
        for i, run in enumerate(stages):
            with open(run / "metrics.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            if i:
                starts.append(offset)
            column = "val_dsc" if a.super_resolution else "val_implant_dsc"
            val += [(offset + int(r["step"]), float(r[column])) for r in rows if r.get(column)]
            given = [float(r["val_input_dsc"]) for r in rows if a.super_resolution and r.get("val_input_dsc")]
            steps += [offset + int(r["step"]) for r in rows]
            loss += [float(r["loss"]) for r in rows]
            offset += int(rows[-1]["step"])
        label = _label(stages[0]) + "".join(f"\n  + {_label(r).split(', ', 3)[-1]}" for r in stages[1:])
        line, = ax[0].plot(*zip(*val), "o-", ms=3, label=label)
        if given:
            ax[0].axhline(given[-1], color="gray", ls="--", lw=1, label="the network's input (nearest upsampling)" if spec == a.runs[0] else None)
        for x in starts:
            for axis in ax:
                axis.axvline(x, color=line.get_color(), ls=":", lw=1)
        steps, loss = np.array(steps), np.array(loss)
        k = max(1, len(loss) // 40)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax[1].plot(steps[k - 1:], smooth, color=line.get_color(), label=label)
    ax[0].set_xlabel("training step")
    ax[0].set_ylabel("val. DSC of the fine skull (one pass)" if a.super_resolution else "val. implant DSC (network alone, model grid)")
    if a.ylim:
        ax[0].set_ylim(*a.ylim)
    elif not a.super_resolution:
        ax[0].set_ylim(0, 1)
    ax[0].grid(alpha=0.3)
    ax[0].legend(fontsize=7, loc="best" if a.ylim else "lower right")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("training step")
    ax[1].set_ylabel("training loss (BCE, running mean)")
    ax[1].grid(alpha=0.3)
    what = "whole skulls, coarse copy upsampled -> fine copy" if a.super_resolution else "their own and generated defects (fixed pairs)"
    fig.suptitle(f"15 SkullFix validation skulls, {what}; CPU: 2 cores, GPU: one H200", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
