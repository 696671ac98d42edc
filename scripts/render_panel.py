"""Render the Slicer module's panel (Resources/UI/SparseSkullCompletion.ui) offscreen into a PNG.

The full Slicer application cannot run here, so the Designer file is loaded with PySide6's QUiLoader.
Slicer's CTK/MRML widgets are stood in for by plain Qt widgets of the same look (a titled group for
ctkCollapsibleButton, a slider with a spin box for ctkSliderWidget, a combo box for
qMRMLNodeComboBox), and the choices are filled from this machine by the module's own Logic
(SparseSkullCompletion/SparseSkullCompletionLib, run headless: needs slicer-core, in the ``[test]``
extra): the shipped models, the devices torch finds and the installed sparse engines.

    python scripts/render_panel.py Resources/Screenshots/panel.png [--report OUT/report.json]

With ``--report`` the panel shows the state after a run (progress full, the run's summary).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SparseSkullCompletion"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SparseSkullCompletion.ui"


_STAND_INS = None


def _stand_ins():
    from PySide6 import QtCore, QtWidgets

    class qMRMLWidget(QtWidgets.QWidget):
        pass

    class ctkCollapsibleButton(QtWidgets.QGroupBox):
        def _text(self):
            return self.title()

        def _set_text(self, value):
            self.setTitle(value)

        def _collapsed(self):
            return False

        def _set_collapsed(self, value):  # shown open: the picture shows every option
            pass

        text = QtCore.Property(str, _text, _set_text)
        collapsed = QtCore.Property(bool, _collapsed, _set_collapsed)

    class qMRMLNodeComboBox(QtWidgets.QComboBox):
        pass

    class ctkDoubleSpinBox(QtWidgets.QDoubleSpinBox):
        pass

    class ctkSliderWidget(QtWidgets.QWidget):
        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self.slider = QtWidgets.QSlider(QtCore.Qt.Horizontal)
            self.spin = QtWidgets.QDoubleSpinBox()
            layout.addWidget(self.slider, 1)
            layout.addWidget(self.spin)
            self.spin.valueChanged.connect(lambda v: self.slider.setValue(int(round(v))))

        def _get(name):
            return lambda self: getattr(self.spin, name)()

        def _set(name, slider=None):
            def setter(self, value):
                getattr(self.spin, "set" + name[0].upper() + name[1:])(value)
                if slider:
                    getattr(self.slider, slider)(int(round(value)))
            return setter

        decimals = QtCore.Property(int, _get("decimals"), _set("decimals"))
        singleStep = QtCore.Property(float, _get("singleStep"), _set("singleStep"))
        minimum = QtCore.Property(float, _get("minimum"), _set("minimum", "setMinimum"))
        maximum = QtCore.Property(float, _get("maximum"), _set("maximum", "setMaximum"))
        value = QtCore.Property(float, _get("value"), _set("value", "setValue"))

    return (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkDoubleSpinBox, ctkSliderWidget)


def load_panel():
    """The panel as a QWidget (a QApplication must exist), with Slicer's widgets stood in for."""
    from PySide6 import QtCore, QtUiTools

    global _STAND_INS
    _STAND_INS = _STAND_INS or _stand_ins()  # kept alive: QUiLoader does not hold a reference to them
    loader = QtUiTools.QUiLoader()
    for cls in _STAND_INS:
        loader.registerCustomWidget(cls)
    f = QtCore.QFile(str(UI_FILE))
    if not f.open(QtCore.QFile.ReadOnly):
        raise OSError(f"cannot open {UI_FILE}")
    try:
        panel = loader.load(f)
    finally:
        f.close()
    if panel is None:
        raise RuntimeError(f"{UI_FILE}: {loader.errorString()}")
    return panel


def fill(panel, report: dict | None = None) -> None:
    """The choices the module's Widget fills in, from this machine, asked of the module's Logic."""
    from PySide6 import QtWidgets

    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    from SparseSkullCompletionLib import CompletionResults
    from SparseSkullCompletionLib import SparseSkullCompletionLogic as Logic

    def child(name, cls=QtWidgets.QWidget):
        return panel.findChild(cls, name)

    child("inputSelector", QtWidgets.QComboBox).addItem("Head CT (sample)")
    child("modelComboBox", QtWidgets.QComboBox).addItems([label for label, _ in Logic.modelChoices()])
    child("deviceComboBox", QtWidgets.QComboBox).addItems([label for label, _ in Logic.deviceChoices()])
    child("deviceInfoLabel", QtWidgets.QLabel).setText(Logic.deviceSummary())
    child("backendComboBox", QtWidgets.QComboBox).addItems(Logic.backendChoices())
    child("applyButton", QtWidgets.QPushButton).setEnabled(True)
    child("statusLabel", QtWidgets.QLabel).setText("Ready: check the green bone preview, then click Complete skull.")
    if report is not None:
        child("progressBar", QtWidgets.QProgressBar).setValue(100)
        child("statusLabel", QtWidgets.QLabel).setText(CompletionResults(None, None, report, []).summary)
        child("showLogButton", QtWidgets.QPushButton).setEnabled(True)
        child("exportStlButton", QtWidgets.QPushButton).setEnabled(True)


def render(out: str | os.PathLike, report: dict | None = None, width: int = 420) -> Path:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    panel = load_panel()
    fill(panel, report)
    panel.resize(width, panel.sizeHint().height())
    panel.adjustSize()
    panel.resize(width, panel.height())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(out)):
        raise OSError(f"could not write {out}")
    app.processEvents()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="PNG to write")
    p.add_argument("--report", help="a run's report.json: show the panel after that run")
    p.add_argument("--width", type=int, default=420)
    args = p.parse_args(argv)
    report = json.loads(Path(args.report).read_text()) if args.report else None
    print(render(args.out, report, args.width))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
