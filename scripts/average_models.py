"""Average the weights of models of one architecture: checkpoints of one training trajectory, a model and its own
fine-tuned continuation (stochastic weight averaging's idea, Izmailov et al. 2018, without its learning-rate cycle).
The first model's metadata is kept, with the sources named in its training record.

    python scripts/average_models.py skullfix-skip-ch2-128 runs/ch2cpu/model.safetensors --out averaged.safetensors

A tool for an experiment, not a test; ship the result with scripts/package_model.py like any run's model.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from sparseskull.nets.catalogue import resolve_model
from sparseskull.nets.files import load_model, save_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="shipped model names or .safetensors paths, all of one architecture")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--weights", type=float, nargs="+", help="one weight per model (default: equal)")
    a = p.parse_args()
    if len(a.models) < 2:
        p.error("give at least two models")
    weights = a.weights or [1.0] * len(a.models)
    if len(weights) != len(a.models) or min(weights) < 0 or sum(weights) <= 0:
        p.error("--weights: one non-negative weight per model, not all zero")
    loaded = [load_model(resolve_model(spec)) for spec in a.models]
    first, info = loaded[0]
    for spec, (model, other) in zip(a.models[1:], loaded[1:]):
        if (tuple(other.channels), other.skips, other.task, other.resolution) != (tuple(info.channels), info.skips, info.task, info.resolution):
            raise SystemExit(f"{spec}: not the architecture of {a.models[0]}")
    states = [model.state_dict() for model, _ in loaded]
    total = sum(weights)
    averaged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            averaged[key] = sum(w * s[key].double() for w, s in zip(weights, states)).div(total).to(value.dtype)
        else:  # counters (batch norms' tracked batches): the first model's
            averaged[key] = value
    first.load_state_dict(averaged)
    training = {**info.training, "averaged_from": [str(resolve_model(spec)) for spec in a.models], "averaging_weights": weights}
    save_model(first, a.out, replace(info, training=training))
    print(f"{a.out}: the weighted mean of {len(a.models)} models")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
