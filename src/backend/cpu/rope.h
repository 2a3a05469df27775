// Interleaved rotary embedding on the trailing r dims of a vector (spec §1.4, §2.1).
//
// Pair i is (v[d−r+2i], v[d−r+2i+1]) and turns by φ = p·f_i; the inverse rotation turns
// by −φ. The frequency table is fp32 (f_i = 1 / θ^(2i/r) with the exponent in fp32),
// optionally YaRN-scaled; each angle is one fp32 product (float)p · f_i. YaRN's attention
// factor is not applied (DeepSeek-V4 uses cos/sin unscaled).
#pragma once

#include <cstdint>
#include <vector>

namespace dsq::cpu {

struct RopeFrequencies {
  int64_t rope_dim = 0;        // r
  std::vector<float> freqs;    // r/2 entries
};

struct YarnScaling {
  double factor = 1.0;                 // s
  int64_t original_max_positions = 0;  // P0
  double beta_fast = 32.0, beta_slow = 1.0;
};

// Plain table f_i = θ^(−2i/r); with `yarn`, the blended YaRN table of §1.4.
RopeFrequencies rope_frequencies(int64_t rope_dim, double theta, const YarnScaling* yarn = nullptr);

// Rotates the trailing rope_dim entries of vectors v[t][h] (n_tokens × heads vectors of
// length d, contiguous) by position positions[t]; `inverse` turns by −φ.
void apply_rope(float* v, int64_t n_tokens, int64_t heads, int64_t d, const int64_t* positions,
                const RopeFrequencies& table, bool inverse);

// One vector at one position.
void apply_rope_one(float* v, int64_t d, int64_t position, const RopeFrequencies& table, bool inverse);

}  // namespace dsq::cpu
