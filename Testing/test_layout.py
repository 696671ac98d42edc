"""The package's shape: which folder may import which, no import cycle, and the clinical path on any OS.

The import graph is read from the source (every import, at module level or inside a function), so a lazy
import cannot hide an edge. The rules are those of the README's layout:
- ``sparse/`` (the engine) imports nothing else of ours;
- ``implant/`` (the clinical path) never imports ``training/``, ``evaluation/`` or ``data/synth/``;
- nothing but ``__main__`` imports ``cli``;
- no module imports one that imports it back, however far round.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "SparseSkullCompletion" / "sparseskull"


def module_name(path: Path) -> str:
    parts = ["sparseskull", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (``from a.b import c`` counts as a.b.c where that is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules and "." in t:
                    t = t.rpartition(".")[0]
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def _under(module: str, folder: str) -> bool:
    return module == folder or module.startswith(folder + ".")


def test_the_graph_reads_every_module():
    graph = import_graph()
    assert len(graph) > 40
    assert "sparseskull.implant.grid" in graph["sparseskull.implant.pipeline"]
    assert "sparseskull.cli" in graph["sparseskull.__main__"]


def test_there_is_no_import_cycle():
    graph = import_graph()
    # package __init__ files that only hold a docstring or re-export their own children are not edges back up
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str):
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_folders_depend_one_way():
    """Folded onto the top-level folders and modules (data, nets, implant, ...), the graph has no cycle either:
    data flows one way, from the application down to the engine."""
    graph = import_graph()

    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    folded: dict[str, set[str]] = {}
    for m, deps in graph.items():
        folded.setdefault(top(m), set()).update(top(d) for d in deps if top(d) != top(m) and d != "sparseskull")
    order: list[str] = []
    remaining = {k: set(v) for k, v in folded.items()}
    while remaining:
        leaves = sorted(k for k, v in remaining.items() if not v & set(remaining))
        assert leaves, f"folders import each other: {sorted(remaining)}"
        order += leaves
        for k in leaves:
            del remaining[k]
    assert order.index("sparseskull.sparse") < order.index("sparseskull.nets") < order.index("sparseskull.implant") < order.index("sparseskull.cli")


def test_the_engine_imports_nothing_else_of_ours():
    graph = import_graph()
    bad = {m: sorted(n for n in deps if not _under(n, "sparseskull.sparse") and n != "sparseskull")
           for m, deps in graph.items() if _under(m, "sparseskull.sparse")}
    assert not {m: d for m, d in bad.items() if d}


def test_the_clinical_path_never_imports_training_evaluation_or_synth():
    graph = import_graph()
    banned = ("sparseskull.training", "sparseskull.evaluation", "sparseskull.data.synth", "sparseskull.train", "sparseskull.cli")
    bad = {m: sorted(n for n in deps if any(_under(n, b) for b in banned)) for m, deps in graph.items() if _under(m, "sparseskull.implant")}
    assert not {m: d for m, d in bad.items() if d}


def test_only_the_entry_points_import_the_cli():
    """`python -m sparseskull` and `python -m sparseskull.train` (torchrun's way in) run the command; nothing else imports it."""
    graph = import_graph()
    assert sorted(m for m, deps in graph.items() if "sparseskull.cli" in deps) == ["sparseskull.__main__", "sparseskull.train"]


HIDE_RESOURCE = """
import sys, json
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "resource":
            raise ImportError("no module named 'resource' (hidden: as on Windows)")
sys.modules.pop("resource", None)
sys.meta_path.insert(0, Hide())
from sparseskull import runtime
runtime.status_mib = lambda field: None  # as off Linux: no /proc
from sparseskull.cli import main
code = main(["complete", sys.argv[1], "--out", sys.argv[2], "--no-preview", "--threads", "1", "--passes", "1"])
print(json.dumps({"code": code, "resource_loaded": "resource" in sys.modules}))
"""


@pytest.mark.slow
def test_complete_runs_without_the_resource_module(tmp_path):
    """Windows has no ``resource``: the clinical path must not need it (peak memory is then reported as unknown)."""
    from sparseskull.data.sample import sample_dir

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", HIDE_RESOURCE, str(sample_dir() / "ct.nrrd"), str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "resource_loaded": False}
    report = json.loads((out / "report.json").read_text())
    assert (out / "implant.stl").stat().st_size > 10_000
    assert report["peak_mib"] is None or report["peak_mib"] > 0


def test_peak_memory_is_in_mib_on_every_platform(monkeypatch):
    from sparseskull import runtime

    assert runtime.maxrss_mib(2 * 2**30, "darwin") == 2048.0  # macOS: bytes
    assert runtime.maxrss_mib(2 * 2**20, "linux") == 2048.0  # Linux: KiB
    peak = runtime.peak_mib()
    rss = runtime.status_mib("VmRSS")
    assert peak is not None and rss is not None and peak >= rss * 0.99  # Linux here: /proc
    monkeypatch.setattr(runtime, "status_mib", lambda field: None)  # off Linux: getrusage, in the right unit
    assert abs(runtime.peak_mib() - peak) < max(64.0, 0.2 * peak)


# ------------------------------------------------------------------ the Resources in a wheel


def test_resources_are_found_beside_the_package_or_in_a_wheels_share_folder(tmp_path, monkeypatch):
    """A checkout or editable install uses the module's Resources; a wheel install (no Resources beside the package)
    finds the copies pyproject installs under <prefix>/share/sparseskull, and models_dir and sample_dir follow."""
    from sparseskull import resources
    from sparseskull.data.sample import sample_dir
    from sparseskull.nets.catalogue import models_dir

    checkout = Path(__file__).resolve().parents[1] / "SparseSkullCompletion" / "Resources"
    monkeypatch.delenv("SPARSESKULL_MODELS", raising=False)
    assert models_dir() == checkout / "Models" and sample_dir() == checkout / "Sample"
    prefix = tmp_path / "venv"
    for name in ("Models", "Sample"):
        (prefix / "share" / "sparseskull" / name).mkdir(parents=True)
    monkeypatch.setattr(resources, "BESIDE_PACKAGE", tmp_path / "site-packages" / "Resources")  # as in a wheel: absent
    monkeypatch.setattr(sys, "prefix", str(prefix))
    assert models_dir() == prefix / "share" / "sparseskull" / "Models"
    assert sample_dir() == prefix / "share" / "sparseskull" / "Sample"
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "empty"))
    assert models_dir() == tmp_path / "site-packages" / "Resources" / "Models"  # neither: the checkout's place, for the message


