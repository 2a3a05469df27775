// The memory limit every GPU benchmark prints its results against: device-to-device
// copy bandwidth, counted as bytes read plus bytes written, measured in the same run as
// the results. One definition, so the GEMM, attention and whole-model benchmarks divide
// by the same kind of number.
#pragma once

#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"

namespace dsq::bench {

// Copies 1 GiB on `stream`: one warm-up copy, then the median of 5 timed ones.
inline double copy_bandwidth(cudaStream_t stream) {
  const size_t bytes = size_t(1) << 30;
  cuda::DeviceBuffer<unsigned char> src(bytes), dst(bytes);
  DSQ_CUDA_CHECK(cudaMemsetAsync(src.get(), 1, bytes, stream));
  cudaEvent_t start, stop;
  DSQ_CUDA_CHECK(cudaEventCreate(&start));
  DSQ_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int i = 0; i < 6; ++i) {
    DSQ_CUDA_CHECK(cudaEventRecord(start, stream));
    DSQ_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, stream));
    DSQ_CUDA_CHECK(cudaEventRecord(stop, stream));
    DSQ_CUDA_CHECK(cudaEventSynchronize(stop));
    float t = 0;
    DSQ_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    if (i > 0) ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return 2.0 * double(bytes) / (double(ms[ms.size() / 2]) * 1e-3);
}

}  // namespace dsq::bench
