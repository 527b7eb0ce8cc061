#!/usr/bin/env bash
# One visit to a GPU node: install a worker from the wheelhouse (no network needed), then run
# the GPU tests and/or the measurement benchmark. What docs/benchmarks/gpu-measurement.md
# records was produced by this script; docs/gpu-worker.md explains each step.
#
#   make wheelhouse                      # here, with network: wheelhouse/ for py3.12
#   bench/gpu_node.sh [tests|noise|all]  # there, from the repository root
#
# PY: the node's Python with CUDA torch (default /opt/torch/.venv/bin/python); the worker is
# installed into its virtualenv. OUT: where logs and results go (default var/gpu-node).
# .whl/, when present, holds extra wheels for the tests (pytest and its plugins).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/opt/torch/.venv/bin/python}
VENV=$(dirname "$(dirname "$PY")")
OUT=${OUT:-var/gpu-node}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
  --format=csv | tee "$OUT/nvidia-smi.txt"

# No network on purpose: the install must work air-gapped.
if command -v unshare >/dev/null && unshare --net true 2>/dev/null; then offline="unshare --net --"; else offline=""; fi
$offline "$PY" wheelhouse/install.py --venv "$VENV" >"$OUT/install.log" 2>&1
echo "install: exit $?"; tail -4 "$OUT/install.log"
if [ -d .whl ]; then "$PY" -m pip install -q --no-index --no-deps .whl/*.whl; fi
set -a; . "$VENV/worker.env"; set +a
export RUNNER_GPU_DEVICES=/dev/nvidia0,/dev/nvidiactl,/dev/nvidia-uvm
export RUNNER_CACHE_DIR="$OUT/cache"

what=${1:-all}
if [ "$what" = tests ] || [ "$what" = all ]; then
  "$PY" -m pytest -m gpu tests/runner/test_gpu_node.py -v -s -p no:cacheprovider -o addopts="" \
    >"$OUT/gpu-tests.log" 2>&1
  echo "gpu tests: exit $?"; grep -E "PASSED|FAILED|ERROR|SKIPPED|speedup|passed|failed" "$OUT/gpu-tests.log" | tail -30
fi
if [ "$what" = noise ] || [ "$what" = all ]; then
  "$PY" bench/measurement_noise.py --device cuda --repeats "${REPEATS:-10}" \
    --cases "${CASES:-copy,softmax,matmul}" --out "$OUT" 2>&1 | tee "$OUT/noise.log" | tail -12
fi
