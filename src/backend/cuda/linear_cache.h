// LinearCache: CudaOps' device copies of the linear weights it has run, prepared once
// for the kernel that consumes them (linear_ops.cu picks the kernel), keyed by the host
// QuantizedMatrix's address (the routed experts of a layer: by their first gate weight's).
//
// A PreparedLinear is one weight in one of four device forms:
//   F32   fp32 [rows, cols], exact dequantization (Precision::F32; dense f32 weights)
//   Bf16  bf16 [rows, cols] (dense bf16/f16, MXFP4, and quantized weights whose shape
//         the specialised kernels below do not take)
//   Fp8   one Fp8BlockLinear holding every group of rows (a plain linear has one group)
//   Int4  an Int4ExpertWeights holding one expert
//   Mxfp4 an Mxfp4ExpertWeights holding one expert (MXFP4 shapes its kernels take)
// PreparedExperts holds a layer's routed experts: stacked for the grouped INT4 kernels
// when all of them fit those, otherwise one PreparedLinear per expert weight.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/fp8_block_linear.h"
#include "backend/cuda/int4_linear.h"
#include "backend/cuda/mxfp4_linear.h"
#include "formats/quantized_matrix.h"

namespace dsq::cuda {

struct PreparedLinear {
  enum class Kind { F32, Bf16, Fp8, Int4, Mxfp4 };
  Kind kind = Kind::F32;
  WeightFormat format = WeightFormat::Dense;  // of the host weight (a stale-key check)
  int64_t rows = 0, cols = 0, groups = 1;
  DeviceBuffer<float> f32;         // F32: [rows, cols]
  DeviceBuffer<uint16_t> bf16;     // Bf16: [rows, cols], bf16 bits
  std::unique_ptr<Fp8BlockLinear> fp8;               // Fp8: all groups, one launch
  std::unique_ptr<Int4ExpertWeights> int4;           // Int4
  std::unique_ptr<Mxfp4ExpertWeights> mxfp4;         // Mxfp4 (one expert)

  bool matches(const QuantizedMatrix& w, int64_t g) const {
    return format == w.format && rows == w.rows && cols == w.cols && groups == g;
  }
};

struct PreparedExperts {
  int64_t n_experts = 0, hidden = 0, inter = 0;  // E, H, F
  // Every expert INT4 group-128 with bf16 scales and kernel-friendly shapes (Fast only):
  std::unique_ptr<Int4ExpertWeights> gate_up;  // [E][2F, H], gate/up rows interleaved
  std::unique_ptr<Int4ExpertWeights> down;     // [E][H, F]
  // Otherwise, per expert:
  std::vector<PreparedLinear> gate, up, down_each;

  bool stacked() const { return gate_up != nullptr; }
};

// FP8 weights that linear_many runs on one input, concatenated by rows into one
// Fp8BlockLinear (one launch, activations quantized once); the weights are not also
// prepared one by one.
struct FusedFp8 {
  std::vector<const QuantizedMatrix*> parts;
  std::vector<int64_t> rows;  // of each part, in order
  int64_t cols = 0;
  std::unique_ptr<Fp8BlockLinear> lin;
};

struct LinearCache {
  std::unordered_map<const QuantizedMatrix*, PreparedLinear> linears;  // linear(), linear_grouped()
  std::unordered_map<const QuantizedMatrix*, FusedFp8> fused_fp8;       // linear_many(), by the first part
  std::unordered_map<const QuantizedMatrix*, PreparedExperts> experts;  // moe_experts()
  // The FP8 decode workspace (a scratch slot) and how many of its bytes are known to be
  // zero: Fp8BlockLinear's decode kernel needs a zeroed workspace and leaves it so (its
  // other paths get a separate scratch slot).
  void* fp8_workspace = nullptr;
  size_t fp8_workspace_zeroed = 0;
};

}  // namespace dsq::cuda
