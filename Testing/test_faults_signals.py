"""Faults from outside (issue 22): Ctrl-C, SIGTERM and SIGKILL at any stage of `sparseskull complete`, and running out of
memory. The product's promise: one line and an exit code (130 for SIGINT, 143 for SIGTERM, 1 for memory), and --out
either absent or exactly as it was, complete; never a half-written folder, never the previous result hidden in a dot
folder. What a SIGKILL leaves (it cannot be caught) is tidied by the next run into the same place, which says so.

The kills go to the real command in a child process, timed by the progress lines it prints (`[i/8] stage (x s)`).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sparseskull.cli import main as cli_main
from sparseskull.data.io import recover_output, signals_deferred, staged_output
from sparseskull.data.sample import sample_dir
from sparseskull.implant.options import CompleteOptions
from sparseskull.implant.pipeline import planned_stages

CT = sample_dir() / "ct.nrrd"
STAGES = ("read", "skull", "model grid", "network", "CT grid", "clean", "mesh", "write")
PROGRESS = re.compile(r"^\[(\d)/(?:8|9)\] (.+) \([\d.]+ s\)$")


def _dead_pid() -> int:
    """The PID of a process that has ended (a run killed outright)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: 'exactly as it was' is this, unchanged."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _losses(run: Path) -> list[str]:
    with open(run / "metrics.csv", newline="") as f:
        return [row["loss"] for row in csv.DictReader(f)]


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _previous_result(source: Path, out: Path) -> dict[str, bytes]:
    """A copy of a finished run's folder as the user's previous result, with a note of the user's own in it: a run
    that replaced it would drop the note, so 'exactly the previous result' cannot be met by a new, identical one."""
    shutil.copytree(source, out)
    (out / "my notes.txt").write_text("planned for Tuesday\n")
    return _files(out)


# ------------------------------------------------------------------ the pieces, in this process (fast)


def test_held_signals_arrive_after_the_block_even_when_another_thread_takes_them():
    """The swap's renames run with SIGINT/SIGTERM held. Masking the main thread alone would not do: with torch's (or any)
    other thread running, the kernel hands it the signal and Python raises in the main thread all the same."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal: a background job inherits SIGINT ignored
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, daemon=True)  # an unmasked thread, as torch's pool is
    worker.start()
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                deadline = time.time() + 0.5
                while time.time() < deadline:  # plenty of bytecode boundaries where Python would act on it
                    pass
                reached.append("end of block")
        assert reached == ["end of block"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        stop.set()
        signal.signal(signal.SIGINT, inherited)


def test_a_killed_runs_leftovers_are_tidied_and_said_and_a_live_runs_are_not(tmp_path):
    out = tmp_path / "OUT"
    dead = _dead_pid()
    (out).mkdir()
    (out / "implant.stl").write_text("the result before the last\n")
    stale_stage = tmp_path / f".OUT.stage-{dead}-abc123"
    stale_stage.mkdir()
    (stale_stage / "implant.nrrd").write_bytes(b"half")
    swapped_old = tmp_path / f".OUT.old-{dead}"  # killed after the swap, before deleting the old folder
    swapped_old.mkdir()
    live_stage = tmp_path / f".OUT.stage-{os.getpid()}-zzz999"  # a run that is alive (this process): not ours to touch
    live_stage.mkdir()
    foreign = tmp_path / ".OUT.notes"  # not a name staged_output makes
    foreign.mkdir()
    said: list[str] = []
    messages = recover_output(out, said.append)
    assert said == messages and len(messages) == 2
    assert any(f".OUT.stage-{dead}-abc123, the unfinished output of a run (PID {dead}) that was killed while writing it" in m for m in messages)
    assert any(f"removed .OUT.old-{dead}" in m for m in messages)
    assert _hidden(out) == sorted([live_stage.name, foreign.name])
    assert (out / "implant.stl").read_text() == "the result before the last\n"


def test_a_temporary_file_of_a_write_killed_outright_goes_with_the_next_write_of_that_file(tmp_path):
    """A checkpoint (or any file written atomically) being written when SIGKILL came leaves `.NAME.PID-XXXX.tmp`; the next
    write of the same file deletes it. A live process's temporary file, and names it did not make, stay."""
    from sparseskull.data.io import atomic_write

    dead, live = tmp_path / f".checkpoint.pt.{_dead_pid()}-k1ll3d.tmp", tmp_path / f".checkpoint.pt.{os.getpid()}-wr1t1ng.tmp"
    other = tmp_path / ".checkpoint.pt.mine.tmp"
    for p in (dead, live, other):
        p.write_bytes(b"half a checkpoint")
    atomic_write(tmp_path / "checkpoint.pt", lambda tmp: tmp.write_bytes(b"whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pt", live.name, other.name])
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"whole"


