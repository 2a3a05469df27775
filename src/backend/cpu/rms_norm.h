// RMSNorm over the last axis, fp32: y = x / sqrt(mean(x²) + eps), times an optional
// per-channel weight (spec §2.1). Used weighted (attn/ffn/q/kv/compressor norms, final
// norm) and unweighted (per-head query norm, mHC input norms).
#pragma once

#include <cstdint>

namespace dsq::cpu {

// n rows of `dim` values at stride `stride` (in place allowed: y == x). weight may be null.
void rms_norm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float eps,
              float* y);

}  // namespace dsq::cpu
