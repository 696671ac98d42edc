"""The training script: it learns, it resumes exactly, it survives signals, it refuses bad checkpoints."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sparseskull.data.io import write_volume
from sparseskull.data.resample import downsample_to
from sparseskull.data.synth.defects import cut_random_defect
from sparseskull.jobs import TrainingProcess
from sparseskull.nets.files import load_model, read_info
from sparseskull.training.loop import CheckpointError, TrainConfig, main, train

NO_AUG = dict(flip_axes=(), rotate_deg=0.0, shift=0)


def losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def one_skull_64(skull_512, tmp_path_factory) -> Path:
    """One generated full-resolution skull brought to the paper's 64^2 x Z/8 grid, with one defect (SkullFix layout)."""
    skull, _ = skull_512
    complete = downsample_to(skull.mask, 64)
    defect = cut_random_defect(complete, "parietotemporal", np.random.default_rng(0))
    root = tmp_path_factory.mktemp("one") / "data"
    write_volume(complete, root / "complete_skull" / "000.nrrd")
    write_volume(defect.defective, root / "defective_skull" / "000.nrrd")
    return root


@pytest.mark.slow
def test_overfits_one_skull_at_64_to_dsc_095_within_two_minutes(one_skull_64, tmp_path):
    config = TrainConfig(
        str(one_skull_64), str(tmp_path / "run"), steps=300, batch_size=1, lr=1e-2, warmup=5, validation=1,
        val_every=100, checkpoint_every=300, new_defects=0.0, **NO_AUG,
    )
    t0 = time.perf_counter()
    result = train(config, progress=False)
    wall = time.perf_counter() - t0
    assert result.finished and result.step == 300
    assert wall < 120, wall
    assert result.val_dsc >= 0.95, (result.val_dsc, result.best_val_dsc)
    rows = losses(tmp_path / "run")
    assert len(rows) == 300 and np.mean(rows[-10:]) < 0.1 * np.mean(rows[:10])
    # the exported model says what it is and scores what validation said
    model, info = load_model(result.model_path, task="completion")
    assert info.resolution == 64 and info.input_resolution == 64 and info.channels == (8, 8, 16, 16, 32, 32, 64)
    assert info.spacing_mm is not None and info.spacing_mm[0] > 3  # 64^2 grid: about 8x the CT's spacing
    assert info.metrics["val_dsc"] == pytest.approx(result.val_dsc)
    # the defect was learned, and the exported network (running statistics) gives what training fitted: implant 1.0 measured
    # (0.63 to 0.69 before the batch norms tracked the variance they normalise with, from 0.84 at step 150 on one machine)
    assert info.metrics["val_implant_dsc"] > 0.9 and info.metrics["val_dsc"] > info.metrics["val_input_dsc"]
    # the network's own output, without the input's voxels added, is the complete skull
    from sparseskull.data.pairs import PairSampler, collate, dice_by_batch, load_skulls

    x, target = collate(PairSampler(load_skulls(one_skull_64, 64)).fixed())
    with torch.no_grad():
        assert dice_by_batch(model(x).output.cset, target, 1)[0] >= 0.95
    assert info.training["steps"] == 300 and info.training["train_skulls"] == 1
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["state"] == "done"


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(steps=30, batch_size=1, lr=3e-3, warmup=3, validation=1, val_every=1000, checkpoint_every=1000, seed=5, threads=2)
    return TrainConfig(str(data), str(out), **{**base, **kw})


