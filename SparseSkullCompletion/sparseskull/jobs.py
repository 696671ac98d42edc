"""Runs in a child process: ``sparseskull complete`` (:class:`CompletionProcess`) and training
(:class:`TrainingProcess`, :func:`launch`), their output streamed line by line.

Slicer runs training and "Complete skull" this way so that its GUI never freezes: the child is
Slicer's own Python (``PythonSlicer``) running the core package from the module folder, a reader
thread collects its output, and the GUI takes the lines from a timer. ``cancel()`` ends the child
and everything it started (it leads its own process group).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from sparseskull.implant.options import CompleteOptions, options_to_args

LOG_LINES = 20_000
"""Lines a child's ``log`` keeps (the latest): a long training run prints without end."""


def python_executable() -> str:
    """Slicer's own interpreter is PythonSlicer (sys.executable is the Slicer application there)."""
    if "slicer" in sys.modules:
        import shutil

        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


class ChildProcess:
    """``python -m MODULE ARGS...`` with stdout and stderr merged and queued line by line.

    ``lines()`` returns the lines that arrived since the last call (never blocks); ``log`` keeps the
    latest LOG_LINES of them.
    """

    def __init__(self, module: str, args: list[str], python: str | None = None, echo: bool = False, env: dict | None = None):
        self.args = [str(a) for a in args]
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        environment = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
        package_parent = str(Path(__file__).resolve().parents[1])  # works without pip-installing sparseskull
        environment["PYTHONPATH"] = package_parent + (os.pathsep + environment["PYTHONPATH"] if environment.get("PYTHONPATH") else "")
        self.process = subprocess.Popen(
            [python or python_executable(), "-m", module, *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment, text=True, bufsize=1,
            start_new_session=(os.name == "posix"),  # its own process group, so cancel() reaches its children too
        )
        self._queue: queue.Queue = queue.Queue()

        def pump():
            for line in self.process.stdout:
                for part in line.replace("\r", "\n").splitlines():  # tqdm redraws with carriage returns
                    if part.strip():
                        self._queue.put(part)
                        if echo:
                            print(part, flush=True)
            self.process.stdout.close()

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def lines(self) -> list[str]:
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        self.log.extend(out)
        return out

    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def drained(self) -> bool:
        """The process has ended and all its output has been taken with ``lines()``."""
        return not self.running() and not self._thread.is_alive() and self._queue.empty()

    def stop(self) -> None:
        """Ask the child alone to finish (SIGTERM; a training run saves its checkpoint first)."""
        if self.running():
            self.process.terminate()

    def cancel(self, grace_s: float = 5.0) -> int:
        """End the child and its children now: SIGTERM to its process group, SIGKILL after ``grace_s``."""
        if self.running():
            if os.name == "posix":
                try:
                    os.killpg(self.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            else:  # pragma: no cover - Windows
                self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                if os.name == "posix":
                    try:
                        os.killpg(self.process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                else:  # pragma: no cover
                    self.process.kill()
        return self.wait()

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        self._thread.join(timeout=5)
        return code


# ---------------------------------------------------------------------------- `sparseskull complete`


class CompletionProcess:
    """``sparseskull complete`` in a child process, its stage progress parsed from the output.

    ``poll()`` takes the new output lines and updates ``stage``/``fraction``; ``cancel()`` ends the run and
    its children (nothing is left in ``out``: the run writes there only on success); ``error()`` is the
    message a failed run gave.
    """

    _STAGE = re.compile(r"^\[(\d+)/(\d+)\] (.+) \([\d.]+ s\)$")
    _ERROR = re.compile(r"^sparseskull complete: error: (.+)$")

    def __init__(self, source, out, options: CompleteOptions | None = None, python: str | None = None):
        self.out = Path(out)
        self.stage, self.fraction = "starting", 0.0
        self.child = ChildProcess("sparseskull", ["complete", str(source), "--out", str(out), *options_to_args(options or CompleteOptions())],
                                  python=python)

    @property
    def log(self) -> list[str]:
        return self.child.log

    def poll(self) -> list[str]:
        lines = self.child.lines()
        for line in lines:
            match = self._STAGE.match(line)
            if match:
                index, total = int(match[1]), int(match[2])
                self.stage, self.fraction = match[3], (index - 1) / total
        self._finished()
        return lines

    def _finished(self) -> bool:
        if not self.child.drained():
            return False
        if self.child.returncode == 0:
            self.stage, self.fraction = "done", 1.0
        return True

    def running(self) -> bool:
        """False once the child has ended and ``poll()`` has taken all its output."""
        return not self._finished()

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    def error(self) -> str | None:
        """The core's message for a failed run (or the last line of its traceback); None while running or on success."""
        if self.running() or self.child.returncode == 0:
            return None
        self.poll()
        for line in reversed(self.log):
            match = self._ERROR.match(line)
            if match:
                return match[1]
        if self.child.returncode is not None and self.child.returncode < 0:
            return f"stopped by signal {-self.child.returncode}"
        return self.log[-1] if self.log else f"exited with code {self.child.returncode}"

    def cancel(self) -> None:
        self.child.cancel()
        self.poll()

    def wait(self, timeout: float | None = None) -> int:
        code = self.child.wait(timeout)
        self.poll()
        return code


# ---------------------------------------------------------------------------- `sparseskull train`


class TrainingProcess(ChildProcess):
    """A training run in a child process (so Slicer's GUI stays responsive), with its output streamed.

    ``lines()`` returns the output lines that arrived since the last call (never blocks);
    ``progress()`` the run's progress.json; ``stop()`` asks it to save a checkpoint and exit.
    """

    def __init__(self, args: list[str], python: str | None = None, echo: bool = False):
        super().__init__("sparseskull.train", args, python=python, echo=echo)
        self.out = Path(_arg_value(self.args, "--out") or _arg_value(self.args, "--resume") or ".")

    def progress(self) -> dict | None:
        try:
            return json.loads((self.out / "progress.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None


def _arg_value(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def launch(*args: str, echo: bool = True, **options) -> TrainingProcess:
    """Start training in a separate process, e.g. from Slicer's Python console:

        from sparseskull.train import launch; job = launch("--data", "/data/skullfix", "--out", "/data/run1")

    Options may be given as keywords too (``steps=500`` -> ``--steps 500``). With ``echo`` the output
    is printed by the reader thread as it arrives. Inside Slicer, whose console must not be written
    from another thread, use ``SparseSkullCompletion.launchTraining`` (same arguments), which prints
    from a Qt timer on the main thread.
    """
    argv = list(args)
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return TrainingProcess(argv, echo=echo)
