#!/usr/bin/env bash
# Creates .venv and installs dpvr into it.  Usage: bash scripts/setup.sh [--dev]
#
# torch is pinned to 2.13.0: on a CPU-only machine with a local wheel this is the CPU build
# (seconds); on an ordinary machine pip takes the PyPI build of the same release (CUDA on
# Linux x86-64).  Set TORCH_SPEC (e.g. TORCH_SPEC="torch" or a CUDA index URL build) to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip quietly, hiding this machine's "location is ignored" warnings but not real errors.
pipq() {
  local log rc=0
  log="$(mktemp)"
  .venv/bin/python -m pip install -q "$@" >"$log" 2>&1 || rc=$?
  grep -v "is ignored" "$log" || true
  rm -f "$log"
  return "$rc"
}
pipq --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pipq "${TORCH_SPEC:-torch==2.13.0}"
fi
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
pipq -e ".${extras}"
.venv/bin/python -c "import dpvr, torch, transformers; print(f'dpvr {dpvr.__version__} ready: torch {torch.__version__}, transformers {transformers.__version__}')"