@pytest.mark.slow
def test_sigterm_saves_and_resume_continues_exactly(tiny_data, tmp_path):
    """A run stopped by SIGTERM at some step and resumed gives the same loss sequence as an uninterrupted run."""
    straight = _config(tiny_data, tmp_path / "straight")
    train(straight, progress=False)
    reference = losses(tmp_path / "straight")
    assert len(reference) == 30

    out = tmp_path / "stopped"
    args = ["--data", str(tiny_data), "--out", str(out), "--steps", "30", "--batch-size", "1", "--lr", "3e-3", "--warmup", "3",
            "--validation", "1", "--val-every", "1000", "--checkpoint-every", "1000", "--seed", "5", "--threads", "2", "--no-progress"]
    job = TrainingProcess(args)
    deadline = time.time() + 120
    while time.time() < deadline and job.running():
        p = job.progress()
        if p and p.get("step", 0) >= 3:
            break
        time.sleep(0.05)
    job.stop()
    code = job.wait(120)
    output = "\n".join(job.lines())
    assert job.drained()  # wait() joined the reader: every line has been taken
    assert code == 143, output
    assert "resume" in output and "Traceback" not in output
    progress = json.loads((out / "progress.json").read_text())
    stopped_at = progress["step"]
    assert progress["state"] == "interrupted" and 3 <= stopped_at < 30
    assert (out / "checkpoint.pt").is_file() and not list(out.glob(".*.tmp"))
    assert len(losses(out)) == stopped_at

    assert main(["--resume", str(out), "--no-progress"]) == 0
    assert losses(out) == reference  # bit for bit: the batches depend on (seed, step) only


@pytest.mark.slow
def test_resume_keeps_the_runs_validation_passes_unless_given(tiny_data, tmp_path):
    """A run started with --val-passes 3 and resumed without the option still validates over 3 passes (its curve stays
    one kind of figure); --val-passes on the resume changes it; a new run without it gets the default."""
    import argparse

    from sparseskull.training.loop import add_arguments, config_from_args

    out = tmp_path / "run"
    assert main(["--data", str(tiny_data), "--out", str(out), "--steps", "1", "--batch-size", "1", "--validation", "1", "--val-every",
                 "1000", "--val-passes", "3", "--threads", "1", "--no-progress"]) == 0
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def passes(*argv):
        return config_from_args(parser.parse_args(list(argv)))[0].val_passes

    assert passes("--resume", str(out)) == 3
    assert passes("--resume", str(out), "--val-passes", "5") == 5
    assert passes("--data", str(tiny_data), "--out", str(tmp_path / "new")) == TrainConfig("", "").val_passes == 1