def _can_build_wheels() -> bool:
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(v) for v in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.slow
def test_a_wheel_carries_the_shipped_models_and_the_sample(tmp_path):
    """`pip install .` (not editable) installs a wheel, which holds only packages: the default model (or both models of
    the default pair), the pairs, the model cards and the bundled sample must be in it as data files."""
    import zipfile

    from sparseskull.nets.catalogue import default_model_name, find_pair, models_dir

    repo = Path(__file__).resolve().parents[1]
    # the installed setuptools where it can build a wheel by itself (70.1 on, or with the wheel package; fast, offline), else
    # pip fetches pyproject's build requirements from the registry
    isolation = ["--no-build-isolation"] if _can_build_wheels() else []
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp_path), str(repo)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = tmp_path.glob("sparseskull-*.whl")
    names = {n.split("/data/share/sparseskull/", 1)[1] for n in zipfile.ZipFile(wheel).namelist() if "/data/share/sparseskull/" in n}
    pair = find_pair(default_model_name())
    wanted = [pair.completion, pair.super_resolution] if pair else [default_model_name()]
    shipped = {p.name for p in models_dir().iterdir() if p.is_file()}
    assert {f"Models/{p}" for p in shipped} <= names, sorted({f"Models/{p}" for p in shipped} - names)
    assert {f"Models/{m}.safetensors" for m in wanted} | {"Models/default.txt", "Models/pairs.json", "Sample/ct.nrrd"} <= names
