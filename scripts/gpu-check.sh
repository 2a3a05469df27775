#!/usr/bin/env bash
# Runs on the GPU machine (the lent H100/H200): the CUDA backend tests, then the GEMM
# benchmark, logging everything under $OUT (default ./gpu-out).
#
# The binaries are built beforehand on the development machine (the GPU image lacks
# dsq's Debian build dependencies) with scripts/gpu-build.sh, which stages them in
# build-cuda/carry/; pass that folder to the device run as a carried path.
# Usage: scripts/gpu-check.sh [--quick] [--no-bench]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
bin=build-cuda/carry
quick=""; bench=1
for a in "$@"; do
  case "$a" in
    --quick) quick=--quick ;;
    --no-bench) bench=0 ;;
  esac
done
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  ldd "$bin/test_backend_cuda" | grep -E "cublas|not found"
} 2>&1 | tee "$out/env.log"
"$bin/test_backend_cuda" 2>&1 | tee "$out/tests.log"
test_rc=${PIPESTATUS[0]}
echo "test_backend_cuda exit code: $test_rc"
if [ "$bench" = 1 ]; then
  "$bin/dsq_gemm_bench" $quick --out "$out/gpu-gemm-table.md" 2>&1 | tee "$out/bench.log"
  echo "dsq_gemm_bench exit code: ${PIPESTATUS[0]}"
fi
exit "$test_rc"
