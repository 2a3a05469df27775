// GpuContext: what every CUDA op of dsq runs with — one stream, the cuBLAS and cuBLASLt
// handles bound to it, and the cuBLASLt workspace. Create one per device and thread.
//
// gpu_available() answers, without throwing, whether a usable CUDA device is present;
// tests and tools ask it first so that a machine without a GPU skips cleanly.
//
// A LaunchInterceptor set on a context takes every launch_dependent() of that context
// instead of the stream (graph_kernel_nodes.h: GraphReplayOps records which graph node a
// launch became, and later turns the same launches into updates of those nodes).
#pragma once

#include <cstddef>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"

namespace dsq::cuda {

bool gpu_available();

// The scheduling priority of a context's stream: where two streams' kernels compete for
// the SMs, the higher one's blocks are started first.
enum class StreamPriority { Low, High };

class LaunchInterceptor {
 public:
  virtual ~LaunchInterceptor() = default;
  // A kernel launch as cudaLaunchKernelExC would take it: `args` points at each
  // argument, already converted to the kernel's parameter type.
  virtual void launch(const cudaLaunchConfig_t& config, const void* kernel, void** args) = 0;
};

class GpuContext {
 public:
  explicit GpuContext(StreamPriority priority = StreamPriority::Low);
  ~GpuContext();
  GpuContext(const GpuContext&) = delete;
  GpuContext& operator=(const GpuContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  cublasLtHandle_t blas_lt() const { return blas_lt_; }
  void* workspace() const { return workspace_.get(); }
  size_t workspace_bytes() const { return workspace_.bytes(); }
  int sm_count() const { return sm_count_; }
  LaunchInterceptor* launch_interceptor() const { return interceptor_; }
  void set_launch_interceptor(LaunchInterceptor* interceptor) { interceptor_ = interceptor; }
  void synchronize() const { DSQ_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t blas_lt_ = nullptr;
  DeviceBuffer<unsigned char> workspace_;
  int sm_count_ = 0;
  LaunchInterceptor* interceptor_ = nullptr;
};

}  // namespace dsq::cuda
