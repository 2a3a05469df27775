// GPU time per call of a benchmarked launch sequence, by CUDA events: the median over
// repeated batches of calls after one warm-up batch, launched directly or captured once
// into a CUDA graph and replayed (the GPU-side time without host launch cost, as an engine
// that replays its decode graphs sees it). Shared by the GPU benchmarks.
#pragma once

#include <algorithm>
#include <functional>
#include <vector>

#include "backend/cuda/gpu_context.h"

namespace dsq::bench {

// Seconds per call; graph = 0 where the replayed time was not measured.
struct Times {
  double eager, graph;
};

class KernelTimer {
 public:
  KernelTimer() {
    DSQ_CUDA_CHECK(cudaEventCreate(&start_));
    DSQ_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~KernelTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  KernelTimer(const KernelTimer&) = delete;
  KernelTimer& operator=(const KernelTimer&) = delete;

  // call(i) gets the call index (for rotating inputs); a batch is `batch` calls. `before`
  // (optional) runs ahead of each timed batch, outside the timing: e.g. work that leaves
  // the caches as the batch should find them.
  double seconds(const cuda::GpuContext& ctx, const std::function<void(int)>& call, int batch, int repeats = 5,
                 const std::function<void()>& before = nullptr) {
    for (int i = 0; i < batch; ++i) call(i);
    ctx.synchronize();
    std::vector<double> t;
    for (int r = 0; r < repeats; ++r) {
      if (before) before();
      DSQ_CUDA_CHECK(cudaEventRecord(start_, ctx.stream()));
      for (int i = 0; i < batch; ++i) call(r * batch + i);
      t.push_back(elapsed(ctx) / batch);
    }
    return median(t);
  }

  // The batch captured once (capture `mode`: thread-local refuses calls that are unsafe
  // during a capture, relaxed lets libraries that set attributes run) and replayed.
  double graph_seconds(const cuda::GpuContext& ctx, const std::function<void(int)>& call, int batch,
                       int repeats = 5, cudaStreamCaptureMode mode = cudaStreamCaptureModeThreadLocal) {
    for (int i = 0; i < batch; ++i) call(i);  // warm-up: plans, attributes, handles
    ctx.synchronize();
    cudaGraph_t graph;
    DSQ_CUDA_CHECK(cudaStreamBeginCapture(ctx.stream(), mode));
    for (int i = 0; i < batch; ++i) call(i);
    DSQ_CUDA_CHECK(cudaStreamEndCapture(ctx.stream(), &graph));
    cudaGraphExec_t exec;
    DSQ_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    DSQ_CUDA_CHECK(cudaGraphLaunch(exec, ctx.stream()));
    ctx.synchronize();
    std::vector<double> t;
    for (int r = 0; r < repeats; ++r) {
      DSQ_CUDA_CHECK(cudaEventRecord(start_, ctx.stream()));
      DSQ_CUDA_CHECK(cudaGraphLaunch(exec, ctx.stream()));
      t.push_back(elapsed(ctx) / batch);
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return median(t);
  }

  // Eager time, and the replayed time when `graph` (decode rows; prefill rows are long
  // enough that launch cost does not show).
  Times measure(const cuda::GpuContext& ctx, const std::function<void(int)>& call, int batch, bool graph,
                cudaStreamCaptureMode mode = cudaStreamCaptureModeThreadLocal) {
    Times t{seconds(ctx, call, batch), 0.0};
    if (graph) t.graph = graph_seconds(ctx, call, batch, 5, mode);
    return t;
  }

 private:
  double elapsed(const cuda::GpuContext& ctx) {
    DSQ_CUDA_CHECK(cudaEventRecord(stop_, ctx.stream()));
    DSQ_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    DSQ_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms * 1e-3;
  }
  static double median(std::vector<double> t) {
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace dsq::bench
