"""Regenerate the pictures in Resources/ (run from the repository root: python Resources/make_figures.py).

- generated_case.png: a generated skull, SkullBreak-class defects with their implants, and its CT.
- real_vs_generated.png: a real SkullFix skull (../shared/data, CC BY-NC-SA 4.0) beside a generated one,
  in the same views; skipped when the real data is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sparseskull.data.io import read_mask
from sparseskull.data.synth.ct import synthesize_ct
from sparseskull.data.synth.defects import DEFECT_CLASSES, BonePoints, cut_random_defect
from sparseskull.data.synth.skull import generate_skull
from sparseskull.implant.render import BONE, IMPLANT, render_surfaces, slice_views, view_towards

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "autoimplant2020" / "complete_skull" / "000.nrrd"
SEED = 7


def _panel(ax, image, title):
    ax.imshow(image)
    ax.set_title(title, color="white", fontsize=11)
    ax.axis("off")


def generated_case(out: Path) -> None:
    skull = generate_skull(SEED)
    points = BonePoints.of(skull.mask)
    rng = np.random.default_rng(SEED)
    defects = {cls: cut_random_defect(points, cls, rng, skull.shape.centre_lps) for cls in DEFECT_CLASSES}
    ct = synthesize_ct(defects["parietotemporal"].defective, seed=SEED, envelope=skull.mask)
    fig, axes = plt.subplots(3, 5, figsize=(22, 13.5), facecolor="black")
    for ax, view in zip(axes[0], ("anterior", "left", "superior", "oblique", "posterior-oblique")):
        _panel(ax, render_surfaces([(skull.mask, BONE, 1.0)], view, (420, 420)), f"generated skull: {view}")
    for ax, (cls, d) in zip(axes[1], defects.items()):
        image = render_surfaces([(d.defective, BONE, 1.0), (d.implant, IMPLANT, 1.0)], view_towards(d.implant, skull.mask), (420, 420))
        cm3 = d.implant.array.sum() * skull.mask.voxel_volume_mm3 / 1000
        _panel(ax, image, f"{cls}: implant {cm3:.0f} cm$^3$")
    centre = [int(c) for c in np.argwhere(defects["parietotemporal"].implant.array).mean(axis=0)]
    views = slice_views(ct, centre)
    for ax, (name, img, aspect) in zip(axes[2][:3], views):
        ax.imshow(img, cmap="gray", vmin=-100, vmax=200, aspect=aspect)
        ax.set_title(f"synthetic CT, {name} (brain window)", color="white", fontsize=11)
        ax.axis("off")
    for ax, (name, img, aspect) in zip(axes[2][3:], views[:2]):
        ax.imshow(img, cmap="gray", vmin=-300, vmax=1900, aspect=aspect)
        ax.set_title(f"synthetic CT, {name} (bone window)", color="white", fontsize=11)
        ax.axis("off")
    s = skull.mask
    fig.suptitle(
        f"sparseskull generated case (seed {SEED}): {s.shape[0]} x {s.shape[1]} x {s.shape[2]}, "
        f"spacing {s.spacing_mm[0]:.3f} x {s.spacing_mm[1]:.3f} x {s.spacing_mm[2]:.3f} mm, "
        f"{int(s.array.sum()):,} bone voxels",
        color="white",
        fontsize=14,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=60, facecolor="black")
    plt.close(fig)


def real_vs_generated(out: Path) -> None:
    real = read_mask(REAL)
    generated = generate_skull(SEED).mask
    views = ("anterior", "left", "superior", "posterior-oblique")
    fig, axes = plt.subplots(2, 4, figsize=(18, 9.4), facecolor="black")
    for row, (name, mask) in enumerate((("real SkullFix 000", real), (f"generated (seed {SEED})", generated))):
        for ax, view in zip(axes[row], views):
            _panel(ax, render_surfaces([(mask, BONE, 1.0)], view, (420, 420)), f"{name}: {view}")
    fig.suptitle("Real skull (SkullFix, CC BY-NC-SA 4.0, Kodym et al. 2021) vs generated skull", color="white", fontsize=14)
    fig.tight_layout()
    fig.savefig(out, dpi=60, facecolor="black")
    plt.close(fig)


if __name__ == "__main__":
    generated_case(HERE / "generated_case.png")
    if REAL.is_file():
        real_vs_generated(HERE / "real_vs_generated.png")
    else:
        print(f"real data not found at {REAL}: real_vs_generated.png not remade", file=sys.stderr)
