"""Sparse Skull Completion: 3D Slicer scripted module.

Thin Slicer front end for the ``sparseskull`` core package, which sits next to this file so that
Slicer imports it without pip. The Widget only wires the GUI to the Logic. The Logic holds no Qt:
it converts between MRML nodes and the core's volumes and meshes, and runs ``sparseskull complete``
(the same code as the command line) in a separate process on temporary files, so the GUI never
freezes and Cancel ends the run. The Logic runs headless under ``slicer-core`` (tested in CI).
"""

import logging
import os
import shutil
import sys
import tempfile
import unittest

# The core package ``sparseskull/`` is installed inside this module folder:
# put the folder on sys.path so ``import sparseskull`` works without pip.
_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)

import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402

try:
    from slicer.ScriptedLoadableModule import (  # noqa: E402
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
except ImportError:  # slicer-core outside the application (headless tests): only the Logic is used

    class ScriptedLoadableModule:  # noqa: D101
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:  # noqa: D101
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # noqa: D101
        def __init__(self, parent=None):
            pass

    ScriptedLoadableModuleTest = unittest.TestCase

try:
    from slicer.util import VTKObservationMixin  # noqa: E402
except ImportError:  # pragma: no cover

    class VTKObservationMixin:  # noqa: D101
        def __init__(self):
            pass

        def removeObservers(self):
            pass


try:  # Slicer >= 5.4
    from slicer.i18n import tr as _
except ImportError:  # older Slicer, slicer-core

    def _(text):
        return text


RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


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
        srModels = [label for label, path in self.logic.modelChoices(task="super-resolution")]
        self.ui.superResolutionCheckBox.enabled = bool(srModels)
        if not srModels:
            self.ui.superResolutionCheckBox.toolTip = _("No super-resolution model is installed yet.")

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
        from sparseskull.pipeline import CompleteOptions

        return CompleteOptions(
            threshold_hu=self.ui.thresholdSlider.value,
            model=self.ui.modelComboBox.currentData,
            device=self.ui.deviceComboBox.currentData or "auto",
            backend=self.ui.backendComboBox.currentText or "torch",
            clearance_mm=self.ui.clearanceSpinBox.value,
            min_depth_mm=self.ui.minDepthSpinBox.value,
            min_thickness_mm=self.ui.minThicknessSpinBox.value,
            drop_behind_bone=bool(self.ui.behindBoneCheckBox.checked),
            span_opening=bool(self.ui.spanCheckBox.checked),
            drop_mandible=bool(self.ui.mandibleCheckBox.checked),
            smoothing_iterations=int(self.ui.smoothingSpinBox.value),
        )

    def onApply(self):
        if not self.ensureDependencies():
            return
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
        self.ui.progressBar.setValue(int(100 * job.fraction))
        self.ui.statusLabel.text = job.stage
        if job.running():
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

    # dependencies ------------------------------------------------------------------------

    def ensureDependencies(self):
        """Install what the core needs on first use: torch through the PyTorch extension when present."""
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
            _("Skull completion needs these Python packages, not yet installed: {names}. Install them now? "
              "This can take several minutes.").format(names=", ".join(missing))):
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
            if "torch" in missing:
                try:
                    import PyTorchUtils  # the PyTorch extension: picks the CUDA build that fits this machine
                except ImportError:
                    PyTorchUtils = None
                if PyTorchUtils is not None:
                    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                        raise RuntimeError(_("PyTorch could not be installed."))
                    missing.remove("torch")
            progress = slicer.util.createProgressDialog(labelText=_("Installing {names}...").format(names=", ".join(missing)), maximum=0)
            try:
                slicer.app.processEvents()
                slicer.util.pip_install(missing)
            finally:
                progress.close()
        return not self.logic.missingDependencies()


#
# SparseSkullCompletionLogic
#


class CompletionJob:
    """A "Complete skull" run: the core's child process (a ``CompletionProcess``, whose ``poll``, ``running``,
    ``stage``, ``fraction``, ``returncode``, ``log``, ``error`` and ``wait`` it answers for), its work folder
    and the input node."""

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
            volume=self.report["implant"]["volume_cm3"], model=self.report["model"]["name"],
            seconds=self.report["seconds"].get("total", 0) + self.report["seconds"].get("write", 0), device=self.report["device"])


class SparseSkullCompletionLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, without Qt: usable from the Python console, the self-test and pytest.

    ``complete(node)`` runs the whole job and waits; the Widget uses ``startCompletion`` / ``loadResults``
    around a timer instead, so the GUI stays responsive.
    """

    SEGMENTS = (  # core output file stem, segment name, colour
        ("defective_skull", "Defective skull", (0.89, 0.85, 0.78)),
        ("completed_skull", "Completed skull", (0.55, 0.70, 0.90)),
        ("implant", "Implant", (0.95, 0.45, 0.20)),
    )
    PREVIEW_SEGMENT = "Bone preview"
    DEPENDENCIES = {  # import name -> pip name
        "torch": "torch", "numpy": "numpy", "scipy": "scipy", "skimage": "scikit-image", "SimpleITK": "SimpleITK",
        "safetensors": "safetensors", "tqdm": "tqdm", "matplotlib": "matplotlib",
    }

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._segmentationsLogic = None

    # environment -------------------------------------------------------------------------

    @classmethod
    def missingDependencies(cls):
        import importlib.util

        return [pip for name, pip in cls.DEPENDENCIES.items() if importlib.util.find_spec(name) is None]

    @staticmethod
    def deviceChoices():
        """(label, value) pairs: Auto and CPU always, then each GPU torch sees."""
        choices = [(_("Auto"), "auto"), (_("CPU"), "cpu")]
        try:
            from sparseskull.train import available_devices
        except ImportError:  # no torch yet: the first run installs it
            return choices
        return choices + [(label, value) for value, label in available_devices()]

    @classmethod
    def deviceSummary(cls):
        gpus = [label for label, value in cls.deviceChoices() if value not in ("auto", "cpu")]
        return _("Detected: {gpus}").format(gpus=", ".join(gpus)) if gpus else _("Detected: CPU only (no GPU found by torch)")

    @staticmethod
    def backendChoices():
        """The sparse engines installed here: torch always; MinkowskiEngine and spconv when present."""
        try:
            from sparseskull.sparse.backends import available_backends
        except ImportError:
            return ["torch"]
        return available_backends()

    @staticmethod
    def modelChoices(task="completion"):
        """(label, path) pairs: the shipped models (the default first), then the ones the user registered."""
        from sparseskull.models import available_models, default_model_name

        default = default_model_name()
        models = [m for m in available_models() if m.info.task == task]
        models.sort(key=lambda m: (not (m.shipped and m.name == default), not m.shipped))
        return [(m.label, str(m.path)) for m in models]

    @staticmethod
    def registerModel(path):
        """Make a trained model (``model.safetensors`` from the training script) appear in the model list."""
        from sparseskull.models import register_model

        return register_model(path).name

    # MRML <-> core -----------------------------------------------------------------------

    def segmentationsLogic(self, scene):
        if self._segmentationsLogic is None:
            modules = getattr(slicer, "modules", None)
            if modules is not None and hasattr(modules, "segmentations"):
                self._segmentationsLogic = modules.segmentations.logic()
            else:  # slicer-core: a logic of our own, on this scene (for the conversion rules)
                self._segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
                self._segmentationsLogic.SetMRMLScene(scene)
        return self._segmentationsLogic

    @staticmethod
    def volumeFromNode(node):
        """A core ``Volume`` (array [i, j, k], LPS geometry) from a scalar volume node, parent transforms applied."""
        from sparseskull.volume import Volume

        if node is None or node.GetImageData() is None:
            raise ValueError(_("The input volume is empty."))
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        ijkToRas = slicer.util.arrayFromVTKMatrix(m)
        parent = node.GetParentTransformNode()
        if parent is not None:
            if not parent.IsTransformToWorldLinear():
                raise ValueError(_("The input is under a non-linear transform: harden it first (Data module)."))
            toWorld = vtk.vtkMatrix4x4()
            parent.GetMatrixTransformToWorld(toWorld)
            ijkToRas = slicer.util.arrayFromVTKMatrix(toWorld) @ ijkToRas
        ijkToLps = RAS_FROM_LPS @ ijkToRas
        spacing = np.linalg.norm(ijkToLps[:3, :3], axis=0)
        array = slicer.util.arrayFromVolume(node)  # [k, j, i]
        # a transposed view, not a copy: a contiguous [i, j, k] copy of a 512^2 CT takes seconds, and the
        # core (thresholds, NRRD writing) takes views
        return Volume(array.transpose(2, 1, 0), tuple(spacing), tuple(ijkToLps[:3, 3]), ijkToLps[:3, :3] / spacing)

    def addLabelmapNode(self, scene, volume, name):
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(RAS_FROM_LPS @ volume.ijk_to_lps))
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.asarray(volume.array, dtype=np.uint8).transpose(2, 1, 0)))
        return node

    def setSegment(self, segmentationNode, name, mask, color):
        """Put a binary mask (a core ``Volume``) into the segment called ``name``, replacing its content."""
        scene = segmentationNode.GetScene()
        segmentationsLogic = self.segmentationsLogic(scene)  # made first: it registers the representation converters
        segmentation = segmentationNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(name)
        if not segmentId:
            segmentId = segmentation.AddEmptySegment("", name, list(color))
        if np.any(mask.array):
            labelmap = self.addLabelmapNode(scene, mask, name)
            try:
                ids = vtk.vtkStringArray()
                ids.InsertNextValue(segmentId)
                if not segmentationsLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode, ids):
                    raise RuntimeError(f"could not import the {name} mask into the segmentation")
            finally:
                scene.RemoveNode(labelmap)
        else:
            segmentation.GetSegment(segmentId).RemoveAllRepresentations()
        segmentation.GetSegment(segmentId).SetColor(*color)
        return segmentId

    def maskFromSegmentation(self, segmentationNode, segmentNames=None, referenceNode=None):
        """The union of a segmentation's segments (all, or those named) as a binary core ``Volume``."""
        scene = segmentationNode.GetScene()
        segmentation = segmentationNode.GetSegmentation()
        ids = vtk.vtkStringArray()
        if segmentNames is None:
            segmentation.GetSegmentIDs(ids)
        else:
            for segmentName in segmentNames:
                segmentId = segmentation.GetSegmentIdBySegmentName(segmentName)
                if not segmentId:
                    raise ValueError(_("The segmentation {name} has no segment {segment}.").format(name=segmentationNode.GetName(), segment=segmentName))
                ids.InsertNextValue(segmentId)
        if ids.GetNumberOfValues() == 0:
            raise ValueError(_("The segmentation {name} has no segments.").format(name=segmentationNode.GetName()))
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__skull__")
        try:
            if not self.segmentationsLogic(scene).ExportSegmentsToLabelmapNode(segmentationNode, ids, labelmap, referenceNode):
                raise ValueError(_("The segmentation {name} could not be exported to a labelmap.").format(name=segmentationNode.GetName()))
            volume = self.volumeFromNode(labelmap)
        finally:
            scene.RemoveNode(labelmap)
        return volume.with_array(np.asarray(volume.array) > 0)

    def inputVolume(self, node):
        """(core Volume, input kind) from the panel's input: a CT, a labelmap or a skull segmentation."""
        if node is None:
            raise ValueError(_("Select an input: a head CT or a skull segmentation."))
        if node.IsA("vtkMRMLSegmentationNode"):
            return self.maskFromSegmentation(node), "mask"
        volume = self.volumeFromNode(node)
        if node.IsA("vtkMRMLLabelMapVolumeNode"):
            return volume.with_array(np.asarray(volume.array) > 0), "mask"
        return volume, "auto"

    # bone threshold ----------------------------------------------------------------------

    def autoThreshold(self, ctNode):
        from sparseskull.pipeline import auto_threshold

        return auto_threshold(self.volumeFromNode(ctNode))

    def updateBonePreview(self, ctNode, thresholdHu, segmentationNode=None):
        """Show the voxels at or above ``thresholdHu`` as the "Bone preview" segment (made on first use)."""
        scene = ctNode.GetScene()
        self.segmentationsLogic(scene)  # before any node: it registers the conversion rules
        if segmentationNode is None or segmentationNode.GetScene() is None:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{ctNode.GetName()} bone preview")
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(ctNode)
        ct = self.volumeFromNode(ctNode)
        self.setSegment(segmentationNode, self.PREVIEW_SEGMENT, ct.with_array(np.asarray(ct.array) >= thresholdHu), (0.35, 0.85, 0.35))
        return segmentationNode

    @staticmethod
    def removeBonePreview(segmentationNode):
        scene = segmentationNode.GetScene()
        if scene is not None:
            scene.RemoveNode(segmentationNode)

    # the run -----------------------------------------------------------------------------

    def startCompletion(self, inputNode, options=None, python=None):
        """Write the input to a temporary folder and start ``sparseskull complete`` on it in a child process."""
        import dataclasses

        from sparseskull.io import write_volume
        from sparseskull.pipeline import CompleteOptions, CompletionProcess

        options = options or CompleteOptions()
        volume, kind = self.inputVolume(inputNode)
        options = dataclasses.replace(options, stl_space="LPS", input_kind="mask" if kind == "mask" else options.input_kind)
        workDir = tempfile.mkdtemp(prefix="SparseSkullCompletion-")
        try:
            source = os.path.join(workDir, "input.nrrd")
            write_volume(volume, source, compress=False)
            process = CompletionProcess(source, os.path.join(workDir, "out"), options, python=python)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return CompletionJob(process, workDir, inputNode)

    def loadResults(self, job, keepIntermediate=False, show3D=True):
        """A finished run's outputs into the scene (see ``loadOutputs``); its work folder is removed unless kept."""
        try:
            segmentationNode, modelNode, report = self.loadOutputs(os.path.join(job.workDir, "out"), job.inputNode, show3D=show3D)
        finally:
            if not keepIntermediate:
                shutil.rmtree(job.workDir, ignore_errors=True)
        return CompletionResults(segmentationNode, modelNode, report, list(job.log), job.workDir if keepIntermediate else None)

    def loadOutputs(self, outDir, inputNode, show3D=True):
        """``sparseskull complete`` outputs as one segmentation (three segments) and the implant STL as a model node.

        Returns (segmentation node, implant model node or None when no defect was found, report dict).
        """
        import json

        from sparseskull.io import read_mask
        from sparseskull.mesh import read_stl, transform_polydata

        with open(os.path.join(outDir, "report.json")) as f:
            report = json.load(f)
        scene = inputNode.GetScene()
        name = inputNode.GetName()
        self.segmentationsLogic(scene)  # before the node: it registers the conversion rules (3D surfaces)
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} skull completion")
        segmentationNode.CreateDefaultDisplayNodes()
        if inputNode.IsA("vtkMRMLScalarVolumeNode"):
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputNode)
        for stem, segmentName, color in self.SEGMENTS:
            mask = read_mask(os.path.join(outDir, f"{stem}.nrrd"), contiguous=False)  # a view: no [i, j, k] copy
            self.setSegment(segmentationNode, segmentName, mask, color)
        segmentation = segmentationNode.GetSegmentation()
        segmentationNode.GetDisplayNode().SetSegmentOpacity3D(segmentation.GetSegmentIdBySegmentName("Completed skull"), 0.25)
        if show3D:
            segmentationNode.CreateClosedSurfaceRepresentation()
        modelNode = None
        stl = os.path.join(outDir, "implant.stl")
        if os.path.exists(stl):  # no STL when no defect was found
            modelNode = scene.AddNewNodeByClass("vtkMRMLModelNode", f"{name} implant")
            poly = read_stl(stl)
            if report.get("mesh", {}).get("space", "LPS") == "LPS":  # the scene is RAS
                poly = transform_polydata(poly, RAS_FROM_LPS)
            modelNode.SetAndObservePolyData(poly)
            modelNode.CreateDefaultDisplayNodes()
            modelNode.GetDisplayNode().SetColor(*self.SEGMENTS[2][2])
        return segmentationNode, modelNode, report

    def complete(self, inputNode, options=None, keepIntermediate=False, show3D=True, timeout=None, python=None):
        """The whole job, waiting for it: for the Python console, the self-test and pytest."""
        job = self.startCompletion(inputNode, options, python=python)
        try:
            job.wait(timeout)
        except BaseException:
            job.cancel()
            raise
        if job.returncode != 0:
            message = job.error()
            shutil.rmtree(job.workDir, ignore_errors=True)
            raise RuntimeError(message)
        return self.loadResults(job, keepIntermediate=keepIntermediate, show3D=show3D)

    @staticmethod
    def exportImplantStl(modelNode, path, space="LPS"):
        """Write the implant model as STL in millimetres, LPS (Slicer's file convention) unless RAS is asked.

        Returns the mesh check (closed and manifold, volume, area) of what was written.
        """
        from sparseskull.mesh import check_mesh, transform_polydata, write_stl

        poly = modelNode.GetPolyData()
        if poly is None or poly.GetNumberOfPoints() == 0:
            raise ValueError(_("The implant model is empty: nothing to export."))
        if space.upper() == "LPS":
            poly = transform_polydata(poly, RAS_FROM_LPS)
        write_stl(poly, path, space.upper())
        return check_mesh(poly)


def launchTraining(*args, **options):
    """Train in a separate process from Slicer's Python console, with its progress printed there:

        from SparseSkullCompletion import launchTraining; job = launchTraining("--data", "/data/skullfix", "--out", "/data/run1")

    Arguments are those of ``sparseskull train`` (keywords too: ``steps=500``). Slicer stays responsive:
    the run's output is read by a thread and printed from a Qt timer on the main thread. When the run
    ends with a model, the model is registered and appears in the module's model list. ``job.stop()``
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
            model = job.out / "model.safetensors"
            if job.returncode == 0 and model.exists():
                print(f"registered {SparseSkullCompletionLogic.registerModel(model)}: choose it in Sparse Skull Completion's model list")

    timer.connect("timeout()", flush)
    timer.start()
    job.timer = timer  # lives as long as the job
    return job


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
        from sparseskull.mesh import mesh_centroid, read_stl
        from sparseskull.sample import sample_dir

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
