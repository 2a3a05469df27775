#!/usr/bin/env bash
# Builds the CUDA backend's test and benchmark binaries here (no GPU needed; sm_90a) into
# build-cuda and stages them in build-cuda/carry/ for scripts/gpu-check.sh on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="$PATH:/usr/local/cuda/bin"
cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DDSQ_BUILD_TESTS=ON -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null
cmake --build build-cuda -j "${DSQ_JOBS:-2}" --target test_backend_cuda dsq_gemm_bench
mkdir -p build-cuda/carry
cp build-cuda/tests/backend_cuda/test_backend_cuda build-cuda/dsq_gemm_bench build-cuda/carry/
