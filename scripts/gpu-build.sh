#!/usr/bin/env bash
# Builds everything the GPU machine runs (no GPU needed here; sm_90a) in build/ (the
# directory scripts/build.sh uses) and stages it in build/carry/ for scripts/gpu-check.sh:
# the CUDA test binary, dsq, the
# GPU benchmarks, the two shared libraries the GPU image lacks (PCRE2, libyaml), and the
# ../shared fixtures the tests read (tiny-brown's weights come from models/, which travels
# with the repository). Pass build/carry as a carried path to the device run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="$PATH:/usr/local/cuda/bin"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DDSQ_BUILD_TESTS=ON -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null
cmake --build build -j "${DSQ_JOBS:-2}" --target test_backend_cuda dsq dsq_gemm_bench dsq_attention_bench \
  dsq_memory_bench dsq_model_bench
carry=build/carry
rm -rf "$carry"
mkdir -p "$carry/lib" "$carry/shared/models/tiny-brown"
for b in build/tests/backend_cuda/test_backend_cuda build/dsq build/dsq_gemm_bench \
         build/dsq_attention_bench build/dsq_memory_bench build/dsq_model_bench; do
  strip -o "$carry/$(basename "$b")" "$b"
done
for lib in libpcre2-8.so.0 libyaml-0.so.2; do
  cp "$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')" "$carry/lib/"
done
cp -r ../shared/models/tiny-a ../shared/models/tiny-b "$carry/shared/models/"
cp ../shared/models/tiny-brown/reference.safetensors "$carry/shared/models/tiny-brown/"
du -sh "$carry"
