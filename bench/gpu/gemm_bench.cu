// dsq_gemm_bench: achieved throughput of the CUDA backend's linear ops on DeepSeek-V4-Flash
// shapes, each next to a limit measured in the same run on the same device:
//   decode  (M = 1..64 tokens):      GB/s of weights + activations moved, vs the
//                                    device-to-device copy bandwidth;
//   prefill (M = 512..16384 tokens): TFLOP/s, vs cuBLAS's BF16 GEMM rate (BF16 and INT4
//                                    ops) or cuBLASLt's per-tensor FP8 GEMM rate (FP8 ops).
// Decode inputs rotate over enough weight copies (> 5x the L2) that every call reads
// its weights from memory. Times are the median over repeats of back-to-back batches.
//
// Usage: dsq_gemm_bench [--quick] [--decode-only] [--tune] [--only SUBSTRING] [--out FILE]
// (prints a markdown table; FILE gets a copy; --tune adds the decode kernels' K-slice sweeps)
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include "backend/cuda/bf16_linear.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/fp8_block_linear.h"
#include "backend/cuda/gpu_context.h"
#include "backend/cuda/int4_linear.h"
#include "backend/cuda/int4_moe_decode.h"
#include "backend/cuda/mxfp4_linear.h"
#include "bench/gpu/copy_bandwidth.h"
#include "bench/gpu/gemm_peaks.h"
#include "bench/gpu/kernel_timer.h"
#include "bench/gpu/markdown_output.h"
#include "core/atomic_file.h"

namespace dsq::cuda {
namespace {

using bench::bf16_gemm_peak;
using bench::fp8_gemm_peak;
using bench::KernelTimer;
using bench::MarkdownOutput;
using bench::random_fp8;
using bench::Times;

constexpr size_t kRotateBytes = size_t(256) << 20;  // ~5x the H100/H200 L2

// ---- device fills (random, non-zero, finite) ----

__device__ uint32_t mix(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return uint32_t(z ^ (z >> 31));
}
__global__ void fill_bf16_kernel(__nv_bfloat16* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float u = (float(mix(i, seed) & 0xFFFFFF) / 16777216.0f - 0.5f) * 2.0f;
    p[i] = __float2bfloat16(scale * (u == 0.0f ? 0.5f : u));
  }
}
void fill_bf16(__nv_bfloat16* p, size_t n, uint32_t seed, float scale = 1.0f) {
  fill_bf16_kernel<<<1024, 256>>>(p, n, seed, scale);
  DSQ_CUDA_CHECK_LAUNCH();
}
__global__ void fill_f32_kernel(float* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float u = (float(mix(i, seed) & 0xFFFFFF) / 16777216.0f - 0.5f) * 2.0f;
    p[i] = u == 0.0f ? 0.5f : u;
  }
}
void fill_f32(float* p, size_t n, uint32_t seed) {
  fill_f32_kernel<<<1024, 256>>>(p, n, seed);
  DSQ_CUDA_CHECK_LAUNCH();
}

// ---- timing ----

// Decode rows: eager and graph-replayed time; prefill rows: eager only (graph = 0).
Times measure(const GpuContext& ctx, KernelTimer& tm, const std::function<void(int)>& call, bool decode, int batch) {
  return tm.measure(ctx, call, batch, decode);
}

// ---- output ----

MarkdownOutput g_out;

// ---- the limits ----

struct Limits {
  double copy_bps, bf16_flops, fp8_flops;
};

void report(const char* op, int64_t M, Times t, double bytes, double flops, const Limits& lim, bool decode,
            bool fp8) {
  if (decode) {
    const double bps = bytes / t.graph;
    g_out.emit("| %-44s | %6lld | %8.1f | %8.1f | %8.0f GB/s | %5.1f %% |\n", op, (long long)M, t.eager * 1e6,
         t.graph * 1e6, bps / 1e9, 100.0 * bps / lim.copy_bps);
  } else {
    const double fps = flops / t.eager;
    const double peak = fp8 ? lim.fp8_flops : lim.bf16_flops;
    // Roofline: the slower of computing at the peak and moving the bytes at copy speed.
    const double floor = std::max(flops / peak, bytes / lim.copy_bps);
    g_out.emit("| %-44s | %6lld | %9.1f | %7.0f TFLOP/s | %5.1f %% of %s | %5.1f %% |\n", op, (long long)M,
         t.eager * 1e6, fps / 1e12, 100.0 * fps / peak, fp8 ? "FP8 peak" : "BF16 peak", 100.0 * floor / t.eager);
  }
}

// ---- FP8 block-scaled attention projections ----

struct Fp8Op {
  const char* name;
  int64_t N, K, groups;  // groups > 1: `groups` [N, K] blocks of rows, each on its K columns of x
};

