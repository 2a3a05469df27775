// The rotation of one RoPE pair (cpu/rope.h's formula), (a, b) → (a·c − b·s, b·c + a·s)
// with (s, c) the sine and cosine of position · frequency (s negated for the inverse
// rotation), written once for every kernel that turns pairs (rope, norm_rope, the
// attention output's inverse rope), so that they give the same bits as each other.
#pragma once

namespace dsq::cuda {

struct RopeTurn {
  float c = 1.0f, s = 0.0f;
  RopeTurn() = default;
  __device__ RopeTurn(float position, float freq, bool inverse) {
    sincosf(position * freq, &s, &c);
    if (inverse) s = -s;
  }
  __device__ float2 operator()(float a, float b) const { return make_float2(a * c - b * s, b * c + a * s); }
};

}  // namespace dsq::cuda
