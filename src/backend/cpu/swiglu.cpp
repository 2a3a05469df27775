#include "backend/cpu/swiglu.h"

#include <algorithm>
#include <cmath>

namespace dsq::cpu {

void swiglu_clamped(const float* gate, const float* up, int64_t n, float limit, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    float g = gate[i], u = up[i];
    if (limit > 0) {
      g = std::min(g, limit);
      u = std::clamp(u, -limit, limit);
    }
    out[i] = g / (1.0f + std::exp(-g)) * u;
  }
}

}  // namespace dsq::cpu