// steps > 0: the decode kernel forced to that many 256-wide K steps per block (tuning);
// width > 0: forced column blocks per thread block; sum: how split K is summed. Tuning
// rows name the configuration that ran (steps, width, cluster size; c1 = atomics).
// One Fp8BlockLinear holds all groups (one call, as CudaOps runs attn.wo_a). Prefill
// also reports the GEMM alone on activations quantized beforehand ("gemm only") and the
// fp32-in / fp32-out call CudaOps makes ("f32 op": quantization from fp32 included);
// the plain row is bf16 in and out.
void bench_fp8(const GpuContext& ctx, KernelTimer& tm, const Limits& lim, const Fp8Op& op,
               const std::vector<int64_t>& Ms, bool decode, int steps = 0, Fp8Path path = Fp8Path::Auto,
               int width = 0, Fp8SplitSum sum = Fp8SplitSum::Atomics, bool name_config = false) {
  const int64_t rows = op.N * op.groups, XW = op.K * op.groups;
  const size_t scale_count = size_t(((rows + 127) / 128) * (op.K / 128));
  const size_t wbytes = size_t(rows * op.K) + scale_count * 4;
  const int copies = decode ? int(std::clamp<size_t>(kRotateBytes / wbytes + 1, 2, 64)) : 1;
  const auto values = random_fp8(size_t(rows * op.K), 7);
  std::vector<float> scales(scale_count);
  std::mt19937 rng(8);
  std::uniform_real_distribution<float> sd(2e-4f, 8e-4f);
  for (auto& s : scales) s = sd(rng);
  std::vector<std::unique_ptr<Fp8BlockLinear>> w;
  for (int i = 0; i < copies; ++i)
    w.push_back(std::make_unique<Fp8BlockLinear>(values.data(), scales.data(), rows, op.K, op.name, op.groups));
  for (auto& lin : w) {
    lin->set_decode_steps(steps);
    lin->set_path(path);
    lin->set_decode_width(width);
    lin->set_decode_sum(sum);
  }
  std::string name = steps ? std::string(op.name) + " steps " + std::to_string(steps) : op.name;
  if (path == Fp8Path::Decode) name += " decode kernel";
  const int64_t maxM = *std::max_element(Ms.begin(), Ms.end());
  DeviceBuffer<__nv_bfloat16> x(size_t(maxM * XW)), y(size_t(maxM * rows));
  fill_bf16(x.get(), x.size(), 9);
  DeviceBuffer<unsigned char> ws(w[0]->workspace_bytes(maxM));
  DSQ_CUDA_CHECK(cudaMemset(ws.get(), 0, ws.bytes()));
  const bool extra = !decode && steps == 0;
  DeviceBuffer<float> x32(extra ? size_t(maxM * XW) : 0), y32(extra ? size_t(maxM * rows) : 0);
  if (extra) fill_f32(x32.get(), x32.size(), 10);
  for (int64_t M : Ms) {
    const Times s = measure(ctx, tm, [&](int call) { w[size_t(call % copies)]->run(ctx, x.get(), M, y.get(), ws.get()); },
                            decode, decode ? 50 : 3);
    const double bytes = double(wbytes) + double(M) * XW * 2 + double(M) * rows * 2;
    const double flops = 2.0 * M * rows * op.K;
    const Fp8DecodeConfig c = w[0]->last_decode();
    const std::string row = name_config && w[0]->last_path() == Fp8Path::Decode
                                ? name + " s" + std::to_string(c.steps) + " w" + std::to_string(c.width) + " c" +
                                      std::to_string(c.cluster)
                                : name;
    report(row.c_str(), M, s, bytes, flops, lim, decode, true);
    if (!extra) continue;
    Fp8BlockLinear& lin = *w[0];
    lin.quantize(ctx, x.get(), XW, M, ws.get());
    std::vector<Fp8Output<__nv_bfloat16>> out;
    std::vector<Fp8Output<float>> out32;
    for (int64_t g = 0; g < op.groups; ++g) {
      out.push_back({y.get() + g * op.N, op.N, rows, g * op.K});
      out32.push_back({y32.get() + g * op.N, op.N, rows, g * op.K});
    }
    const int n_out = int(op.groups);
    const Times g = measure(ctx, tm, [&](int) { lin.gemm_quantized(ctx, M, out.data(), n_out, ws.get()); }, false, 3);
    report((name + " gemm only").c_str(), M, g, double(wbytes) + double(M) * XW + double(M) * rows * 2, flops, lim,
           false, true);
    const Times f =
        measure(ctx, tm, [&](int) { lin.run_f32(ctx, x32.get(), XW, M, out32.data(), n_out, ws.get()); }, false, 3);
    report((name + " f32 op").c_str(), M, f, double(wbytes) + double(M) * XW * 4 + double(M) * rows * 4, flops, lim,
           false, true);
  }
}

