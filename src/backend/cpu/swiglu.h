// Clamped SwiGLU (spec §2.1): g ← min(g, λ) (upper bound only), u ← clamp(u, −λ, λ),
// out = SiLU(g) ⊙ u. λ <= 0 disables the clamp.
#pragma once

#include <cstdint>

namespace dsq::cpu {

// gate, up, out: n values each (out may alias gate).
void swiglu_clamped(const float* gate, const float* up, int64_t n, float limit, float* out);

}  // namespace dsq::cpu
