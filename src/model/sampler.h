// Next-token selection from a row of logits: greedy (temperature 0) or seeded sampling
// with temperature, top-k and top-p (nucleus). Reproducible: the same seed and logits
// give the same tokens on every machine (std::mt19937_64, which the standard fixes
// exactly, and a fixed procedure on top of it).
#pragma once

#include <cstdint>
#include <random>

namespace dsq::model {

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy (argmax, lowest id wins a tie)
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // 1: no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);
  // Picks a token from logits [vocab].
  int64_t next(const float* logits, int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace dsq::model
