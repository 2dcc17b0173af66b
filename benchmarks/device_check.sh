#!/usr/bin/env bash
# Everything that needs a real GPU, in one device call of under 8 minutes (issue 20 item 6):
#   1) the tests marked `cuda` (about 1 min), 2) the speed benchmark, benchmarks/device_speed.sh (3-4 min, cut at
#   280 s), 3) one run of OpenOOD's Evaluator with diffood on CUDA, benchmarks/device_evaluator.py (about 1 min).
# Results go to benchmarks/results/ (device_check_<gpu>.md, speed_<gpu>.md, device_evaluator_<gpu>.csv) and, with
# the logs, to $OUT. Steps 2) and 3) run even when an earlier one fails; the exit status is the first failure's.
# The device image has no diffusers or pytest: their wheels travel in .whl/ (git-ignored), fetched here once with
#   .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 importlib_metadata \
#       pytest iniconfig pluggy
# OpenOOD travels as .deps/OpenOOD (`make test` unpacks it there); its own dependencies (`OPENOOD_DEPS` in the
# Makefile) must be on the device or in .whl/, else step 3) says it is skipped and why. With the device tool:
#   run(command="bash benchmarks/device_check.sh", carry=[".whl", ".deps/OpenOOD"], timeout_s=540)
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=python3
OUT=${OUT:-/tmp/diffood_out}
mkdir -p "$OUT" benchmarks/results
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:$PWD/.deps/OpenOOD${PYTHONPATH:+:$PYTHONPATH}  # this tree's package and OpenOOD
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
SLUG=$(echo "$GPU" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9\n' '_')
REPORT=benchmarks/results/device_check_${SLUG}.md
rc=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt, record the outcome
  local name=$1 limit=$2 start=$SECONDS status
  shift 2
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  status=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] || rc=$status
  echo "| $name | $([ "$status" -eq 0 ] && echo ok || echo "failed ($status)") | $((SECONDS - start)) s |" >> "$REPORT"
}
{
  echo "# Device check: $GPU ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo ?))"
  echo
  $PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
  echo
  echo "| step | result | time |"
  echo "| --- | --- | --- |"
} > "$REPORT"
# 1) every test marked cuda (only the files that have one are collected)
CUDA_TESTS=$(grep -l "mark.cuda" tests/test_*.py)
step cuda_tests 100 $PY -m pytest -q -p no:cacheprovider -m cuda -rs $CUDA_TESTS
# 2) the speed benchmark (its eager table is written first; a compile run past 280 s in all is cut)
step speed 280 bash benchmarks/device_speed.sh
# 3) OpenOOD's Evaluator with diffood on CUDA
if why=$($PY -c "import openood_diffood.openood.compat as c; c.require_openood('openood.evaluation_api')" 2>&1); then
  step openood_evaluator 90 $PY -m benchmarks.device_evaluator --device cuda --out benchmarks/results
else
  echo "| openood_evaluator | skipped: OpenOOD does not import here ($(echo "$why" | tail -1)) | 0 s |" >> "$REPORT"
fi
cp "$REPORT" benchmarks/results/device_evaluator_*.csv "$OUT"/ 2>/dev/null
cat "$REPORT"
exit $rc
