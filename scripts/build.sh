#!/usr/bin/env bash
# Configures and builds dsq (Release) into ./build. CUDA sources are compiled when nvcc
# is on the PATH (or in /usr/local/cuda/bin), even on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="$PATH:/usr/local/cuda/bin"
jobs=${DSQ_JOBS:-$(nproc)}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
