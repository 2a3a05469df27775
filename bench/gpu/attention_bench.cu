// dsq_attention_bench: decode-step (S = 1) time of CudaOps' attention ops on
// DeepSeek-V4-Flash shapes (64 heads, head dim 512, window 128, CSA m = 4 with top-512,
// HCA m = 128, indexer 64 × 128) at 8k and 64k tokens of context, per layer kind:
//   sink_attention (sliding, CSA, HCA): keys read per step (window ring + new key +
//     compressed entries) over the time, next to the device-to-device copy bandwidth
//     measured in the same run;
//   the CSA indexer (indexer_scores + indexer_topk over all entries);
//   the per-op latency of the small decode ops: compress (a step that closes a window,
//     and one that only stores its rows in the rings), update_window, indexer_topk alone;
// and, for reference, one 4096-token prefill chunk of sink_attention per layer kind.
// Every call reads another layer's copy of the state, and the copies together exceed
// the L2 several times, so keys come from memory as in a real decode step. Times are
// the median of repeats of 64 back-to-back calls, eager and replayed from a CUDA graph.
//
// Usage: dsq_attention_bench   (prints a markdown table)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/rope.h"
#include "backend/cuda/cuda_ops.h"
#include "bench/gpu/copy_bandwidth.h"
#include "bench/gpu/kernel_timer.h"

