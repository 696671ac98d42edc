"""Time the Slicer module's 3D surfaces of its three segments, by surface method, on a `sparseskull complete` output
folder (under slicer-core, as the module's tests run): Slicer's default (flying edges, then windowed-sinc smoothing),
surface nets smoothed the same way (the module's choice), and surface nets' own smoothing. Alternates the methods so
a noisy machine slows each alike; ``--picture`` renders the defective skull and the implant by each method.

    sparseskull complete case.nrrd --out out046 --no-preview
    python scripts/time_segment_surfaces.py out046 --rounds 2 --picture surfaces.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SparseSkullCompletion"))  # the module, as Slicer finds it

# name: (the rule's "Conversion method", "SurfaceNets smoothing")
METHODS = {"default": ("0", "0"), "nets": ("1", "0"), "nets-own-smoothing": ("1", "1")}


def surfaces(out: Path, method: str):
    """The three segments' closed surfaces by ``method``, and the seconds they took."""
    import slicer

    import SparseSkullCompletion as module

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    logic = module.SparseSkullCompletionLogic()
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")  # a volume loaded as Slicer loads a file
    storage.SetFileName(str(out / "defective_skull.nrrd"))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    if not storage.ReadData(node):
        raise SystemExit(f"cannot read {out / 'defective_skull.nrrd'}")
    segmentation_node, _, _ = logic.loadOutputs(str(out), node, show3D=False)
    segmentation = segmentation_node.GetSegmentation()
    conversion, own = METHODS[method]
    segmentation.SetConversionParameter(logic.SURFACE_METHOD, conversion)
    segmentation.SetConversionParameter("SurfaceNets smoothing", own)
    t = time.perf_counter()
    segmentation_node.CreateClosedSurfaceRepresentation()
    seconds = time.perf_counter() - t
    return [segmentation.GetNthSegment(i).GetRepresentation("Closed surface") for i in range(3)], seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="a `sparseskull complete` output folder (its three masks)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--picture", type=Path, help="render the defective skull and the implant by each method (PNG)")
    a = p.parse_args()
    shown = {}
    for _ in range(a.rounds):
        for method in a.methods:
            polys, seconds = surfaces(a.out, method)
            shown[method] = polys
            print(f"{method}: {seconds:.2f} s, points per segment {[poly.GetNumberOfPoints() for poly in polys]}", flush=True)
    if a.picture:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sparseskull.implant.render import render_surfaces

        fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 6), squeeze=False)
        for ax, (method, polys) in zip(axes[0], shown.items()):
            ax.imshow(render_surfaces([(polys[0], (0.93, 0.9, 0.82), 1.0), (polys[2], (1.0, 0.5, 0.1), 1.0)], view=(0.3, -1.0, 0.5), size=(600, 600)))
            ax.set_title(method)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(a.picture, dpi=80)
        print(f"picture: {a.picture}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
