#include "backend/cuda/l2_prefetch.h"

#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dependent_launch.h"

namespace dsq::cuda {

namespace {

// One bulk prefetch per thread, of kChunk bytes: the copy engines of many SMs issue the
// requests (one SM's alone would not keep HBM busy), one warp per block so that the
// launch takes almost nothing from the kernels running beside it.
constexpr size_t kChunk = 16 * 1024;
constexpr int kThreads = 32;

__global__ void __launch_bounds__(kThreads) prefetch_l2_kernel(const char* p, size_t bytes) {
  allow_dependent_launch();
  const size_t at = (size_t(blockIdx.x) * kThreads + threadIdx.x) * kChunk;
  if (at < bytes) {
    const uint32_t n = uint32_t(bytes - at < kChunk ? bytes - at : kChunk);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + at), "r"(n) : "memory");
  }
  // Every programmatic dependent waits before it completes: the kernel after this one
  // relies on its wait covering everything issued before (dependent_launch.h).
  wait_for_previous_kernel();
}

}  // namespace

void prefetch_to_l2(const GpuContext& ctx, const void* p, size_t bytes) {
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + 15) & ~uintptr_t(15);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~uintptr_t(15);
  if (p == nullptr || end <= begin) return;
  const size_t n = end - begin;
  const size_t blocks = (n + kChunk * kThreads - 1) / (kChunk * kThreads);
  launch_dependent(ctx, prefetch_l2_kernel, dim3(unsigned(blocks)), dim3(kThreads), 0,
                   reinterpret_cast<const char*>(begin), n);
  DSQ_CUDA_CHECK_LAUNCH();
}

}  // namespace dsq::cuda