def test_a_previous_result_hidden_by_a_kill_between_the_renames_is_restored_even_by_a_failing_run(tmp_path, capsys):
    """`.OUT.old-PID` with no OUT beside it is the user's previous result: the next run into OUT renames it back first
    (here that run then fails on its input, and the previous result stays restored), never deletes it."""
    out = tmp_path / "OUT"
    hidden = tmp_path / f".OUT.old-{_dead_pid()}"
    hidden.mkdir()
    (hidden / "implant.stl").write_bytes(b"solid implant\nendsolid\n")
    (hidden / "report.json").write_text('{"implant": 1}\n')
    before = _files(hidden)
    code = cli_main(["complete", str(tmp_path / "missing.nrrd"), "--out", str(out), "--no-preview", "--threads", "1"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not PROGRESS.match(ln)]
    assert code == 1 and len(err) == 2, err
    assert err[0] == (f"note: {out}: restored the previous result from {hidden.name}, hidden by a run (PID {hidden.name.split('-')[-1]}) "
                      "that was killed while replacing it"), err
    assert err[1] == f"sparseskull complete: error: {tmp_path / 'missing.nrrd'}: no such file or folder", err
    assert _files(out) == before and _hidden(out) == []


def test_a_failure_while_writing_removes_the_stage_and_keeps_the_previous_result(tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "report.json").write_text("previous\n")
    with pytest.raises(MemoryError):
        with staged_output(out) as stage:
            (stage / "implant.stl").write_text("half")
            raise MemoryError
    assert _files(out) == {"report.json": b"previous\n"} and _hidden(out) == []


@pytest.mark.parametrize("where, raised, says", [
    ("skull_from_input", MemoryError("Unable to allocate 8.00 TiB for an array with shape (1,) and data type float64"), "memory (RAM) in stage 'skull'"),
    ("to_model_grid", RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8796093022208 bytes. Error code 12 "
                                   "(Cannot allocate memory)"), "memory (RAM) in stage 'model grid'"),
], ids=["MemoryError", "torch-cpu-allocator"])
def test_running_out_of_memory_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch, where, raised, says):
    import sparseskull.implant.pipeline as pipeline

    def out_of_memory(*args, **kwargs):
        raise raised

    monkeypatch.setattr(pipeline, where, out_of_memory)
    out = tmp_path / "OUT"
    code = cli_main(["complete", str(CT), "--out", str(out), "--no-preview", "--threads", "1", "--passes", "1"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not PROGRESS.match(ln)]
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"sparseskull complete: error: ran out of {says}") and "--threads 1" in err[0] and "smaller grid" in err[0], err
    assert not out.exists() and _hidden(out) == []


# ------------------------------------------------------------------ the real command, killed (slow)


def _start(out: Path, pair: bool = False) -> subprocess.Popen:
    """The command, as a user starts it; ``pair``: with the default model (a pair where it is one: the super-resolution
    stage runs), otherwise with the faster completion model alone, whose stages are the same but that one."""
    def default_signals():  # as from a terminal: a test runner started in the background may have inherited SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # one network pass: these runs are about signals, not the implant
    model = [] if pair else ["--model", "skullfix-skip-ch1-128"]
    return subprocess.Popen([sys.executable, "-m", "sparseskull", "complete", str(CT), "--out", str(out), "--no-preview", "--threads", "1",
                             "--passes", "1", *model],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_signals)


def _wait_for_stage(run: subprocess.Popen, stage: str) -> list[str]:
    lines = []
    for line in run.stderr:
        lines.append(line.rstrip("\n"))
        match = PROGRESS.match(lines[-1])
        if match and match[2] == stage:
            return lines
    raise AssertionError(f"the run ended before stage {stage!r}: {lines}")


def _stop_while_writing(run: subprocess.Popen, out: Path) -> str:
    """Stop the child (SIGSTOP) at a moment when its staging folder holds part of the output, stepping it a few
    milliseconds at a time from the start of the write stage; returns the staging folder's name."""
    run.send_signal(signal.SIGSTOP)
    deadline = time.time() + 30
    while time.time() < deadline:
        stages = [p for p in out.parent.glob(f".{out.name}.stage-{run.pid}-*") if any(p.iterdir())]
        if stages:
            return stages[0].name
        run.send_signal(signal.SIGCONT)
        time.sleep(0.002)
        run.send_signal(signal.SIGSTOP)
    raise AssertionError("the run never had a staging folder with files in it")