// A random V4-Flash-like weight for CudaOps: FP8 e4m3 with fp32 128x128 block scales, or
// dense bf16.
QuantizedMatrix bench_weight(bool fp8, int64_t rows, int64_t cols, uint32_t seed) {
  if (!fp8) {
    Tensor t = Tensor::zeros(DType::BF16, {rows, cols});
    uint16_t* v = t.mutable_data<uint16_t>();
    uint64_t s = seed;
    for (int64_t i = 0; i < rows * cols; ++i) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      v[i] = uint16_t(0x3C00 | ((s >> 40) & 0x3FF) | ((s >> 20) & 0x8000));  // +-[0.0078, 0.0156)
    }
    return QuantizedMatrix::dense(t);
  }
  QuantizedMatrix w;
  w.format = WeightFormat::Fp8Block;
  w.group_size = 128;
  w.rows = rows;
  w.cols = cols;
  w.values = Tensor::zeros(DType::F8_E4M3, {rows, cols});
  const auto v = random_fp8(size_t(rows * cols), seed);
  std::copy(v.begin(), v.end(), w.values.mutable_data<uint8_t>());
  w.scales = Tensor::zeros(DType::F32, {(rows + 127) / 128, cols / 128});
  for (int64_t i = 0; i < w.scales.numel(); ++i) w.scales.mutable_data<float>()[i] = 4e-4f;
  return w;
}

// The projections a CSA layer takes from one input in decode, as the model runs them:
// one CudaOps::linear_many call (FP8 wq_a [1024,4096] + wkv [512,4096] concatenated in
// one launch; the compressor's wkv, wgate [1024,4096] and the indexer's weights_proj
// [64,4096], compressor wkv, wgate [256,4096], bf16, in one dense_gemv launch), fp32
// activations in and out. Weight sets rotate so every call reads from memory.
void bench_linear_many(KernelTimer& tm, const Limits& lim, const std::vector<int64_t>& Ms) {
  struct Target {
    bool fp8;
    int64_t rows;
  };
  const Target targets[] = {{true, 1024}, {true, 512}, {false, 1024}, {false, 1024},
                            {false, 64},  {false, 256}, {false, 256}};
  const int64_t H = 4096, count = int64_t(std::size(targets));
  double wbytes = 0;
  int64_t out_rows = 0;
  for (const Target& t : targets) {
    wbytes += t.fp8 ? double(t.rows * H) + double(t.rows / 128 * H / 128 * 4) : double(t.rows * H * 2);
    out_rows += t.rows;
  }
  const int sets = int(kRotateBytes / wbytes) + 1;
  std::vector<QuantizedMatrix> ws;
  ws.reserve(size_t(sets * count));
  for (int s = 0; s < sets; ++s)
    for (const Target& t : targets) ws.push_back(bench_weight(t.fp8, t.rows, H, uint32_t(100 + ws.size())));
  CudaOps ops(Precision::Fast);
  const GpuContext& ctx = ops.context();
  const int64_t maxM = *std::max_element(Ms.begin(), Ms.end());
  DeviceBuffer<float> x(size_t(maxM * H));
  fill_f32(x.get(), x.size(), 12);
  DSQ_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<DeviceBuffer<float>> ys;
  for (const Target& t : targets) ys.emplace_back(size_t(maxM * t.rows));
  for (int64_t M : Ms) {
    const Times t = measure(ctx, tm, [&](int call) {
      const int s = call % sets;
      std::vector<const QuantizedMatrix*> wp;
      std::vector<float*> yp;
      for (int64_t i = 0; i < count; ++i) {
        wp.push_back(&ws[size_t(s * count + i)]);
        yp.push_back(ys[size_t(i)].get());
      }
      ops.linear_many(wp.data(), yp.data(), count, x.get(), M);
    }, true, 2 * sets);
    report("CSA decode linear_many (fp8 wq_a+wkv, bf16 x5)", M, t, wbytes + double(M) * H * 4 + double(M) * out_rows * 4,
           0, lim, true, false);
  }
}

// ---- BF16 shared expert ----

void bench_bf16(const GpuContext& ctx, KernelTimer& tm, const Limits& lim, const char* name, int64_t N, int64_t K,
                const std::vector<int64_t>& Ms, bool decode) {
  const size_t wbytes = size_t(N * K * 2);
  const int copies = decode ? int(std::clamp<size_t>(kRotateBytes / wbytes + 1, 2, 64)) : 1;
  std::vector<DeviceBuffer<__nv_bfloat16>> w;
  for (int i = 0; i < copies; ++i) {
    w.emplace_back(size_t(N * K));
    fill_bf16(w.back().get(), w.back().size(), 20 + i, 0.05f);
  }
  const int64_t maxM = *std::max_element(Ms.begin(), Ms.end());
  DeviceBuffer<__nv_bfloat16> x(size_t(maxM * K)), y(size_t(maxM * N));
  fill_bf16(x.get(), x.size(), 11);
  for (int64_t M : Ms) {
    const Times s = measure(ctx, tm, [&](int call) { bf16_linear(ctx, x.get(), w[size_t(call % copies)].get(), y.get(), M, N, K); },
                            decode, decode ? 50 : 3);
    report(name, M, s, double(wbytes) + double(M) * (K + N) * 2, 2.0 * M * N * K, lim, decode, false);
  }
}

