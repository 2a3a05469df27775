// FP8 (e4m3) 128x128 block quantization, data-free, and the pass-through of weights that
// already are FP8.
//
// Scales are stored as f32 [ceil(out/128), ceil(in/128)]: that is the dtype of vLLM's
// BlockQuantScaleParameter (checkpoint-formats.md §3.3), so nothing is converted at load.
// Scale rule: by default a power of two, 2^ceil(log2(absmax / 448)), exactly what the
// DeepSeek release's E8M0 scales are. The written config says "scale_fmt": "ue8m0" (older
// vLLM needs that key), which makes vLLM run DeepGEMM with power-of-two scales; a
// non-power-of-two scale would then be rounded at load, so the default keeps the key
// truthful. Fp8ScaleRule::AbsMax gives compressed-tensors' own absmax / 448 instead.
// Values: e4m3(clamp(w / s, -448, 448)), round half to even.
#pragma once

#include <cstdint>

#include "formats/quantized_matrix.h"

namespace dsq::quant {

enum class Fp8ScaleRule { PowerOfTwo, AbsMax };

QuantizedMatrix quantize_fp8_block(const float* w, int64_t rows, int64_t cols,
                                   Fp8ScaleRule rule = Fp8ScaleRule::PowerOfTwo, int64_t block = 128);

// The same FP8 bytes with the scales widened to f32 (exact for e8m0, bf16 and f16 scales).
QuantizedMatrix fp8_block_with_f32_scales(const QuantizedMatrix& m);

}  // namespace dsq::quant
