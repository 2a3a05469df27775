// KernelTrace over CUPTI's activity API: CUPTI asks for record buffers, fills them with
// one record per kernel as kernels complete, and hands each full (or flushed) buffer back;
// the records are copied out of it there. Those callbacks are plain C functions, hence the
// one collector per process.
#include "bench/gpu/kernel_trace.h"

#include <cupti.h>
#include <cuda_runtime.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>

#include "core/atomic_file.h"
#include "core/error.h"

namespace dsq::bench {

namespace {

void check_cupti(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  throw error("CUPTI: ", what, ": ", text ? text : "unknown error");
}

std::string demangle(const char* name) {
  if (!name) return "?";
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> plain(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  return status == 0 && plain ? std::string(plain.get()) : std::string(name);
}

std::mutex g_mutex;
std::vector<KernelRecord> g_records;

constexpr size_t kBufferBytes = size_t(8) << 20;
constexpr size_t kBufferAlign = 8;  // CUPTI's requirement for record buffers

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(kBufferAlign, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(g_mutex);
  CUpti_Activity* record = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
    KernelRecord r;
    r.name = demangle(k->name);
    r.stream = k->streamId;
    r.graph = k->graphId;
    r.start_ns = k->start;
    r.end_ns = k->end;
    r.grid[0] = k->gridX, r.grid[1] = k->gridY, r.grid[2] = k->gridZ;
    r.block[0] = k->blockX, r.block[1] = k->blockY, r.block[2] = k->blockZ;
    g_records.push_back(std::move(r));
  }
  std::free(buffer);
}

}  // namespace

void KernelTrace::start() {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_records.clear();
  }
  check_cupti(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "register callbacks");
  check_cupti(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernel records");
}

uint64_t KernelTrace::now_ns() {
  uint64_t t = 0;
  check_cupti(cuptiGetTimestamp(&t), "timestamp");
  return t;
}

std::vector<KernelRecord> KernelTrace::stop(uint64_t from_ns, uint64_t to_ns) {
  DSQ_CHECK(cudaDeviceSynchronize() == cudaSuccess, "KernelTrace: the device failed before the trace ended");
  check_cupti(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "flush");
  check_cupti(cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "disable kernel records");
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<KernelRecord> records;
  for (KernelRecord& r : g_records)
    if (r.start_ns >= from_ns && r.start_ns < to_ns) records.push_back(std::move(r));
  g_records.clear();
  std::sort(records.begin(), records.end(),
            [](const KernelRecord& a, const KernelRecord& b) { return a.start_ns < b.start_ns; });
  return records;
}

void write_kernel_trace_csv(const std::vector<KernelRecord>& records, const std::string& path) {
  const uint64_t t0 = records.empty() ? 0 : records.front().start_ns;
  std::string csv = "name,stream,graph,start_us,end_us,grid_x,grid_y,grid_z,block_x,block_y,block_z\n";
  char line[160];
  for (const KernelRecord& r : records) {
    std::string name = r.name;
    std::replace(name.begin(), name.end(), ',', ';');  // template argument lists
    std::replace(name.begin(), name.end(), '"', '\'');
    std::snprintf(line, sizeof line, ",%u,%u,%.3f,%.3f,%d,%d,%d,%d,%d,%d\n", r.stream, r.graph,
                  double(r.start_ns - t0) / 1e3, double(r.end_ns - t0) / 1e3, r.grid[0], r.grid[1], r.grid[2],
                  r.block[0], r.block[1], r.block[2]);
    csv += "\"" + name + "\"" + line;
  }
  write_file_atomically(path, csv);
}

}  // namespace dsq::bench
