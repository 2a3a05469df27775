// Hessian of one linear's calibration inputs: H = sum over tokens of x x^T (f32, in x in),
// plus the number of tokens it saw. GPTQ only needs H up to a constant factor, so it is kept
// as a raw sum (llm-compressor >= 0.10 does the same and divides at the end).
//
// Accumulation is deterministic: every element is summed over tokens in the order add()
// received them, whatever the thread count, so a resumed run reproduces it bit for bit.
#pragma once

#include <cstdint>
#include <vector>

namespace dsq::quant {

class Hessian {
 public:
  Hessian() = default;
  explicit Hessian(int64_t dim) : dim_(dim), sum_(dim * dim, 0.0f) {}

  int64_t dim() const { return dim_; }
  int64_t tokens() const { return tokens_; }
  // Adds rows x[t * dim .. + dim) for t in [0, n).
  void add(const float* x, int64_t n);
  // The full symmetric matrix (row-major, dim x dim).
  std::vector<float> matrix() const;

 private:
  int64_t dim_ = 0;
  int64_t tokens_ = 0;
  std::vector<float> sum_;  // upper triangle (j >= i) is maintained
};

}  // namespace dsq::quant
