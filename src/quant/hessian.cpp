// Hessian accumulation: upper triangle, eight rows of H per pass over the tokens so each
// input row loaded from memory serves eight rank-1 updates.
#include "quant/hessian.h"

#include "core/error.h"
#include "core/thread_pool.h"

namespace dsq::quant {

void Hessian::add(const float* x, int64_t n) {
  DSQ_CHECK(dim_ > 0, "Hessian::add on an empty Hessian");
  constexpr int64_t kRows = 8;
  const int64_t d = dim_;
  float* h = sum_.data();
  parallel_for((d + kRows - 1) / kRows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kRows, i1 = std::min(d, i0 + kRows);
      for (int64_t t = 0; t < n; ++t) {
        const float* xt = x + t * d;
        for (int64_t i = i0; i < i1; ++i) {
          const float a = xt[i];
          if (a == 0.0f) continue;
          float* hi = h + i * d;
          for (int64_t j = i; j < d; ++j) hi[j] += a * xt[j];
        }
      }
    }
  });
  tokens_ += n;
}

std::vector<float> Hessian::matrix() const {
  std::vector<float> full(sum_);
  for (int64_t i = 0; i < dim_; ++i)
    for (int64_t j = 0; j < i; ++j) full[i * dim_ + j] = sum_[j * dim_ + i];
  return full;
}

}  // namespace dsq::quant
