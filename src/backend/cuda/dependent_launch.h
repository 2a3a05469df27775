// Programmatic dependent launch (Hopper): a kernel launched with launch_dependent() may
// be scheduled while the kernel before it in the stream still runs, as soon as every
// block of that one has executed `griddepcontrol.launch_dependents` (or exited). Before
// it touches anything the previous kernel writes or reads, the dependent must execute
// `griddepcontrol.wait`, which returns once the previous grid has completed and its
// memory is visible; work before that point (streaming immutable weights) overlaps the
// previous kernel's tail and this launch's latency. Kernels launched normally, or
// after a non-kernel stream operation, are unaffected; both instructions are no-ops then.
// A context's LaunchInterceptor (gpu_context.h) takes its launches instead of the stream.
#pragma once

#include <utility>

#include "backend/cuda/gpu_context.h"

namespace dsq::cuda {

// Launches kernel<<<grid, block, smem, ctx.stream()>>>(args...) as a programmatic dependent.
template <typename... Params, typename... Args>
void launch_dependent(const GpuContext& ctx, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                      Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = ctx.stream();
  cudaLaunchAttribute dependent{};
  dependent.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  dependent.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &dependent;
  config.numAttrs = 1;
  // The arguments converted to the kernel's parameter types, one pointer each (what
  // cudaLaunchKernelEx does), so that the context's interceptor, if any, can take them.
  [&](Params... coerced) {
    void* pointers[] = {&coerced..., nullptr};
    const void* function = reinterpret_cast<const void*>(kernel);
    if (LaunchInterceptor* interceptor = ctx.launch_interceptor())
      interceptor->launch(config, function, pointers);
    else
      DSQ_CUDA_CHECK(cudaLaunchKernelExC(&config, function, pointers));
  }(std::forward<Args>(args)...);
}

// Device side: let the next kernel (if launched as our dependent) be scheduled now.
__device__ __forceinline__ void allow_dependent_launch() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
// Device side: wait until the previous kernel has completed and its writes are visible.
__device__ __forceinline__ void wait_for_previous_kernel() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

}  // namespace dsq::cuda
