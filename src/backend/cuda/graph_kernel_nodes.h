// The kernel nodes that some launches became in a captured CUDA graph, and their later
// re-parameterisation. GraphReplayOps (graph_replay_ops.h) captures the stateful
// attention ops with the rest of a segment: their kernels take the sequence position and
// the entry counts from the host, so at each replay the ops run again with a
// KernelNodeUpdater as the launch interceptor, and each launch becomes an update of the
// node it made at capture (its arguments, grid and shared memory; the kernel must be the
// same one). A replay whose launches differ from the captured ones (another kernel,
// another count: a top-k kernel chosen for a longer row, a split attention that no
// longer needs its combine) is reported, and the segment is captured again.
#pragma once

#include <string>
#include <vector>

#include "backend/cuda/gpu_context.h"

namespace dsq::cuda {

struct CapturedLaunch {
  cudaGraphNode_t node;
  const void* kernel;
};

// During a stream capture: launches as usual and appends the node each launch made.
class KernelNodeRecorder final : public LaunchInterceptor {
 public:
  explicit KernelNodeRecorder(std::vector<CapturedLaunch>& out) : out_(out) {}
  void launch(const cudaLaunchConfig_t& config, const void* kernel, void** args) override;

 private:
  std::vector<CapturedLaunch>& out_;
};

// At a replay: the i-th launch sets the parameters of the i-th recorded node of `exec`.
class KernelNodeUpdater final : public LaunchInterceptor {
 public:
  KernelNodeUpdater(cudaGraphExec_t exec, const std::vector<CapturedLaunch>& nodes) : exec_(exec), nodes_(nodes) {}
  void launch(const cudaLaunchConfig_t& config, const void* kernel, void** args) override;
  // Every recorded node was updated, by a launch of its own kernel, and nothing else.
  bool matched() const { return mismatch_.empty() && next_ == nodes_.size(); }
  // Why not, for DSQ_GRAPH_TRACE (empty when matched).
  std::string mismatch() const;

 private:
  cudaGraphExec_t exec_;
  const std::vector<CapturedLaunch>& nodes_;
  size_t next_ = 0;
  std::string mismatch_;  // the first launch that did not match, described
};

}  // namespace dsq::cuda
