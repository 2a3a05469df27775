// A timeline of the kernels the GPU ran, from CUPTI's activity records: when each kernel
// started and ended, on which stream, and in which CUDA graph. Nsight Systems is not on
// the lent GPU machines and Nsight Compute serializes kernels, so neither shows how a
// replayed decode step's kernels overlap (programmatic dependent launch, the side lane)
// or where the GPU waits; this does, from inside the benchmark.
//
// Recording adds a little time per kernel (CUPTI timestamps each one), so a traced step
// is somewhat slower than an untraced one: read the trace for structure (order, overlap,
// gaps, which kernel is long), and take step times from untraced runs. Recording starts
// before the work of interest is first seen, so that kernels of CUDA graphs captured
// later are recorded too; the window of interest is then cut out by time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsq::bench {

struct KernelRecord {
  std::string name;  // demangled
  uint32_t stream = 0;
  uint32_t graph = 0;  // 0: launched directly
  uint64_t start_ns = 0, end_ns = 0;
  int grid[3] = {}, block[3] = {};
};

// Records every kernel from start() on. One trace at a time per process.
class KernelTrace {
 public:
  void start();
  // The records' clock.
  static uint64_t now_ns();
  // Waits for the device, stops recording and returns the kernels that started in
  // [from_ns, to_ns), in start order.
  std::vector<KernelRecord> stop(uint64_t from_ns, uint64_t to_ns);
};

// CSV: name, stream, graph, start and end in µs from the first kernel's start, grid, block.
void write_kernel_trace_csv(const std::vector<KernelRecord>& records, const std::string& path);

}  // namespace dsq::bench
