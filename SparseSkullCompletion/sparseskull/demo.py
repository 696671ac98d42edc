"""`sparseskull demo`: the main job on the bundled sample, with metrics against its ground truth.

Today it runs the first stage of the clinical pipeline (CT -> thresholded skull mask) and shows
the result; skull completion and the implant STL join it when the network lands.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sparseskull import __version__
from sparseskull.io import write_volume
from sparseskull.metrics import dice, reconstruction_error
from sparseskull.preprocess import DEFAULT_THRESHOLD_HU, skull_mask_from_ct
from sparseskull.sample import load_sample


@contextmanager
def staged_output(out: Path):
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(stage, out)
    os.chmod(out, 0o755)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def preview(ct, mask, truth, path: Path) -> Path:
    """CT slices with the thresholded skull outlined, and a 3D view of the skull with the missing bone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparseskull.render import BONE, IMPLANT, render_surfaces, slice_views, view_towards

    centre = [int(c) for c in np.argwhere(truth.implant.array).mean(axis=0)]
    fig, axes = plt.subplots(1, 4, figsize=(20, 5.4), facecolor="black")
    for ax, (name, img, aspect), (_, m, _) in zip(axes, slice_views(ct, centre), slice_views(mask, centre)):
        ax.imshow(img, cmap="gray", vmin=-150, vmax=1300, aspect=aspect, interpolation="nearest")
        ax.contour(m.astype(float), levels=[0.5], colors=["#ffd24d"], linewidths=0.8)
        ax.set_title(f"{name}: CT and thresholded skull", color="white")
        ax.axis("off")
    image = render_surfaces([(mask, BONE, 1.0), (truth.implant, IMPLANT, 1.0)], view=view_towards(truth.implant, truth.complete), size=(540, 540))
    axes[3].imshow(image)
    axes[3].set_title("skull (bone) and the missing bone (orange)", color="white")
    axes[3].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return path


def run_demo(out: str | os.PathLike = "demo_out", threshold_hu: float = DEFAULT_THRESHOLD_HU, picture: bool = True) -> dict:
    """Threshold the bundled sample CT into a skull mask; write mask, picture and metrics to ``out``."""
    t0 = time.perf_counter()
    sample = load_sample()
    t_load = time.perf_counter()
    mask = skull_mask_from_ct(sample.ct, threshold_hu)
    t_mask = time.perf_counter()
    report = {
        "sparseskull": __version__,
        "input": "bundled sample: " + sample.info.get("what", "generated CT"),
        "threshold_hu": threshold_hu,
        "skull_voxels": int(np.count_nonzero(mask.array)),
        "skull_volume_cm3": round(float(np.count_nonzero(mask.array)) * mask.voxel_volume_mm3 / 1000.0, 3),
        "mask_dsc_vs_truth": round(dice(mask.array, sample.defective.array), 5),
        "mask_re_percent": round(reconstruction_error(mask.array, sample.defective.array), 5),
        "missing_bone_cm3": sample.info.get("implant_volume_cm3"),
        "completion": "not available yet: the network arrives in a later version",
        "seconds": {"load": round(t_load - t0, 3), "threshold": round(t_mask - t_load, 3)},
    }
    with staged_output(Path(out)) as stage:
        write_volume(mask, stage / "skull_mask.nrrd")
        if picture:
            preview(sample.ct, mask, sample, stage / "preview.png")
        report["seconds"]["total"] = round(time.perf_counter() - t0, 3)
        (stage / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
