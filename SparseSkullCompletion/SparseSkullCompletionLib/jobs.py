"""The module's runs in child processes: a "Complete skull" job (the core's ``CompletionProcess`` with its
work folder and input node), what a finished one put in the scene, and training launched from Slicer's
Python console. No Qt at import time: ``launchTraining`` takes its timer from Qt when it is called.
"""

import shutil

from .compat import _


class CompletionJob:
    """A "Complete skull" run: the core's child process (a ``sparseskull.jobs.CompletionProcess``, whose
    ``poll``, ``running``, ``stage``, ``fraction``, ``returncode``, ``log``, ``error`` and ``wait`` it answers
    for), its work folder and the input node."""

    def __init__(self, process, workDir, inputNode):
        self.process = process
        self.workDir = workDir
        self.inputNode = inputNode
        self.cancelled = False

    def __getattr__(self, name):  # only called for what this class lacks: the process's progress and state
        return getattr(self.process, name)

    def cancel(self):
        """End the run and its children; nothing it wrote is kept."""
        self.cancelled = True
        self.process.cancel()
        shutil.rmtree(self.workDir, ignore_errors=True)


class CompletionResults:
    """What a run put in the scene."""

    def __init__(self, segmentation, implantModel, report, log, workDir=None):
        self.segmentation = segmentation
        self.implantModel = implantModel
        self.report = report
        self.log = log
        self.workDir = workDir  # kept only with keepIntermediate

    @property
    def summary(self):
        if not self.report.get("defect_found", True):
            return self.report.get("message", _("No defect found."))
        return _("Implant {volume:.1f} cm3, model {model}, {seconds:.0f} s on {device}.").format(
            volume=self.report["implant"]["volume_cm3"],
            model=self.report["model"]["name"] + (" + " + self.report["super_resolution"]["model"] + (" (skipped)" if self.report["super_resolution"].get("skipped") else "")
                                                  if self.report.get("super_resolution") else ""),
            seconds=self.report["seconds"].get("total", 0) + self.report["seconds"].get("write", 0), device=self.report["device"])


def launchTraining(*args, **options):
    """Train in a separate process from Slicer's Python console, with its progress printed there:

        from SparseSkullCompletion import launchTraining; job = launchTraining("--data", "/data/skullfix", "--out", "/data/run1")

    Arguments are those of ``sparseskull train`` (keywords too: ``steps=500``). Slicer stays responsive:
    the run's output is read by a thread and printed from a Qt timer on the main thread. When the run
    ends with a model, the model is registered and appears in the module's model list. ``job.stop()``
    saves a checkpoint and ends the run; ``job.progress()`` returns its latest step, loss and DSC.
    """
    import qt
    from sparseskull.jobs import launch
    from sparseskull.nets.catalogue import register_model

    job = launch(*args, echo=False, **options)
    timer = qt.QTimer()
    timer.setInterval(500)

    def flush():
        for line in job.lines():
            print(line)
        if job.drained():
            timer.stop()
            model = job.out / "model.safetensors"
            if job.returncode == 0 and model.exists():
                print(f"registered {register_model(model).name}: choose it in Sparse Skull Completion's model list")

    timer.connect("timeout()", flush)
    timer.start()
    job.timer = timer  # lives as long as the job
    return job
