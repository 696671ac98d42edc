"""Sparse Skull Completion: 3D Slicer scripted module.

Thin Slicer front end for the ``sparseskull`` core package, which sits next to
this file so that Slicer can import it without pip.  All computation lives in
``sparseskull`` and in :class:`SparseSkullCompletionLogic`; the widget only
wires the GUI to them.
"""

import logging
import os
import sys

# The core package ``sparseskull/`` is installed inside this module folder:
# put the folder on sys.path so ``import sparseskull`` works without pip.
_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)

import slicer  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin  # noqa: E402

try:  # Slicer >= 5.4
    from slicer.i18n import tr as _
except ImportError:  # pragma: no cover - older Slicer

    def _(text):
        return text


STATUS_NOT_YET_AVAILABLE = _(
    "Skull completion and implant design arrive in a later version of this module."
)


#
# SparseSkullCompletion
#


class SparseSkullCompletion(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Sparse Skull Completion")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SparseSkullCompletion developers"]
        self.parent.helpText = _(
            "Completes a defective skull and designs a cranial implant "
            "(completed skull minus defective skull) with a sparse convolutional "
            "neural network working at high resolution."
            "<br>Workflow: load a post-craniectomy head CT, threshold bone into a "
            "skull mask, complete the skull, inspect the implant in 3D and export "
            "it as STL."
        )
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _(
            "Method: J. Li, C. Gsaxner, A. Pepe, D. Schmalstieg, J. Kleesiek, "
            "J. Egger. Sparse convolutional neural network for high-resolution "
            "skull shape completion and shape super-resolution. "
            "Scientific Reports 13, 20229 (2023). "
            "https://doi.org/10.1038/s41598-023-47437-6"
            "<br>Training data: SkullFix (AutoImplant challenge), licensed under "
            "CC BY-NC-SA 4.0 (https://creativecommons.org/licenses/by-nc-sa/4.0/); "
            "models trained on it inherit the non-commercial, share-alike terms. "
            "Not a medical device: implants must be reviewed by qualified staff "
            "before any clinical use."
        )


#
# SparseSkullCompletionWidget
#


class SparseSkullCompletionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: loads the Designer file and forwards actions to the logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for scene event observation
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)

        # Load the widget from the .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SparseSkullCompletion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Give MRML-aware widgets (node selectors) access to the scene.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SparseSkullCompletionLogic()

        self.ui.statusLabel.text = STATUS_NOT_YET_AVAILABLE

        self.layout.addStretch(1)

    def cleanup(self):
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()


#
# SparseSkullCompletionLogic
#


class SparseSkullCompletionLogic(ScriptedLoadableModuleLogic):
    """Computation behind the module, independent of the GUI.

    Empty for now. It will threshold a CT into a skull mask, run the sparse
    completion network from the ``sparseskull`` core package, derive the implant
    (completed minus defective skull) as segments and export it as STL in
    patient coordinates. Slicer-only modules are to be imported lazily inside
    its methods so that it stays testable headless with slicer-core.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)


def launchTraining(*args, **options):
    """Train in a separate process from Slicer's Python console, with its progress printed there:

        from SparseSkullCompletion import launchTraining; job = launchTraining("--data", "/data/skullfix", "--out", "/data/run1")

    Arguments are those of ``sparseskull train`` (keywords too: ``steps=500``). Slicer stays responsive:
    the run's output is read by a thread and printed from a Qt timer on the main thread. ``job.stop()``
    saves a checkpoint and ends the run; ``job.progress()`` returns its latest step, loss and DSC.
    """
    import qt

    from sparseskull.train import launch

    job = launch(*args, echo=False, **options)
    timer = qt.QTimer()
    timer.setInterval(500)

    def flush():
        for line in job.lines():
            print(line)
        if job.drained():
            timer.stop()

    timer.connect("timeout()", flush)
    timer.start()
    job.timer = timer  # lives as long as the job
    return job


#
# SparseSkullCompletionTest
#


class SparseSkullCompletionTest(ScriptedLoadableModuleTest):
    """Tests run from Slicer (Reload and Test, or ctest via slicer_add_python_unittest)."""

    def setUp(self):
        """Reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_ImportCorePackage()

    def test_ImportCorePackage(self):
        """The core package imports from the module folder, without pip."""
        self.delayDisplay("Starting test_ImportCorePackage")

        import sparseskull

        packageDir = os.path.dirname(os.path.abspath(sparseskull.__file__))
        logging.info("sparseskull imported from %s", packageDir)
        self.assertEqual(
            os.path.normcase(os.path.dirname(packageDir)),
            os.path.normcase(_MODULE_DIR),
            "sparseskull must be the copy bundled with the module",
        )

        logic = SparseSkullCompletionLogic()
        self.assertIsNotNone(logic)

        self.delayDisplay("Test passed")