def _finish(run: subprocess.Popen) -> tuple[int, list[str]]:
    _, rest = run.communicate(timeout=120)
    return run.returncode, rest.splitlines()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One uninterrupted run: the previous result the interrupted runs must leave alone."""
    out = tmp_path_factory.mktemp("finished") / "OUT"
    run = _start(out)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    return out


CASES = [  # every stage once, SIGINT and SIGTERM into a fresh and into a used --out by turns; the write stage all four ways
    ("read", signal.SIGINT, "fresh"), ("skull", signal.SIGTERM, "previous"), ("model grid", signal.SIGINT, "previous"),
    ("network", signal.SIGTERM, "fresh"), ("super-resolution", signal.SIGINT, "previous"), ("CT grid", signal.SIGINT, "fresh"),
    ("clean", signal.SIGTERM, "previous"),
    ("mesh", signal.SIGINT, "previous"),
    ("write", signal.SIGINT, "fresh"), ("write", signal.SIGTERM, "fresh"), ("write", signal.SIGINT, "previous"), ("write", signal.SIGTERM, "previous"),
]
CASES = [c for c in CASES if c[0] in planned_stages(CompleteOptions())]  # super-resolution: where the default model is a pair


@pytest.mark.slow
@pytest.mark.parametrize("stage, sig, into", CASES, ids=[f"{s.replace(' ', '-')}-{g.name}-{i}" for s, g, i in CASES])
def test_a_signal_at_any_stage_leaves_out_absent_or_as_it_was(finished, tmp_path, stage, sig, into):
    out = tmp_path / "OUT"
    before = _previous_result(finished, out) if into == "previous" else None
    run = _start(out, pair=stage == "super-resolution")
    seen = _wait_for_stage(run, stage)
    if stage == "write":  # the signal lands while the staging folder holds part of the output
        _stop_while_writing(run, out)
        run.send_signal(sig)
        run.send_signal(signal.SIGCONT)
    else:
        run.send_signal(sig)
    code, rest = _finish(run)
    said = [ln for ln in seen + rest if ln.strip() and not PROGRESS.match(ln)]
    assert code == 128 + sig, (code, said)
    assert said == [f"sparseskull complete: stopped by {sig.name}; nothing half-written is left in {out} "
                    "(a run replaces it only when it finishes)"], said
    if before is None:
        assert not out.exists()
    else:
        assert _files(out) == before
    assert _hidden(out) == []


@pytest.mark.slow
def test_sigkill_while_writing_leaves_the_previous_result_and_the_next_run_tidies_and_says_so(finished, tmp_path):
    """SIGKILL cannot be caught: the previous result must still be whole and visible, and the staging folder it leaves
    is removed by the next run into the same place, which says so and then finishes."""
    out = tmp_path / "OUT"
    before = _previous_result(finished, out)
    run = _start(out)
    _wait_for_stage(run, "write")
    left = _stop_while_writing(run, out)
    run.send_signal(signal.SIGKILL)
    code, _ = _finish(run)
    assert code == -signal.SIGKILL
    assert _files(out) == before and _hidden(out) == [left]

    again = _start(out)
    code, err = _finish(again)
    assert code == 0, err
    notes = [ln for ln in err if ln.startswith("note: ")]
    assert notes == [f"note: {out}: removed {left}, the unfinished output of a run (PID {run.pid}) that was killed while writing it"], err
    assert _hidden(out) == []
    report = json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(report["files"])  # the new result, whole; the old one (and its note) replaced


# ------------------------------------------------------------------ training, killed outright


@pytest.mark.slow
def test_sigkill_during_training_then_resume_gives_the_uninterrupted_runs_weights(tiny_data, tmp_path):
    """The loop checkpoints every --checkpoint-every steps; after a SIGKILL, --resume goes on from the last checkpoint
    and, the batches depending on (seed, step) only, ends with the weights of a run never stopped."""
    from safetensors.torch import load_file
    from sparseskull.jobs import TrainingProcess
    from sparseskull.training.loop import main as train_main

    args = ["--data", str(tiny_data), "--steps", "12", "--batch-size", "1", "--lr", "3e-3", "--warmup", "3", "--validation", "1",
            "--val-every", "1000", "--checkpoint-every", "4", "--seed", "5", "--threads", "1", "--no-progress"]
    assert train_main(["--out", str(tmp_path / "straight"), *args]) == 0

    out = tmp_path / "killed"
    job = TrainingProcess(["--out", str(out), *args])
    deadline = time.time() + 120
    while time.time() < deadline and job.running():
        p = job.progress()
        if p and p.get("step", 0) >= 6:  # past the checkpoint at step 4
            break
        time.sleep(0.02)
    job.process.kill()
    assert job.wait(60) == -signal.SIGKILL
    assert (out / "checkpoint.pt").is_file() and not (out / "model.safetensors").exists()

    assert train_main(["--resume", str(out), "--no-progress"]) == 0
    ours, reference = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert ours.keys() == reference.keys()
    for key in reference:
        assert (ours[key] == reference[key]).all(), key
    assert _losses(out) == _losses(tmp_path / "straight")  # one row per step, the steps after the checkpoint not counted twice
    assert not list(out.glob(".*.tmp"))
