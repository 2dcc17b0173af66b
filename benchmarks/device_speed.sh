#!/usr/bin/env bash
# GPU speed check (issue 4): this engine vs the official DiffOOD loop on a DDPM-CIFAR10-sized UNet (35.7 M
# parameters, random weights), with the check that the denoising loops never synchronise with the host.
# About 3-4 minutes on one H100/H200. The device image has no diffusers: its wheels travel in .whl/
# (git-ignored), fetched here once with
#   .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 importlib_metadata
# then, with the device tool:  run(command="bash benchmarks/device_speed.sh", carry=[".whl"], timeout_s=480)
# Tables are appended to benchmarks/results/speed_<gpu>.md and copied, with the logs, to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=python3
if ! $PY -c "import diffusers" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
OUT=${OUT:-/tmp/diffood_out}
mkdir -p "$OUT"
# The paper's CIFAR settings (t = 300, stride 20, R = 4, w = 3) on 500 images = 2 official batches of 250.
ARGS="--device cuda --model ddpm --images 500 --out benchmarks/results"
# 1) eager variants (bf16 autocast, micro-batch sized to free memory); the table is written even if 2) fails
timeout 170 $PY -m benchmarks.speed $ARGS --rounds 3 --variants official ours ours:cl 2>&1 | tee "$OUT/speed_eager.txt"
rc=$?
# 2) torch.compile (inductor, static shapes: 2 micro-batches of 250), with the official loop again as baseline
timeout 230 $PY -m benchmarks.speed $ARGS --rounds 2 --variants official ours:compile:bs=250 2>&1 \
  | tee "$OUT/speed_compile.txt"
cp benchmarks/results/speed_*.md "$OUT"/ 2>/dev/null
exit $rc
