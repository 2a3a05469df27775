// dsq quantize: a DeepSeek-V4 checkpoint (transformers-layout BF16, or the DeepSeek release
// format with FP8 / MXFP4 weights) -> a compressed-tensors checkpoint, by a recipe.
//
// Sequential, one unit at a time (the global tensors, then decoder layer 0, 1, ...): only
// one layer's weights are dequantized at a time (the input stays memory-mapped), so memory
// is about one decoder layer plus the calibration streams. For each layer with GPTQ modules:
//   1. run the layer with its original weights on every calibration sample, accumulating
//      per-linear Hessians from the inputs each linear sees (routed experts: their tokens);
//   2. quantize every module of the layer (GPTQ / RTN / FP8 block / kept) and write the
//      layer's shard;
//   3. the next layer's inputs: by default the outputs of the *quantized* layer, so each
//      layer's GPTQ compensates the error of everything before it, as llm-compressor does
//      by default (propagate_error=True since 0.11). Option: the unquantized outputs.
// Experts that saw fewer than `min_expert_tokens` tokens fall back to being calibrated on
// every token (default) or to RTN; never to zeroed weights.
//
// Crash safety: every file is written atomically and the state needed to continue (the
// next layer's input streams, per-layer reports) lives in <out>/.dsq-quantize/; a run
// started again with resume = true continues after the last finished layer and produces
// byte-identical output.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/module_quantizer.h"
#include "quant/recipe.h"

namespace dsq::quant {

enum class ExpertFallback { AllTokens, Rtn };

struct QuantizeOptions {
  std::string model_dir, output_dir;
  Recipe recipe;
  std::string calib_path;  // text file or .jsonl of chat messages; needed by GPTQ recipes
  int64_t num_samples = 128, seq_len = 512;
  bool propagate_quantized = true;  // next layer's inputs from the quantized layer
  bool all_experts = false;         // calibrate every expert on every token
  int64_t min_expert_tokens = -1;   // -1: the hidden size (an expert's gate/up input width)
  ExpertFallback expert_fallback = ExpertFallback::AllTokens;
  bool resume = false;
  int64_t batch_tokens = 8192;  // tokens per forward batch
  bool log_modules = true;      // one line per module on stderr
};

struct QuantizeResult {
  std::vector<ModuleReport> modules;
  double seconds = 0.0;
};

QuantizeResult quantize_model(const QuantizeOptions& options);

// The end-of-run table: modules per scheme, bytes before/after, mean GPTQ vs RTN error.
std::string format_summary(const std::vector<ModuleReport>& modules);

}  // namespace dsq::quant
