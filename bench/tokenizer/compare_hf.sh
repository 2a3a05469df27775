#!/usr/bin/env bash
# compare_hf.sh: dsq vs HF `tokenizers` single-threaded encode speed on the Brown corpus.
#
# Usage: bench/tokenizer/compare_hf.sh [build dir, default build]
# Runs build/bench/tokenizer/bench_tokenizer (build it first: make bench_tokenizer) and
# hf_encode_speed.py on the same tokenizer and files in the same run, then prints one
# markdown table with the dsq/HF ratio. HF is pinned to one thread (RAYON_NUM_THREADS=1).
# If python3 cannot import tokenizers, it is pip-installed into <build dir>/hf-venv.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
shared=$root/../shared
tokenizer=$shared/tokenizers/deepseek-v3/tokenizer.json
files=("$shared/data/brown/valid.txt" "$shared/data/brown/train.txt")

python=python3
if ! "$python" -c "import tokenizers" 2>/dev/null; then
  venv=$build/hf-venv
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
  "$venv/bin/python" -c "import tokenizers" 2>/dev/null || "$venv/bin/pip" install -q tokenizers
  python=$venv/bin/python
fi

dsq_results=$(mktemp)
trap 'rm -f "$dsq_results"' EXIT
"$build/bench/tokenizer/bench_tokenizer" "$tokenizer" "${files[@]}" | tee "$dsq_results"
echo
echo "HF tokenizers $("$python" -c 'import tokenizers; print(tokenizers.__version__)'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
  "$python" "$root/bench/tokenizer/hf_encode_speed.py" --dsq "$dsq_results" "$tokenizer" "${files[@]}"
