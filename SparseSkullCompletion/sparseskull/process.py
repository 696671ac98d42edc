"""A ``python -m sparseskull...`` run in a child process, its output streamed line by line.

Slicer runs training and "Complete skull" this way so that its GUI never freezes: the child is
Slicer's own Python (``PythonSlicer``) running the core package from the module folder, a reader
thread collects its output, and the GUI takes the lines from a timer. ``cancel()`` ends the child
and everything it started (it leads its own process group).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

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
