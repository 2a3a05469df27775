// dsq_memory_bench: how fast the GPU streams a read of weight-sized data, and what
// loading it into the L2 cache first buys. Two tables (bench/results/gpu-memory.md):
//   1. a streaming read (each thread keeps 8 independent 16-byte loads in flight, the
//      pattern of the decode kernels' weight streams) by size and by resident blocks per
//      SM, each next to the device-to-device copy bandwidth measured in the same run;
//   2. one 32 MiB read (about one FP8 attention projection of V4-Flash) from cold, after
//      prefetch_to_l2 (l2_prefetch.h, what the model issues before the attention state)
//      and after a plain read pass.
// Every timed read starts after a 256 MiB read of other data, so nothing of it is left in
// the L2 from the run before. Usage: dsq_memory_bench [--out FILE]
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/gpu_context.h"
#include "backend/cuda/l2_prefetch.h"
#include "bench/gpu/copy_bandwidth.h"
#include "bench/gpu/kernel_timer.h"
#include "bench/gpu/markdown_output.h"
#include "core/atomic_file.h"

namespace {

using dsq::cuda::DeviceBuffer;

constexpr int kThreads = 256, kInFlight = 8;
constexpr size_t kMiB = size_t(1) << 20;

// Reads n 16-byte words with the streaming hint, kInFlight loads per thread per round;
// the xor keeps the loads alive and never matches.
__global__ void __launch_bounds__(kThreads) stream_read(const uint4* p, size_t n, unsigned* sink) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  unsigned acc = 0;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += kInFlight * stride) {
    uint4 v[kInFlight];
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) v[j] = i + j * stride < n ? __ldcs(p + i + j * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// Times streaming reads that start with nothing of their data in the L2: each timed read
// follows a read of 256 MiB of other data and then the caller's `prepare`.
class ColdReads {
 public:
  explicit ColdReads(const dsq::cuda::GpuContext& ctx) : ctx_(ctx), flush_(256 * kMiB), sink_(1) {
    DSQ_CUDA_CHECK(cudaMemsetAsync(flush_.get(), 3, flush_.bytes(), ctx.stream()));
  }

  void read(const unsigned char* p, size_t bytes, int blocks_per_sm) {
    const unsigned grid = unsigned(ctx_.sm_count() * blocks_per_sm);
    stream_read<<<grid, kThreads, 0, ctx_.stream()>>>(reinterpret_cast<const uint4*>(p), bytes / 16, sink_.get());
    DSQ_CUDA_CHECK_LAUNCH();
  }
  // Seconds of one read of [p, p + bytes) with `blocks_per_sm` resident blocks per SM
  // (KernelTimer: the median of 5 after one warm-up).
  double seconds(const unsigned char* p, size_t bytes, int blocks_per_sm, const std::function<void()>& prepare) {
    return timer_.seconds(
        ctx_, [&](int) { read(p, bytes, blocks_per_sm); }, 1, 5,
        [&] {
          read(flush_.get(), flush_.bytes(), 8);
          prepare();
        });
  }

 private:
  const dsq::cuda::GpuContext& ctx_;
  DeviceBuffer<unsigned char> flush_;
  DeviceBuffer<unsigned> sink_;
  dsq::bench::KernelTimer timer_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string out_file;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
      out_file = argv[++i];
    } else {
      std::fprintf(stderr, "dsq_memory_bench: unknown argument %s (usage: [--out FILE])\n", argv[i]);
      return 2;
    }
  }
  try {
    if (!dsq::cuda::gpu_available()) {
      std::printf("no GPU: nothing to benchmark\n");
      return 0;
    }
    dsq::cuda::GpuContext ctx(dsq::cuda::StreamPriority::High);
    cudaDeviceProp prop{};
    DSQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const double copy_bw = dsq::bench::copy_bandwidth(ctx.stream());
    ColdReads reads(ctx);
    DeviceBuffer<unsigned char> data(512 * kMiB);
    DSQ_CUDA_CHECK(cudaMemsetAsync(data.get(), 1, data.bytes(), ctx.stream()));
    dsq::bench::MarkdownOutput md;
    md.emit("Device: %s, %d SMs, L2 %d MiB. Device-to-device copy (read + write) measured in this run: %.0f GB/s\n\n",
            prop.name, prop.multiProcessorCount, prop.l2CacheSize / int(kMiB), copy_bw / 1e9);

    md.emit("Streaming read, cold (%d x 16-byte loads in flight per thread, 256 threads per block):\n\n", kInFlight);
    md.emit("| size | blocks per SM | time | read GB/s | of copy bandwidth |\n|---:|---:|---:|---:|---:|\n");
    for (size_t mib : {8, 32, 128, 512})
      for (int blocks : {2, 4, 8}) {
        const double s = reads.seconds(data.get(), mib * kMiB, blocks, [] {});
        const double bw = double(mib * kMiB) / s;
        md.emit("| %zu MiB | %d | %.2f us | %.0f | %.1f %% |\n", mib, blocks, s * 1e6, bw / 1e9, 100.0 * bw / copy_bw);
      }

    const size_t bytes = 32 * kMiB;
    md.emit("\nOne 32 MiB read (8 blocks per SM) after the L2 was prepared:\n\n");
    md.emit("| before the read | time | read GB/s |\n|---|---:|---:|\n");
    const std::pair<const char*, std::function<void()>> preparations[] = {
        {"nothing (cold)", [] {}},
        {"prefetch_to_l2 of the same bytes (bulk L2 prefetch)",
         [&] { dsq::cuda::prefetch_to_l2(ctx, data.get(), bytes); }},
        {"a plain read pass of the same bytes", [&] { reads.read(data.get(), bytes, 8); }},
    };
    for (const auto& [what, prepare] : preparations) {
      const double s = reads.seconds(data.get(), bytes, 8, prepare);
      md.emit("| %s | %.2f us | %.0f |\n", what, s * 1e6, double(bytes) / s / 1e9);
    }
    if (!out_file.empty()) dsq::write_file_atomically(out_file, md.text());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsq_memory_bench: error: %s\n", e.what());
    return 1;
  }
}
