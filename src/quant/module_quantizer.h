// Quantizes one linear module by its recipe group and turns it into the tensors of the
// compressed-tensors checkpoint (checkpoint-formats.md §2.2, §2.3, §6):
//   INT4 (GPTQ or RTN): <m>.weight_packed i32 [out, in/8], <m>.weight_scale bf16
//                       [out, in/128], <m>.weight_shape i64 [2]
//   FP8 block:          <m>.weight f8_e4m3 [out, in], <m>.weight_scale f32 [ceil(out/128),
//                       ceil(in/128)]; an input that already is FP8 passes through with its
//                       bytes unchanged and its scales widened to f32 exactly
//   not quantized:      <m>.weight, the stored tensor unchanged if it is dense, else
//                       dequantized to bf16 (exact for FP8 and MXFP4 with power-of-two scales)
//
// GPTQ also computes RTN on the same calibration Hessian, logs both errors, and keeps
// whichever has the smaller error on the calibration data (GPTQ is greedy and can lose on a
// module; the report says when RTN was kept).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/quantized_matrix.h"
#include "formats/safetensors.h"
#include "quant/recipe.h"

namespace dsq::quant {

struct ModuleReport {
  std::string module;
  std::string scheme;  // int4-gptq | int4-rtn | fp8-block | fp8-passthrough | bf16
  int64_t tokens = 0;  // calibration tokens the module's Hessian saw
  double gptq_error = -1.0, rtn_error = -1.0;  // ||dW X||^2 / tokens; -1: not measured
  double gptq_loss = -1.0;                     // llm-compressor's logged "error"
  uint64_t bytes_before = 0, bytes_after = 0;
  std::string note;  // fallbacks and their reasons

  nlohmann::json to_json() const;
  static ModuleReport from_json(const nlohmann::json& j);
};

// One calibration Hessian for the rows [row_begin, row_end) of a module.
struct HessianBlock {
  int64_t row_begin = 0, row_end = 0;
  int64_t tokens = 0;
  std::vector<float> h;  // full symmetric [cols, cols], sum of x x^T
};

struct QuantizedModule {
  ModuleReport report;
  std::vector<NamedTensor> tensors;
  QuantizedMatrix matrix;  // what the forward uses from now on
};

// `group` null: keep. `hessians` empty for a GPTQ group: RTN, with `no_calibration_reason`
// recorded in the report.
QuantizedModule quantize_module(const std::string& module, const QuantizedMatrix& source, const RecipeGroup* group,
                                const std::vector<HessianBlock>& hessians, const std::string& no_calibration_reason);

// The compressed-tensors tensors of an INT4 / FP8 matrix (or `.weight` of a dense one).
std::vector<NamedTensor> module_tensors(const std::string& module, const QuantizedMatrix& m);

}  // namespace dsq::quant
