// Vectorised fp32 dot product for the attention and indexer inner loops. Plain loops
// cannot be vectorised there without reassociating the sum (which -O3 alone does not
// allow); this fixes one summation order: lane-wise partial sums, then the lanes.
#pragma once

#include <cstdint>
#include <cstring>

namespace dsq::cpu {

inline float dot(const float* a, const float* b, int64_t n) {
  typedef float Vec8 __attribute__((vector_size(32)));
  Vec8 acc0{}, acc1{};
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    Vec8 a0, a1, b0, b1;
    std::memcpy(&a0, a + k, 32);
    std::memcpy(&a1, a + k + 8, 32);
    std::memcpy(&b0, b + k, 32);
    std::memcpy(&b1, b + k + 8, 32);
    acc0 += a0 * b0;
    acc1 += a1 * b1;
  }
  acc0 += acc1;
  float s = 0;
  for (int i = 0; i < 8; ++i) s += acc0[i];
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

}  // namespace dsq::cpu
