// dsq_cutlass_bench (opt-in: -DDSQ_BUILD_CUTLASS_BENCH=ON): CUTLASS 4.x's Hopper GEMMs
// against dsq's own kernels on DeepSeek-V4-Flash shapes, same inputs, same run, each next
// to the limit measured in that run:
//   INT4 W4A16 (bf16 x int4, one bf16 scale per 128 inputs, fp32 out): one routed expert
//     (CUTLASS's mixed-input GEMM vs int4_linear()) and the routed experts of a MoE layer,
//     top-6 of 256 (CUTLASS's grouped mixed-input GEMM vs int4_grouped_linear());
//   FP8 block-scaled (1x128 activation scales, 128x128 weight scales, bf16 out):
//     CUTLASS's blockwise-scaling GEMM vs Fp8BlockLinear.
// Decode rows (few tokens) are memory-bound: GB/s vs the device-to-device copy bandwidth,
// weights rotated over > 5x the L2 so that every call reads them from memory, times from
// CUDA-graph replay. Prefill rows: share of the roofline from the same copy bandwidth and
// cuBLAS BF16 (INT4) or cuBLASLt per-tensor FP8 (FP8) at 8192^3. Each row also gives the
// relative L2 difference of the two outputs (CUTLASS against ours), which checks that both
// compute the same product.
//
// Usage: dsq_cutlass_bench [--quick] [--out FILE]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "backend/cuda/bf16_linear.h"
#include "backend/cuda/fp8_block_linear.h"
#include "backend/cuda/gpu_context.h"
#include "backend/cuda/int4_linear.h"
#include "bench/gpu/copy_bandwidth.h"
#include "bench/gpu/gemm_peaks.h"
#include "bench/gpu/kernel_timer.h"
#include "bench/gpu/markdown_output.h"
#include "core/atomic_file.h"
#include "bench/gpu/cutlass/cutlass_gemms.h"

namespace dsq::cuda {
namespace {

namespace cg = dsq::bench::cutlass_gemm;
using bench::bf16_gemm_peak;
using bench::fp8_gemm_peak;
using bench::KernelTimer;
using bench::MarkdownOutput;
using bench::next_random;
using bench::random_bf16;
using bench::random_fp8;
using bench::Times;
using cg::Tile;

constexpr size_t kRotateBytes = size_t(256) << 20;  // ~5x the H100/H200 L2

// ---- timing and output ----

// Eager and (with `graph`) replayed time, captured in relaxed mode as when the CUTLASS
// rows of bench/results/gpu-cutlass.md were measured.
Times measure(const GpuContext& ctx, KernelTimer& tm, const std::function<void(int)>& call, int batch, bool graph) {
  return tm.measure(ctx, call, batch, graph, cudaStreamCaptureModeRelaxed);
}

MarkdownOutput g_out;
// Every CUTLASS configuration's time per row (the table keeps the fastest), printed last.
std::string g_variants;
void note_variant(const std::string& op, int64_t M, const char* label, double seconds) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "| %s | %lld | %s | %.1f |\n", op.c_str(), (long long)M, label, seconds * 1e6);
  g_variants += buf;
}

template <typename T>
std::vector<float> to_host_f32(const T* p, size_t n) {
  std::vector<T> h(n);
  DSQ_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = float(h[i]);
  return f;
}
// ||a - b|| / ||b||
double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += double(a[i] - b[i]) * double(a[i] - b[i]);
    n += double(b[i]) * double(b[i]);
  }
  return std::sqrt(d / std::max(n, 1e-300));
}

// ---- the limits ----

struct Limits {
  double copy_bps, bf16_flops, fp8_flops;
};