// ---- INT4 routed experts (grouped) ----

// n random int32 words (every nibble pattern): packed INT4 weights.
std::vector<int32_t> random_packed(size_t n, uint64_t s) {
  std::vector<int32_t> v(n);
  for (auto& p : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    p = int32_t(s >> 32);
  }
  return v;
}

// Rows per expert when `tokens` tokens each pick `top_k` distinct experts of E at random.
std::vector<int64_t> route(int64_t tokens, int64_t E, int top_k, std::mt19937& rng) {
  std::vector<int64_t> count(static_cast<size_t>(E), 0);
  std::vector<int> ids(static_cast<size_t>(E));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int i = 0; i < int(E); ++i) ids[size_t(i)] = i;
    for (int k = 0; k < top_k; ++k) {
      std::uniform_int_distribution<int> d(k, int(E) - 1);
      std::swap(ids[size_t(k)], ids[size_t(d(rng))]);
      ++count[size_t(ids[size_t(k)])];
    }
  }
  std::vector<int64_t> offsets(1, 0);
  for (int64_t c : count) offsets.push_back(offsets.back() + c);
  return offsets;
}

// swiglu: the w1/w3 pair followed by its activation (int4_grouped_swiglu; decode only),
// N is then the width F of each half. path: which kernels run (Auto: as in production).
void bench_int4(const GpuContext& ctx, KernelTimer& tm, const Limits& lim, const std::string& name, int64_t E, int64_t N,
                int64_t K, const std::vector<int64_t>& Ms, bool decode, bool swiglu = false,
                Int4Path path = Int4Path::Auto) {
  std::vector<uint16_t> scales(size_t(E * N * K / 128), 0x3C00);  // bf16 0.0078125
  std::unique_ptr<Int4ExpertWeights> w;
  if (swiglu) {
    const auto w1 = random_packed(size_t(E * N * K / 8), 1), w3 = random_packed(size_t(E * N * K / 8), 2);
    w = std::make_unique<Int4ExpertWeights>(
        Int4ExpertWeights::gate_up(w1.data(), scales.data(), w3.data(), scales.data(), E, N, K, name.c_str()));
  } else {
    const auto packed = random_packed(size_t(E * N * K / 8), 3);
    w = std::make_unique<Int4ExpertWeights>(packed.data(), scales.data(), E, N, K, name.c_str());
  }
  const int64_t out_cols = w->rows();
  const int kTopK = 6;
  const int64_t maxM = *std::max_element(Ms.begin(), Ms.end());
  DeviceBuffer<__nv_bfloat16> x(size_t(maxM * kTopK * K));
  DeviceBuffer<float> y(size_t(maxM * kTopK * out_cols));
  DeviceBuffer<__nv_bfloat16> h(size_t(maxM * kTopK * N));
  DeviceBuffer<__nv_bfloat16> scratch(size_t(out_cols * K));
  fill_bf16(x.get(), x.size(), 13);
  std::mt19937 rng(14);
  for (int64_t M : Ms) {
    std::vector<std::vector<int64_t>> routes;
    for (int r = 0; r < 16; ++r) routes.push_back(route(M, E, kTopK, rng));
    double active = 0;
    for (const auto& o : routes)
      for (int64_t e = 0; e < E; ++e) active += o[size_t(e + 1)] > o[size_t(e)];
    active /= double(routes.size());
    const Times sec = measure(ctx, tm, [&](int call) {
      const auto& offsets = routes[size_t(call) % routes.size()];
      if (swiglu)
        int4_grouped_swiglu(ctx, *w, x.get(), offsets, 10.0f, h.get(), y.get());
      else
        int4_grouped_linear(ctx, *w, x.get(), offsets, y.get(), decode ? nullptr : scratch.get(), path);
    }, decode, decode ? 32 : 2);
    const double rows = double(M) * kTopK;
    // SwiGLU: the fp32 gate/up rows are written and read back, then h written in bf16.
    const double out_bytes = swiglu ? rows * out_cols * 4 * 2 + rows * N * 2 : rows * out_cols * 4;
    const double bytes = active * double(w->expert_bytes()) + rows * K * 2 + out_bytes;
    report(name.c_str(), M, sec, bytes, 2.0 * rows * out_cols * K, lim, decode, false);
  }
}