namespace dsq::cuda {
namespace {

using bench::KernelTimer;
using bench::Times;

constexpr int64_t kHeads = 64, kDim = 512, kWindow = 128, kCsaRate = 4, kHcaRate = 128, kTopk = 512;
constexpr int64_t kIndexHeads = 64, kIndexDim = 128;
constexpr size_t kStateBytes = size_t(384) << 20;  // all copies of a layer's state: ~7x the H100's L2
constexpr int kBatch = 64;

__global__ void fill_kernel(float* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    p[i] = float(uint32_t(z ^ (z >> 31)) & 0xFFFF) / 32768.0f - 1.0f;  // uniform in [−1, 1)
  }
}

DeviceBuffer<float> random_buffer(size_t n, uint32_t seed) {
  DeviceBuffer<float> b(n);
  fill_kernel<<<1024, 256>>>(b.get(), n, seed);
  DSQ_CUDA_CHECK_LAUNCH();
  DSQ_CUDA_CHECK(cudaDeviceSynchronize());  // the ops' stream does not wait for the default stream
  return b;
}

// Seconds per call of call(i), i = call index: eager, and replayed from a CUDA graph.
Times measure(CudaOps& ops, KernelTimer& timer, const std::function<void(int)>& call) {
  return timer.measure(ops.context(), call, kBatch, true);
}

// One layer's decode state at context `ctx` (the new token at position ctx − 1).
struct LayerState {
  DeviceBuffer<float> q, new_key, ring, entries;
  DeviceBuffer<int64_t> selected;
};

enum class Kind { Sliding, CSA, HCA };

void bench_attention(CudaOps& ops, KernelTimer& timer, Kind kind, int64_t ctx, double copy_bps) {
  const int64_t p0 = ctx - 1, rate = kind == Kind::CSA ? kCsaRate : kHcaRate;
  const int64_t n_entries = kind == Kind::Sliding ? 0 : ctx / rate;
  const int64_t n_selected = kind == Kind::CSA ? std::min(kTopk, n_entries) : kind == Kind::HCA ? n_entries : 0;
  const int64_t keys = kWindow + n_selected;
  const size_t state_bytes = sizeof(float) * size_t((kHeads + 1 + kWindow - 1 + n_entries) * kDim);
  const int copies = int(std::clamp<size_t>(kStateBytes / state_bytes, 4, 2048));
  std::mt19937 rng(5);
  std::vector<LayerState> layers;
  for (int c = 0; c < copies; ++c) {
    LayerState s;
    s.q = random_buffer(size_t(kHeads * kDim), 10 + c);
    s.new_key = random_buffer(size_t(kDim), 20 + c);
    s.ring = random_buffer(size_t((kWindow - 1) * kDim), 30 + c);
    s.entries = random_buffer(size_t(std::max<int64_t>(n_entries, 1) * kDim), 40 + c);
    std::vector<int64_t> pick(size_t(std::max<int64_t>(n_entries, 1)));
    std::iota(pick.begin(), pick.end(), int64_t(0));
    std::shuffle(pick.begin(), pick.end(), rng);
    pick.resize(size_t(kTopk), -1);
    s.selected = DeviceBuffer<int64_t>::from_host(pick);
    layers.push_back(std::move(s));
  }
  DeviceBuffer<float> sinks = random_buffer(size_t(kHeads), 3), out(size_t(kHeads * kDim));
  const backend::EntrySelection selection = kind == Kind::Sliding ? backend::EntrySelection::None
                                            : kind == Kind::CSA   ? backend::EntrySelection::Selected
                                                                  : backend::EntrySelection::AllVisible;
  const float scale = 1.0f / std::sqrt(float(kDim));
  const cpu::RopeFrequencies output_rope = cpu::rope_frequencies(64, 10000.0);  // as the model: output turned back
  const Times t = measure(ops, timer, [&](int i) {
    const LayerState& s = layers[size_t(i % copies)];
    ops.sink_attention(s.q.get(), 1, kHeads, kDim, s.new_key.get(), s.ring.get(), p0, kWindow, selection,
                       s.entries.get(), n_entries, rate, s.selected.get(), kTopk, sinks.get(), scale, &output_rope,
                       out.get());
  });
  const double key_bytes = double(keys * kDim) * sizeof(float);
  const char* name = kind == Kind::Sliding ? "sliding" : kind == Kind::CSA ? "CSA top-512" : "HCA";
  std::printf("| sink_attention %s | %lldk | %lld | %.2f | %.1f | %.1f | %.0f | %.1f%% |\n", name,
              (long long)(ctx / 1024), (long long)keys, key_bytes / 1e6, t.eager * 1e6, t.graph * 1e6,
              key_bytes / t.graph / 1e9, 100.0 * key_bytes / t.graph / copy_bps);
}

void bench_indexer(CudaOps& ops, KernelTimer& timer, int64_t ctx, double copy_bps) {
  const int64_t p0 = ctx - 1, n_keys = ctx / kCsaRate;
  const size_t state_bytes = sizeof(float) * size_t(n_keys * kIndexDim);
  const int copies = int(std::clamp<size_t>(kStateBytes / state_bytes, 4, 2048));
  std::vector<DeviceBuffer<float>> keys;
  for (int c = 0; c < copies; ++c) keys.push_back(random_buffer(size_t(n_keys * kIndexDim), 50 + c));
  DeviceBuffer<float> q = random_buffer(size_t(kIndexHeads * kIndexDim), 4), w = random_buffer(size_t(kIndexHeads), 5);
  DeviceBuffer<float> scores(static_cast<size_t>(n_keys));
  DeviceBuffer<int64_t> selected(static_cast<size_t>(kTopk));
  const Times t = measure(ops, timer, [&](int i) {
    ops.indexer_scores(q.get(), w.get(), 1, kIndexHeads, kIndexDim, keys[size_t(i % copies)].get(), n_keys,
                       scores.get());
    ops.indexer_topk(scores.get(), 1, n_keys, kTopk, p0, kCsaRate, selected.get());
  });
  const Times scores_only = measure(ops, timer, [&](int i) {
    ops.indexer_scores(q.get(), w.get(), 1, kIndexHeads, kIndexDim, keys[size_t(i % copies)].get(), n_keys,
                       scores.get());
  });
  const double key_bytes = double(state_bytes);
  std::printf("| indexer scores + top-512 | %lldk | %lld | %.2f | %.1f | %.1f | %.0f | %.1f%% |\n",
              (long long)(ctx / 1024), (long long)n_keys, key_bytes / 1e6, t.eager * 1e6, t.graph * 1e6,
              key_bytes / t.graph / 1e9, 100.0 * key_bytes / t.graph / copy_bps);
  std::printf("| indexer scores only | %lldk | %lld | %.2f | %.1f | %.1f | %.0f | %.1f%% |\n",
              (long long)(ctx / 1024), (long long)n_keys, key_bytes / 1e6, scores_only.eager * 1e6,
              scores_only.graph * 1e6, key_bytes / scores_only.graph / 1e9,
              100.0 * key_bytes / scores_only.graph / copy_bps);
}

// One compressor (V4-Flash: CSA 512 wide with overlap at m = 4, its indexer's 128 wide,
// HCA 512 at m = 128) taking the decode step's row at position p0 = ctx − 1 (closes a
// window) or ctx − 2 (rows only stored in the rings). Each call uses another layer's rings.
void bench_compress(CudaOps& ops, KernelTimer& timer, const char* name, int64_t width, int64_t rate, bool overlap,
                    int64_t ctx, bool closes) {
  const int64_t raw = overlap ? 2 * width : width, p0 = closes ? ctx - 1 : ctx - 2;
  constexpr int kCopies = 64;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> uniform(-0.5f, 0.5f);
  std::vector<float> ape(static_cast<size_t>(rate * raw)), norm(static_cast<size_t>(width));
  for (float& x : ape) x = uniform(rng);
  for (float& x : norm) x = 1.0f + 0.1f * uniform(rng);
  const cpu::YarnScaling yarn{16.0, 65536, 32.0, 1.0};
  const cpu::RopeFrequencies rope = cpu::rope_frequencies(64, 160000.0, &yarn);
  const backend::CompressorParams params{&ape, &norm, rate, width, overlap, 1e-6f, &rope};
  std::vector<DeviceBuffer<float>> ring_kv, ring_gate, kv, gate;
  for (int c = 0; c < kCopies; ++c) {
    ring_kv.push_back(random_buffer(size_t(2 * rate * raw), 60 + c));
    ring_gate.push_back(random_buffer(size_t(2 * rate * raw), 160 + c));
    kv.push_back(random_buffer(size_t(raw), 260 + c));
    gate.push_back(random_buffer(size_t(raw), 360 + c));
  }
  DeviceBuffer<float> entries(size_t((ctx / rate + 1) * width));
  const Times t = measure(ops, timer, [&](int i) {
    const size_t c = size_t(i % kCopies);
    ops.compress(params, ring_kv[c].get(), ring_gate[c].get(), entries.get(), kv[c].get(), gate[c].get(), p0, 1);
  });
  std::printf("| compress %s, %s | %lldk | %.1f | %.1f |\n", name, closes ? "closes a window" : "ring store only",
              (long long)(ctx / 1024), t.eager * 1e6, t.graph * 1e6);
}

// update_window of the decode step (one 512-wide row into the window ring), per layer.
void bench_update_window(CudaOps& ops, KernelTimer& timer, int64_t ctx) {
  constexpr int kCopies = 64;
  std::vector<DeviceBuffer<float>> rings, keys;
  for (int c = 0; c < kCopies; ++c) {
    rings.push_back(random_buffer(size_t((kWindow - 1) * kDim), 70 + c));
    keys.push_back(random_buffer(size_t(kDim), 170 + c));
  }
  const Times t = measure(ops, timer, [&](int i) {
    ops.update_window(rings[size_t(i % kCopies)].get(), keys[size_t(i % kCopies)].get(), ctx - 1, 1, kDim, kWindow);
  });
  std::printf("| update_window | %lldk | %.1f | %.1f |\n", (long long)(ctx / 1024), t.eager * 1e6, t.graph * 1e6);
}

// indexer_topk alone (top-512 of ctx / 4 scores; each call ranks another row of scores).
void bench_topk(CudaOps& ops, KernelTimer& timer, int64_t ctx) {
  const int64_t p0 = ctx - 1, n_keys = ctx / kCsaRate;
  constexpr int kCopies = 16;
  std::vector<DeviceBuffer<float>> scores;
  for (int c = 0; c < kCopies; ++c) scores.push_back(random_buffer(size_t(n_keys), 80 + c));
  DeviceBuffer<int64_t> selected(static_cast<size_t>(kTopk));
  const Times t = measure(ops, timer, [&](int i) {
    ops.indexer_topk(scores[size_t(i % kCopies)].get(), 1, n_keys, kTopk, p0, kCsaRate, selected.get());
  });
  std::printf("| indexer_topk (top-512 of %lld) | %lldk | %.1f | %.1f |\n", (long long)n_keys,
              (long long)(ctx / 1024), t.eager * 1e6, t.graph * 1e6);
}

// A prefill chunk of S tokens at positions p0 … p0+S−1 (one copy of the state: a chunk
// this size is compute-bound): time per chunk and per token.
void bench_prefill(CudaOps& ops, KernelTimer& timer, Kind kind, int64_t p0, int64_t S) {
  const int64_t rate = kind == Kind::CSA ? kCsaRate : kHcaRate;
  const int64_t n_entries = kind == Kind::Sliding ? 0 : (p0 + S) / rate;
  DeviceBuffer<float> q = random_buffer(size_t(S * kHeads * kDim), 6), new_keys = random_buffer(size_t(S * kDim), 7);
  DeviceBuffer<float> ring = random_buffer(size_t((kWindow - 1) * kDim), 8);
  DeviceBuffer<float> entries = random_buffer(size_t(std::max<int64_t>(n_entries, 1) * kDim), 9);
  DeviceBuffer<float> sinks = random_buffer(size_t(kHeads), 3), out(size_t(S * kHeads * kDim));
  std::mt19937 rng(5);
  std::vector<int64_t> picks(size_t(S * kTopk), -1);
  for (int64_t i = 0; i < S; ++i) {
    const int64_t visible = std::min(n_entries, (p0 + i + 1) / rate);
    for (int64_t j = 0; j < std::min(kTopk, visible); ++j) picks[size_t(i * kTopk + j)] = int64_t(rng() % visible);
  }
  DeviceBuffer<int64_t> selected = DeviceBuffer<int64_t>::from_host(picks);
  const backend::EntrySelection selection = kind == Kind::Sliding ? backend::EntrySelection::None
                                            : kind == Kind::CSA   ? backend::EntrySelection::Selected
                                                                  : backend::EntrySelection::AllVisible;
  const cpu::RopeFrequencies output_rope = cpu::rope_frequencies(64, 10000.0);  // as the model: output turned back
  const double sec = timer.seconds(ops.context(), [&](int) {
    ops.sink_attention(q.get(), S, kHeads, kDim, new_keys.get(), ring.get(), p0, kWindow, selection, entries.get(),
                       n_entries, rate, selected.get(), kTopk, sinks.get(), 1.0f / std::sqrt(float(kDim)),
                       &output_rope, out.get());
  }, 1, 3);
  const char* name = kind == Kind::Sliding ? "sliding" : kind == Kind::CSA ? "CSA top-512" : "HCA";
  std::printf("| sink_attention %s | %lld | %lld | %.0f | %.2f |\n", name, (long long)p0, (long long)S, sec * 1e6,
              sec * 1e6 / double(S));
}

int run() {
  if (!gpu_available()) {
    std::printf("no GPU: nothing to benchmark\n");
    return 0;
  }
  CudaOps ops(Precision::Fast);
  KernelTimer timer;
  cudaDeviceProp prop{};
  DSQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copy_bps = bench::copy_bandwidth(ops.context().stream());
  std::printf("Device: %s, %d SMs, %.0f MB L2; device-to-device copy %.0f GB/s (read+write)\n\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize / 1e6, copy_bps / 1e9);
  std::printf("Decode (S = 1), V4-Flash shapes. Keys: rows read per step; achieved = key bytes / graph time.\n\n");
  std::printf("| op | context | keys | key MB | eager (us) | graph (us) | achieved GB/s | of copy |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int64_t ctx : {int64_t(8192), int64_t(65536)}) {
    for (Kind kind : {Kind::Sliding, Kind::CSA, Kind::HCA}) bench_attention(ops, timer, kind, ctx, copy_bps);
    bench_indexer(ops, timer, ctx, copy_bps);
  }
  std::printf("\nDecode (S = 1), per-op latency of the small ops.\n\n| op | context | eager (us) | graph (us) |\n"
              "|---|---:|---:|---:|\n");
  for (bool closes : {true, false}) {
    bench_compress(ops, timer, "CSA 512, m = 4", 512, kCsaRate, true, 8192, closes);
    bench_compress(ops, timer, "indexer 128, m = 4", kIndexDim, kCsaRate, true, 8192, closes);
    bench_compress(ops, timer, "HCA 512, m = 128", 512, kHcaRate, false, 8192, closes);
  }
  bench_update_window(ops, timer, 8192);
  for (int64_t ctx : {int64_t(8192), int64_t(65536)}) bench_topk(ops, timer, ctx);
  std::printf("\nPrefill chunk, V4-Flash shapes (eager, median of 3).\n\n| op | p0 | S | time (us) | per token (us) |\n"
              "|---|---:|---:|---:|---:|\n");
  for (Kind kind : {Kind::Sliding, Kind::CSA, Kind::HCA}) bench_prefill(ops, timer, kind, 4096, 4096);
  return 0;
}

}  // namespace
}  // namespace dsq::cuda

int main() {
  try {
    return dsq::cuda::run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsq_attention_bench: %s\n", e.what());
    return 1;
  }
}