// One table row: the better CUTLASS tile (by the time that counts) against ours.
struct Side {
  Times t;
  const char* tile = "";
};
void row(const std::string& op, int64_t M, const Side& cut, const Side& ours, double bytes, double flops,
         const Limits& lim, bool decode, bool fp8, double rel) {
  const double tc = decode ? cut.t.graph : cut.t.eager, to = decode ? ours.t.graph : ours.t.eager;
  // Decode: share of the copy bandwidth. Prefill: share of the roofline, the slower of
  // computing at the GEMM peak and moving the bytes at copy speed (a MoE prefill of a few
  // hundred tokens touches every expert's weights and is bound by memory).
  auto pct = [&](double t) {
    if (decode) return 100.0 * bytes / t / lim.copy_bps;
    return 100.0 * std::max(flops / (fp8 ? lim.fp8_flops : lim.bf16_flops), bytes / lim.copy_bps) / t;
  };
  const char* faster = tc < to ? "CUTLASS" : "ours";
  const double ratio = tc < to ? to / tc : tc / to;
  g_out.emit("| %s | %lld | %s | %.1f | %.1f | %.1f | %.1f | %.1f %% | %.1f %% | %s %.2fx | %.1e |\n", op.c_str(),
       (long long)M, cut.tile, tc * 1e6, to * 1e6, cut.t.eager * 1e6, ours.t.eager * 1e6, pct(tc), pct(to), faster,
       ratio, rel);
}

// The CUTLASS configurations each row tries (the fastest one is reported): in decode the
// 128x16 tile with each way of dividing K over the SMs, and the 128x128 tile; in prefill
// the 128x128 tile and the 128x16 tile as CUTLASS's heuristic schedules it.
struct Variant {
  Tile tile;
  int splits;
  const char* label;
};
std::vector<Variant> variants(bool decode) {
  if (!decode) return {{Tile::Prefill, 0, "128x128"}, {Tile::Decode, 0, "128x16"}};
  return {{Tile::Decode, 0, "128x16 heuristic"}, {Tile::Decode, cg::kStreamK, "128x16 stream-K"},
          {Tile::Decode, 2, "128x16 split-K 2"}, {Tile::Decode, 4, "128x16 split-K 4"},
          {Tile::Decode, 8, "128x16 split-K 8"}, {Tile::Decode, 16, "128x16 split-K 16"},
          {Tile::Prefill, 0, "128x128"}};
}

// ---- INT4 W4A16, one routed expert ----