// The routed-expert GEMMs: as in production (Auto), and in prefill each forced path for
// comparison in the same run; with `tune`, decode also with each K slice of the decode kernel.
void bench_int4_all(const GpuContext& ctx, KernelTimer& tm, const Limits& lim, const std::vector<int64_t>& Ms,
                    bool decode, bool tune, const std::function<bool(const char*)>& wanted) {
  struct Shape {
    const char* name;
    int64_t N, K;
  };
  const Shape shapes[] = {{"int4 experts w1+w3 256x[4096,4096]", 4096, 4096}, {"int4 experts w2 256x[4096,2048]", 4096, 2048}};
  for (const Shape& sh : shapes) {
    if (decode && sh.K == 4096 && wanted("int4 experts w1+w3+SwiGLU 256x[2x2048,4096]"))
      bench_int4(ctx, tm, lim, "int4 experts w1+w3+SwiGLU 256x[2x2048,4096]", 256, 2048, 4096, Ms, decode, true);
    if (!wanted(sh.name)) continue;
    bench_int4(ctx, tm, lim, sh.name, 256, sh.N, sh.K, Ms, decode);
    if (!decode) {
      bench_int4(ctx, tm, lim, std::string(sh.name) + " gemm", 256, sh.N, sh.K, Ms, decode, false, Int4Path::GroupedGemm);
      bench_int4(ctx, tm, lim, std::string(sh.name) + " mma", 256, sh.N, sh.K, Ms, decode, false, Int4Path::DecodeKernel);
      bench_int4(ctx, tm, lim, std::string(sh.name) + " deq+cuBLAS", 256, sh.N, sh.K, Ms, decode, false,
                 Int4Path::DequantCublas);
    } else if (tune) {
      const std::vector<int64_t> few = {1, 2, 4, 8, 16};
      for (int chunks : {kInt4DecodeWholeK, 4, 8}) {
        int4_force_decode_chunks(chunks);
        const std::string variant = chunks == kInt4DecodeWholeK ? " whole-K" : " slice " + std::to_string(64 * chunks);
        bench_int4(ctx, tm, lim, std::string(sh.name) + variant, 256, sh.N, sh.K, few, decode);
      }
      int4_force_decode_chunks(0);
    }
  }
}

