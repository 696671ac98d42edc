"""The engine benchmark command runs and reports what it promises (tiny grids: a smoke test, not a benchmark)."""

from __future__ import annotations

import json

from sparseskull.bench import bench_engine, shell_coords
from sparseskull.cli import main


def test_shell_occupancy_matches_the_reference_shell():
    coords, shell = shell_coords(128)
    assert abs(shell.float().mean().item() - 0.0665) < 0.003
    assert len(coords) == int(shell.sum())


def test_bench_engine_writes_rows_and_ratios(tmp_path):
    out = tmp_path / "engine.json"
    result = bench_engine(grids=(24,), backends=["torch", "dense"], threads=1, json_path=str(out))
    assert json.loads(out.read_text()) == result
    rows = {r["backend"]: r for r in result["rows"]}
    for backend in ("torch", "dense"):
        row = rows[backend]
        for key in ("grid", "voxels", "backend", "fwd_s", "map_s", "fwdbwd_s", "peak_mib"):
            assert key in row, (backend, key)
        assert row["fwdbwd_s"] > 0 and row["peak_mib"] > 0
    assert result["matmul_gflops"] > 0
    assert {"torch_vs_limit", "torch_vs_dense"} <= set(result["ratios"])


def test_bench_cli(tmp_path, capsys):
    assert main(["bench", "engine", "--grids", "16", "--backends", "torch", "--threads", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert "torch" in capsys.readouterr().out