void bench_int4(const GpuContext& ctx, KernelTimer& tm, const Limits& lim, const char* name, int64_t N, int64_t K,
                const std::vector<int64_t>& Ms, bool decode) {
  const size_t words = size_t(N * K / 8), groups = size_t(N * K / 128);
  const size_t expert_bytes = words * 4 + groups * 2;
  const int E = decode ? int(kRotateBytes / expert_bytes + 1) : 1;
  // One expert's random nibbles and scales, repeated E times (contents do not matter to a
  // cache, addresses do).
  std::vector<int32_t> one(words);
  uint64_t s = 21;
  for (auto& w : one) w = int32_t(next_random(s) >> 32);
  const auto one_scales = random_bf16(groups, 22, 0.01f);
  std::vector<int32_t> packed(words * E);
  std::vector<uint16_t> scales(groups * E);
  std::vector<__nv_bfloat16> scales_t(groups * E);  // CUTLASS: [K/128][N] per expert
  for (int e = 0; e < E; ++e) {
    std::copy(one.begin(), one.end(), packed.begin() + e * words);
    std::memcpy(scales.data() + e * groups, one_scales.data(), groups * 2);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t g = 0; g < K / 128; ++g) scales_t[e * groups + g * N + n] = one_scales[n * (K / 128) + g];
  }
  const Int4ExpertWeights ours(packed.data(), scales.data(), E, N, K, name);
  auto cut_w = DeviceBuffer<int32_t>::from_host(packed);
  cg::int4_prepare_weights(cut_w.get(), E, N, K);
  auto cut_s = DeviceBuffer<__nv_bfloat16>::from_host(scales_t);

  const int64_t maxM = *std::max_element(Ms.begin(), Ms.end());
  auto x = DeviceBuffer<__nv_bfloat16>::from_host(random_bf16(size_t(maxM * K), 23, 1.0f));
  DeviceBuffer<float> y_ours(size_t(maxM * N)), y_cut(size_t(maxM * N));
  DeviceBuffer<__nv_bfloat16> scratch(size_t(N * K));
  const auto cut_expert = [&](int e) { return static_cast<const uint8_t*>(static_cast<void*>(cut_w.get())) + size_t(e) * words * 4; };
  for (int64_t M : Ms) {
    const auto tries = variants(decode);
    size_t ws_bytes = 0;
    for (const Variant& v : tries) ws_bytes = std::max(ws_bytes, cg::int4_workspace_bytes(v.tile, v.splits, M, N, K));
    DeviceBuffer<unsigned char> ws(std::max<size_t>(ws_bytes, 1));
    // Correctness on expert 0 (both tiles), then timing.
    int4_linear(ctx, ours, 0, x.get(), M, y_ours.get(), scratch.get());
    ctx.synchronize();
    const auto ref = to_host_f32(y_ours.get(), size_t(M * N));
    double rel = 0;
    Side best;
    bool first = true;
    for (const Variant& v : tries) {
      DSQ_CUDA_CHECK(cudaMemset(y_cut.get(), 0, y_cut.bytes()));
      if (!cg::int4_gemm(v.tile, v.splits, x.get(), M, cut_expert(0), cut_s.get(), N, K, y_cut.get(), ws.get(),
                         ctx.stream()))
        continue;
      ctx.synchronize();
      rel = std::max(rel, relative_l2(to_host_f32(y_cut.get(), size_t(M * N)), ref));
      const Times tt = measure(ctx, tm, [&](int call) {
        const int e = call % E;
        cg::int4_gemm(v.tile, v.splits, x.get(), M, cut_expert(e), cut_s.get() + size_t(e) * groups, N, K,
                      y_cut.get(), ws.get(), ctx.stream());
      }, decode ? 32 : 3, decode);
      const double key = decode ? tt.graph : tt.eager;
      note_variant(name, M, v.label, key);
      if (first || key < (decode ? best.t.graph : best.t.eager)) best = {tt, v.label};
      first = false;
    }
    const Times to = measure(ctx, tm, [&](int call) { int4_linear(ctx, ours, call % E, x.get(), M, y_ours.get(), scratch.get()); },
                                decode ? 32 : 3, decode);
    if (first) {
      g_out.emit("| %s | %lld | CUTLASS rejected the problem | | %.1f | | | | | | |\n", name, (long long)M,
           (decode ? to.graph : to.eager) * 1e6);
      continue;
    }
    const double bytes = double(expert_bytes) + double(M) * K * 2 + double(M) * N * 4;
    row(name, M, best, {to, ""}, bytes, 2.0 * M * N * K, lim, decode, false, rel);
  }
}

// ---- INT4 W4A16, the routed experts of one MoE layer (grouped) ----

// Expert row offsets (E + 1 entries) when `tokens` tokens each pick `top_k` distinct
// experts of E at random.
std::vector<int64_t> route(int64_t tokens, int64_t E, int top_k, uint64_t& s) {
  std::vector<int64_t> count(size_t(E), 0);
  std::vector<int> ids(static_cast<size_t>(E));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int i = 0; i < int(E); ++i) ids[size_t(i)] = i;
    for (int k = 0; k < top_k; ++k) {
      std::swap(ids[size_t(k)], ids[size_t(k + int(next_random(s) >> 33) % (int(E) - k))]);
      ++count[size_t(ids[size_t(k)])];
    }
  }
  std::vector<int64_t> offsets(1, 0);
  for (int64_t c : count) offsets.push_back(offsets.back() + c);
  return offsets;
}

