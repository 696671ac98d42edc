"""The module's Logic: everything the module does, without Qt, so that it runs headless (``slicer-core``).

It converts between MRML nodes (Slicer's RAS scene) and the core's volumes and meshes (LPS), writes the
input to a temporary folder, runs ``sparseskull complete`` there in a child process (the same code as the
command line) and loads its outputs as segments and a model. The core is imported inside the methods, so
that the module loads, and its dependency installer can run, before torch and scipy are installed.
"""

import os
import shutil
import tempfile

import numpy as np
import slicer
import vtk

from . import dependencies
from .compat import ScriptedLoadableModuleLogic, _
from .jobs import CompletionJob, CompletionResults


class SparseSkullCompletionLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, without Qt: usable from the Python console, the self-test and pytest.

    ``complete(node)`` runs the whole job and waits; the Widget uses ``startCompletion`` / ``loadResults``
    around a timer instead, so the GUI stays responsive.
    """

    SURFACE_METHOD = "Conversion method"  # the labelmap-to-surface rule's parameter: 0 flying edges, 1 surface nets
    SEGMENTS = (  # core output file stem, segment name, colour
        ("defective_skull", "Defective skull", (0.89, 0.85, 0.78)),
        ("completed_skull", "Completed skull", (0.55, 0.70, 0.90)),
        ("implant", "Implant", (0.95, 0.45, 0.20)),
    )
    PREVIEW_SEGMENT = "Bone preview"

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._segmentationsLogic = None

    # environment -------------------------------------------------------------------------

    @staticmethod
    def missingDependencies():
        """The pip names of the core's packages not installed yet (``dependencies.ensureDependencies`` installs them)."""
        return dependencies.missingDependencies()

    @staticmethod
    def deviceChoices():
        """(label, value) pairs: Auto and CPU always, then each GPU torch sees."""
        choices = [(_("Auto"), "auto"), (_("CPU"), "cpu")]
        try:
            from sparseskull.runtime import available_devices

            devices = available_devices()  # imports torch
        except ImportError:  # no torch yet: the first run installs it
            return choices
        return choices + [(label, value) for value, label in devices]

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
        """(label, value) pairs: the shipped completion models and the shipped pairs (a completion model, then
        super-resolution to a finer grid: one choice, its name the value), the default first, then the models the user
        registered; none before torch is installed (the model files are read with it)."""
        try:
            from sparseskull.nets.catalogue import available_models, default_model_name, list_pairs
        except ImportError:  # no torch yet: the first run installs it, and the Widget lists the models then
            return []

        default = default_model_name()
        models = [m for m in available_models() if m.info.task == task]
        choices = [(m.name == default and m.shipped, not m.shipped, m.label, str(m.path)) for m in models]
        if task == "completion":
            choices += [(p.name == default, False, f"{p.name} ({p.label or 'with super-resolution'})", p.name) for p in list_pairs()]
        choices.sort(key=lambda c: (not c[0], c[1]))
        return [(label, value) for _, _, label, value in choices]

    @staticmethod
    def registerModel(path):
        """Make a trained model (``model.safetensors`` from the training script) appear in the model list."""
        from sparseskull.nets.catalogue import register_model

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
        from sparseskull.data.volume import Volume
        from sparseskull.implant.mesh import RAS_FROM_LPS

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
        from sparseskull.implant.mesh import RAS_FROM_LPS

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
        from sparseskull.implant.skull import auto_threshold

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

        from sparseskull.data.io import write_volume
        from sparseskull.implant.options import CompleteOptions
        from sparseskull.jobs import CompletionProcess

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

        from sparseskull.data.io import read_mask
        from sparseskull.implant.mesh import RAS_FROM_LPS, read_stl, transform_polydata

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
            # vtkSurfaceNets3D instead of flying edges, smoothed by the same windowed-sinc filter: nearly the same look in
            # half the time (scripts/time_segment_surfaces.py; docs/slicer.md). A Slicer without the method ignores it.
            segmentation.SetConversionParameter(self.SURFACE_METHOD, "1")
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
        from sparseskull.implant.mesh import RAS_FROM_LPS, check_mesh, transform_polydata, write_stl

        poly = modelNode.GetPolyData()
        if poly is None or poly.GetNumberOfPoints() == 0:
            raise ValueError(_("The implant model is empty: nothing to export."))
        if space.upper() == "LPS":
            poly = transform_polydata(poly, RAS_FROM_LPS)
        write_stl(poly, path, space.upper())
        return check_mesh(poly)
