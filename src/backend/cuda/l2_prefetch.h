// Loading weights into the L2 cache ahead of the kernel that reads them, so that a
// stretch of latency-bound work (the attention state, the mHC mixing) also moves the
// next weights: the kernel that streams them then reads most of them from L2.
#pragma once

#include <cstddef>

#include "backend/cuda/gpu_context.h"

namespace dsq::cuda {

// Launches, as a programmatic dependent (dependent_launch.h), a kernel that asks the L2
// cache to load [p, p + bytes) and finishes without waiting for the data. p and bytes
// are rounded inward to 16 bytes (the bulk prefetch's unit). A hint: results never
// depend on it.
void prefetch_to_l2(const GpuContext& ctx, const void* p, size_t bytes);

}  // namespace dsq::cuda
