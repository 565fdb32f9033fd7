#!/usr/bin/env bash
# GPU figures for the efficiency issue, on a machine with CUDA and PyTorch already installed:
# LLaVA-1.5-7B shape, random weights (nothing downloaded), bf16, ratios against vanilla in the same run.
#
#   bash scripts/gpu_bench.sh OUT_DIR
#
# dpvr runs from the source tree (PYTHONPATH=src); if the machine's transformers is not the pinned
# release, put a wheel of it in .whl/ and it is installed to /tmp/site first.
set -euo pipefail
out="${1:-runs/bench-gpu}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD/src"
else
  export PYTHONPATH="$PWD/src"
fi
export PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
python3 -m dpvr bench flops --config llava-1.5-7b --split 18 --text-tokens 64,128,256,512 --out "$out" --no-plot
python3 -m dpvr bench latency --config llava-1.5-7b --device cuda --dtype bfloat16 --methods "${METHODS:-lf,pc,kv,ideal}" \
  --text-tokens 64,128,256,512 --batch-sizes 1,8 --new-tokens 16 --repeats 4 --warmup 1 --out "$out" --quiet
python3 -m dpvr bench train --config llava-1.5-7b --device cuda --dtype bfloat16 --methods lf,pc,kv,lora16 \
  --text-tokens 128 --batch-size 4 --repeats 4 --warmup 1 --out "$out" --quiet