// 256 experts, top-6 routing (V4-Flash), `tokens` tokens: ours is int4_grouped_linear()
// as the model calls it (decode kernel for experts with < 9 rows, wgmma GEMM above), CUTLASS
// the grouped GEMM over the experts that got rows. Several routings are rotated so that
// decode reads its experts from memory.
void bench_int4_grouped(const GpuContext& ctx, KernelTimer& tm, const Limits& lim, const char* name, int64_t N, int64_t K,
                        const std::vector<int64_t>& token_counts, bool decode) {
  const int64_t E = 256;
  const int kTopK = 6;
  const size_t words = size_t(N * K / 8), groups = size_t(N * K / 128);
  const size_t expert_bytes = words * 4 + groups * 2;
  std::vector<int32_t> packed(words * E);
  uint64_t s = 41;
  for (size_t i = 0; i < words; ++i) packed[i] = int32_t(next_random(s) >> 32);
  const auto one_scales = random_bf16(groups, 42, 0.01f);
  std::vector<uint16_t> scales(groups * E);
  std::vector<__nv_bfloat16> scales_t(groups * E);
  for (int64_t e = 0; e < E; ++e) {
    if (e > 0) std::copy(packed.begin(), packed.begin() + words, packed.begin() + e * words);
    std::memcpy(scales.data() + e * groups, one_scales.data(), groups * 2);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t g = 0; g < K / 128; ++g) scales_t[e * groups + g * N + n] = one_scales[n * (K / 128) + g];
  }
  const Int4ExpertWeights ours(packed.data(), scales.data(), E, N, K, name);
  auto cut_w = DeviceBuffer<int32_t>::from_host(packed);
  packed = {};
  cg::int4_prepare_weights(cut_w.get(), E, N, K);
  auto cut_s = DeviceBuffer<__nv_bfloat16>::from_host(scales_t);
  const int64_t max_rows = *std::max_element(token_counts.begin(), token_counts.end()) * kTopK;
  auto x = DeviceBuffer<__nv_bfloat16>::from_host(random_bf16(size_t(max_rows * K), 43, 1.0f));
  DeviceBuffer<float> y_ours(size_t(max_rows * N)), y_cut(size_t(max_rows * N));
  DeviceBuffer<__nv_bfloat16> scratch(size_t(N * K));
  const int routings = decode ? 16 : 2;
  for (int64_t T : token_counts) {
    const int64_t rows = T * kTopK;
    std::vector<std::vector<int64_t>> offsets;
    double active = 0;
    for (int r = 0; r < routings; ++r) {
      offsets.push_back(route(T, E, kTopK, s));
      for (int64_t e = 0; e < E; ++e) active += offsets.back()[size_t(e + 1)] > offsets.back()[size_t(e)];
    }
    active /= routings;
    int4_grouped_linear(ctx, ours, x.get(), offsets[0], y_ours.get(), scratch.get());
    ctx.synchronize();
    const auto ref = to_host_f32(y_ours.get(), size_t(rows * N));
    Side best;
    bool first = true;
    double rel = 0;
    for (Tile t : {Tile::Decode, Tile::Prefill}) {
      std::vector<std::unique_ptr<cg::Int4GroupedGemm>> gemms;
      size_t ws_bytes = 1;
      for (const auto& o : offsets) {
        std::vector<const void*> w;
        std::vector<const __nv_bfloat16*> sc;
        std::vector<int64_t> r;
        for (int64_t e = 0; e < E; ++e) {
          if (o[size_t(e + 1)] == o[size_t(e)]) continue;
          w.push_back(reinterpret_cast<const uint8_t*>(cut_w.get()) + size_t(e) * words * 4);
          sc.push_back(cut_s.get() + size_t(e) * groups);
          r.push_back(o[size_t(e + 1)] - o[size_t(e)]);
        }
        gemms.push_back(std::make_unique<cg::Int4GroupedGemm>(t, w, sc, r, N, K, x.get(), y_cut.get()));
        ws_bytes = std::max(ws_bytes, gemms.back()->workspace_bytes());
      }
      DeviceBuffer<unsigned char> ws(ws_bytes);
      DSQ_CUDA_CHECK(cudaMemset(y_cut.get(), 0, y_cut.bytes()));
      if (!gemms[0]->run(ws.get(), ctx.stream())) continue;
      ctx.synchronize();
      rel = std::max(rel, relative_l2(to_host_f32(y_cut.get(), size_t(rows * N)), ref));
      const Times tt = measure(ctx, tm, [&](int call) { gemms[size_t(call % routings)]->run(ws.get(), ctx.stream()); },
                                  decode ? 32 : 2, decode);
      const double key = decode ? tt.graph : tt.eager;
      const char* label = t == Tile::Decode ? "grouped 128x16" : "grouped 128x128";
      note_variant(name, T, label, key);
      if (first || key < (decode ? best.t.graph : best.t.eager)) best = {tt, label};
      first = false;
    }
    const Times to = measure(ctx, tm, [&](int call) {
      int4_grouped_linear(ctx, ours, x.get(), offsets[size_t(call % routings)], y_ours.get(), scratch.get());
    }, decode ? 32 : 2, decode);
    const std::string op = std::string(name) + " (tokens; " + std::to_string(kTopK) + " of 256 experts each)";
    if (first) {
      g_out.emit("| %s | %lld | CUTLASS rejected the problem | | %.1f | | | | | | |\n", op.c_str(), (long long)T,
           (decode ? to.graph : to.eager) * 1e6);
      continue;
    }
    const double bytes = active * double(expert_bytes) + double(rows) * K * 2 + double(rows) * N * 4;
    row(op, T, best, {to, ""}, bytes, 2.0 * rows * N * K, lim, decode, false, rel);
  }
}

