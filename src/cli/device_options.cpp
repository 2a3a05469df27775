#include "cli/device_options.h"

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#ifdef DSQ_WITH_CUDA
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/graph_replay_ops.h"
#endif

namespace dsq::cli {

void add_device_options(CLI::App* cmd, DeviceOptions* opt) {
  cmd->add_option("--device", opt->device, "Where the model runs: cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--precision", opt->precision,
                  "cuda linear-layer inputs: fast (bf16/fp8, serving) or f32 (exact, for checking)")
      ->check(CLI::IsMember({"fast", "f32"}));
  cmd->add_flag("!--no-cuda-graphs", opt->cuda_graphs,
                "cuda: launch every kernel directly instead of replaying repeated work as CUDA graphs");
}

std::shared_ptr<backend::Ops> make_ops(const DeviceOptions& opt) {
  if (opt.device == "cpu") return std::make_shared<cpu::CpuOps>();
#ifdef DSQ_WITH_CUDA
  DSQ_CHECK(cuda::gpu_available(), "--device cuda: no usable CUDA GPU on this machine");
  auto ops = std::make_shared<cuda::CudaOps>(opt.precision == "f32" ? cuda::Precision::F32 : cuda::Precision::Fast);
  if (!opt.cuda_graphs) return ops;
  return std::make_shared<cuda::GraphReplayOps>(std::move(ops));
#else
  throw error("--device cuda: this dsq was built without the CUDA backend (no nvcc at build time)");
#endif
}

}  // namespace dsq::cli
