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


def test_top_level_layout():
    for name in ("SparseSkullCompletion", "Resources", "Testing", "CMakeLists.txt", "SparseSkullCompletion.s4ext", "README.md", "pyproject.toml", ".ci/run"):
        assert (REPO / name).exists(), name
    assert (MODULE / "sparseskull" / "__init__.py").is_file()
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


def test_module_file_parses_and_has_the_four_classes():
    tree = ast.parse((MODULE / "SparseSkullCompletion.py").read_text())
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"SparseSkullCompletion", "SparseSkullCompletionWidget", "SparseSkullCompletionLogic", "SparseSkullCompletionTest"} <= classes


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
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not re.match(r"(slicer|qt|PySide|PyQt|ctk)\b", name), f"{path.name} imports {name}"