// ---- FP8 block-scaled ----

// Per (row, 128-wide K block): scale = amax / 448 (1 for an all-zero block), codes =
// e4m3(x / scale) rounded to nearest, saturating; scales stored [K/128][M] (M fastest),
// the order CUTLASS's 1x128 activation scales take. One warp per block of 128.
__global__ void quantize_rows_kernel(const __nv_bfloat16* __restrict__ x, int M, int K, uint8_t* __restrict__ xq,
                                     float* __restrict__ sx) {
  const int warp = int((blockIdx.x * size_t(blockDim.x) + threadIdx.x) / 32), lane = threadIdx.x % 32;
  const int blocks = K / 128;
  if (warp >= M * blocks) return;
  const int m = warp / blocks, kb = warp % blocks;
  const __nv_bfloat16* p = x + size_t(m) * K + kb * 128 + lane * 4;
  float v[4], amax = 0.0f;
  for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(v[i] = __bfloat162float(p[i])));
  for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  const float scale = amax > 0.0f ? amax / 448.0f : 1.0f, inv = 1.0f / scale;
  uint32_t codes = 0;
  for (int i = 0; i < 4; ++i) codes |= uint32_t(__nv_cvt_float_to_fp8(v[i] * inv, __NV_SATFINITE, __NV_E4M3)) << (8 * i);
  *reinterpret_cast<uint32_t*>(xq + size_t(m) * K + kb * 128 + lane * 4) = codes;
  if (lane == 0) sx[size_t(kb) * M + m] = scale;
}
void quantize_rows(const GpuContext& ctx, const __nv_bfloat16* x, int64_t M, int64_t K, uint8_t* xq, float* sx) {
  const int64_t threads = M * (K / 128) * 32;
  quantize_rows_kernel<<<unsigned((threads + 255) / 256), 256, 0, ctx.stream()>>>(x, int(M), int(K), xq, sx);
  DSQ_CUDA_CHECK_LAUNCH();
}