// The whole routed-expert step of a decode token batch with the expert ids on the device
// (int4_moe_decode: gate/up, SwiGLU, down, combine; no host synchronisation), next to
// what it replaces in CudaOps::moe_experts, measured from its expensive parts only: the
// expert offsets copied to the host and waited for, then the grouped SwiGLU and down
// kernels on pre-gathered rows (the permutation, gather and combine kernels not
// included; eager only: a synchronisation cannot be captured in a graph). Bytes: the
// distinct experts' int4 + scales (what must come from memory). `tune`: also each forced
// K slice of the decode kernel.
constexpr const char* kMoeDecodeRow = "moe decode (int4_moe_decode: 6 of 256 experts, w1+w3+SwiGLU+w2+combine)";
void bench_int4_moe_decode(const GpuContext& ctx, KernelTimer& tm, const Limits& lim, const std::vector<int64_t>& Ms,
                           bool tune) {
  const int64_t E = 256, H = 4096, F = 2048;
  const int kTopK = 6, kRoutings = 16;
  std::vector<uint16_t> scales(size_t(E * F * H / 128), 0x3C00);  // bf16 0.0078125
  const auto w1 = random_packed(size_t(E * F * H / 8), 1), w3 = random_packed(size_t(E * F * H / 8), 2);
  const Int4ExpertWeights gate_up =
      Int4ExpertWeights::gate_up(w1.data(), scales.data(), w3.data(), scales.data(), E, F, H, "bench gate/up");
  const Int4ExpertWeights down(random_packed(size_t(E * H * F / 8), 3).data(), scales.data(), E, H, F, "bench down");
  const double expert_bytes = double(gate_up.expert_bytes() + down.expert_bytes());
  const int64_t max_slots = *std::max_element(Ms.begin(), Ms.end()) * kTopK;
  const std::vector<int> slices = tune ? std::vector<int>{0, 4, 8, 16} : std::vector<int>{0};  // 0: default
  size_t gate_up_floats = 0, down_floats = 0;
  for (int chunks : slices)
    for (int64_t M : Ms) {
      int4_moe_decode_force_chunks(chunks);
      const MoeDecodeScratch need = moe_decode_scratch(gate_up, down, M * kTopK);
      gate_up_floats = std::max(gate_up_floats, need.gate_up_partials);
      down_floats = std::max(down_floats, need.down_partials);
    }
  int4_moe_decode_force_chunks(0);
  DeviceBuffer<float> gate_up_partials(gate_up_floats), down_partials(down_floats), y(size_t(max_slots * H));
  DeviceBuffer<unsigned> tile_counters(moe_decode_scratch(gate_up, down, 1).tile_counters);
  DSQ_CUDA_CHECK(cudaMemset(tile_counters.get(), 0, tile_counters.bytes()));
  DeviceBuffer<float> gate_up_out(size_t(max_slots * 2 * F));
  DeviceBuffer<__nv_bfloat16> h(size_t(max_slots * F)), rows(size_t(max_slots * H));
  fill_bf16(rows.get(), rows.size(), 21);
  std::vector<float> x_host(size_t(max_slots / kTopK * H));
  std::mt19937 rng(22);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (float& v : x_host) v = unit(rng);
  const auto x = DeviceBuffer<float>::from_host(x_host);
  DeviceBuffer<float> out(x_host.size());
  const auto route_weights = DeviceBuffer<float>::from_host(std::vector<float>(size_t(max_slots), 1.0f / kTopK));
  for (int64_t M : Ms) {
    // kRoutings random routings (k distinct experts per token), rotated call by call.
    std::vector<int64_t> ids(size_t(kRoutings * M * kTopK));
    std::vector<std::vector<int64_t>> offsets(kRoutings, std::vector<int64_t>(size_t(E + 1), 0));
    double distinct = 0;
    std::vector<int> order(static_cast<size_t>(E));
    for (int r = 0; r < kRoutings; ++r) {
      std::vector<int64_t> count(size_t(E), 0);
      for (int64_t t = 0; t < M; ++t) {
        for (int i = 0; i < int(E); ++i) order[size_t(i)] = i;
        for (int j = 0; j < kTopK; ++j) {
          std::swap(order[size_t(j)], order[size_t(std::uniform_int_distribution<int>(j, int(E) - 1)(rng))]);
          ids[size_t((r * M + t) * kTopK + j)] = order[size_t(j)];
          ++count[size_t(order[size_t(j)])];
        }
      }
      for (int64_t e = 0; e < E; ++e) {
        offsets[size_t(r)][size_t(e + 1)] = offsets[size_t(r)][size_t(e)] + count[size_t(e)];
        distinct += count[size_t(e)] > 0;
      }
    }
    distinct /= kRoutings;
    const auto chosen = DeviceBuffer<int64_t>::from_host(ids);
    const auto device_offsets = DeviceBuffer<int64_t>::from_host(offsets[0]);
    for (int chunks : slices) {
      int4_moe_decode_force_chunks(chunks);
      const Times t = measure(ctx, tm, [&](int call) {
        int4_moe_decode(ctx, gate_up, down, x.get(), M, chosen.get() + (call % kRoutings) * M * kTopK,
                        route_weights.get(), kTopK, 10.0f, out.get(), gate_up_partials.get(), h.get(),
                        down_partials.get(), tile_counters.get());
      }, true, 32);
      const std::string name = std::string(kMoeDecodeRow) + (chunks ? " slice " + std::to_string(64 * chunks) : "");
      report(name.c_str(), M, t, distinct * expert_bytes, 0, lim, true, false);
    }
    int4_moe_decode_force_chunks(0);
    std::vector<int64_t> host_offsets(size_t(E + 1));
    const double before = tm.seconds(ctx, [&](int call) {
      DSQ_CUDA_CHECK(cudaMemcpyAsync(host_offsets.data(), device_offsets.get(), host_offsets.size() * sizeof(int64_t),
                                     cudaMemcpyDeviceToHost, ctx.stream()));
      ctx.synchronize();
      const auto& o = offsets[size_t(call % kRoutings)];
      int4_grouped_swiglu(ctx, gate_up, rows.get(), o, 10.0f, h.get(), gate_up_out.get());
      int4_grouped_linear(ctx, down, h.get(), o, y.get());
    }, 32);
    const double bps = distinct * expert_bytes / before;
    g_out.emit("| %-44s | %6lld | %8.1f | %8s | %8.0f GB/s | %5.1f %% |\n", "INT4 MoE host offsets+sync (before; eager)",
         (long long)M, before * 1e6, "-", bps / 1e9, 100.0 * bps / lim.copy_bps);
  }
}

// ---- MXFP4 routed experts (the release's format), decode ----

