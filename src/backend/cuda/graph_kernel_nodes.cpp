// Recording and updating a captured graph's kernel nodes (graph_kernel_nodes.h).
#include "backend/cuda/graph_kernel_nodes.h"

#include "backend/cuda/cuda_check.h"

namespace dsq::cuda {

void KernelNodeRecorder::launch(const cudaLaunchConfig_t& config, const void* kernel, void** args) {
  DSQ_CUDA_CHECK(cudaLaunchKernelExC(&config, kernel, args));
  // Right after a captured kernel launch the stream's only dependency is its node.
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaGraphNode_t* leaves = nullptr;
  size_t n_leaves = 0;
  DSQ_CUDA_CHECK(cudaStreamGetCaptureInfo(config.stream, &status, nullptr, nullptr, &leaves, nullptr, &n_leaves));
  DSQ_CHECK(status == cudaStreamCaptureStatusActive && n_leaves == 1,
            "a recorded launch is not a single node of an active capture");
  out_.push_back({leaves[0], kernel});
}

void KernelNodeUpdater::launch(const cudaLaunchConfig_t& config, const void* kernel, void** args) {
  const size_t i = next_++;
  if (!mismatch_.empty()) return;
  if (i >= nodes_.size()) {
    mismatch_ = "launch " + std::to_string(i) + " has no node (" + std::to_string(nodes_.size()) + " captured)";
    return;
  }
  if (nodes_[i].kernel != kernel) {
    mismatch_ = "launch " + std::to_string(i) + " runs another kernel than its node";
    return;
  }
  cudaKernelNodeParams params{};
  params.func = const_cast<void*>(kernel);
  params.gridDim = config.gridDim;
  params.blockDim = config.blockDim;
  params.sharedMemBytes = unsigned(config.dynamicSmemBytes);
  params.kernelParams = args;
  const cudaError_t set = cudaGraphExecKernelNodeSetParams(exec_, nodes_[i].node, &params);
  if (set != cudaSuccess) {
    cudaGetLastError();  // a refused update is a mismatch: the caller captures again
    mismatch_ = "launch " + std::to_string(i) + ": " + cudaGetErrorString(set);
  }
}

std::string KernelNodeUpdater::mismatch() const {
  if (!mismatch_.empty()) return mismatch_;
  if (next_ != nodes_.size())
    return std::to_string(next_) + " launches for " + std::to_string(nodes_.size()) + " captured nodes";
  return "";
}

}  // namespace dsq::cuda