@pytest.mark.slow
def test_damaged_or_foreign_checkpoints_are_refused(tiny_data, tmp_path, capsys):
    config = _config(tiny_data, tmp_path / "run", steps=2)
    train(config, progress=False)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    good = ckpt.read_bytes()

    with pytest.raises(FileExistsError, match="--resume"):
        train(config, progress=False)  # a new run never overwrites one
    with pytest.raises(CheckpointError, match="other settings .*channels"):
        train(replace(config, channels="4,4,8,8,16,16,32"), resume=True, progress=False)

    ckpt.write_bytes(good[: len(good) // 2])
    assert main(["--resume", str(tmp_path / "run"), "--no-progress"]) == 1
    assert "damaged" in capsys.readouterr().err

    (tmp_path / "run" / "model.safetensors").replace(ckpt)  # a model file is not a checkpoint
    with pytest.raises(CheckpointError):
        train(config, resume=True, progress=False)

    torch.save({"format": "something-else"}, ckpt)
    with pytest.raises(CheckpointError, match="not a sparseskull training checkpoint"):
        train(config, resume=True, progress=False)


@pytest.mark.slow
def test_super_resolution_training_exports_a_super_resolution_model(tiny_data, tmp_path):
    result = train(_config(tiny_data, tmp_path / "sr", task="super-resolution", resolution=128, sr_from=64, steps=10, val_every=10), progress=False)
    info = read_info(result.model_path)
    assert info.task == "super-resolution" and info.resolution == 128 and info.input_resolution == 64
    # it learns: measured loss 0.750 over the first 3 steps -> 0.558 over the last 3. (The validation DSC is still 0.000 at step 10,
    # the network keeping no point yet, so no score bar here; the upsampled input alone scores 0.839 and is recorded beside it.)
    loss = losses(tmp_path / "sr")
    assert np.mean(loss[-3:]) < np.mean(loss[:3]) - 0.1, loss
    assert 0 <= result.val_dsc <= 1 and 0.5 < info.metrics["val_input_dsc"] <= 1


@pytest.mark.slow
def test_a_super_resolution_skip_network_trains_on_crops_and_runs_in_the_pipeline(tiny_data, tmp_path):
    """A tiny super-resolution network with skips, trained on 48-voxel boxes of generated skulls, is saved, loaded and run
    as the pipeline's stage after a completion step (here the known complete skull at 64) on a whole generated skull:
    the stage's input is the whole skull on the finer grid, not a box, and the outputs stay on the CT's grid."""
    result = train(_config(tiny_data, tmp_path / "sr", task="super-resolution", resolution=128, sr_from=64, skips=True, crop=48,
                           steps=30, batch_size=2, val_every=30), progress=False)
    info = read_info(result.model_path)
    assert info.skips and info.task == "super-resolution" and info.training["crop"] == 48
    loss = losses(tmp_path / "sr")
    assert np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.05, loss
    done, defective = _after_a_known_completion(tiny_data, result.model_path, info)
    sr = done.report["super_resolution"]
    assert sr["model"] == result.model_path.stem and sr["factors"] == [1, 1, 1] and sr["from"] == 64 and sr["to"] == 128
    # inference ran on the box around the implant's region (no longer the whole skull), and the network answered there
    assert sr["box"] is not None and all(0 <= lo < hi <= n for (lo, hi), n in zip(sr["box"], sr["shape"]))
    assert sr["input_points"] > 0 and sr["output_points"] > 0
    assert done.implant.same_grid(defective) and not (np.asarray(done.implant.array) & np.asarray(defective.array, bool)).any()


@pytest.mark.slow
def test_a_refinement_network_trains_on_defect_boxes_and_refines_in_the_pipeline(tiny_data, tmp_path):
    """A tiny completion network trained on 48-voxel boxes around each defect (``crop_at="defect"``) at 128 records how it
    was trained, validates on the defects' boxes, and runs in the super-resolution stage's place after a completion at 64:
    it refines (sees the defective skull on the finer grid in the box around the coarse implant) and the implant stays
    off the defective skull, on the CT's grid."""
    result = train(_config(tiny_data, tmp_path / "box", resolution=128, skips=True, crop=48, crop_at="defect",
                           steps=10, batch_size=2, val_every=10), progress=False)
    info = read_info(result.model_path)
    assert info.task == "completion" and info.training["crop"] == 48 and info.training["crop_at"] == "defect"
    assert result.val_dsc is not None and 0 < result.val_dsc <= 1
    done, defective = _after_a_known_completion(tiny_data, result.model_path, info)
    stage = done.report["super_resolution"]
    assert stage["refines"] and stage["from"] == 64 and stage["to"] == 128 and stage["box"] is not None
    assert 0 < stage["input_points"] < np.asarray(defective.array, bool).sum()  # the defective skull's voxels in the box
    assert done.implant.same_grid(defective) and not (np.asarray(done.implant.array) & np.asarray(defective.array, bool)).any()


def _after_a_known_completion(data, model_path, info):
    """A generated case through ``complete_skull`` with the known complete skull as the completion at half ``info``'s
    resolution and the model at ``model_path`` as the stage after it: the result and the defective skull."""
    from sparseskull.data.dataset import find_cases
    from sparseskull.data.io import read_mask
    from sparseskull.implant.options import CompleteOptions
    from sparseskull.implant.pipeline import complete_skull
    from sparseskull.implant.superres import SuperResolver

    case = next(c for c in find_cases(data) if c.defective is not None)
    defective, complete = read_mask(case.defective), read_mask(case.complete)
    completion = _KnownCompletion(complete, tuple(2 * s for s in info.spacing_mm))
    stage = SuperResolver(model_path)
    stage.check_feeds(completion.info)
    return complete_skull(defective, CompleteOptions(preview=False), completer=completion, super_resolver=stage), defective


class _KnownCompletion:
    """The known complete skull on the completion model's grid (block-averaged), as the network would complete it."""

    name, device, backend, path = "known", "cpu", "torch", "known"

    def __init__(self, complete, spacing):
        from sparseskull.nets.files import ModelInfo
        from sparseskull.nets.sparse_net import CHANNEL_PRESETS

        self.complete = np.asarray(complete.array, bool)
        self.info = ModelInfo(channels=CHANNEL_PRESETS["ch1"], resolution=64, spacing_mm=spacing)

    def __call__(self, coarse, grid):
        from sparseskull.data.resample import block_fraction

        fine = np.zeros(grid.fine_shape(), bool)
        src = self.complete[grid.lo[0]:grid.lo[0] + fine.shape[0], grid.lo[1]:grid.lo[1] + fine.shape[1], grid.lo[2]:grid.lo[2] + fine.shape[2]]
        fine[: src.shape[0], : src.shape[1], : src.shape[2]] = src
        return np.pad(block_fraction(fine, grid.factors) >= 0.5, grid.margin) | coarse


@pytest.mark.slow
def test_mixed_precision_runs_on_cpu_in_bfloat16(tiny_data, tmp_path):
    result = train(_config(tiny_data, tmp_path / "amp", steps=3, amp="bf16"), progress=False)
    assert result.finished and all(np.isfinite(losses(tmp_path / "amp")))


def test_bad_arguments_give_clear_errors(tiny_data, tmp_path, capsys):
    assert main(["--data", str(tiny_data)]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "x"), "--no-progress"]) == 1
    assert "not a skull data set" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sr-from"):
        TrainConfig("d", "o", task="super-resolution")
    with pytest.raises(ValueError, match="defect classes"):
        TrainConfig("d", "o", classes=("frontal",))


