// Loading one linear weight from a checkpoint in whatever format it is stored in.
//
// This is the single place that decides a weight's format from the tensors present
// beside it (quantizers add their formats here):
//   <module>.weight (bf16/f16/f32)                          -> Dense (kept in its dtype)
//   <module>.weight f8_e4m3 + .scale / .weight_scale_inv    -> Fp8Block (128×128 blocks)
//   <module>.weight_packed + <module>.weight_scale          -> Int4Group
//   <module>.weight i8/u8 (two e2m1 per byte) + .scale       -> Mxfp4 (the release experts)
#pragma once

#include <string>

#include "formats/checkpoint.h"
#include "formats/quantized_matrix.h"

namespace dsq::model {

// `module` is the native module name without ".weight", e.g. "layers.3.attn.wq_a".
// The logical shape [rows, cols] is checked; errors name the checkpoint and the tensor.
QuantizedMatrix load_linear_weight(const Checkpoint& ckpt, const std::string& module, int64_t rows,
                                   int64_t cols);

}  // namespace dsq::model
