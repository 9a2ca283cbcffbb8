#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (README: "Contributors: the GPU check"): builds
# convext with its CUDA kernels, runs the CUDA tests, compute-sanitizer's memcheck over every
# CUDA kernel, and the CUDA benchmark rows. Each step runs under its own time limit (about 9
# minutes in all) and keeps its log in $OUT (default ./gpu-check) even when it fails; a failed step does
# not stop the later ones (except a failed build). Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1  # a step stopped at its limit keeps what it printed
mkdir -p "$OUT"
failed=0

step() {  # step NAME SECONDS COMMAND...: runs COMMAND, its output in $OUT/NAME.log
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (at most ${limit} s)"
  timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s$([ $rc -eq 124 ] && echo ' (time limit)')" \
    | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || failed=$((failed + 1))
  return $rc
}

{
  nvidia-smi -L
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'
  nvcc --version | tail -1
} >"$OUT/summary.txt" 2>&1

# No index: the machine has no network, and the build needs nothing but the installed torch.
if ! step build 240 env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 CONVEXT_CUDA=1 \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .; then
  echo "build failed: see build.log"
  exit 1
fi

# The CUDA tests; the OpInfo tests need expecttest, which the machine may lack.
pytest_args=(tests -q -k cuda -p no:cacheprovider)
"$PY" -c 'import expecttest' 2>/dev/null || pytest_args+=(--ignore=tests/test_opinfo.py)
"$PY" -c "import xdist" 2>/dev/null && pytest_args+=(-n 16)
# One OpenMP thread a worker: the CPU references of 16 workers with 16 threads each ran the
# convolution tests at 8 a second; with one, all 11,312 CUDA tests took 47 s on an H100 machine.
step tests 100 env OMP_NUM_THREADS=1 "$PY" -m pytest "${pytest_args[@]}"

# Without the caching allocator every tensor is its own allocation, so memcheck sees any access
# past a tensor's end.
step memcheck 70 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
  compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" scripts/cuda_smoke.py

# The pooling rows, and the depthwise and grouped conv rows when convext has CUDA convolutions.
layers=(--layer pool)
has_cuda_conv='import torch, convext
raise SystemExit(not torch._C._dispatch_has_kernel_for_dispatch_key("convext::conv2d", "CUDA"))'
"$PY" -c "$has_cuda_conv" && layers+=(--layer dw --layer g32)
step bench 50 "$PY" -m benchmarks --device cuda --dtype fp32 "${layers[@]}" --out "$OUT" --no-plot

# Dense convs (the implicit-GEMM kernels) against cuDNN: three ResNet-50 layers in strict float32,
# TF32, float16 and bfloat16, NCHW and NHWC, forward and forward+backward, short measurements.
if "$PY" -c "$has_cuda_conv"; then
  step bench-dense 60 "$PY" -m benchmarks --device cuda --quick --dtype all \
    --layer "ResNet-50 3x3 64" --layer "ResNet-50 3x3 256" --layer "ResNet-50 1x1 1024" \
    --out "$OUT/dense" --no-plot
fi

echo "== results"
cat "$OUT/summary.txt"
tail -n 3 "$OUT/tests.log"
grep -h "ERROR SUMMARY" "$OUT/memcheck.log"
[ -f "$OUT/benchmark.txt" ] && cat "$OUT/benchmark.txt"
[ -f "$OUT/dense/benchmark.txt" ] && cat "$OUT/dense/benchmark.txt"
exit $failed
