"""The module's panel (the Designer file) rendered offscreen with PySide6, as the README's screenshot.

Slicer's CTK/MRML widgets are stood in for by plain Qt ones (scripts/render_panel.py), and the choices and the
run's summary come from the module's Logic (SparseSkullCompletionLib, headless under slicer-core). PySide6 and
slicer-core are in the ``[test]`` extra: these tests skip, saying why, where either is missing, and fail under CI.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from sparseskull.nets.catalogue import default_model_name, find_pair

try:
    from PySide6 import QtGui, QtWidgets
except ImportError:
    if os.environ.get("CI"):  # CI installs PySide6: a missing one is a failure, not a skip
        raise
    pytest.skip("PySide6 is not installed (pip install -e '.[test]')", allow_module_level=True)
try:
    import slicer  # noqa: F401 (the Logic that fills the panel's choices runs on slicer-core)
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("slicer-core is not installed (pip install -e '.[test]')", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import render_panel  # noqa: E402

WIDGET_CLASSES = {  # the class each name in the Widget must have, by its name's ending
    "Selector": QtWidgets.QComboBox, "ComboBox": QtWidgets.QComboBox, "Button": QtWidgets.QPushButton, "CheckBox": QtWidgets.QCheckBox,
    "Label": QtWidgets.QLabel, "Bar": QtWidgets.QProgressBar, "SpinBox": QtWidgets.QAbstractSpinBox, "Slider": QtWidgets.QWidget,
}


@pytest.fixture(scope="module")
def app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def test_every_widget_the_module_uses_is_in_the_panel_with_the_right_kind(app):
    panel = render_panel.load_panel()
    used = set(re.findall(r"self\.ui\.(\w+)", (REPO / "SparseSkullCompletion" / "SparseSkullCompletion.py").read_text()))
    assert len(used) >= 15
    for name in sorted(used):
        widget = panel.findChild(QtWidgets.QWidget, name)
        assert widget is not None, f"{name} is not in the .ui"
        kind = next(cls for ending, cls in WIDGET_CLASSES.items() if name.endswith(ending))
        assert isinstance(widget, kind), f"{name} is a {type(widget).__name__}, not a {kind.__name__}"


def test_the_panel_renders_with_the_choices_of_this_machine(app, tmp_path):
    out = render_panel.render(tmp_path / "panel.png")
    image = QtGui.QImage(str(out))
    assert image.width() >= 400 and image.height() >= 400
    pixels = np.array([image.pixel(x, y) & 0xFFFFFF for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)])
    assert len(np.unique(pixels)) > 20, "the picture is nearly uniform: the panel did not draw"

    panel = render_panel.load_panel()
    render_panel.fill(panel)
    models = panel.findChild(QtWidgets.QComboBox, "modelComboBox")
    assert models.count() >= 1 and models.itemText(0).startswith(default_model_name())
    assert panel.findChild(QtWidgets.QComboBox, "backendComboBox").itemText(0) == "torch"
    assert panel.findChild(QtWidgets.QLabel, "statusLabel").text().startswith("Ready")
    assert panel.findChild(QtWidgets.QPushButton, "applyButton").text() == "Complete skull"
    from sparseskull.implant.options import MAX_PASSES, CompleteOptions

    passes = panel.findChild(QtWidgets.QSpinBox, "passesSpinBox")  # the command line's defaults, and the passes' range
    assert (passes.value(), passes.minimum(), passes.maximum()) == (CompleteOptions().passes, 1, MAX_PASSES)
    assert panel.findChild(QtWidgets.QCheckBox, "spanCheckBox").isChecked() == CompleteOptions().span_opening


@pytest.mark.slow
def test_the_status_line_after_a_real_run_says_what_is_on_disk(app, tmp_path):
    """The status line the Logic builds from a real run's report.json (the shipped model on the bundled sample): the implant
    volume it shows is the one of the implant.nrrd on disk, and the model, device and time are the run's own."""
    from sparseskull.data.io import read_mask
    from sparseskull.data.sample import sample_dir
    from sparseskull.implant.options import CompleteOptions
    from sparseskull.implant.pipeline import run_complete

    out = tmp_path / "run"
    run_complete(sample_dir() / "defective_skull.nrrd", out, CompleteOptions(preview=False, threads=1, passes=1))
    report = json.loads((out / "report.json").read_text())
    panel = render_panel.load_panel()
    render_panel.fill(panel, report)
    text = panel.findChild(QtWidgets.QLabel, "statusLabel").text()
    shown = re.fullmatch(r"Implant ([0-9.]+) cm3, model (.+), ([0-9]+) s on (\S+)\.", text)
    assert shown, text
    implant = read_mask(out / "implant.nrrd")
    on_disk_cm3 = implant.array.sum() * implant.voxel_volume_mm3 / 1000
    # measured: "Implant 30.8 cm3, model skullfix-skip-ch1-128 + skullfix-sr-skip-ch1-128-256, 16 s on cpu." (the default pair, with
    # its first super-resolution model);
    # with the 128 model alone, one pass and spanning: "Implant 26.5 cm3" for 26.513 cm3 of voxels on disk, where the STL's own
    # volume (25.9 cm3) or the network's raw implant (11032 voxels) would not have passed
    assert on_disk_cm3 > 5 and float(shown[1]) == pytest.approx(on_disk_cm3, abs=0.05), (text, on_disk_cm3)
    pair = find_pair(default_model_name())  # a default pair shows both its models
    assert shown[2] == (f"{pair.completion} + {pair.super_resolution}" if pair else default_model_name()) and shown[4] == "cpu"
    assert abs(int(shown[3]) - (report["seconds"]["total"] + report["seconds"]["write"])) <= 0.5


def test_the_shipped_screenshot_exists_and_is_named_in_the_extension_metadata():
    shot = REPO / "Resources" / "Screenshots" / "panel.png"
    assert shot.is_file() and shot.stat().st_size > 10_000
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "Resources/Screenshots/panel.png" in cmake
    json.loads((REPO / "SparseSkullCompletion.json").read_text())
