#!/usr/bin/env bash
# One visit to a GPU node: install a worker from the wheelhouse (no network needed), then run
# the steps asked for. The GPU figures under docs/ were produced by this script;
# docs/gpu-worker.md explains each step.
#
#   make wheelhouse                        # here, with network: wheelhouse/ for py3.12
#   bench/gpu_node.sh STEP [STEP...]       # there, from the repository root
#
# Steps:
#   tests   the GPU tests (pytest -m gpu): sandbox, timing cheats, every lab at GPU scale
#           (PYTEST_ARGS adds to pytest's arguments, e.g. "-k kernels")
#   noise   bench/measurement_noise.py (REPEATS and CASES from the environment)
#   noise-split  the same, each case on its own GPU at once (a node with several GPUs)
#   stack   bench/gpu_stack.py: web app, web worker, one grading worker per GPU, API submissions
#   all     tests, then noise
#
# PY: the node's Python with CUDA torch (default /opt/torch/.venv/bin/python); the worker is
# installed into its virtualenv. OUT: where results go (default var/gpu-node); everything is
# also packed into $OUT/gpu-node.tgz, since a device call brings back only a few files.
# .whl/, when present, holds extra wheels for the tests (pytest and its plugins).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/opt/torch/.venv/bin/python}
VENV=$(dirname "$(dirname "$PY")")
FINAL_OUT=${OUT:-var/gpu-node}
mkdir -p "$FINAL_OUT"
OUT=$(mktemp -d /tmp/gpu-node.XXXXXX)
export OUT PYTHONUNBUFFERED=1
# Logs and results, without the stack's database and broker folders.
trap 'tar czf "$FINAL_OUT/gpu-node.tgz" -C "$OUT" --exclude="./stack/run" --exclude="./cache" .' EXIT

nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit \
  --format=csv | tee "$OUT/nvidia-smi.txt"

# The install is skipped when this wheelhouse is already installed (a warm node, a second call).
stamp="$VENV/.inference-roadmap-wheelhouse"
if ! cmp -s wheelhouse/manifest.json "$stamp"; then
  # No network on purpose: the install must work air-gapped.
  if command -v unshare >/dev/null && unshare --net true 2>/dev/null; then offline="unshare --net --"; else offline=""; fi
  start=$(date +%s)
  $offline "$PY" wheelhouse/install.py --venv "$VENV" >"$OUT/install.log" 2>&1
  code=$?
  echo "install: exit $code in $(( $(date +%s) - start )) s"; tail -4 "$OUT/install.log"
  [ $code = 0 ] && cp wheelhouse/manifest.json "$stamp"
  if [ -d .whl ]; then "$PY" -m pip install -q --no-index --no-deps .whl/*.whl; fi
fi
set -a; . "$VENV/worker.env"; set +a
export RUNNER_GPU_DEVICES=/dev/nvidia0,/dev/nvidiactl,/dev/nvidia-uvm
export RUNNER_CACHE_DIR="$OUT/cache"

steps=" $* "
[ "$steps" = "  " ] && steps=" all "
case $steps in *" all "*) steps="$steps tests noise " ;; esac
if [[ $steps == *" tests "* ]]; then
  files=$(ls tests/runner/test_gpu_*.py)
  "$PY" -m pytest -m gpu $files -v -s -p no:cacheprovider -o addopts="" ${PYTEST_ARGS:-} \
    >"$OUT/gpu-tests.log" 2>&1
  echo "gpu tests: exit $?"
  grep -E "PASSED|FAILED|ERROR|SKIPPED|speedup|passed|failed" "$OUT/gpu-tests.log" | tail -40
fi
if [[ $steps == *" noise "* ]]; then
  "$PY" bench/measurement_noise.py --device cuda --repeats "${REPEATS:-10}" \
    --cases "${CASES:-copy,softmax,matmul}" --out "$OUT" 2>&1 | tee "$OUT/noise.log" | tail -8
fi
if [[ $steps == *" noise-split "* ]]; then
  # One case per GPU at once (case i on GPU i mod count), each pinned to its GPU as a worker
  # is: its sandboxes get only that GPU's device node, and CUDA in the study's own process
  # (the peaks, do_bench) sees only that GPU. Results in $OUT/noise-<case>/.
  mapfile -t gpus < <("$PY" -c 'import pynvml as n; n.nvmlInit(); [print(n.nvmlDeviceGetMinorNumber(h), n.nvmlDeviceGetUUID(h)) for h in map(n.nvmlDeviceGetHandleByIndex, range(n.nvmlDeviceGetCount()))]')
  IFS=, read -ra cases <<<"${CASES:-copy,softmax,matmul}"
  for i in "${!cases[@]}"; do
    read -r minor uuid <<<"${gpus[$((i % ${#gpus[@]}))]}"
    mkdir -p "$OUT/noise-${cases[$i]}"
    RUNNER_GPU_DEVICES=/dev/nvidia$minor,/dev/nvidiactl,/dev/nvidia-uvm CUDA_VISIBLE_DEVICES=$uuid \
      "$PY" bench/measurement_noise.py --device cuda --repeats "${REPEATS:-10}" \
      --cases "${cases[$i]}" --out "$OUT/noise-${cases[$i]}" >"$OUT/noise-${cases[$i]}/noise.log" 2>&1 &
  done
  wait
  for c in "${cases[@]}"; do tail -3 "$OUT/noise-$c/noise.log"; done
fi
if [[ $steps == *" stack "* ]]; then
  # The stack's workers find their GPUs themselves (runner gpu-workers).
  env -u RUNNER_GPU_DEVICES timeout "${STACK_TIMEOUT:-3600}" "$PY" bench/gpu_stack.py \
    ${STACK_ARGS:-} 2>&1 | tail -40
fi
