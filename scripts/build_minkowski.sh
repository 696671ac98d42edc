#!/usr/bin/env bash
# Build (once per machine) and install MinkowskiEngine 0.5.4 for the installed torch and Python.
#
# MinkowskiEngine has no wheels on PyPI and its 0.5.4 sdist needs patches for Python >= 3.10.
# The built wheel is cached under ${SPARSESKULL_CACHE:-~/.cache/sparseskull}/wheels/<torch>-<python>/
# and reused by later runs. A prebuilt wheel for the same torch/python found in
# ${SPARSESKULL_WHEELS:-../shared/wheels} is used instead of building.
# CPU build by default; CUDA when nvcc is on PATH and torch sees a GPU.
#
# usage: scripts/build_minkowski.sh [--install-only-if-cached]
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python}"
if "$py" -c "import warnings; warnings.simplefilter('ignore'); import MinkowskiEngine" 2>/dev/null; then
  echo "MinkowskiEngine is already installed"; exit 0
fi

torch_ver="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')"
py_tag="$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
cuda=0
if command -v nvcc >/dev/null 2>&1 && "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then cuda=1; fi
flavour=$([ "$cuda" = 1 ] && echo cuda || echo cpu)
cache="${SPARSESKULL_CACHE:-$HOME/.cache/sparseskull}/wheels/torch${torch_ver}-${py_tag}-${flavour}"
mkdir -p "$cache"

blas() {  # $1: libopenblas0 (what the wheel links) or libopenblas-dev (what the build finds)
  if ! dpkg -s "$1" >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      (apt-get install -y "$1" >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y "$1" >/dev/null))
    else
      echo "install OpenBLAS ($1) with your package manager" >&2
    fi
  fi
}

wheel="$(ls "$cache"/minkowskiengine-*.whl 2>/dev/null | head -n1 || true)"
shared="${SPARSESKULL_WHEELS:-$here/../shared/wheels}"
if [ -z "$wheel" ] && [ "$flavour" = cpu ] && [ "$torch_ver" = "2.13.0" ] && ls "$shared"/minkowskiengine-0.5.4-"$py_tag"-*.whl >/dev/null 2>&1; then
  cp "$shared"/minkowskiengine-0.5.4-"$py_tag"-*.whl "$cache"/   # built for exactly torch 2.13.0 CPU
  wheel="$(ls "$cache"/minkowskiengine-*.whl | head -n1)"
fi

if [ -z "$wheel" ]; then
  if [ "${1:-}" = "--install-only-if-cached" ]; then echo "no cached MinkowskiEngine wheel in $cache"; exit 1; fi
  echo "building MinkowskiEngine 0.5.4 ($flavour, torch $torch_ver, $py_tag): 5-20 minutes on 2 cores, 2.5 GB peak"
  blas libopenblas-dev
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
  # A throw-away build environment that sees this torch, with the setuptools the sdist builds with.
  # ME's setup.py runs `pip uninstall MinkowskiEngine` whenever it runs (even to fetch metadata):
  # with the venv first on PATH that `pip` is the venv's, which cannot touch the real environment.
  "$py" -m venv --system-site-packages "$work/venv"
  export PATH="$work/venv/bin:$PATH"
  "$work/venv/bin/python" -m pip install -q "setuptools==69.5.1" wheel ninja
  "$work/venv/bin/python" -m pip download -q --no-deps --no-binary :all: --no-build-isolation MinkowskiEngine==0.5.4 -d "$work"
  tar -xzf "$work"/MinkowskiEngine-0.5.4.tar.gz -C "$work"
  src="$work/MinkowskiEngine-0.5.4"
  # Python >= 3.10 moved the abstract collections to collections.abc (namedtuple & co. stay)
  "$py" - "$src" <<'PY'
import pathlib, re, sys
ABC = {"Sequence", "Iterable", "Mapping", "MutableMapping", "Callable", "Iterator", "Set", "Hashable", "Sized", "Container"}
for path in pathlib.Path(sys.argv[1]).rglob("*.py"):
    text = path.read_text()
    def fix(m):
        names = [n.strip() for n in m.group(2).split(",") if n.strip()]
        abc, rest = [n for n in names if n in ABC], [n for n in names if n not in ABC]
        lines = ([f"{m.group(1)}from collections import {', '.join(rest)}"] if rest else [])
        lines += ([f"{m.group(1)}from collections.abc import {', '.join(abc)}"] if abc else [])
        return "\n".join(lines)
    new = re.sub(r"^([ \t]*)from collections import ([\w, ]+)$", fix, text, flags=re.M)
    if new != text:
        path.write_text(new)
        print("patched", path.relative_to(sys.argv[1]))
PY
  opts=(--config-settings=--global-option=--blas=openblas)
  [ "$cuda" = 1 ] || opts+=(--config-settings=--global-option=--cpu_only)
  (cd "$src" && MAX_JOBS="$(nproc)" "$work/venv/bin/pip" wheel . --no-deps --no-build-isolation "${opts[@]}" -w "$cache")
  wheel="$(ls "$cache"/minkowskiengine-*.whl 2>/dev/null | head -n1 || ls "$cache"/MinkowskiEngine-*.whl | head -n1)"
fi

blas libopenblas0
"$py" -m pip install --no-deps "$wheel"
"$py" -c "import warnings; warnings.simplefilter('ignore'); import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__, 'installed from', '$wheel')"