void bench_fp8(const GpuContext& ctx, KernelTimer& tm, const Limits& lim, const char* name, int64_t N, int64_t K,
               const std::vector<int64_t>& Ms, bool decode) {
  const size_t scale_count = size_t((N / 128) * (K / 128));
  const size_t wbytes = size_t(N * K) + scale_count * 4;
  const int copies = decode ? int(std::clamp<size_t>(kRotateBytes / wbytes + 1, 2, 64)) : 1;
  const auto values = random_fp8(size_t(N * K), 31);
  std::vector<float> scales(scale_count);
  uint64_t s = 32;
  for (auto& v : scales) v = 2e-4f + 6e-4f * float(next_random(s) >> 40) / float(1 << 24);
  std::vector<std::unique_ptr<Fp8BlockLinear>> ours;
  std::vector<DeviceBuffer<uint8_t>> cut_w;
  std::vector<DeviceBuffer<float>> cut_s;
  for (int i = 0; i < copies; ++i) {
    ours.push_back(std::make_unique<Fp8BlockLinear>(values.data(), scales.data(), N, K, name));
    cut_w.push_back(DeviceBuffer<uint8_t>::from_host(values));
    cut_s.push_back(DeviceBuffer<float>::from_host(scales));
  }
  const int64_t maxM = *std::max_element(Ms.begin(), Ms.end());
  auto x = DeviceBuffer<__nv_bfloat16>::from_host(random_bf16(size_t(maxM * K), 33, 1.0f));
  DeviceBuffer<__nv_bfloat16> y_ours(size_t(maxM * N)), y_cut(size_t(maxM * N));
  DeviceBuffer<uint8_t> xq(size_t(maxM * K));
  DeviceBuffer<float> sx(size_t(maxM * K / 128));
  DeviceBuffer<unsigned char> ours_ws(ours[0]->workspace_bytes(maxM));
  DSQ_CUDA_CHECK(cudaMemset(ours_ws.get(), 0, ours_ws.bytes()));
  for (int64_t M : Ms) {
    const auto tries = variants(decode);
    size_t ws_bytes = 0;
    for (const Variant& v : tries) ws_bytes = std::max(ws_bytes, cg::fp8_workspace_bytes(v.tile, v.splits, M, N, K));
    DeviceBuffer<unsigned char> ws(std::max<size_t>(ws_bytes, 1));
    ours[0]->run(ctx, x.get(), M, y_ours.get(), ours_ws.get());
    ctx.synchronize();
    const auto ref = to_host_f32(y_ours.get(), size_t(M * N));
    // Two comparisons: the whole op from bf16 x (quantization included, as the model calls
    // it), and in prefill the GEMM alone on activations quantized beforehand.
    for (int gemm_only = 0; gemm_only < (decode ? 1 : 2); ++gemm_only) {
      Side best;
      bool first = true;
      double rel = 0;
      for (const Variant& v : tries) {
        DSQ_CUDA_CHECK(cudaMemset(y_cut.get(), 0, y_cut.bytes()));
        quantize_rows(ctx, x.get(), M, K, xq.get(), sx.get());
        if (!cg::fp8_gemm(v.tile, v.splits, xq.get(), sx.get(), M, cut_w[0].get(), cut_s[0].get(), N, K, y_cut.get(), ws.get(),
                          ctx.stream()))
          continue;
        ctx.synchronize();
        rel = std::max(rel, relative_l2(to_host_f32(y_cut.get(), size_t(M * N)), ref));
        const Times tt = measure(ctx, tm, [&](int call) {
          const int c = call % copies;
          if (!gemm_only) quantize_rows(ctx, x.get(), M, K, xq.get(), sx.get());
          cg::fp8_gemm(v.tile, v.splits, xq.get(), sx.get(), M, cut_w[c].get(), cut_s[c].get(), N, K, y_cut.get(), ws.get(),
                       ctx.stream());
        }, decode ? 50 : 3, decode);
        const double key = decode ? tt.graph : tt.eager;
        note_variant(std::string(name) + (gemm_only ? " GEMM only" : ""), M, v.label, key);
        if (first || key < (decode ? best.t.graph : best.t.eager)) best = {tt, v.label};
        first = false;
      }
      Times to;
      if (gemm_only) {
        Fp8BlockLinear& lin = *ours[0];
        lin.quantize(ctx, x.get(), K, M, ours_ws.get());
        const Fp8Output<__nv_bfloat16> out{y_ours.get(), N, N, 0};
        to = measure(ctx, tm, [&](int) { lin.gemm_quantized(ctx, M, &out, 1, ours_ws.get()); }, 3, false);
      } else {
        to = measure(ctx, tm, [&](int call) { ours[size_t(call % copies)]->run(ctx, x.get(), M, y_ours.get(), ours_ws.get()); },
                        decode ? 50 : 3, decode);
      }
      const std::string op = std::string(name) + (gemm_only ? " GEMM only (x pre-quantized)" : "");
      if (first) {
        g_out.emit("| %s | %lld | CUTLASS rejected the problem | | %.1f | | | | | | |\n", op.c_str(), (long long)M,
             (decode ? to.graph : to.eager) * 1e6);
        continue;
      }
      const double x_bytes = gemm_only ? double(M) * K * 1 : double(M) * K * 2;
      row(op, M, best, {to, ""}, double(wbytes) + x_bytes + double(M) * N * 2, 2.0 * M * N * K, lim, decode, true,
          rel);
    }
  }
}

