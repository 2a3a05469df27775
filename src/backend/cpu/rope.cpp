#include "backend/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "core/thread_pool.h"

namespace dsq::cpu {

RopeFrequencies rope_frequencies(int64_t rope_dim, double theta, const YarnScaling* yarn) {
  DSQ_CHECK(rope_dim > 0 && rope_dim % 2 == 0, "rope: rotary dims must be even and positive, got ",
            rope_dim);
  RopeFrequencies t;
  t.rope_dim = rope_dim;
  const int64_t half = rope_dim / 2;
  t.freqs.resize(size_t(half));
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = float(2 * i) / float(rope_dim);
    t.freqs[i] = 1.0f / std::pow(float(theta), exponent);
  }
  if (yarn && yarn->factor != 1.0) {
    const double r = double(rope_dim);
    auto corr = [&](double n) {
      return r * std::log(double(yarn->original_max_positions) / (2 * std::numbers::pi * n)) /
             (2 * std::log(theta));
    };
    const double lo = std::max(std::floor(corr(yarn->beta_fast)), 0.0);
    double hi = std::min(std::ceil(corr(yarn->beta_slow)), r - 1);
    if (lo == hi) hi += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      const float rho = float(std::clamp((double(i) - lo) / (hi - lo), 0.0, 1.0));
      t.freqs[i] = t.freqs[i] * ((1.0f - rho) + rho / float(yarn->factor));
    }
  }
  return t;
}

void apply_rope_one(float* v, int64_t d, int64_t position, const RopeFrequencies& table, bool inverse) {
  const int64_t r = table.rope_dim;
  float* slice = v + (d - r);
  for (int64_t i = 0; i < r / 2; ++i) {
    const float angle = float(position) * table.freqs[i];
    const float c = std::cos(angle);
    const float s = inverse ? -std::sin(angle) : std::sin(angle);
    const float a = slice[2 * i], b = slice[2 * i + 1];
    slice[2 * i] = a * c - b * s;
    slice[2 * i + 1] = b * c + a * s;
  }
}

void apply_rope(float* v, int64_t n_tokens, int64_t heads, int64_t d, const int64_t* positions,
                const RopeFrequencies& table, bool inverse) {
  DSQ_CHECK(table.rope_dim <= d, "rope: ", table.rope_dim, " rotary dims exceed a vector of ", d);
  parallel_for(n_tokens, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = 0; h < heads; ++h) apply_rope_one(v + (t * heads + h) * d, d, positions[t], table, inverse);
  });
}

}  // namespace dsq::cpu
