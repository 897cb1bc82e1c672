#!/usr/bin/env bash
# Slicer 5.8's Python: run scripts/check_python39.py under CPython 3.9 with numpy 1.26.4, SimpleITK 2.3.1 and
# onnxruntime 1.19.2 (the last onnxruntime for Python 3.9), without torch/tqdm/dask/pydicom. Uses pyenv's 3.9
# (or $PYTHON39). The venv is made in a temporary folder and removed; about 30 s with a warm pip cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PY39="${PYTHON39:-$(command -v pyenv >/dev/null && pyenv root)/versions/3.9.18/bin/python}"
if [ ! -x "$PY39" ]; then
  PY39="$(ls -d "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.9.*/bin/python 2>/dev/null | tail -1)"
fi
if [ -z "$PY39" ] || [ ! -x "$PY39" ]; then
  echo "check_python39: no CPython 3.9 found (set PYTHON39=/path/to/python3.9)" >&2
  exit 1
fi
VENV="$(mktemp -d)/py39"
trap 'rm -rf "$(dirname "$VENV")"' EXIT
"$PY39" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q numpy==1.26.4 SimpleITK==2.3.1 onnxruntime==1.19.2 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" scripts/check_python39.py
