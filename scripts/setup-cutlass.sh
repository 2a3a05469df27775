#!/usr/bin/env bash
# Installs the pinned CUTLASS headers for the opt-in dsq_cutlass_bench (not part of setup.sh
# or CI: its CUTLASS kernels take minutes to compile). They come from the PyPI wheel
# nvidia-cutlass, unpacked into the git-ignored .cutlass/ of the project; the wheel keeps
# CUTLASS's C++ tree (include/, tools/util/include/, examples/) in
# cutlass_library/source/. Prints that directory, to pass as -DDSQ_CUTLASS_DIR=...
# 4.2.0.0 is the only 4.x release on PyPI (checked 2026-11-24); it compiles for sm_90a
# with CUDA 13.0's nvcc and g++ 12.
set -euo pipefail

version=4.2.0.0
root="$(cd "$(dirname "$0")/.." && pwd)"
target="$root/.cutlass"
source_dir="$target/cutlass_library/source"

if ! grep -qs "^Version: $version\$" "$target"/nvidia_cutlass-*.dist-info/METADATA; then
  rm -rf "$target"
  # --no-deps: only the headers are needed, not the Python side's dependencies.
  python3 -m pip install --quiet --no-deps --target "$target" "nvidia-cutlass==$version" >&2
fi
test -f "$source_dir/include/cutlass/cutlass.h" || { echo "setup-cutlass: no headers in $source_dir" >&2; exit 1; }
echo "$source_dir"
