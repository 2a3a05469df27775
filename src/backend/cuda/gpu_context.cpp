// GpuContext: stream, cuBLAS/cuBLASLt handles and workspace (see gpu_context.h).
#include "backend/cuda/gpu_context.h"

namespace dsq::cuda {

// cuBLASLt's recommendation for Hopper is 32 MiB of workspace.
constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;

bool gpu_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return count > 0;
}

GpuContext::GpuContext(StreamPriority priority) {
  int device = 0;
  DSQ_CUDA_CHECK(cudaGetDevice(&device));
  DSQ_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device));
  int least = 0, greatest = 0;
  DSQ_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  DSQ_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking,
                                              priority == StreamPriority::High ? greatest : least));
  DSQ_CUBLAS_CHECK(cublasCreate(&blas_));
  DSQ_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
  DSQ_CUBLAS_CHECK(cublasLtCreate(&blas_lt_));
  workspace_ = DeviceBuffer<unsigned char>(kLtWorkspaceBytes);
  DSQ_CUBLAS_CHECK(cublasSetWorkspace(blas_, workspace_.get(), workspace_.bytes()));
}

GpuContext::~GpuContext() {
  if (blas_lt_) cublasLtDestroy(blas_lt_);
  if (blas_) cublasDestroy(blas_);
  if (stream_) cudaStreamDestroy(stream_);
}

}  // namespace dsq::cuda
