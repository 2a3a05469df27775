// FP8 block quantization (see fp8_block.h for the scale rule and dtype).
#include "quant/fp8_block.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"

namespace dsq::quant {

namespace {

constexpr float kFp8Max = 448.0f;

float block_scale(float amax, Fp8ScaleRule rule) {
  if (amax == 0.0f) return rule == Fp8ScaleRule::PowerOfTwo ? 1.0f : 1.1920929e-07f;  // f32 eps
  const float s = amax / kFp8Max;
  if (rule == Fp8ScaleRule::AbsMax) return s;
  int e;
  const float m = std::frexp(s, &e);  // s = m * 2^e, m in [0.5, 1)
  return std::ldexp(1.0f, m == 0.5f ? e - 1 : e);  // smallest power of two >= s
}

}  // namespace

QuantizedMatrix quantize_fp8_block(const float* w, int64_t rows, int64_t cols, Fp8ScaleRule rule,
                                   int64_t block) {
  const int64_t brows = (rows + block - 1) / block, bcols = (cols + block - 1) / block;
  QuantizedMatrix m;
  m.format = WeightFormat::Fp8Block;
  m.rows = rows;
  m.cols = cols;
  m.group_size = block;
  m.values = Tensor::zeros(DType::F8_E4M3, {rows, cols});
  m.scales = Tensor::zeros(DType::F32, {brows, bcols});
  uint8_t* v = m.values.mutable_data<uint8_t>();
  float* scales = m.scales.mutable_data<float>();
  parallel_for(brows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t br = b0; br < b1; ++br) {
      const int64_t r_end = std::min(rows, (br + 1) * block);
      for (int64_t bc = 0; bc < bcols; ++bc) {
        const int64_t c0 = bc * block, c_end = std::min(cols, (bc + 1) * block);
        float amax = 0.0f;
        for (int64_t r = br * block; r < r_end; ++r)
          for (int64_t c = c0; c < c_end; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
        const float s = block_scale(amax, rule);
        scales[br * bcols + bc] = s;
        for (int64_t r = br * block; r < r_end; ++r)
          for (int64_t c = c0; c < c_end; ++c)
            v[r * cols + c] = f32_to_f8e4m3(std::clamp(w[r * cols + c] / s, -kFp8Max, kFp8Max));
      }
    }
  });
  return m;
}

QuantizedMatrix fp8_block_with_f32_scales(const QuantizedMatrix& m) {
  DSQ_CHECK(m.format == WeightFormat::Fp8Block, "fp8 pass-through of a ", weight_format_name(m.format),
            " weight");
  QuantizedMatrix out = m;
  out.scales = m.scales.to_f32();
  return out;
}

}  // namespace dsq::quant
