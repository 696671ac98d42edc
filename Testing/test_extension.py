"""Static checks of the Slicer extension: layout, metadata, module file, UI, and the bundled core package."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "SparseSkullCompletion"
LIB = MODULE / "SparseSkullCompletionLib"
QT = re.compile(r"(qt|ctk|PythonQt|PySide\d*|PyQt\d*|shiboken\d*)\b")


def _imports(tree, at_import_time=False):
    """(line, module name) of each import; with ``at_import_time`` only those run when the module is imported
    (not those inside functions, which run when called)."""
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if at_import_time and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                yield from ((child.lineno, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                yield child.lineno, ("." * child.level) + (child.module or "")
            yield from walk(child)

    return list(walk(tree))


def test_top_level_layout():
    for name in ("SparseSkullCompletion", "Resources", "Testing", "CMakeLists.txt", "SparseSkullCompletion.s4ext", "README.md", "pyproject.toml", ".ci/run"):
        assert (REPO / name).exists(), name
    assert (MODULE / "sparseskull" / "__init__.py").is_file()
    assert (LIB / "__init__.py").is_file() and (LIB / "logic.py").is_file()
    assert (MODULE / "Resources" / "Icons" / "SparseSkullCompletion.png").is_file()


def test_extension_metadata_names_the_essentials():
    cmake = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key}\s", cmake), key
    assert "add_subdirectory(SparseSkullCompletion)" in cmake
    s4ext = (REPO / "SparseSkullCompletion.s4ext").read_text()
    assert re.search(r"^depends\s+PyTorch", s4ext, re.M) and re.search(r"^scm\s+git", s4ext, re.M)
    module_cmake = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in module_cmake and "sparseskull/*.py" in module_cmake
    assert "${MODULE_NAME}Lib/*.py" in module_cmake and "${MODULE_LIB_PYTHON_SCRIPTS}" in module_cmake  # the Lib is installed too


def test_module_file_holds_only_the_module_widget_and_test_and_names_the_libs_logic():
    """Slicer's shape for AI extensions (SlicerNNUNet's ``SlicerNNUNetLib``): the module file keeps the module
    class, the Widget and the self-test (ctest registers it from this file); no Logic, no installer, no jobs."""
    tree = ast.parse((MODULE / "SparseSkullCompletion.py").read_text())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["SparseSkullCompletion", "SparseSkullCompletionWidget", "SparseSkullCompletionTest"]
    assert not [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    installer = {"pip_install", "PyTorchUtils", "installTorch", "confirmOkCancelDisplay", "find_spec", "CompletionProcess", "launch"}
    assert not names & installer, f"the installer or the job handling is back in the module file: {names & installer}"
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SparseSkullCompletionWidget")
    assert "ensureDependencies" in {n.id for n in ast.walk(widget) if isinstance(n, ast.Name)}, "the Widget calls the Lib's installer"
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "RAS_FROM_LPS"]
    reexported = {a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "SparseSkullCompletionLib" for a in n.names}
    assert {"SparseSkullCompletionLogic", "launchTraining", "ensureDependencies"} <= reexported


def test_the_lib_imports_no_qt_when_loaded_and_holds_no_panel():
    """The Logic runs headless (slicer-core, no Qt): Qt only inside the functions that need it (the training
    timer), never at import time; the Lib never touches the panel."""
    files = sorted(LIB.glob("*.py"))
    assert {p.name for p in files} >= {"__init__.py", "logic.py", "dependencies.py", "jobs.py"}
    for path in files:
        text = path.read_text()
        tree = ast.parse(text)
        for line, name in _imports(tree, at_import_time=True):
            assert not QT.match(name), f"{path.name}:{line} imports {name} at import time"
            assert not name.startswith("SparseSkullCompletion") or name.startswith("SparseSkullCompletionLib"), f"{path.name}:{line} imports the module file"
        assert "self.ui." not in text, f"{path.name} reaches into the panel"
    logic = ast.parse((LIB / "logic.py").read_text())
    assert [n.name for n in logic.body if isinstance(n, ast.ClassDef)] == ["SparseSkullCompletionLogic"]


def test_one_home_for_the_lps_ras_flip():
    """``RAS_FROM_LPS`` is defined once, in the core's mesh module; the module file and the Lib import it."""
    mesh = ast.parse((MODULE / "sparseskull" / "implant" / "mesh.py").read_text())
    assert "RAS_FROM_LPS" in {t.id for n in mesh.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    for path in [MODULE / "SparseSkullCompletion.py", *sorted(LIB.glob("*.py"))]:
        text = path.read_text()
        assert not re.search(r"RAS_FROM_LPS\s*=|diag\(\s*\[\s*-1", text), f"{path.name} has its own LPS <-> RAS flip"
    logic = ast.parse((LIB / "logic.py").read_text())
    sources = {n.module for n in ast.walk(logic) if isinstance(n, ast.ImportFrom) and any(a.name == "RAS_FROM_LPS" for a in n.names)}
    assert sources == {"sparseskull.implant.mesh"}


def test_ui_parses_and_holds_every_widget_the_module_uses():
    ui = ET.parse(MODULE / "Resources" / "UI" / "SparseSkullCompletion.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "SparseSkullCompletion.py").read_text()))
    assert used, "the module should use its UI"
    assert used <= names, f"missing in the .ui: {used - names}"


def test_core_package_imports_from_the_module_folder_without_pip(tmp_path):
    code = "import sys; sys.path.insert(0, sys.argv[1]); import sparseskull; print(sparseskull.__file__)"
    out = subprocess.run([sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert Path(out.stdout.strip()).resolve() == (MODULE / "sparseskull" / "__init__.py").resolve()


def test_core_package_never_imports_slicer_or_qt():
    for path in (MODULE / "sparseskull").rglob("*.py"):
        for _, name in _imports(ast.parse(path.read_text())):
            assert not re.match(r"(slicer|qt|PySide|PyQt|ctk)\b|SparseSkullCompletion", name), f"{path.name} imports {name}"
