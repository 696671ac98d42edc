"""The Slicer module's Logic (SparseSkullCompletionLib), headless under slicer-core: MRML nodes in, the core
pipeline in a child process, segments and the implant model out, STL export in LPS; the dependency installer;
and the Widget's handlers driven against the Logic.

The volumes are read by Slicer's own NRRD reader (a storage node), as Slicer does when a user loads a
file, so the geometry tests cover Slicer's RAS scene against the core's LPS. slicer-core is in the
``[test]`` extra: these tests skip, saying why, where it is missing, and fail under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from sparseskull.nets.catalogue import default_model_name, resolve_model
from sparseskull.nets.files import read_info

try:
    import slicer
except ImportError:
    if os.environ.get("CI"):  # CI installs slicer-core: a missing one is a failure, not a skip
        raise
    pytest.skip("slicer-core is not installed (pip install -e '.[test]')", allow_module_level=True)

import vtk  # noqa: E402
from sparseskull.data.io import read_mask, write_volume  # noqa: E402
from sparseskull.data.sample import load_sample, sample_dir  # noqa: E402
from sparseskull.data.volume import Volume  # noqa: E402
from sparseskull.implant.mesh import check_mesh, mesh_centroid, read_stl  # noqa: E402
from sparseskull.implant.options import CompleteOptions  # noqa: E402
from sparseskull.implant.pipeline import planned_stages, run_complete  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[1] / "SparseSkullCompletion"
sys.path.insert(0, str(MODULE_DIR))
import SparseSkullCompletionLib as lib  # noqa: E402
from SparseSkullCompletionLib import dependencies  # noqa: E402

import SparseSkullCompletion as module  # noqa: E402

FLIP = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS
DEFAULT_STAGES = len(planned_stages(CompleteOptions()))  # the progress lines' count for the default model (9 for a pair)


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    slicer.mrmlScene = s  # as in the application: slicer.util helpers use the global scene
    yield s
    s.Clear(1)


@pytest.fixture
def logic():
    return module.SparseSkullCompletionLogic()


@pytest.fixture(scope="module")
def sample():
    return load_sample()


def load_volume(scene, path, name="CT", labelmap=False):
    """Read a file the way Slicer does when a user loads it: a volume archetype storage node."""
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    assert storage.ReadData(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def node_ras(node, ijk):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array(m.MultiplyPoint([*map(float, ijk), 1.0])[:3])


def test_the_module_imports_headless_and_names_the_libs_logic():
    """The module file holds the module, Widget and Test classes; the Logic and ``launchTraining`` come from
    the Lib and keep their names there (``from SparseSkullCompletion import SparseSkullCompletionLogic``)."""
    for name in ("SparseSkullCompletion", "SparseSkullCompletionWidget", "SparseSkullCompletionTest"):
        assert getattr(module, name).__module__ == "SparseSkullCompletion", name
    from SparseSkullCompletionLib.logic import SparseSkullCompletionLogic as Logic

    from SparseSkullCompletion import SparseSkullCompletionLogic, launchTraining

    assert SparseSkullCompletionLogic is Logic is lib.SparseSkullCompletionLogic
    assert launchTraining is lib.launchTraining and launchTraining.__module__ == "SparseSkullCompletionLib.jobs"
    import sparseskull

    assert Path(sparseskull.__file__).resolve().parent.parent == MODULE_DIR.resolve()
    assert Path(lib.__file__).resolve().parent.parent == MODULE_DIR.resolve()


def test_the_module_and_its_lib_load_before_the_dependencies_are_installed(tmp_path):
    """On a fresh Slicer (no torch, scipy, ...) the module must load and its Logic must answer, so that the
    installer can run: the core is imported where it is used, and the choices fall back to Auto/CPU, torch."""
    blocked = [name for name in dependencies.DEPENDENCIES if name != "numpy"] + ["qt", "ctk"]
    code = f"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # import fails, importlib.util.find_spec answers None
sys.path.insert(0, {str(MODULE_DIR)!r})
import SparseSkullCompletion
logic = SparseSkullCompletion.SparseSkullCompletionLogic()
print(logic.missingDependencies())
print(logic.deviceChoices(), logic.backendChoices(), logic.modelChoices())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    missing, choices = out.stdout.strip().splitlines()
    assert eval(missing) == [dependencies.DEPENDENCIES[name] for name in blocked if name in dependencies.DEPENDENCIES]
    assert choices == "[('Auto', 'auto'), ('CPU', 'cpu')] ['torch'] []"


def test_the_installer_asks_then_installs_torch_through_the_pytorch_extension(monkeypatch):
    """``ensureDependencies`` (the Widget calls it before a run): nothing to do when all is there; asks first;
    torch through PyTorchUtils, the rest with pip; a refusal installs nothing."""
    import contextlib
    import types

    @contextlib.contextmanager
    def surface_errors(message="", waitCursor=False):
        yield  # an exception fails the test instead of opening a dialog

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", surface_errors)
    asked, pipped, torch_installs = [], [], []
    missing = []
    monkeypatch.setattr(dependencies, "missingDependencies", lambda: list(missing))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: asked.append(text) or answer[0])
    monkeypatch.setattr(slicer.util, "pip_install", lambda names: (pipped.append(list(names)), missing.clear()))
    monkeypatch.setattr(slicer.util, "createProgressDialog", lambda **kw: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: None), raising=False)

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=True):
            torch_installs.append(askConfirmation)
            missing.remove("torch")
            return types.SimpleNamespace(__version__="2")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    answer = [True]
    assert lib.ensureDependencies() and not asked  # all there: no question

    missing[:] = ["torch", "scipy"]
    answer = [False]
    assert not lib.ensureDependencies()
    assert "torch, scipy" in asked[-1] and not pipped and not torch_installs

    answer = [True]
    assert lib.ensureDependencies()
    assert torch_installs == [False] and pipped == [["scipy"]]

    missing[:] = ["torch"]  # torch alone: no pip call with nothing to install
    assert lib.ensureDependencies(askConfirmation=False)
    assert len(asked) == 2 and pipped == [["scipy"]] and torch_installs == [False, False]


def test_volume_geometry_round_trips_between_slicer_ras_and_core_lps(tmp_path, scene, logic):
    """A marker voxel at a known patient position, on an oblique anisotropic grid: Slicer's reader puts it at
    the RAS mirror of its LPS position, and the Logic's conversion gives back the core's exact geometry."""
    a = np.radians(17.0)
    # right-handed, like scanners' grids: Slicer's reader does not keep a left-handed direction matrix
    direction = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]) @ np.diag([-1.0, -1.0, 1.0])
    array = np.zeros((40, 30, 20), np.int16)
    array[31, 7, 13] = 1000
    volume = Volume(array, (0.45, 0.6, 1.25), (12.0, -80.0, 40.5), direction)
    write_volume(volume, tmp_path / "ct.nrrd")
    node = load_volume(scene, tmp_path / "ct.nrrd")
    expected_lps = volume.index_to_lps(np.array([[31, 7, 13]]))[0]
    np.testing.assert_allclose(node_ras(node, (31, 7, 13)), expected_lps * FLIP, atol=1e-4)

    back = logic.volumeFromNode(node)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.ijk_to_lps, volume.ijk_to_lps, atol=1e-5)

    labelmap = logic.addLabelmapNode(scene, volume.with_array(array > 0), "marker")
    np.testing.assert_allclose(node_ras(labelmap, (31, 7, 13)), expected_lps * FLIP, atol=1e-4)

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")  # a parent transform is applied
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 5.0)  # 5 mm towards R = -5 mm in L
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = logic.volumeFromNode(node)
    np.testing.assert_allclose(moved.index_to_lps(np.array([[31, 7, 13]]))[0], expected_lps + [-5.0, 0, 0], atol=1e-4)


@pytest.mark.slow
def test_known_answer_outputs_land_where_the_truth_is_and_export_in_lps(tmp_path, scene, logic, sample):
    """Core outputs with a known implant (the true complete skull stands in for the network) loaded by the
    Logic: the Implant segment and the implant model sit on the true implant, the exported STL's centroid,
    read back, is within 3 mm of the truth in LPS, and asking for RAS mirrors x and y."""
    from test_pipeline import Oracle, _oblique, _tilt

    ct, truth, complete = (_oblique(v, _tilt(17.0)) for v in (sample.ct, sample.implant, sample.complete))
    write_volume(ct, tmp_path / "ct.nrrd")
    run_complete(ct, tmp_path / "out", CompleteOptions(preview=False), completer=Oracle(complete))
    node = load_volume(scene, tmp_path / "ct.nrrd", "sample CT")

    segmentation, model, report = logic.loadOutputs(tmp_path / "out", node, show3D=False)
    seg = segmentation.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == ["Defective skull", "Completed skull", "Implant"]
    true_lps = truth.centroid_lps()
    implant = logic.maskFromSegmentation(segmentation, ["Implant"], node)
    np.testing.assert_array_equal(implant.array, np.asarray(read_mask(tmp_path / "out" / "implant.nrrd").array) > 0)
    assert np.linalg.norm(implant.centroid_lps() - true_lps) < 3.0

    assert model is not None and model.GetName() == "sample CT implant"
    assert np.linalg.norm(mesh_centroid(model.GetPolyData()) * FLIP - true_lps) < 3.0  # the scene is RAS

    check = logic.exportImplantStl(model, tmp_path / "export" / "implant.stl")
    written = read_stl(tmp_path / "export" / "implant.stl")
    assert check.watertight and check_mesh(written).watertight
    assert (tmp_path / "export" / "implant.stl").read_bytes()[:80].startswith(b"SPACE=LPS")
    lps = mesh_centroid(written)
    assert np.linalg.norm(lps - true_lps) < 3.0, (lps, true_lps)
    assert abs(check.volume_mm3 / 1000 - report["mesh"]["volume_cm3"]) < 0.01 * report["mesh"]["volume_cm3"]

    logic.exportImplantStl(model, tmp_path / "export" / "implant_ras.stl", space="RAS")
    np.testing.assert_allclose(mesh_centroid(read_stl(tmp_path / "export" / "implant_ras.stl")), lps * FLIP, atol=1e-3)


@pytest.mark.slow
def test_complete_skull_on_the_sample_ct_runs_the_core_in_a_child_process(scene, logic, monkeypatch, tmp_path):
    """The clinical scenario, with the shipped model in a child process: three segments holding the core's
    masks, the implant model, the STL export matching the Implant segment's position, and no work files left."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    node = load_volume(scene, sample_dir() / "ct.nrrd", "sample CT")
    t0 = time.perf_counter()
    results = logic.complete(node, CompleteOptions(threads=2, passes=1))  # one network pass: the demo test runs the default 8
    seconds = time.perf_counter() - t0
    assert seconds < 120, seconds
    seg = results.segmentation.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(3)] == ["Defective skull", "Completed skull", "Implant"]
    assert results.report["model"]["name"] == Path(resolve_model(None)).stem and results.report["defect_found"]  # the default's completion model
    assert any(line.startswith(f"[4/{DEFAULT_STAGES}] network") for line in results.log)
    assert "Implant" in results.summary and "cm3" in results.summary

    implant = logic.maskFromSegmentation(results.segmentation, ["Implant"], node)
    assert abs(implant.array.sum() * implant.voxel_volume_mm3 / 1000 - results.report["implant"]["volume_cm3"]) < 0.01
    completed = logic.maskFromSegmentation(results.segmentation, ["Completed skull"], node)
    defective = logic.maskFromSegmentation(results.segmentation, ["Defective skull"], node)
    np.testing.assert_array_equal(completed.array, defective.array | implant.array)
    shown = results.segmentation.GetSegmentation()
    assert shown.GetNthSegment(2).GetRepresentation("Closed surface") is not None  # shown in 3D
    assert shown.GetConversionParameter(logic.SURFACE_METHOD) == "1"  # by surface nets

    check = logic.exportImplantStl(results.implantModel, tmp_path / "implant.stl")
    assert check.watertight
    centroid = mesh_centroid(read_stl(tmp_path / "implant.stl"))
    assert np.linalg.norm(centroid - implant.centroid_lps()) < 3.0, (centroid, implant.centroid_lps())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("SparseSkullCompletion-")], "the work folder was left behind"


