"""`sparseskull demo`: the main job on the bundled sample, with metrics against its ground truth.

It runs the same pipeline as `sparseskull complete` (CT -> skull -> completion -> implant STL) on
the bundled generated CT, with the default shipped model, and adds to the report how the implant
compares with the sample's ground truth: the AutoImplant metrics (DSC, bDSC, HD95), the volumes,
and the distance between the STL's centroid, read back from the file, and the true implant's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sparseskull.data.sample import FILES, load_sample, sample_dir
from sparseskull.evaluation.metrics import dice, implant_metrics, reconstruction_error
from sparseskull.implant.options import DEFAULT_THRESHOLD_HU, CompleteOptions
from sparseskull.implant.pipeline import CompletionResult, run_complete


def compare_with_truth(result: CompletionResult, truth_implant, truth_complete, truth_defective=None) -> dict:
    """How the pipeline's output compares with known masks on the same grid."""
    defective = result.defective.array if truth_defective is None else truth_defective.array
    spacing = truth_implant.spacing_mm
    m = implant_metrics(result.implant.array, truth_implant.array, defective, spacing)
    vox_cm3 = truth_implant.voxel_volume_mm3 / 1000.0
    out = {
        "skull_mask_dsc": round(dice(result.defective.array, defective), 5) if truth_defective is not None else None,
        "completion_dsc": round(dice(result.completed.array, truth_complete.array), 5),
        "completion_re_percent": round(reconstruction_error(result.completed.array, truth_complete.array), 5),
        "input_alone_dsc": round(dice(result.defective.array, truth_complete.array), 5),
        "implant_dsc": round(m["dsc"], 5),
        "implant_bdsc": round(m["bdsc"], 5),
        "implant_hd95_mm": None if not np.isfinite(m["hd95_mm"]) else round(m["hd95_mm"], 3),
        "implant_volume_cm3": round(float(result.implant.array.sum()) * vox_cm3, 3),
        "truth_implant_volume_cm3": round(float(np.count_nonzero(truth_implant.array)) * vox_cm3, 3),
    }
    if result.mesh is not None and truth_implant.array.any():
        from sparseskull.implant.mesh import RAS_FROM_LPS, mesh_centroid

        lps = mesh_centroid(result.mesh)
        if result.report["mesh"].get("space") == "RAS":
            lps = RAS_FROM_LPS[:3, :3] @ lps
        out["stl_centroid_to_truth_mm"] = round(float(np.linalg.norm(lps - truth_implant.centroid_lps())), 2)
    return out


def run_demo(out: str | os.PathLike = "demo_out", threshold_hu: float | str = DEFAULT_THRESHOLD_HU, picture: bool = True,
             model: str | None = None, device: str = "auto", backend: str = "torch", progress=None, span_opening: bool = False,
             passes: int | None = None) -> dict:
    """Complete the bundled sample CT; write the implant STL, masks, preview and report to ``out``; ``passes``: the
    network passes (default: CompleteOptions' default)."""
    sample = load_sample()
    options = CompleteOptions(threshold_hu=threshold_hu, model=model, device=device, backend=backend, preview=picture, span_opening=span_opening,
                              **({} if passes is None else {"passes": passes}))

    def truth(result: CompletionResult) -> dict:
        return {"sample": sample.info.get("what", "generated CT"), "vs_truth": compare_with_truth(result, sample.implant, sample.complete, sample.defective)}

    result = run_complete(Path(sample_dir()) / FILES["ct"], out, options, progress=progress, extra_report=truth)
    return result.report
