// bench_quantize_layer: times the quantizer's per-layer work at real DeepSeek-V4-Flash
// dimensions (H 4096, expert width 2048, 256 routed experts, top-6, attention shapes of
// checkpoint-formats.md §1.3) on synthetic weights and correlated synthetic activations,
// and projects the time of a full W4A16-FP8 GPTQ run (43 layers, 768 x 512 calibration
// tokens). Not a test: run it by hand, it prints a Markdown table.
//
//   bench_quantize_layer [--tokens-per-expert N] [--threads N]
//
// Measured here: Hessian accumulation throughput (dims 4096 and 2048), one complete
// quantize_module() for an expert gate/up [2048 x 4096] and down [4096 x 2048] matrix
// (static scales, Cholesky, GPTQ sweep, RTN, both calibration errors), FP8 block
// quantization of one layer's attention weights, and the CPU linear kernel's throughput
// (bf16 and int4 weights) that the calibration forward runs on.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/linear.h"
#include "core/thread_pool.h"
#include "quant/fp8_block.h"
#include "quant/hessian.h"
#include "quant/int4_group.h"
#include "quant/module_quantizer.h"

using namespace dsq;
using namespace dsq::quant;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::vector<float> gaussian(size_t n, float sd, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Activations with correlated channels: x = z A (latent dim/8) plus small noise.
std::vector<float> activations(int64_t tokens, int64_t dim, uint32_t seed) {
  const int64_t latent = dim / 8;
  const std::vector<float> a = gaussian(size_t(latent * dim), 1.0f / std::sqrt(float(latent)), seed);
  std::vector<float> z = gaussian(size_t(tokens * latent), 1.0f, seed + 1);
  std::vector<float> x = gaussian(size_t(tokens * dim), 0.05f, seed + 2);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t k = 0; k < latent; ++k) {
      const float zk = z[t * latent + k];
      for (int64_t c = 0; c < dim; ++c) x[t * dim + c] += zk * a[k * dim + c];
    }
  return x;
}

struct ModuleTiming {
  double seconds, gptq_error, rtn_error;
};

ModuleTiming time_module(int64_t rows, int64_t cols, int64_t tokens, uint32_t seed, double* hessian_rate) {
  const std::vector<float> x = activations(tokens, cols, seed);
  Hessian h(cols);
  const double t0 = now();
  h.add(x.data(), tokens);
  const double t1 = now();
  *hessian_rate = double(tokens) * double(cols) * double(cols) / (t1 - t0);  // MACs/s (upper half counted x2)
  HessianBlock block{0, rows, h.tokens(), h.matrix()};
  const std::vector<float> w = gaussian(size_t(rows * cols), 0.02f, seed + 3);
  Tensor wt = Tensor::from_f32(w, {rows, cols}).cast(DType::BF16);
  RecipeGroup g;
  g.method = QuantMethod::Gptq;
  const double t2 = now();
  const QuantizedModule q = quantize_module("bench", QuantizedMatrix::dense(wt), &g, {block}, "");
  const double t3 = now();
  return {t3 - t2, q.report.gptq_error, q.report.rtn_error};
}