def test_a_skull_segmentation_is_taken_as_a_mask(scene, logic, sample, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    write_volume(sample.defective.with_array(np.asarray(sample.defective.array, dtype=np.uint8)), tmp_path / "skull.nrrd")
    labelmap = load_volume(scene, tmp_path / "skull.nrrd", "skull", labelmap=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "skull segmentation")
    segmentation.CreateDefaultDisplayNodes()
    assert logic.segmentationsLogic(scene).ImportLabelmapToSegmentationNode(labelmap, segmentation)
    volume, kind = logic.inputVolume(segmentation)
    assert kind == "mask"
    assert volume.array.sum() == np.asarray(sample.defective.array).sum()
    np.testing.assert_allclose(volume.centroid_lps(), sample.defective.centroid_lps(), atol=1e-3)

    job = logic.startCompletion(segmentation)
    try:
        assert job.process.child.args[job.process.child.args.index("--input-kind") + 1] == "mask"
    finally:
        job.cancel()


@pytest.mark.slow
def test_cancel_ends_the_run_and_leaves_nothing(scene, logic, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    node = load_volume(scene, sample_dir() / "ct.nrrd")
    nodes_before = scene.GetNumberOfNodes()
    job = logic.startCompletion(node)
    deadline = time.time() + 60
    while job.running() and job.stage in ("starting", "read") and time.time() < deadline:
        job.poll()
        time.sleep(0.1)
    assert job.running(), "the run ended before it could be cancelled"
    t0 = time.perf_counter()
    job.cancel()
    assert time.perf_counter() - t0 < 10
    assert job.returncode is not None and job.returncode != 0 and job.cancelled
    with pytest.raises(ProcessLookupError):
        os.killpg(job.process.child.process.pid, 0)  # the whole process group is gone
    assert not os.path.exists(job.workDir)
    assert scene.GetNumberOfNodes() == nodes_before


@pytest.mark.slow
def test_a_ct_without_bone_gives_the_cores_message(scene, logic, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    write_volume(Volume(np.full((64, 64, 40), -1000, np.int16), (3.0, 3.0, 3.0)), tmp_path / "air.nrrd")
    node = load_volume(scene, tmp_path / "air.nrrd", "air")
    with pytest.raises(RuntimeError, match="bone"):
        logic.complete(node)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("SparseSkullCompletion-")]


def test_bone_preview_follows_the_threshold(scene, logic, sample, tmp_path):
    write_volume(sample.ct, tmp_path / "ct.nrrd")
    node = load_volume(scene, tmp_path / "ct.nrrd")
    ct = np.asarray(sample.ct.array)
    preview = logic.updateBonePreview(node, 300.0)
    counts = []
    for threshold in (300.0, 1200.0):
        assert logic.updateBonePreview(node, threshold, preview) is preview
        seg = preview.GetSegmentation()
        assert seg.GetNumberOfSegments() == 1 and seg.GetNthSegment(0).GetName() == "Bone preview"
        mask = logic.maskFromSegmentation(preview, ["Bone preview"], node)
        assert mask.array.sum() == (ct >= threshold).sum()
        counts.append(int(mask.array.sum()))
    assert counts[1] < counts[0]
    from sparseskull.implant.skull import auto_threshold

    assert logic.autoThreshold(node) == auto_threshold(sample.ct)
    logic.removeBonePreview(preview)
    assert preview.GetScene() is None


def test_model_device_and_backend_choices(tmp_path, monkeypatch, logic):
    monkeypatch.setenv("SPARSESKULL_HOME", str(tmp_path / "home"))
    choices = logic.modelChoices()
    assert choices[0][0].startswith(default_model_name()) and resolve_model(choices[0][1]).is_file()  # a path, or a pair's name
    grid = read_info(resolve_model(choices[0][1])).resolution
    assert logic.deviceChoices()[:2] == [("Auto", "auto"), ("CPU", "cpu")]
    assert "Detected:" in logic.deviceSummary()
    assert logic.backendChoices()[0] == "torch"
    assert logic.missingDependencies() == []

    (tmp_path / "notamodel.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        logic.registerModel(tmp_path / "notamodel.safetensors")
    run = tmp_path / "run1"
    run.mkdir()
    shutil.copy(resolve_model(choices[0][1]), run / "model.safetensors")
    assert logic.registerModel(run / "model.safetensors") == "run1"
    labels = [label for label, _ in logic.modelChoices()]
    assert labels[0].startswith(default_model_name()) and f"run1 ({grid}^2, yours)" in labels
    (run / "model.safetensors").unlink()  # a moved or deleted model drops out of the list
    assert [label for label, _ in logic.modelChoices()] == [label for label in labels if "yours" not in label]


def test_a_shipped_pair_is_one_model_choice(tmp_path, monkeypatch, logic):
    """A pair (completion, then super-resolution) is offered as one choice whose value is the pair's name, which the
    child process takes as --model; named in default.txt, it comes first."""
    import json

    from sparseskull.implant.options import options_to_args
    from sparseskull.nets.files import ModelInfo, save_model
    from sparseskull.nets.sparse_net import CHANNEL_PRESETS, SparseCompletionNet

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(resolve_model(logic.modelChoices()[0][1]), folder / "c128.safetensors")
    save_model(SparseCompletionNet("ch1", skips=True), folder / "sr.safetensors",
               ModelInfo(CHANNEL_PRESETS["ch1"], task="super-resolution", resolution=256, input_resolution=128, skips=True, spacing_mm=(1.0, 1.0, 1.0)))
    (folder / "pairs.json").write_text(json.dumps({"pairs": [{"name": "c128+sr", "completion": "c128", "super_resolution": "sr",
                                                               "label": "128 + super-resolution to 256"}]}))
    monkeypatch.setenv("SPARSESKULL_MODELS", str(folder))
    monkeypatch.setenv("SPARSESKULL_HOME", str(tmp_path / "home"))
    (folder / "default.txt").write_text("c128\n")
    assert logic.modelChoices() == [("c128 (128^2)", str(folder / "c128.safetensors")), ("c128+sr (128 + super-resolution to 256)", "c128+sr")]
    (folder / "default.txt").write_text("c128+sr\n")
    assert logic.modelChoices()[0] == ("c128+sr (128 + super-resolution to 256)", "c128+sr")
    assert options_to_args(CompleteOptions(model="c128+sr")) == ["--model", "c128+sr"]


@pytest.mark.slow
def test_the_widget_wires_the_panel_to_the_logic(scene, tmp_path, monkeypatch):
    """The Widget's handlers, driven as the panel would drive them (the Qt widgets stood in for, since Qt
    and CTK need the full application): preview, Complete skull with progress, Cancel, the error path and
    Export implant STL."""
    import contextlib
    import re
    import types
    from unittest import mock

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    errors = []

    @contextlib.contextmanager
    def surface_errors(message="", waitCursor=False):
        yield  # an exception fails the test instead of opening a dialog

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", surface_errors)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append((text, kw.get("detailedText", ""))))
    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(QFileDialog=types.SimpleNamespace(
        getSaveFileName=lambda *a: str(tmp_path / "chosen.stl"))))
    slicer.util.mainWindow = lambda: None

    names = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "SparseSkullCompletion.py").read_text()))
    node = load_volume(scene, sample_dir() / "ct.nrrd", "sample CT")
    widget = module.SparseSkullCompletionWidget()
    widget.logic = module.SparseSkullCompletionLogic()
    widget.ui = types.SimpleNamespace(**{name: mock.MagicMock(name=name) for name in names})
    widget.pollTimer, widget.previewTimer = mock.MagicMock(), mock.MagicMock()
    ui = widget.ui
    ui.inputSelector.currentNode.return_value = node
    ui.thresholdSlider.value, ui.previewCheckBox.checked, ui.keepIntermediateCheckBox.checked = 300.0, True, False
    ui.modelComboBox.currentData, ui.deviceComboBox.currentData, ui.backendComboBox.currentText = None, "cpu", "torch"
    ui.clearanceSpinBox.value, ui.minDepthSpinBox.value, ui.smoothingSpinBox.value = 0.0, 10.0, 20
    ui.minThicknessSpinBox.value, ui.behindBoneCheckBox.checked, ui.spanCheckBox.checked = 0.0, True, True
    ui.mandibleCheckBox.checked, ui.passesSpinBox.value = False, 2
    ui.thresholdSlider.enabled = True
    assert widget.currentOptions().passes == 2

    widget.onInputChanged(node)
    assert ui.applyButton.enabled is True and "Ready" in ui.statusLabel.text
    preview = widget.previewSegmentation
    assert preview is not None and preview.GetSegmentation().GetNthSegment(0).GetName() == "Bone preview"

    def run_until_done():
        deadline = time.time() + 120
        while widget.job is not None and time.time() < deadline:
            widget.onPoll()
            time.sleep(0.1)
        assert widget.job is None

    widget.onApply()  # cancelled at once
    assert preview.GetScene() is None, "the preview goes when the run starts"
    assert ui.applyButton.enabled is False and ui.cancelButton.enabled is True
    widget.onCancel()
    run_until_done()
    assert ui.statusLabel.text == "Cancelled." and ui.applyButton.enabled is True and not errors

    ui.thresholdSlider.value = 5000.0  # no bone: the core's message in an error dialog, the log behind it
    widget.onApply()
    run_until_done()
    assert ui.statusLabel.text == "Failed." and "bone threshold of 5000 HU" in errors[-1][0] and f"[1/{DEFAULT_STAGES}] read" in errors[-1][1]

    ui.thresholdSlider.value = 300.0
    widget.onApply()
    run_until_done()
    assert widget.results is not None and widget.results.implantModel is not None
    ui.progressBar.setValue.assert_called_with(100)
    assert ui.statusLabel.text.startswith("Implant ") and ui.exportStlButton.enabled is True
    widget.onExportStl()
    assert check_mesh(read_stl(tmp_path / "chosen.stl")).watertight and "chosen.stl" in ui.statusLabel.text
    assert f"[{DEFAULT_STAGES}/{DEFAULT_STAGES}] write" in widget.lastLog()


