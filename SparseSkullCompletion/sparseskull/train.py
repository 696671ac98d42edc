"""`python -m sparseskull.train` (and `torchrun -m sparseskull.train`): the training command's entry point, the same as
`sparseskull train` (through the command's main, so a signal, running out of memory or bad input ends the same way:
one line and its exit code). The training loop itself lives in sparseskull.training.loop."""

import sys

from sparseskull.jobs import TrainingProcess, launch  # noqa: F401 (Slicer's console: from sparseskull.train import launch)
from sparseskull.training.loop import main  # noqa: F401 (the loop's own entry, for callers that import it from here)

if __name__ == "__main__":
    from sparseskull.cli import main as command

    raise SystemExit(command(["train", *sys.argv[1:]]))