@pytest.mark.slow
def test_two_processes_with_torchrun_on_gloo(tiny_data, tmp_path):
    """Multi-process training as on several GPUs: 2 CPU processes, gradients averaged with gloo."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "-m", "sparseskull.train",
           "--data", str(tiny_data), "--out", str(out), "--steps", "4", "--batch-size", "1", "--validation", "1", "--val-every", "4",
           "--threads", "1", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert len(losses(out)) == 4  # one row per step, written by rank 0 only
    assert read_info(out / "model.safetensors").task == "completion"


@pytest.mark.slow
def test_training_on_minkowski_engine_matches_the_torch_backend(tiny_data, tmp_path):
    """The same network, data and seed train on MinkowskiEngine with the same losses."""
    pytest.importorskip("MinkowskiEngine")
    torch_run = train(_config(tiny_data, tmp_path / "t", steps=4, val_every=4), progress=False)
    me_run = train(_config(tiny_data, tmp_path / "m", steps=4, val_every=4, backend="minkowski"), progress=False)
    np.testing.assert_allclose(losses(tmp_path / "m"), losses(tmp_path / "t"), rtol=2e-3)
    assert me_run.val_dsc == pytest.approx(torch_run.val_dsc, abs=0.02)


@pytest.mark.slow
def test_trains_on_real_skullfix_cases(real_data, tmp_path):
    """Two real SkullFix skulls (512^2 x Z, oblique ones among the 75) downsampled to 64^2 x Z/8 on load."""
    result = train(TrainConfig(str(real_data), str(tmp_path / "real"), steps=6, batch_size=2, max_cases=2, validation=1,
                               val_every=6, threads=2), progress=False)
    assert result.finished and 0 < result.val_dsc <= 1
    # it learns within the warm-up: measured loss 0.7368 at step 1 -> 0.7135 at step 6, falling every step (the network adds no voxel
    # to the held-out skull yet: implant DSC 0.000, so the bar is on the loss)
    loss = losses(tmp_path / "real")
    assert loss[-1] < loss[0] - 0.01, loss
    info = read_info(result.model_path)
    assert info.training["train_skulls"] == 1 and 3 < info.spacing_mm[0] < 4.5  # 8 x about 0.45 mm


def test_the_sparseskull_command_hands_train_its_own_options(capsys):
    from sparseskull.cli import main as cli_main

    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--help"])
    assert exc.value.code == 0 and "--resume" in capsys.readouterr().out
    assert cli_main(["train", "--steps", "5"]) == 1
    assert "give --data and --out" in capsys.readouterr().err


def test_a_child_process_keeps_only_the_latest_lines(monkeypatch):
    """A long run's output must not grow the parent's memory without end: the log keeps the latest lines."""
    from sparseskull import jobs as process

    monkeypatch.setattr(process, "LOG_LINES", 5)
    child = process.ChildProcess("this", [])  # `python -m this` prints the 21 lines of the Zen of Python
    assert child.wait(60) == 0
    while not child.drained():
        child.lines()
    assert len(child.log) == 5 and child.log[-1].startswith("Namespaces are one honking great idea")


@pytest.mark.slow
def test_a_skip_network_trains_and_a_checkpoint_exports_as_it_stands(tiny_data, tmp_path):
    """--skips trains the skip network and its model file says so; --export writes the checkpoint's model without
    training: at the last step it is the run's own model, tensor for tensor, and its metadata names the step."""
    from sparseskull.nets.files import load_model
    from sparseskull.training.loop import export_checkpoint

    result = train(_config(tiny_data, tmp_path / "skip", skips=True, steps=4, val_every=4), progress=False)
    ours, info = load_model(result.model_path)
    assert info.skips and ours.skips and info.training["skips"] is True
    path = export_checkpoint(tmp_path / "skip", progress=False)
    assert path.name == "model-step4.safetensors"
    exported, einfo = load_model(path)
    assert einfo.skips and einfo.training["steps"] == 4 and "planned_steps" not in einfo.training
    for (k, a), (_, b) in zip(ours.state_dict().items(), exported.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="without skip connections, but this run trains a network with them"):
        plain = train(_config(tiny_data, tmp_path / "plain", steps=1), progress=False)
        train(_config(tiny_data, tmp_path / "init", skips=True, steps=1, init=str(plain.model_path)), progress=False)


