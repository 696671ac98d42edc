"""The Python packages the core needs, and their installation into Slicer's Python on first use.

PyTorch goes through the PyTorch extension (``PyTorchUtils``) when it is installed: it picks the build
(CUDA or CPU) that fits this machine. The rest comes from pip. No Qt at import time: the dialogs come from
``slicer.util``, which needs the application only when they are shown.
"""

import importlib
import importlib.util

import slicer

from .compat import _

DEPENDENCIES = {  # import name -> pip name
    "torch": "torch", "numpy": "numpy", "scipy": "scipy", "skimage": "scikit-image", "SimpleITK": "SimpleITK",
    "safetensors": "safetensors", "tqdm": "tqdm", "matplotlib": "matplotlib",
}


def missingDependencies():
    """The pip names of the packages the core needs that this Python cannot import."""
    return [pip for name, pip in DEPENDENCIES.items() if importlib.util.find_spec(name) is None]


def installDependencies(missing):
    """Install ``missing`` (pip names) without asking: torch through the PyTorch extension when present,
    the rest with pip behind a progress dialog. Raises when PyTorch cannot be installed."""
    missing = list(missing)
    if "torch" in missing:
        try:
            import PyTorchUtils  # the PyTorch extension: picks the CUDA build that fits this machine
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError(_("PyTorch could not be installed."))
            missing.remove("torch")
    if not missing:
        return
    progress = slicer.util.createProgressDialog(labelText=_("Installing {names}...").format(names=", ".join(missing)), maximum=0)
    try:
        slicer.app.processEvents()
        slicer.util.pip_install(missing)
    finally:
        progress.close()
        importlib.invalidate_caches()  # so that find_spec sees what was just installed


def ensureDependencies(askConfirmation=True):
    """Make sure the core's packages are installed, asking first; True when they all are afterwards.

    The Widget calls this before a run; from the Python console, ``ensureDependencies(askConfirmation=False)``.
    """
    missing = missingDependencies()
    if not missing:
        return True
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
        _("Skull completion needs these Python packages, not yet installed: {names}. Install them now? "
          "This can take several minutes.").format(names=", ".join(missing))):
        return False
    with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
        installDependencies(missing)
    return not missingDependencies()
