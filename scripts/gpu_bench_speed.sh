#!/usr/bin/env bash
# Speed figures of issue 24 (compiled decode on static per-layer caches, prefill at batch 1 and 8, kv prefill,
# compiled == eager decode): LLaVA-1.5-7B shape, random weights, bf16, sdpa. About 3-5 minutes on an H200.
#
#   bash scripts/gpu_bench_speed.sh OUT_DIR                 # CUDA
#   bash scripts/gpu_bench_speed.sh OUT_DIR --device cpu    # the same steps on the tiny shape (a check that it runs)
#
# Needs only torch and transformers 5.24 (dpvr runs from src/). If the machine's transformers is another
# release, put its wheel in .whl/ (pip download transformers==5.24.0 --no-deps -d .whl): it is installed to
# /tmp/site (no network, no dependencies) first. Extra arguments go to scripts/gpu_bench_speed.py.
set -euo pipefail
out="${1:?usage: bash scripts/gpu_bench_speed.sh OUT_DIR [--device cpu] [--backend inductor]}"
shift
py="${PYTHON:-python3}"
if ! "$py" -c "import transformers, sys; sys.exit(transformers.__version__.startswith('5.24.') is False)" 2>/dev/null \
   && ls .whl/transformers-5.24*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/transformers-5.24*.whl
  export PYTHONPATH="/tmp/site:$PWD/src"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
"$py" scripts/gpu_bench_speed.py "$out" "$@" 2>&1 | tee "$out/log.txt"
