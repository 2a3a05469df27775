// Symmetric INT4 group scales, RTN and packing into a compressed-tensors matrix.
#include "quant/int4_group.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"

namespace dsq::quant {

namespace {
constexpr uint16_t kBf16Eps = 0x3c00;  // 2^-7 = torch.finfo(torch.bfloat16).eps
}

std::vector<uint16_t> int4_group_scales(const float* w, int64_t rows, int64_t cols, int64_t group) {
  DSQ_CHECK(group > 0 && cols % group == 0, "int4: ", cols, " inputs are not a multiple of group ", group);
  const int64_t groups = cols / group;
  std::vector<uint16_t> scales(rows * groups);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      // Zero is always inside the range: amax = max(|min(0, w)|, max(0, w)).
      float amax = 0.0f;
      for (int64_t c = g * group; c < (g + 1) * group; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      const uint16_t s = f32_to_bf16(amax / 7.5f);
      scales[r * groups + g] = (s & 0x7fff) == 0 ? kBf16Eps : s;
    }
  }
  return scales;
}

QuantizedMatrix zero_int4_matrix(int64_t rows, int64_t cols, int64_t group) {
  QuantizedMatrix m;
  m.format = WeightFormat::Int4Group;
  m.rows = rows;
  m.cols = cols;
  m.group_size = group;
  m.values = Tensor::zeros(DType::I32, {rows, cols / 8});
  m.scales = Tensor::zeros(DType::BF16, {rows, cols / group});
  return m;
}

QuantizedMatrix make_int4_matrix(const std::vector<int8_t>& codes, const std::vector<uint16_t>& scales,
                                 int64_t rows, int64_t cols, int64_t group) {
  QuantizedMatrix m = zero_int4_matrix(rows, cols, group);
  int32_t* words = m.values.mutable_data<int32_t>();
  for (int64_t r = 0; r < rows; ++r) int4_pack_row(codes.data() + r * cols, cols, words + r * (cols / 8));
  std::memcpy(m.scales.mutable_data<uint16_t>(), scales.data(), scales.size() * sizeof(uint16_t));
  return m;
}

QuantizedMatrix quantize_int4_rtn(const float* w, int64_t rows, int64_t cols, int64_t group) {
  const std::vector<uint16_t> scales = int4_group_scales(w, rows, cols, group);
  std::vector<int8_t> codes(rows * cols);
  const int64_t groups = cols / group;
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c)
        codes[r * cols + c] = int4_code(w[r * cols + c], bf16_to_f32(scales[r * groups + c / group]));
  });
  return make_int4_matrix(codes, scales, rows, cols, group);
}

}  // namespace dsq::quant
