// The table-driven GPU-vs-CPU harness for backend::Ops (style.md §9 rule 3): each test
// runs one op through CpuOps (the reference) and CudaOps on the same random inputs at
// the model's shapes, then compares with a stated tolerance. Any NaN or Inf in the GPU
// output fails, and GPU output buffers start poisoned with NaN so an element the kernel
// never writes fails too.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/gpu_context.h"

namespace dsq::test {

// Skips the calling test on a machine without a usable GPU, saying so.
#define DSQ_REQUIRE_GPU()                                                   \
  do {                                                                      \
    if (!::dsq::cuda::gpu_available()) GTEST_SKIP() << "no GPU: skipping CUDA tests"; \
  } while (0)

inline std::vector<float> random_floats(size_t n, std::mt19937& rng, float sigma = 1.0f) {
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A GPU buffer holding host data.
inline Tensor on_gpu(cuda::CudaOps& ops, const std::vector<float>& host) {
  return ops.upload(Tensor::from_f32(host, {int64_t(host.size())}));
}
inline Tensor on_gpu(cuda::CudaOps& ops, const std::vector<int64_t>& host) {
  Tensor t = Tensor::zeros(DType::I64, {int64_t(host.size())});
  std::memcpy(t.mutable_data<int64_t>(), host.data(), host.size() * sizeof(int64_t));
  return ops.upload(t);
}
// A GPU f32 buffer of n elements filled with NaN.
inline Tensor poisoned_gpu(cuda::CudaOps& ops, int64_t n) {
  return on_gpu(ops, std::vector<float>(size_t(n), std::nanf("")));
}
inline std::vector<float> floats_of(cuda::CudaOps& ops, const Tensor& gpu) {
  const Tensor h = ops.to_host(gpu);
  return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
}
inline std::vector<int64_t> ints_of(cuda::CudaOps& ops, const Tensor& gpu) {
  const Tensor h = ops.to_host(gpu);
  return std::vector<int64_t>(h.data<int64_t>(), h.data<int64_t>() + h.numel());
}

// Relative L2 error ‖got − want‖ / ‖want‖ (absolute when want is all zero), with every
// got value finite; fails the test with `what` otherwise.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tolerance,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << ": element " << i << " is " << got[i];
    const double d = double(got[i]) - double(want[i]);
    diff += d * d;
    norm += double(want[i]) * double(want[i]);
  }
  const double err = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
  EXPECT_LE(err, tolerance) << what << " (relative L2 error)";
}

}  // namespace dsq::test