// MXFP4 experts as the release stores them (random codes: every e2m1 value; scales
// 2^-7 .. 2^-6) through mxfp4_grouped_linear, M tokens x top-6 of E experts, 16 random
// routings rotated. Bytes: the active experts' codes + scales, bf16 activations in, fp32
// out (as the INT4 rows).
void bench_mxfp4(const GpuContext& ctx, KernelTimer& tm, const Limits& lim, const char* name, int64_t E, int64_t N,
                 int64_t K, const std::vector<int64_t>& Ms) {
  std::vector<uint8_t> values(size_t(E * N * K / 2)), scales(size_t(E * N * K / 32));
  uint64_t s = 5;
  for (size_t i = 0; i < values.size(); i += 8) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    std::memcpy(&values[i], &s, std::min<size_t>(8, values.size() - i));
  }
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = uint8_t(120 + (i * 7 % 3 == 0));
  const Mxfp4ExpertWeights w(values.data(), scales.data(), E, N, K, name);
  const int kTopK = 6;
  const int64_t maxM = *std::max_element(Ms.begin(), Ms.end());
  DeviceBuffer<__nv_bfloat16> x(size_t(maxM * kTopK * K)), scratch(size_t(N * K));
  DeviceBuffer<float> y(size_t(maxM * kTopK * N));
  fill_bf16(x.get(), x.size(), 15);
  std::mt19937 rng(16);
  for (int64_t M : Ms) {
    std::vector<std::vector<int64_t>> routes;
    for (int r = 0; r < 16; ++r) routes.push_back(route(M, E, kTopK, rng));
    double active = 0;
    for (const auto& o : routes)
      for (int64_t e = 0; e < E; ++e) active += o[size_t(e + 1)] > o[size_t(e)];
    active /= double(routes.size());
    const Times t = measure(ctx, tm, [&](int call) {
      mxfp4_grouped_linear(ctx, w, x.get(), routes[size_t(call) % routes.size()], y.get(), scratch.get());
    }, true, 32);
    const double rows = double(M) * kTopK;
    const double bytes = active * double(w.expert_bytes()) + rows * K * 2 + rows * N * 4;
    report(name, M, t, bytes, 2.0 * rows * N * K, lim, true, false);
  }
}

void bench_mxfp4_all(const GpuContext& ctx, KernelTimer& tm, const Limits& lim, const std::vector<int64_t>& Ms,
                     const std::function<bool(const char*)>& wanted) {
  const char* gate_up = "mxfp4 experts w1+w3 256x[4096,4096]";
  const char* down = "mxfp4 experts w2 256x[4096,2048]";
  if (wanted(gate_up)) bench_mxfp4(ctx, tm, lim, gate_up, 256, 4096, 4096, Ms);
  if (wanted(down)) bench_mxfp4(ctx, tm, lim, down, 256, 4096, 2048, Ms);
}

