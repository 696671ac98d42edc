"""Shared fixtures: generated skulls at two sizes, and the real SkullFix data where it exists."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("SPARSESKULL_REAL_DATA", REPO.parent / "shared" / "data" / "autoimplant2020"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The 75 real SkullFix cases (never copied into the repository); skip, saying why, where absent."""
    if not (REAL_DATA / "complete_skull").is_dir():
        pytest.skip(f"real SkullFix data not found at {REAL_DATA} (set SPARSESKULL_REAL_DATA to its folder)")
    return REAL_DATA


@pytest.fixture(scope="session")
def skull_128():
    """A generated skull on a 128 x 128 x Z grid (about 1.9 mm in-plane): fast, for logic tests."""
    from sparseskull.data.synth.skull import generate_skull

    return generate_skull(11, size=128)


@pytest.fixture(scope="session")
def skull_512():
    """A generated skull at full resolution, with the seconds it took."""
    import time

    from sparseskull.data.synth.skull import generate_skull

    t0 = time.perf_counter()
    skull = generate_skull(5)
    return skull, time.perf_counter() - t0


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Three generated skulls at 128^2 x Z (the SkullBreak layout, five defect classes each) with 64 copies."""
    from sparseskull.data.synth.make_data import make_data

    out = tmp_path_factory.mktemp("tiny") / "data"
    make_data(out, 3, seed=3, size=128, ct="none", workers=1, progress=False)
    return out


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Coarse copies cached by the training loader go to a temporary folder, not the user's cache."""
    os.environ["SPARSESKULL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
