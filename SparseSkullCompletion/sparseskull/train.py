"""`python -m sparseskull.train` (and `torchrun -m sparseskull.train`): the training command's entry point.
The training loop itself lives in sparseskull.training.loop."""

from sparseskull.jobs import TrainingProcess, launch  # noqa: F401 (Slicer's console: from sparseskull.train import launch)
from sparseskull.training.loop import main

if __name__ == "__main__":
    raise SystemExit(main())