int run(int argc, char** argv) {
  bool quick = false, decode_only = false, tune = false;
  std::string out_path, only;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--decode-only")) decode_only = true;
    else if (!std::strcmp(argv[i], "--tune")) tune = true;
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
    else
      throw dsq::error("dsq_gemm_bench: unknown argument ", argv[i],
                       " (usage: [--quick] [--decode-only] [--tune] [--only SUBSTRING] [--out FILE])");
  }
  const std::function<bool(const char*)> wanted = [&](const char* name) {
    return only.empty() || std::strstr(name, only.c_str()) != nullptr;
  };
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
  g_out.emit("Limits measured in this run: device-to-device copy %.0f GB/s (read+write); cuBLAS BF16 GEMM "
       "8192^3 %.0f TFLOP/s; cuBLASLt FP8 (per-tensor scale) 8192^3 %.0f TFLOP/s\n\n",
       lim.copy_bps / 1e9, lim.bf16_flops / 1e12, lim.fp8_flops / 1e12);

  const std::vector<int64_t> dec = quick ? std::vector<int64_t>{1, 64} : std::vector<int64_t>{1, 2, 4, 8, 16, 32, 64};
  const std::vector<int64_t> pre = quick ? std::vector<int64_t>{512} : std::vector<int64_t>{512, 2048, 4096, 8192, 16384};
  const Fp8Op fp8_ops[] = {{"fp8 wq_a [1024,4096]", 1024, 4096, 1},
                           {"fp8 wq_b [32768,1024]", 32768, 1024, 1},
                           {"fp8 wkv [512,4096]", 512, 4096, 1},
                           {"fp8 wo_a 8x[1024,4096]", 1024, 4096, 8},
                           {"fp8 wo_b [4096,8192]", 4096, 8192, 1}};
  for (int phase = 0; phase < (decode_only ? 1 : 2); ++phase) {
    const bool decode = phase == 0;
    g_out.emit(decode ? "### Decode (memory-bound): GB/s moved, vs copy bandwidth\n\n"
                : "\n### Prefill (compute-bound): TFLOP/s, vs the GEMM peaks above\n\n");
    g_out.emit(decode ? "| op | M | eager (us) | graph (us) | achieved (graph) | of copy |\n|---|---:|---:|---:|---:|---:|\n"
                : "| op | M | time (us) | achieved | of limit | of roofline |\n|---|---:|---:|---:|---:|---:|\n");
    const auto& Ms = decode ? dec : pre;
    bench_int4_all(ctx, tm, lim, Ms, decode, tune, wanted);
    if (decode && wanted(kMoeDecodeRow)) bench_int4_moe_decode(ctx, tm, lim, {1, 2, 4, 8}, tune);
    if (decode) bench_mxfp4_all(ctx, tm, lim, Ms, wanted);
    for (const Fp8Op& op : fp8_ops) {
      if (!wanted(op.name)) continue;
      bench_fp8(ctx, tm, lim, op, Ms, decode);
      if (decode && tune && op.N * op.K * op.groups >= (int64_t(32) << 20)) {  // the large projections
        bench_fp8(ctx, tm, lim, op, {1, 8, 9, 16}, decode, 0, Fp8Path::Auto, 0, Fp8SplitSum::Atomics, true);
        for (int width : {1, 2})
          for (Fp8SplitSum sum : {Fp8SplitSum::Atomics, Fp8SplitSum::Cluster})
            if (sum == Fp8SplitSum::Atomics || op.K > 1024)  // wq_b has a single slice
              bench_fp8(ctx, tm, lim, op, {1, 8, 9, 16}, decode, 4, Fp8Path::Auto, width, sum, true);
      }
      if (decode && tune)  // the decode kernel past the Auto threshold
        bench_fp8(ctx, tm, lim, op, {24, 32, 64}, decode, 0, Fp8Path::Decode);
    }
    if (wanted("fp8 wq_a+wkv concatenated [1536,4096]")) {
      // V4-Flash's wq_a and wkv concatenated, as linear_many runs them.
      const Fp8Op concat{"fp8 wq_a+wkv concatenated [1536,4096]", 1536, 4096, 1};
      bench_fp8(ctx, tm, lim, concat, Ms, decode);
      if (decode && tune)
        for (int steps : {1, 2, 4})
          for (Fp8SplitSum sum : {Fp8SplitSum::Atomics, Fp8SplitSum::Cluster})
            if (sum == Fp8SplitSum::Atomics || steps > 1)  // 16 slices: no cluster
              bench_fp8(ctx, tm, lim, concat, {1, 8, 16}, decode, steps, Fp8Path::Auto, 0, sum, true);
    }
    if (decode && wanted("CSA decode linear_many (fp8 wq_a+wkv, bf16 x5)")) bench_linear_many(tm, lim, {1, 2, 4, 8, 16});
    if (wanted("bf16 shared w1+w3 [4096,4096]"))
      bench_bf16(ctx, tm, lim, "bf16 shared w1+w3 [4096,4096]", 4096, 4096, Ms, decode);
    if (wanted("bf16 shared w2 [4096,2048]"))
      bench_bf16(ctx, tm, lim, "bf16 shared w2 [4096,2048]", 4096, 2048, Ms, decode);
  }
  g_out.emit("\nDecode: eager = back-to-back calls from the host; graph = the same calls captured in a CUDA "
       "graph and replayed (no host launch cost; what an engine replaying decode graphs sees). GB/s "
       "and %% of copy use the graph time.\n");
  g_out.emit("Prefill: eager time; roofline = max(FLOPs / GEMM peak, bytes / copy bandwidth) over the measured time.\n");
  g_out.emit("INT4 rows: M tokens x top-6 of 256 experts, random routing (16 routings rotated); bytes = "
       "active experts' int4+scales + activations + fp32 output. Experts with < 9 rows run the "
       "tensor-core W4A16 decode kernel (mma.sync), experts with more rows the grouped wgmma GEMM; "
       "prefill rows marked gemm / mma / deq+cuBLAS force one path for every expert.\n"
       "FP8 rows: M <= 16 (grouped wo_a: M <= 64) runs dsq's wgmma decode kernel (activation "
       "quantization fused), larger M "
       "quantizes activations then runs cuBLASLt's 128x128 block-scaled GEMM (bf16 in and out; "
       "'gemm only' = the GEMM on activations quantized beforehand, 'f32 op' = fp32 in and out as "
       "CudaOps calls it, quantization from fp32 included). wo_a: one call for all 8 groups.\n"
       "INT4 MoE rows: the whole routed-expert step (M tokens x top-6 of 256 experts, 16 routings "
       "rotated); bytes = the distinct experts' int4+scales (w1+w3+w2). 'host offsets+sync' is the "
       "path the device-id one replaces, without its permutation/gather/combine kernels.\n"
       "MXFP4 rows: M tokens x top-6 of 256 experts through mxfp4_grouped_linear (experts with <= 8 "
       "rows: the MXFP4 decode kernel); bytes = active experts' e2m1 codes + e8m0 scales + "
       "activations + fp32 output.\n");
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