def test_init_takes_a_shipped_models_name_and_a_wrong_one_fails_before_any_skull_is_loaded(tiny_data, tmp_path, monkeypatch, capsys):
    """--init accepts what --model accepts (a shipped name or a path), the training record names the file it started from,
    and a model that cannot start the run (unknown, another task, other channels or skips) stops it before the data set is
    read: loading a full data set at 256 takes minutes."""
    import sparseskull.training.loop as loop
    from sparseskull.nets.catalogue import models_dir

    def no_loading(*args, **kwargs):
        raise AssertionError("the skulls were loaded before --init was checked")

    with monkeypatch.context() as m:
        m.setattr(loop, "_load_training_skulls", no_loading)
        for init, message in [("no-such-model", "no shipped model named 'no-such-model'"),
                              ("skullfix-sr-skip-w16-128-256", "a super-resolution model, but this run trains completion"),
                              ("skullfix-skip-ch1-128", "with skip connections, but this run trains a network without them")]:
            skips = init != "skullfix-skip-ch1-128"
            code = main(["--data", str(tiny_data), "--out", str(tmp_path / "x"), "--init", init, "--no-progress"] + (["--skips"] if skips else []))
            assert code == 1 and message in capsys.readouterr().err, init
            assert not (tmp_path / "x").exists()
        with pytest.raises(ValueError, match=r"channels \[8, 8, 16, 16, 32, 32, 64\], but this run trains \[4, .*never narrowed"):
            train(_config(tiny_data, tmp_path / "y", skips=True, channels="4,8,16,16,32,32,64", init="skullfix-skip-ch1-128"), progress=False)
    result = train(_config(tiny_data, tmp_path / "tuned", skips=True, steps=1, resolution=128, init="skullfix-skip-ch1-128"), progress=False)
    record = read_info(result.model_path).training
    assert Path(record["init"]) == models_dir() / "skullfix-skip-ch1-128.safetensors"


