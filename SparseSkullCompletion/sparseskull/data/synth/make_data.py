"""`sparseskull make-data`: a generated data set in the SkullBreak layout, with coarse copies and CTs."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparseskull import __version__
from sparseskull.data.dataset import COMPLETE, CT, DEFECTIVE, IMPLANT
from sparseskull.data.io import atomic_write, write_volume
from sparseskull.data.resample import PAPER_RESOLUTIONS, downsample_pyramid
from sparseskull.data.synth.ct import synthesize_ct
from sparseskull.data.synth.defects import DEFECT_CLASSES, BonePoints, cut_random_defect
from sparseskull.data.synth.skull import generate_skull

MANIFEST = "cases.json"


@dataclass(frozen=True)
class CaseJob:
    out: str
    index: int
    seed: int
    size: int
    resolutions: tuple[int, ...]
    ct_classes: tuple[str, ...]
    threads: int


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a data set made with ``seed`` (independent streams per case)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def make_case(job: CaseJob) -> dict:
    """Generate, cut and write one case; returns its manifest entry."""
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    out, cid = Path(job.out), f"{job.index:03d}"
    skull = generate_skull(job.seed, size=job.size)
    complete = skull.mask
    rng = np.random.default_rng([job.seed, 2])
    points = BonePoints.of(complete)
    defects = {cls: cut_random_defect(points, cls, rng, skull.shape.centre_lps) for cls in DEFECT_CLASSES}

    roots = {1: out, **{job.size // res: out / str(res) for res in job.resolutions}}
    completes = downsample_pyramid(complete, roots)
    for factor, root in roots.items():
        write_volume(completes[factor], root / COMPLETE / f"{cid}.nrrd")
    for cls, d in defects.items():
        for factor, defective in downsample_pyramid(d.defective, roots).items():
            full = completes[factor]
            write_volume(defective, roots[factor] / DEFECTIVE / cls / f"{cid}.nrrd")
            write_volume(full.with_array(full.array & ~defective.array), roots[factor] / IMPLANT / cls / f"{cid}.nrrd")
    for cls in job.ct_classes:
        write_volume(synthesize_ct(defects[cls].defective, seed=job.seed, envelope=complete), out / CT / cls / f"{cid}.nrrd")
    bone = int(np.count_nonzero(complete.array))
    return {
        "id": cid,
        "seed": job.seed,
        "shape": list(complete.shape),
        "spacing_mm": [round(s, 6) for s in complete.spacing_mm],
        "oblique": bool(not np.allclose(complete.direction, np.eye(3))),
        "complete_voxels": bone,
        "implant_voxels": {cls: int(np.count_nonzero(d.implant.array)) for cls, d in defects.items()},
        "ct": list(job.ct_classes),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def make_data(
    out: str | os.PathLike,
    cases: int,
    seed: int = 0,
    size: int = 512,
    resolutions: tuple[int, ...] | None = None,
    ct: str = "one",
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write ``cases`` generated cases to ``out``; returns the manifest (also written as cases.json).

    ``resolutions``: in-plane sizes of the coarse copies (default: 64, 128, 256 where they divide ``size``).

    ``ct``: 'one' writes the CT of one defective skull per case (the class cycles with the case
    index), 'all' of every class, 'none' no CT.
    """
    if resolutions is None:  # the paper's coarse copies that fit under this grid size
        resolutions = tuple(r for r in PAPER_RESOLUTIONS if r < size and size % r == 0)
    if cases < 1:
        raise ValueError(f"--cases must be at least 1, got {cases}")
    bad = [r for r in resolutions if r >= size or size % r]
    if bad:
        raise ValueError(f"coarse resolutions must divide the grid size {size}: {bad} do not")
    if ct not in ("one", "all", "none"):
        raise ValueError(f"ct must be one, all or none; got {ct!r}")
    out = Path(out)
    if (out / MANIFEST).exists() or (out / COMPLETE).exists():
        raise FileExistsError(f"{out}: already holds a data set; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, cases))
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
    jobs = []
    for i in range(cases):
        ct_classes = {"one": (DEFECT_CLASSES[i % len(DEFECT_CLASSES)],), "all": DEFECT_CLASSES, "none": ()}[ct]
        jobs.append(CaseJob(str(out), i, case_seed(seed, i), size, tuple(resolutions), ct_classes, threads))

    from tqdm import tqdm

    bar = tqdm(total=cases, desc="make-data", unit="case", disable=not progress)
    if workers == 1:
        entries = []
        for job in jobs:
            entries.append(make_case(job))
            bar.update()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            entries = []
            for entry in pool.map(make_case, jobs):
                entries.append(entry)
                bar.update()
    bar.close()
    manifest = {
        "generator": f"sparseskull {__version__}",
        "seed": seed,
        "size": size,
        "resolutions": [size, *resolutions],
        "defect_classes": list(DEFECT_CLASSES),
        "layout": "skullbreak",
        "cases": entries,
    }
    atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    return manifest
