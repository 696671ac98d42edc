"""Skull data sets on disk: the SkullFix and SkullBreak layouts, read by one loader.

- SkullFix (AutoImplant 2020): ``complete_skull/NNN.nrrd``, ``defective_skull/NNN.nrrd``,
  ``implant/NNN.nrrd``: one defect per skull.
- SkullBreak (AutoImplant 2021 task 1) and ``sparseskull make-data``: ``complete_skull/NNN.nrrd``,
  ``defective_skull/<class>/NNN.nrrd``, ``implant/<class>/NNN.nrrd``. ``make-data`` adds the
  paper's coarse copies in ``64/``, ``128/``, ``256/`` (each the same layout) and CTs in
  ``ct/<class>/NNN.nrrd`` (the CT of that defective skull).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sparseskull.data.io import IMAGE_SUFFIXES

COMPLETE, DEFECTIVE, IMPLANT, CT = "complete_skull", "defective_skull", "implant", "ct"


@dataclass(frozen=True)
class Case:
    """One training/evaluation case: paths of its volumes (None where the data set lacks them)."""

    case_id: str
    defect_class: str | None
    complete: Path | None
    defective: Path | None
    implant: Path | None
    ct: Path | None = None

    @property
    def name(self) -> str:
        return self.case_id if self.defect_class is None else f"{self.defect_class}/{self.case_id}"


def case_stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {
        case_stem(p): p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and any(p.name.lower().endswith(s) for s in IMAGE_SUFFIXES)
    }


def detect_layout(root: Path) -> str:
    """'skullbreak' (defects in per-class folders), 'skullfix' (one defect per skull) or 'complete-only'."""
    root = Path(root)
    defective = root / DEFECTIVE
    if defective.is_dir():
        if any(p.is_dir() for p in defective.iterdir()):
            return "skullbreak"
        return "skullfix"
    if (root / COMPLETE).is_dir():
        return "complete-only"
    found = ", ".join(sorted(p.name for p in root.iterdir())) if root.is_dir() else "nothing: not a folder"
    raise FileNotFoundError(
        f"{root}: not a skull data set; expected {COMPLETE}/ and {DEFECTIVE}/ (SkullFix or SkullBreak layout), found {found}"
    )


def data_root(root: str | os.PathLike, resolution: int | None = None) -> Path:
    """The folder of one resolution: ``root`` itself for full resolution, ``root/<resolution>`` for a copy."""
    root = Path(root)
    if resolution is None:
        return root
    sub = root / str(resolution)
    if sub.is_dir():
        return sub
    if resolution == 512:  # full resolution lives at the top of the data set
        return root
    have = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []
    raise FileNotFoundError(f"{root}: no copy at resolution {resolution} (have: full resolution{''.join(', ' + h for h in have)})")


def find_cases(root: str | os.PathLike, resolution: int | None = None, classes: tuple[str, ...] | None = None) -> list[Case]:
    """All cases under ``root`` in either layout, sorted by class then id."""
    root = data_root(root, resolution)
    layout = detect_layout(root)
    complete = _images(root / COMPLETE)
    cases: list[Case] = []
    if layout == "skullfix":
        defective, implant, ct = _images(root / DEFECTIVE), _images(root / IMPLANT), _images(root / CT)
        for cid, path in defective.items():
            cases.append(Case(cid, None, complete.get(cid), path, implant.get(cid), ct.get(cid)))
        # complete skulls without a defective one beside them (e.g. generated skulls added to a SkullFix folder):
        # training cuts their defects on the fly; evaluation, which needs a defect, leaves them out
        cases += [Case(cid, None, path, None, None) for cid, path in complete.items() if cid not in defective]
    elif layout == "skullbreak":
        for class_dir in sorted(p for p in (root / DEFECTIVE).iterdir() if p.is_dir()):
            cls = class_dir.name
            if classes is not None and cls not in classes:
                continue
            implant, ct = _images(root / IMPLANT / cls), _images(root / CT / cls)
            for cid, path in _images(class_dir).items():
                cases.append(Case(cid, cls, complete.get(cid), path, implant.get(cid), ct.get(cid)))
    else:
        cases = [Case(cid, None, path, None, None) for cid, path in complete.items()]
    if not cases:
        raise FileNotFoundError(f"{root}: the {layout} layout is there but holds no image files")
    return cases
