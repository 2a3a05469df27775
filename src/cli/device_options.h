// The --device / --precision options of the commands that run the model, and the
// backend::Ops they select: CpuOps, or CudaOps when this build has the CUDA backend.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "backend/ops.h"

namespace dsq::cli {

struct DeviceOptions {
  std::string device = "cpu";       // cpu | cuda
  std::string precision = "fast";   // fast | f32 (cuda only; see backend/cuda/cuda_ops.h)
  bool cuda_graphs = true;          // replay repeating work as CUDA graphs (graph_replay_ops.h)
};

void add_device_options(CLI::App* cmd, DeviceOptions* opt);
// Throws a one-line error for cuda in a build without the CUDA backend or without a GPU.
std::shared_ptr<backend::Ops> make_ops(const DeviceOptions& opt);

}  // namespace dsq::cli
