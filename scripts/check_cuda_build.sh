#!/usr/bin/env bash
# Proves the CUDA build on a machine without a GPU: builds convext against torch 2.14.1 (a CUDA
# build of torch) in a virtual environment of its own, then checks from outside the checkout that
# the CUDA kernels are compiled in and registered. Nothing here runs on a GPU.
#   CONVEXT_CUDA_VENV  the virtual environment (default /tmp/convext-cuda-venv; reused if present)
#   CUDA_HOME          the CUDA toolkit (default /usr/local/cuda-13.0: the nvcc on PATH is a wrapper
#                      script around it, and torch's guess from the wrapper fails to link -lcudart)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${CONVEXT_CUDA_VENV:-/tmp/convext-cuda-venv}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda-13.0}"
export CONVEXT_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"  # one architecture: a short compile

[ -x "$VENV/bin/python" ] || python -m venv "$VENV"
"$VENV/bin/python" -m pip install torch==2.14.1 ninja numpy

# Build a copy, not the checkout: a non-editable build would share the checkout's build/ folder
# with the CPU build, and must not replace the checkout's own (CPU) convext/_C*.so.
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
tar -C "$ROOT" --exclude=./.git --exclude=./build --exclude='*.egg-info' --exclude='*.so' -cf - . |
  tar -C "$SRC" -xf -
"$VENV/bin/python" -m pip install --no-build-isolation --no-deps "$SRC"

cd /  # import the installed package, not the checkout
"$VENV/bin/python" - <<'PY'
import torch

import convext

info = convext.build_info()
assert info["cuda"] is True, f"convext was built without its CUDA kernels: {info}"
ops = ["conv2d", "conv_transpose2d", "conv2d_weight_grad", "conv_bias_grad",
       "max_pool2d", "max_pool2d_with_indices", "adaptive_max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
       "avg_pool2d_backward", "adaptive_avg_pool2d_backward", "max_pool2d_backward",
       "max_unpool2d", "pool_scatter_add", "pool_gather"]
missing = [op for op in ops
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"convext::{op}", "CUDA")]
assert not missing, f"no CUDA kernel registered for {missing}"
print(f"CUDA build OK: torch {torch.__version__}, {info}, CUDA kernels for {len(ops)} ops")
PY