@pytest.mark.slow
def test_training_from_the_console_streams_and_registers_its_model(tiny_data, tmp_path, monkeypatch, capsys):
    """``launchTraining`` (Slicer's Python console): the run's output is printed from a timer on the main
    thread, and its model joins the module's model list when it ends (Qt's timer stood in for)."""
    import types

    monkeypatch.setenv("SPARSESKULL_HOME", str(tmp_path / "home"))
    timers = []

    class Timer:
        def __init__(self):
            self.slot, self.active = None, False
            timers.append(self)

        def setInterval(self, ms):
            pass

        def connect(self, signal, slot):
            self.slot = slot

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(QTimer=Timer))
    out = tmp_path / "my-run"
    job = module.launchTraining("--data", str(tiny_data), "--out", str(out), steps=3, batch_size=1, validation=1, val_every=1000,
                                threads=2, no_progress=True)
    timer = timers[0]
    deadline = time.time() + 180
    while timer.active and time.time() < deadline:
        timer.slot()
        time.sleep(0.2)
    assert not timer.active and job.returncode == 0
    printed = capsys.readouterr().out
    assert "registered my-run" in printed
    labels = [label for label, path in module.SparseSkullCompletionLogic.modelChoices()]
    assert "my-run (64^2, yours)" in labels


def test_the_progress_bar_ends_full_when_the_run_ends_between_two_looks(monkeypatch):
    """A run that ends after ``poll()`` took its last lines but before ``running()`` is asked sets its fraction to 1
    only then: the bar must show that, not the last stage's 88%."""
    import types
    from unittest import mock

    class EndsBetween:
        stage, fraction, cancelled, returncode = "write", 8 / 9, False, 1

        def poll(self):
            return []

        def running(self):
            self.stage, self.fraction = "done", 1.0
            return False

        def error(self):
            return "stopped"

        log = []

    monkeypatch.setattr(slicer.util, "errorDisplay", lambda *a, **k: None)
    widget = module.SparseSkullCompletionWidget()
    widget.ui = types.SimpleNamespace(progressBar=mock.MagicMock(), statusLabel=types.SimpleNamespace(text=""),
                                      cancelButton=types.SimpleNamespace(enabled=True), applyButton=types.SimpleNamespace(enabled=False))
    widget.pollTimer, widget.job = mock.MagicMock(), EndsBetween()
    widget.onPoll()
    widget.ui.progressBar.setValue.assert_called_with(100)
    assert widget.job is None and widget.ui.applyButton.enabled is True
