#!/usr/bin/env bash
# Runs on the GPU machine (the lent H100/H200): the CUDA tests (every op against the CPU
# reference, the whole model against the transformers fixtures and the CPU perplexity),
# then the benchmarks: GEMMs and attention at DeepSeek-V4-Flash shapes, streaming reads,
# and the whole model on a `dsq synth` checkpoint with V4-Flash's per-layer dimensions.
# Logs go under $OUT (default ./gpu-out).
#
# Build first, here, with scripts/gpu-build.sh (the GPU image lacks dsq's Debian build
# dependencies) and carry build/carry to the device run.
# Usage: scripts/gpu-check.sh [--quick] [--no-bench] [--synth-layers N] [--synth-experts N]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
bin=build/carry
quick=""; bench=1; layers=43; experts=16
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=--quick ;;
    --no-bench) bench=0 ;;
    --synth-layers) layers=$2; shift ;;
    --synth-experts) experts=$2; shift ;;
  esac
  shift
done
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$PWD/$bin/lib:${LD_LIBRARY_PATH:-}"
export DSQ_SHARED_DIR="$PWD/$bin/shared" DSQ_PROJECT_DIR="$PWD" DSQ_BINARY_DIR="$PWD/$bin"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/env.log"
"$bin/test_backend_cuda" 2>&1 | tee "$out/tests.log" | grep -vE '^\[ +(RUN|OK) '
test_rc=${PIPESTATUS[0]}
echo "test_backend_cuda exit code: $test_rc"
if [ "$bench" = 1 ]; then
  "$bin/dsq_gemm_bench" $quick --out "$out/gpu-gemm-table.md" > "$out/gemm-bench.log" 2>&1
  echo "dsq_gemm_bench exit code: $?"
  "$bin/dsq_attention_bench" > "$out/attention-bench.md" 2>&1
  echo "dsq_attention_bench exit code: $?"
  "$bin/dsq_memory_bench" --out "$out/memory-bench.md" > "$out/memory-bench.log" 2>&1
  echo "dsq_memory_bench exit code: $?"
  synth=/tmp/dsq-synth-${layers}x${experts}
  [ -d "$synth" ] || "$bin/dsq" synth "$synth" --preset v4-flash --layers "$layers" --experts "$experts" \
    --format w4a16-fp8 > "$out/synth.log" 2>&1
  "$bin/dsq_model_bench" "$synth" --context 8192 --steps 16 --out "$out/model-bench.md" 2>&1 | tee "$out/model-bench.log"
  echo "dsq_model_bench exit code: ${PIPESTATUS[0]}"
fi
exit "$test_rc"
