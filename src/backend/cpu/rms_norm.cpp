#include "backend/cpu/rms_norm.h"

#include <cmath>

#include "backend/cpu/dot.h"

#include "core/thread_pool.h"

namespace dsq::cpu {

void rms_norm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float eps,
              float* y) {
  parallel_for(n, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* xr = x + i * stride;
      float* yr = y + i * stride;
      const float inv = 1.0f / std::sqrt(dot(xr, xr, dim) / float(dim) + eps);
      if (weight) {
        for (int64_t k = 0; k < dim; ++k) yr[k] = weight[k] * (xr[k] * inv);
      } else {
        for (int64_t k = 0; k < dim; ++k) yr[k] = xr[k] * inv;
      }
    }
  });
}

}  // namespace dsq::cpu