int run(int argc, char** argv) {
  bool quick = false;
  std::string out_path;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
    else throw dsq::error("dsq_cutlass_bench: unknown argument ", argv[i], " (usage: [--quick] [--out FILE])");
  }
  if (!gpu_available()) {
    std::printf("no GPU: nothing to benchmark\n");
    return 0;
  }
  GpuContext ctx;
  KernelTimer tm;
  cudaDeviceProp prop{};
  DSQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  g_out.emit("Device: %s, %d SMs, %.0f MB L2\n\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6);
  Limits lim{};
  bf16_gemm_peak(ctx, tm);  // warm-up: clocks settle before the limits are taken
  lim.copy_bps = bench::copy_bandwidth(ctx.stream());
  lim.bf16_flops = bf16_gemm_peak(ctx, tm);
  lim.fp8_flops = fp8_gemm_peak(ctx, tm);
  g_out.emit("Limits: device-to-device copy %.0f GB/s (read+write); cuBLAS BF16 GEMM 8192^3 %.0f TFLOP/s; "
       "cuBLASLt FP8 (per-tensor scale) 8192^3 %.0f TFLOP/s\n\n",
       lim.copy_bps / 1e9, lim.bf16_flops / 1e12, lim.fp8_flops / 1e12);

  const std::vector<int64_t> dec = quick ? std::vector<int64_t>{1, 16} : std::vector<int64_t>{1, 2, 4, 8, 16};
  const std::vector<int64_t> pre_int4 =
      quick ? std::vector<int64_t>{1024} : std::vector<int64_t>{256, 512, 1024, 2048, 4096};
  const std::vector<int64_t> pre_fp8 = {4096};
  const std::vector<int64_t> pre_moe = quick ? std::vector<int64_t>{512} : std::vector<int64_t>{512, 4096, 16384};
  g_out.emit("Decode rows: time of CUDA-graph replay, %% of copy bandwidth (bytes = weights + scales + x + y). "
       "Prefill rows: eager time, %% of the roofline max(FLOPs / GEMM peak, bytes / copy bandwidth) with the "
       "BF16 peak for INT4 and the FP8 peak for FP8. "
       "rel L2 = ||y_CUTLASS - y_ours|| / ||y_ours||.\n\n");
  g_out.emit("| op | M | CUTLASS tile | CUTLASS us | ours us | CUTLASS eager us | ours eager us | CUTLASS %% of limit | "
       "ours %% of limit | faster | rel L2 |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|\n");
  for (int phase = 0; phase < 2; ++phase) {
    const bool decode = phase == 0;
    bench_int4(ctx, tm, lim, "int4 w1/w3 [2048,4096]", 2048, 4096, decode ? dec : pre_int4, decode);
    bench_int4(ctx, tm, lim, "int4 w2 [4096,2048]", 4096, 2048, decode ? dec : pre_int4, decode);
    bench_int4_grouped(ctx, tm, lim, "int4 MoE w1/w3 [2048,4096]", 2048, 4096, decode ? dec : pre_moe, decode);
    bench_int4_grouped(ctx, tm, lim, "int4 MoE w2 [4096,2048]", 4096, 2048, decode ? dec : pre_moe, decode);
    bench_fp8(ctx, tm, lim, "fp8 wq_b [32768,1024]", 32768, 1024, decode ? dec : pre_fp8, decode);
    bench_fp8(ctx, tm, lim, "fp8 wo_b [4096,8192]", 4096, 8192, decode ? dec : pre_fp8, decode);
    bench_fp8(ctx, tm, lim, "fp8 wq_a [1024,4096]", 1024, 4096, decode ? dec : pre_fp8, decode);
  }
  g_out.emit("\nEvery CUTLASS configuration (us; graph replay in decode, eager in prefill):\n\n"
       "| op | M | configuration | time |\n|---|---:|---|---:|\n%s", g_variants.c_str());
  if (!out_path.empty()) dsq::write_file_atomically(out_path, g_out.text());
  return 0;
}

}  // namespace
}  // namespace dsq::cuda

int main(int argc, char** argv) {
  try {
    return dsq::cuda::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
