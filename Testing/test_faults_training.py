"""Faults in what training is given (issue 22): a bad case in the data folder or a damaged checkpoint stops
`sparseskull train` with one line naming the file and the fix, before anything is written; `--skip-bad-cases`
goes on without the case only when asked, and the model file's training record lists what was left out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sparseskull.cli import main as cli_main
from sparseskull.data.io import write_volume
from sparseskull.data.resample import downsample_to
from sparseskull.data.synth.defects import cut_random_defect
from sparseskull.nets.files import read_info

FAST = ["--steps", "2", "--batch-size", "1", "--validation", "1", "--val-every", "2", "--checkpoint-every", "2", "--threads", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def three_cases(skull_128, tmp_path_factory) -> Path:
    """Three SkullFix-layout cases at the paper's 64^2 grid (one generated skull, three different defects)."""
    complete = downsample_to(skull_128.mask, 64)
    root = tmp_path_factory.mktemp("three") / "data"
    for i, cls in enumerate(("bilateral", "frontoorbital", "parietotemporal")):
        defect = cut_random_defect(complete, cls, np.random.default_rng(i))
        write_volume(complete, root / "complete_skull" / f"00{i}.nrrd")
        write_volume(defect.defective, root / "defective_skull" / f"00{i}.nrrd")
    return root


@pytest.fixture
def data(three_cases, tmp_path) -> Path:
    """A copy of the three cases this test may damage."""
    return Path(shutil.copytree(three_cases, tmp_path / "data"))


def _train(capsys, *args) -> tuple[int, list[str]]:
    code = cli_main(["train", *map(str, args)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def test_a_truncated_case_stops_training_with_its_path_and_the_fix_and_writes_nothing(data, tmp_path, capsys):
    bad = data / "defective_skull" / "001.nrrd"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a download cut short: the header is whole, the voxels are not
    code, err = _train(capsys, "--data", data, "--out", tmp_path / "run", *FAST)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"sparseskull train: error: {bad}: not a readable 3D image") and "--skip-bad-cases" in err[0], err[0]
    assert not (tmp_path / "run").exists(), "no run folder that looks started"


@pytest.mark.parametrize("fault, reason", [
    ("empty", "the mask is empty"),
    ("other grid", "differs from its complete skull's"),
    ("not an image", "not a readable 3D image"),
])
def test_other_bad_cases_are_named_with_what_is_wrong(data, tmp_path, capsys, fault, reason):
    from sparseskull.data.io import read_mask
    from sparseskull.data.volume import Volume

    bad = data / ("complete_skull" if fault == "empty" else "defective_skull") / "002.nrrd"
    mask = read_mask(bad)
    if fault == "empty":
        write_volume(mask.with_array(np.zeros_like(mask.array)), bad)
    elif fault == "other grid":
        write_volume(Volume(mask.array[:, :, :-3].copy(), mask.spacing_mm, mask.origin_lps), bad)
    else:
        bad.write_text("this is a note, not a volume\n")
    code, err = _train(capsys, "--data", data, "--out", tmp_path / "run", *FAST)
    assert code == 1 and len(err) == 1 and err[0].startswith(f"sparseskull train: error: {bad}: ") and reason in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_skip_bad_cases_trains_without_it_and_the_model_file_lists_it(data, tmp_path, capsys):
    bad = data / "complete_skull" / "001.nrrd"
    bad.write_bytes(bad.read_bytes()[:200])
    code, err = _train(capsys, "--data", data, "--out", tmp_path / "run", "--skip-bad-cases", *FAST)
    assert code == 0, err
    assert any(line.startswith(f"warning: skipped case 001: {bad}: not a readable 3D image") for line in err), err
    training = read_info(tmp_path / "run" / "model.safetensors").training
    assert training["train_skulls"] + training["val_skulls"] == 2 and "001" not in training["val_case_ids"]
    assert [s["case"] for s in training["skipped_cases"]] == ["001"] and training["skipped_cases"][0]["file"] == str(bad)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["skipped_cases"] == training["skipped_cases"]


def test_an_empty_checkpoint_is_refused_with_its_path_and_left_as_it_is(data, tmp_path, capsys):
    """A checkpoint cut to nothing (a disk that filled up under another program): resume refuses it, names it and says the fix,
    and neither the checkpoint nor the metrics are touched."""
    run = tmp_path / "run"
    assert _train(capsys, "--data", data, "--out", run, *FAST)[0] == 0
    (run / "checkpoint.pt").write_bytes(b"")
    metrics = (run / "metrics.csv").read_bytes()
    code, err = _train(capsys, "--resume", run, "--no-progress")
    assert code == 1 and len(err) == 1, err
    assert err[0] == (f"sparseskull train: error: {run / 'checkpoint.pt'}: the checkpoint is damaged and cannot be read (EOFError); "
                      "delete it to start afresh"), err[0]
    assert (run / "checkpoint.pt").stat().st_size == 0 and (run / "metrics.csv").read_bytes() == metrics
