"""Ship a trained model: copy a run's model.safetensors into SparseSkullCompletion/Resources/Models/<name>.safetensors
with what a model card needs added to its metadata (the weights, and so their SHA-256, are unchanged): the cases held
out of every training stage, the total steps and time over the ``--init`` chain, and the hardware.

    python scripts/package_model.py RUN/model.safetensors NAME --held-out 005 006 ... --hardware "2-core x86 CPU, ..."
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from sparseskull.nets.catalogue import models_dir
from sparseskull.nets.files import load_model, save_model


def _chain(training: dict) -> list[dict]:
    """This stage's training record, then the one it was initialised from, and so on."""
    out = []
    while isinstance(training, dict) and training:
        out.append(training)
        training = training.get("init_training")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("name")
    p.add_argument("--held-out", nargs="+", required=True, help="case ids no training stage saw")
    p.add_argument("--hardware", required=True)
    p.add_argument("--float16", action="store_true", help="store the convolutions' weights in float16 (half the file; see save_model)")
    a = p.parse_args()
    model, info = load_model(a.model)
    stages = _chain(info.training)
    stage_val = info.training.get("val_case_ids")
    config = Path(a.model).parent / "config.json"  # a run folder's record, for model files that predate val_case_ids
    if stage_val is None and config.is_file():
        stage_val = json.loads(config.read_text()).get("val_skulls")
    training = {**info.training, "stage_val_case_ids": stage_val, "val_case_ids": list(a.held_out),
                "total_steps": sum(int(t.get("steps", 0)) for t in stages),
                "total_seconds": round(sum(float(t.get("seconds", 0.0)) for t in stages), 1), "hardware": a.hardware,
                **({"stored": "convolution weights in float16"} if a.float16 else {})}
    target = models_dir() / f"{a.name}.safetensors"
    save_model(model, target, replace(info, training=training), half=a.float16)
    print(f"{target}: {training['total_steps']} steps in {training['total_seconds']} s over {len(stages)} stages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
