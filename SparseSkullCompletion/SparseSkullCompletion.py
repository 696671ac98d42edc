"""Sparse Skull Completion: 3D Slicer scripted module.

Thin Slicer front end for the ``sparseskull`` core package, which sits next to this file so that Slicer
imports it without pip. This file holds only what Slicer looks for in it: the module class, the Widget and
the self-test. The Widget only wires the panel to the Logic. The Logic, the dependency installer and the
job handling live in ``SparseSkullCompletionLib/`` beside this file: the Logic holds no Qt, converts
between MRML nodes and the core's volumes and meshes, and runs ``sparseskull complete`` (the same code as
the command line) in a separate process on temporary files, so the GUI never freezes and Cancel ends the
run. The Logic runs headless under ``slicer-core`` (tested in CI).
"""

import logging
import os
import sys

# The core package ``sparseskull/`` and ``SparseSkullCompletionLib/`` are installed inside this module
# folder: put the folder on sys.path so that both import without pip.
_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)

import numpy as np  # noqa: E402
import slicer  # noqa: E402
from SparseSkullCompletionLib import (  # noqa: E402, F401 (re-exported: the console and the docs use these names)
    CompletionJob,
    CompletionResults,
    SparseSkullCompletionLogic,
    ensureDependencies,
    launchTraining,
)
from SparseSkullCompletionLib.compat import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
    VTKObservationMixin,
    _,
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
            "<br>Workflow: select a post-craniectomy head CT, set the bone threshold "
            "(the green preview), click <b>Complete skull</b>, inspect the implant in 3D "
            "and export it with <b>Export implant STL</b>."
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
    """Thin GUI: loads the Designer file and forwards every action to the Logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None
        self.results = None
        self.previewSegmentation = None

    def setup(self):
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SparseSkullCompletion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SparseSkullCompletionLogic()

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(250)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.previewTimer = qt.QTimer()  # the bone preview follows the slider, at most every 300 ms
        self.previewTimer.setSingleShot(True)
        self.previewTimer.setInterval(300)
        self.previewTimer.connect("timeout()", self.updateBonePreview)

        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", lambda value: self.previewTimer.start())
        self.ui.previewCheckBox.connect("toggled(bool)", lambda on: self.updateBonePreview())
        self.ui.autoThresholdButton.connect("clicked(bool)", self.onAutoThreshold)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.showLogButton.connect("clicked(bool)", self.onShowLog)
        self.ui.exportStlButton.connect("clicked(bool)", self.onExportStl)

        self.ui.progressBar.setValue(0)
        self.ui.cancelButton.enabled = False
        self.ui.showLogButton.enabled = False
        self.ui.exportStlButton.enabled = False
        self.refreshChoices()
        self.onInputChanged(self.ui.inputSelector.currentNode())
        self.layout.addStretch(1)

    def cleanup(self):
        if self.job is not None:
            self.job.cancel()
        self.removeObservers()

    # choices ------------------------------------------------------------------------------

    def refreshChoices(self):
        """Models, devices and backends as this machine has them."""
        self.ui.modelComboBox.clear()
        for label, path in self.logic.modelChoices():
            self.ui.modelComboBox.addItem(label, path)
        self.ui.deviceComboBox.clear()
        for label, value in self.logic.deviceChoices():
            self.ui.deviceComboBox.addItem(label, value)
        self.ui.deviceInfoLabel.text = self.logic.deviceSummary()
        self.ui.backendComboBox.clear()
        for name in self.logic.backendChoices():
            self.ui.backendComboBox.addItem(name)

    def onLoadModel(self):
        import qt

        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Load a trained model"), "", "sparseskull model (*.safetensors)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("This file is not a model this module can use."), waitCursor=True):
            name = self.logic.registerModel(path)
            self.refreshChoices()
            self.ui.modelComboBox.setCurrentIndex(max(0, self.ui.modelComboBox.findText(name, qt.Qt.MatchStartsWith)))

    # bone threshold ----------------------------------------------------------------------

    def onInputChanged(self, node):
        isCT = node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
        self.ui.thresholdSlider.enabled = isCT
        self.ui.autoThresholdButton.enabled = isCT
        self.ui.previewCheckBox.enabled = isCT
        self.ui.applyButton.enabled = node is not None and self.job is None
        if self.job is None:
            self.ui.statusLabel.text = _("Ready: check the green bone preview, then click Complete skull.") if isCT else (
                _("Ready: click Complete skull.") if node is not None else _("Select a head CT or a skull segmentation."))
        self.updateBonePreview()

    def onAutoThreshold(self):
        node = self.ui.inputSelector.currentNode()
        if node is not None:
            with slicer.util.tryWithErrorDisplay(_("Automatic threshold failed."), waitCursor=True):
                self.ui.thresholdSlider.value = self.logic.autoThreshold(node)

    def updateBonePreview(self):
        node = self.ui.inputSelector.currentNode()
        show = self.ui.previewCheckBox.checked and node is not None and self.ui.thresholdSlider.enabled
        if not show:
            if self.previewSegmentation is not None:
                self.logic.removeBonePreview(self.previewSegmentation)
            return
        with slicer.util.tryWithErrorDisplay(_("Bone preview failed."), waitCursor=True):
            self.previewSegmentation = self.logic.updateBonePreview(node, self.ui.thresholdSlider.value, self.previewSegmentation)

    # the run -----------------------------------------------------------------------------

    def currentOptions(self):
        from sparseskull.implant.options import CompleteOptions

        return CompleteOptions(
            threshold_hu=self.ui.thresholdSlider.value,
            model=self.ui.modelComboBox.currentData,
            device=self.ui.deviceComboBox.currentData or "auto",
            backend=self.ui.backendComboBox.currentText or "torch",
            passes=int(self.ui.passesSpinBox.value),
            clearance_mm=self.ui.clearanceSpinBox.value,
            min_depth_mm=self.ui.minDepthSpinBox.value,
            min_thickness_mm=self.ui.minThicknessSpinBox.value,
            drop_behind_bone=bool(self.ui.behindBoneCheckBox.checked),
            span_opening=bool(self.ui.spanCheckBox.checked),
            drop_mandible=bool(self.ui.mandibleCheckBox.checked),
            smoothing_iterations=int(self.ui.smoothingSpinBox.value),
        )

    def onApply(self):
        if self.logic.missingDependencies():  # first use: install what the core needs, then list what it offers
            if not ensureDependencies():
                return
            self.refreshChoices()
        node = self.ui.inputSelector.currentNode()
        with slicer.util.tryWithErrorDisplay(_("Could not start the skull completion."), waitCursor=True):
            if self.previewSegmentation is not None:
                self.logic.removeBonePreview(self.previewSegmentation)
                self.ui.previewCheckBox.checked = False
            self.job = self.logic.startCompletion(node, self.currentOptions())
            self.ui.applyButton.enabled = False
            self.ui.cancelButton.enabled = True
            self.ui.showLogButton.enabled = True
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = _("Starting...")
            self.pollTimer.start()

    def onPoll(self):
        job = self.job
        if job is None:
            return
        for line in job.poll():
            logging.info(line)
        running = job.running()  # before the bar: a child that ends after poll() sets its fraction to 1 here
        self.ui.progressBar.setValue(int(100 * job.fraction))
        self.ui.statusLabel.text = job.stage
        if running:
            return
        self.pollTimer.stop()
        self.job = None
        self.ui.cancelButton.enabled = False
        self.ui.applyButton.enabled = True
        if job.cancelled:
            self.ui.statusLabel.text = _("Cancelled.")
            return
        if job.returncode != 0:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(job.error() or _("The run failed."), detailedText="\n".join(job.log))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load the results."), waitCursor=True):
            self.results = self.logic.loadResults(job, keepIntermediate=self.ui.keepIntermediateCheckBox.checked)
            self.ui.statusLabel.text = self.results.summary
            self.ui.exportStlButton.enabled = self.results.implantModel is not None

    def onCancel(self):
        if self.job is not None:
            self.job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def onShowLog(self):
        log = self.lastLog()
        slicer.util.infoDisplay(_("The log of the last run is in the details."), windowTitle=_("Skull completion log"), detailedText=log)

    def lastLog(self):
        if self.job is not None:
            return "\n".join(self.job.log)
        return "\n".join(self.results.log) if self.results is not None else ""

    def onExportStl(self):
        import qt

        if self.results is None or self.results.implantModel is None:
            return
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export implant STL"), self.results.implantModel.GetName() + ".stl", "STL (*.stl)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not export the implant."), waitCursor=True):
            check = self.logic.exportImplantStl(self.results.implantModel, path)
            note = "" if check.watertight else _(" Warning: the surface is not closed.")
            self.ui.statusLabel.text = _("Implant written to {path} ({volume:.1f} cm3, LPS).").format(path=path, volume=check.volume_mm3 / 1000) + note


#
# SparseSkullCompletionTest
#


class SparseSkullCompletionTest(ScriptedLoadableModuleTest):
    """Slicer's self-test (Reload and Test, or ctest): the clinical scenario on a generated head CT."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ImportCorePackage()
        self.setUp()
        self.test_CompleteSkull()

    def test_ImportCorePackage(self):
        """The core package imports from the module folder, without pip."""
        import sparseskull

        packageDir = os.path.dirname(os.path.abspath(sparseskull.__file__))
        self.assertEqual(os.path.normcase(os.path.dirname(packageDir)), os.path.normcase(_MODULE_DIR))

    def test_CompleteSkull(self):
        """Bundled sample CT -> Complete skull -> three segments and the implant model -> STL export in LPS."""
        self.delayDisplay("Complete skull on the bundled sample CT")
        from sparseskull.data.sample import sample_dir
        from sparseskull.implant.mesh import mesh_centroid, read_stl

        ct = slicer.util.loadVolume(str(sample_dir() / "ct.nrrd"))
        results = SparseSkullCompletionLogic().complete(ct)
        names = [results.segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)]
        self.assertEqual(names, ["Defective skull", "Completed skull", "Implant"])
        self.assertIsNotNone(results.implantModel)
        path = os.path.join(slicer.app.temporaryPath, "SparseSkullCompletion-implant.stl")
        check = SparseSkullCompletionLogic.exportImplantStl(results.implantModel, path)
        self.assertTrue(check.watertight)
        bounds = [0.0] * 6
        results.implantModel.GetRASBounds(bounds)
        centreRas = np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
        written = read_stl(path)
        b = written.GetBounds()
        centreLps = np.array([(b[0] + b[1]) / 2, (b[2] + b[3]) / 2, (b[4] + b[5]) / 2])
        np.testing.assert_allclose(centreLps, centreRas * [-1, -1, 1], atol=0.01)
        self.assertTrue(np.all(np.isfinite(mesh_centroid(written))))
        self.delayDisplay("Test passed")
