"""The loader and IO on the real SkullFix cases (skipped, saying why, where ../shared/data is absent)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sparseskull.data.dataset import detect_layout, find_cases
from sparseskull.data.io import read_mask
from sparseskull.data.synth.defects import cut_random_defect


def _header_geometry(path) -> tuple[np.ndarray, np.ndarray]:
    """Space directions (columns) and origin parsed from the NRRD header text itself."""
    raw = path.read_bytes()
    head = raw[: raw.index(b"\n\n")].decode()
    vectors = re.findall(r"\(([^)]*)\)", head.split("space directions:")[1].splitlines()[0])
    directions = np.array([[float(v) for v in vec.split(",")] for vec in vectors]).T
    origin = np.array([float(v) for v in re.search(r"space origin: \(([^)]*)\)", head).group(1).split(",")])
    return directions, origin


def test_loader_finds_the_75_skullfix_cases(real_data):
    assert detect_layout(real_data) == "skullfix"
    cases = find_cases(real_data)
    assert len(cases) == 75
    assert all(c.defect_class is None and c.complete and c.defective and c.implant for c in cases)


@pytest.mark.slow
def test_oblique_cases_read_with_the_full_direction_matrix(real_data):
    cases = find_cases(real_data)
    oblique = 0
    for case in cases[:4]:
        directions, origin = _header_geometry(case.complete)
        mask = read_mask(case.complete)
        spacing = np.linalg.norm(directions, axis=0)
        assert np.allclose(mask.spacing_mm, spacing, atol=1e-6), case.case_id
        assert np.allclose(mask.direction, directions / spacing, atol=1e-6)
        assert np.allclose(mask.origin_lps, origin, atol=1e-6)
        # a voxel's physical position: origin + sum of index times the header's direction vectors
        ijk = np.array([[100.0, 200.0, 50.0]])
        assert np.allclose(mask.index_to_lps(ijk)[0], origin + directions @ ijk[0], atol=1e-6)
        oblique += not np.allclose(directions, np.diag(np.diag(directions)))
    assert oblique >= 2, "the first cases include tilted ones"


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])
def test_real_implant_is_complete_minus_defective(real_data, index):
    case = find_cases(real_data)[index]
    complete, defective, implant = (read_mask(p) for p in (case.complete, case.defective, case.implant))
    assert complete.same_grid(defective) and complete.same_grid(implant)
    assert np.array_equal(implant.array, complete.array & ~defective.array)
    assert 2.5e6 <= complete.array.sum() <= 7.7e6


@pytest.mark.slow
def test_defects_cut_from_a_real_skull(real_data):
    complete = read_mask(find_cases(real_data)[0].complete)
    rng = np.random.default_rng(0)
    for cls in ("bilateral", "parietotemporal"):
        d = cut_random_defect(complete, cls, rng)
        assert np.array_equal(d.implant.array | d.defective.array, complete.array)
        cm3 = d.implant.array.sum() * complete.voxel_volume_mm3 / 1000
        assert 10 < cm3 < 140, (cls, cm3)
