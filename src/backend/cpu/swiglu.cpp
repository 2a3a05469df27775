#include "backend/cpu/swiglu.h"

#include <algorithm>
#include <cmath>

#include "core/thread_pool.h"

namespace dsq::cpu {

void swiglu_clamped(const float* gate, const float* up, int64_t n, float limit, float* out) {
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float g = gate[i], u = up[i];
      if (limit > 0) {
        g = std::min(g, limit);
        u = std::clamp(u, -limit, limit);
      }
      out[i] = g / (1.0f + std::exp(-g)) * u;
    }
  });
}

}  // namespace dsq::cpu
