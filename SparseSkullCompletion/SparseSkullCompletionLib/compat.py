"""Slicer's scripted-module base classes and ``_`` (translation), in the application and under ``slicer-core``.

``slicer-core`` (the headless tests) has MRML and ``slicer.util`` but not ``slicer.ScriptedLoadableModule``,
Qt or ``slicer.i18n``: there plain stand-ins take their place, enough for the Logic to run and for the
Widget's handlers to be driven with the Qt widgets stood in for.
"""

import unittest

try:
    from slicer.ScriptedLoadableModule import (
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
    from slicer.util import VTKObservationMixin
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


__all__ = [
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleLogic",
    "ScriptedLoadableModuleTest",
    "ScriptedLoadableModuleWidget",
    "VTKObservationMixin",
    "_",
]
