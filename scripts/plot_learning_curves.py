"""Validation curves of several training runs on one picture: the implant DSC of each run's validation pairs
(coarse, the network alone: completed minus input against the true implant, on the model's own grid) and its
training loss, against steps. Reads each run folder's metrics.csv (written by `sparseskull train`).

    python scripts/plot_learning_curves.py runs/noskip64 runs/skip64 runs/skip128 --out Resources/learning_curves.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def _label(run: Path) -> str:
    config = json.loads((run / "config.json").read_text())
    return (f"{config['resolution']}, {config['channels']}, {'skips' if config.get('skips') else 'no skips'}, "
            f"batch {config['batch_size']}, {config['steps']} steps")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for run in a.runs:
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        label = _label(run)
        val = [(int(r["step"]), float(r["val_implant_dsc"])) for r in rows if r.get("val_implant_dsc")]
        line, = ax[0].plot(*zip(*val), "o-", ms=3, label=label)
        steps = np.array([int(r["step"]) for r in rows])
        loss = np.array([float(r["loss"]) for r in rows])
        k = max(1, len(loss) // 40)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax[1].plot(steps[k - 1:], smooth, color=line.get_color(), label=label)
    ax[0].set_xlabel("training step")
    ax[0].set_ylabel("val. implant DSC (network alone, model grid)")
    ax[0].set_ylim(0, 1)
    ax[0].grid(alpha=0.3)
    ax[0].legend(fontsize=7)
    ax[1].set_yscale("log")
    ax[1].set_xlabel("training step")
    ax[1].set_ylabel("training loss (BCE, running mean)")
    ax[1].grid(alpha=0.3)
    fig.suptitle("15 SkullFix validation skulls, their own and generated defects (fixed pairs); 2-core CPU", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