double linear_gflops(const QuantizedMatrix& w, int64_t tokens) {
  const std::vector<float> x = gaussian(size_t(tokens * w.cols), 1.0f, 9);
  std::vector<float> y(size_t(tokens * w.rows));
  cpu::linear(x.data(), tokens, w, y.data());  // warm-up
  const double t0 = now();
  cpu::linear(x.data(), tokens, w, y.data());
  return 2.0 * double(tokens) * double(w.rows) * double(w.cols) / (now() - t0) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens_per_expert = 9216;  // 768 * 512 * 6 / 256: the mean routed load
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--tokens-per-expert") tokens_per_expert = std::stoll(argv[i + 1]);
    if (std::string(argv[i]) == "--threads") set_num_threads(std::stoi(argv[i + 1]));
  }
  const int64_t H = 4096, F = 2048, E = 256, K = 6, L = 43, calib_tokens = 768 * 512;
  std::printf("threads %d, tokens per expert %lld\n\n", num_threads(), (long long)tokens_per_expert);

  double rate_up = 0, rate_down = 0;
  const ModuleTiming up = time_module(F, H, tokens_per_expert, 11, &rate_up);
  const ModuleTiming down = time_module(H, F, tokens_per_expert, 21, &rate_down);

  // FP8 block quantization of one layer's attention weights (CSA layer: with indexer wq_b).
  const std::vector<std::pair<int64_t, int64_t>> attn = {{1024, 4096}, {32768, 1024}, {512, 4096},
                                                         {8192, 4096}, {4096, 8192},  {8192, 1024}};
  double fp8_seconds = 0;
  int64_t attn_params = 0;
  for (const auto& [r, c] : attn) {
    const std::vector<float> w = gaussian(size_t(r * c), 0.02f, 31);
    const double t0 = now();
    quantize_fp8_block(w.data(), r, c);
    fp8_seconds += now() - t0;
    attn_params += r * c;
  }

  // The calibration forward: its linears at the measured CPU throughput.
  const std::vector<float> wexp = gaussian(size_t(F * H), 0.02f, 41);
  const QuantizedMatrix bf16 = QuantizedMatrix::dense(Tensor::from_f32(wexp, {F, H}).cast(DType::BF16));
  const QuantizedMatrix int4 = quantize_int4_rtn(wexp.data(), F, H, 128);
  const double gf_bf16 = linear_gflops(bf16, 512), gf_int4 = linear_gflops(int4, 512);
  // Linear parameters one token multiplies per layer: attention + compressors/indexer (CSA)
  // + router + 6 routed experts + the shared expert.
  const double per_token_params = double(attn_params) + 2.0 * 1024 * 4096 + 64 * 4096 + 2.0 * 256 * 4096 +
                                  double(E) * H + double(K + 1) * 3 * F * H;
  const double forward_flops = 2.0 * per_token_params * double(calib_tokens);  // one pass over the calibration set

  // Per layer: Hessians of routed experts (gate/up shared: one 4096^2 per expert, plus the
  // 2048^2 down) over their routed tokens, the shared expert's over all tokens; GPTQ of 768
  // routed + 3 shared... (shared experts stay BF16 in w4a16-fp8); FP8 attention; two forward passes.
  const double routed_pairs = double(calib_tokens) * K;
  const double hessian_s = routed_pairs * (double(H) * H / rate_up + double(F) * F / rate_down);
  const double gptq_s = double(E) * (2 * up.seconds + down.seconds);
  const double forward_s = 2.0 * forward_flops / (0.5 * (gf_bf16 + gf_int4) * 1e9);
  const double layer_s = hessian_s + gptq_s + fp8_seconds + forward_s;

  std::printf("| measurement (real V4-Flash dimensions) | value |\n|---|---|\n");
  std::printf("| Hessian accumulation, dim 4096 | %.1f GMAC/s |\n", rate_up / 1e9);
  std::printf("| Hessian accumulation, dim 2048 | %.1f GMAC/s |\n", rate_down / 1e9);
  std::printf("| quantize_module expert gate/up [2048x4096] (GPTQ + RTN + both errors) | %.2f s (error %.4g vs RTN %.4g) |\n",
              up.seconds, up.gptq_error, up.rtn_error);
  std::printf("| quantize_module expert down [4096x2048] | %.2f s (error %.4g vs RTN %.4g) |\n", down.seconds,
              down.gptq_error, down.rtn_error);
  std::printf("| FP8 block quantization, one layer's attention (%.0f M params) | %.2f s |\n", attn_params / 1e6,
              fp8_seconds);
  std::printf("| CPU linear, 512 tokens x [2048x4096], bf16 / int4 weights | %.1f / %.1f GFLOP/s |\n", gf_bf16, gf_int4);
  std::printf("\n| projected per layer (768 x 512 calibration tokens) | seconds |\n|---|---|\n");
  std::printf("| Hessians (routed tokens, gate/up shared) | %.0f |\n", hessian_s);
  std::printf("| GPTQ, 768 expert matrices | %.0f |\n", gptq_s);
  std::printf("| FP8 attention | %.1f |\n", fp8_seconds);
  std::printf("| calibration forward x2 (%.0f TFLOP each, CPU kernels) | %.0f |\n", forward_flops / 1e12, forward_s);
  std::printf("| **layer total** | **%.0f** |\n", layer_s);
  std::printf("\nprojected 43 layers: %.1f h (quantizer math without the forward: %.1f h)\n", L * layer_s / 3600,
              L * (layer_s - forward_s) / 3600);
  return 0;
}
