#!/usr/bin/env bash
# The test command: installs what is missing, builds, runs the whole CTest suite, then
# builds the libFuzzer targets with clang and runs each for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
ctest --test-dir build --output-on-failure -j "${DSQ_JOBS:-$(nproc)}"

# Fuzzers need clang's libFuzzer: a separate build of the fuzzed layers only.
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSQ_BUILD_FUZZERS=ON -DDSQ_BUILD_TESTS=OFF \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build build-fuzz -j "${DSQ_JOBS:-$(nproc)}" --target dsq_fuzzers
ctest --test-dir build-fuzz --output-on-failure -L fuzz
