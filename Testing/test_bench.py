"""The engine benchmark command runs and reports what it promises (tiny grids: a smoke test, not a benchmark)."""

from __future__ import annotations

import json

import pytest
from sparseskull.cli import main
from sparseskull.evaluation.bench import bench_engine, shell_coords


def test_shell_occupancy_matches_the_reference_shell():
    coords, shell = shell_coords(128)
    assert abs(shell.float().mean().item() - 0.0665) < 0.003
    assert len(coords) == int(shell.sum())


@pytest.mark.slow
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


@pytest.mark.slow
def test_bench_cli(tmp_path, capsys):
    assert main(["bench", "engine", "--grids", "16", "--backends", "torch", "--threads", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert "torch" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_network_rows_ratios_points_and_plot(tmp_path, capsys):
    """`sparseskull bench network` at 64 on a generated skull: a training step and inference for the sparse
    network (the shipped 64 model infers) and its dense counterpart, the JSON the issue names, the plot;
    and a run over the memory limit is reported as not fitting instead of crashing."""
    out, png = tmp_path / "network.json", tmp_path / "network.png"
    from sparseskull.evaluation.bench import bench_network

    result = bench_network(None, resolutions=(64,), backends=("torch",), steps=1, threads=1, json_path=str(out), plot_path=str(png))
    assert json.loads(out.read_text()) == result and png.stat().st_size > 10_000
    rows = {(r["mode"], r["model"]): r for r in result["rows"]}
    assert set(rows) == {("train", "sparse"), ("inference", "sparse"), ("train", "dense"), ("inference", "dense")}
    for row in rows.values():
        assert {"resolution", "mode", "model", "backend", "seconds", "peak_mib"} <= set(row), row
        assert row["resolution"] == 64 and row["seconds"] > 0 and row["peak_mib"] > 0
    sparse = rows[("inference", "sparse")]
    assert sparse["pruning"] == "trained network"  # the shipped skullfix-ch1-64
    assert len(sparse["points"]["kept_per_level"]) <= 6 and sparse["points"]["input"] == sparse["input_voxels"]
    assert rows[("train", "sparse")]["points"]["kept_per_level"][-1] > 0
    assert "64 train: torch/dense time" in result["ratios"]

    tight = bench_network(None, resolutions=(64,), backends=("torch",), modes=("inference",), dense=False, steps=1, threads=1,
                          memory_limit_gib=0.3)
    assert tight["rows"][0]["error"].startswith("does not fit"), tight["rows"][0]


@pytest.mark.slow
def test_bench_train_measures_each_batch_size_in_its_own_process():
    """`sparseskull bench train --batch-sizes` (the paper's Table 5): a row per batch size, the batch made of copies."""
    from sparseskull.evaluation.bench import bench_train

    result = bench_train(resolutions=(64,), batch_sizes=(1, 4), steps=1, threads=1)
    rows = {r["batch"]: r for r in result["rows"]}
    assert set(rows) == {1, 4} and all("step_s" in r and r["peak_mib"] > 0 for r in rows.values())
    assert rows[4]["input_voxels"] == 4 * rows[1]["input_voxels"] and rows[4]["target_voxels"] == 4 * rows[1]["target_voxels"]