def test_init_widens_a_narrower_model(tiny_data, tmp_path, capsys):
    """--init with a model narrower at some levels (none wider) starts a wider run from it, and says so."""
    from sparseskull.nets.files import load_model

    result = train(_config(tiny_data, tmp_path / "wide", skips=True, steps=1, resolution=128, channels="8,8,16,16,32,48,96",
                           init="skullfix-skip-ch1-128"), progress=False)
    assert "widened to [8, 8, 16, 16, 32, 48, 96]" in capsys.readouterr().err
    model, _ = load_model(result.model_path)
    assert model.channels == (8, 8, 16, 16, 32, 48, 96) and model.skips


def _shell_pair(task: str):
    """A shell with a hole (completion: the shell is the target) or the shell's blocky copy (super-resolution)."""
    from sparseskull.data.pairs import Pair

    g = np.indices((40, 40, 32)).reshape(3, -1).T
    r = np.linalg.norm((g - [20, 20, 16]) / [1.0, 1.0, 0.8], axis=1)
    shell = g[(r > 10) & (r < 13)] + 2
    if task == "completion":
        given = shell[~((shell[:, 0] > 28) & (np.abs(shell[:, 1] - 22) < 5))]
    else:
        corners = np.unique(shell // 2 * 2, axis=0)  # nearest upsampling of the shell's copy at half the resolution
        given = (corners[:, None, :] + np.indices((2, 2, 2)).reshape(3, -1).T[None]).reshape(-1, 3)
    return Pair(given, shell, "shell", None)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["completion", "super-resolution"])
def test_validation_votes_over_passes_as_the_pipeline_does(tmp_path, task):
    """--val-passes: a network that echoes its input scores exactly the input's own DSC in 8 passes (each pass's shift and
    mirror are undone); an untrained network's voted completion is the pipeline's run_network's, voxel for voxel."""
    from types import SimpleNamespace

    from sparseskull.evaluation.metrics import dice
    from sparseskull.implant.network import run_network
    from sparseskull.nets.sparse_net import SparseCompletionNet
    from sparseskull.training.loop import validate

    pair = _shell_pair(task)
    config = TrainConfig(data="", out="", task=task, sr_from=None if task == "completion" else 32, val_passes=8)

    class Echo:
        def __call__(self, x, tau=0.0, **kwargs):
            return SimpleNamespace(output=x)

        def eval(self):
            return self

        def train(self):
            return self

    scores = validate(Echo(), [pair], config, "cpu")
    assert 0.5 < scores["input_dsc"] < 1 and scores["dsc"] == pytest.approx(scores["input_dsc"], abs=1e-12)
    if task == "completion":
        assert scores["implant_dsc"] == 0.0  # nothing generated
        torch.manual_seed(0)
        net = SparseCompletionNet("ch1", skips=True).eval()
        shape = tuple(int(n) for n in pair.target.max(axis=0) + 1 + 2 * 4)
        given = np.zeros(shape, bool)
        given[tuple(pair.inputs.T)] = True
        truth = np.zeros(shape, bool)
        truth[tuple(pair.target.T)] = True
        done = run_network(net, given, "torch", "cpu", 0.0, passes=8)
        voted = validate(net, [pair], config, "cpu")
        assert voted["implant_dsc"] == pytest.approx(dice(done & ~given, truth & ~given), abs=1e-12)
        assert voted["dsc"] == pytest.approx(dice(done, truth), abs=1e-12)
        assert net.training  # validation hands the model back in training mode
    with pytest.raises(ValueError, match="--val-passes must be between 1 and 8"):
        replace(config, val_passes=9)
