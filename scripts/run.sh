#!/usr/bin/env bash
# The main job on the embedded default model: build dsq, describe tiny-brown, quantize it
# with the model card's recipe (GPTQ INT4 experts + FP8 attention), measure perplexity of
# both, and generate from the quantized checkpoint. On a machine with a usable NVIDIA GPU
# (and a dsq built with the CUDA backend) the perplexity and generation run there too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh

dsq=build/dsq
model=models/tiny-brown
out=out/tiny-brown-w4a16-fp8
valid=data/brown-valid-sample.txt

$dsq info "$model"
$dsq quantize "$model" -o "$out" --recipe w4a16-fp8 --calib data/brown-calibration.txt \
  --num-samples 128 --seq-len 512
$dsq info "$out"
echo "== perplexity on a Brown validation sample: BF16, then quantized"
$dsq ppl "$model" "$valid"
$dsq ppl "$out" "$valid"
echo "== generate (quantized)"
$dsq generate "$out" --prompt "The jury said" --max-tokens 60 --temperature 0.8 --top-p 0.95 --seed 1
echo
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  echo "== the same on the GPU (--device cuda)"
  $dsq ppl "$out" "$valid" --device cuda
  $dsq generate "$out" --prompt "The jury said" --max-tokens 60 --temperature 0.8 --top-p 0.95 --seed 1 \
    --device cuda
  echo
fi
