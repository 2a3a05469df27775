// CpuOps: backend::Ops on the host (cpu_ops.h). Memory is plain host memory; every op
// forwards to the plain pointer functions of backend/cpu/, split over the thread pool
// per token where the function works on one token.
#include "backend/cpu/cpu_ops.h"

#include <algorithm>
#include <cstring>

#include "backend/cpu/embedding.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/mhc.h"
#include "backend/cpu/rms_norm.h"
#include "backend/cpu/router.h"
#include "backend/cpu/swiglu.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace dsq::cpu {

namespace {

Tensor owned_copy(const Tensor& t) {
  Tensor out = Tensor::zeros(t.dtype(), t.shape());
  if (t.nbytes() > 0) std::memcpy(out.mutable_bytes(), t.bytes(), t.nbytes());
  return out;
}

}  // namespace

Tensor CpuOps::alloc(DType dtype, Shape shape) { return Tensor::zeros(dtype, std::move(shape)); }

Tensor CpuOps::upload(const Tensor& host) {
  DSQ_CHECK(host.device() == Device::CPU, "upload: the tensor is not in host memory");
  return owned_copy(host);
}

Tensor CpuOps::to_host(const Tensor& t) { return owned_copy(t); }

void CpuOps::upload_into(void* dst, const void* host, size_t bytes) {
  if (bytes > 0) std::memcpy(dst, host, bytes);
}

void CpuOps::grow_rows(Tensor& t, int64_t rows, int64_t width) {
  const int64_t have = t.defined() ? t.dim(0) : 0;
  if (have >= rows) return;
  Tensor grown = Tensor::zeros(DType::F32, {std::max(rows, 2 * have), width});
  if (have > 0) std::memcpy(grown.mutable_bytes(), t.bytes(), t.nbytes());
  t = std::move(grown);
}

void CpuOps::copy(float* dst, const float* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, size_t(n) * sizeof(float));
}

void CpuOps::linear(const QuantizedMatrix& w, const float* x, int64_t n, float* y) { cpu::linear(x, n, w, y); }

void CpuOps::linear_many(const QuantizedMatrix* const* ws, float* const* ys, int64_t count, const float* x,
                         int64_t n) {
  for (int64_t i = 0; i < count; ++i) cpu::linear(x, n, *ws[i], ys[i]);
}

void CpuOps::linear_grouped(const QuantizedMatrix& w, int64_t groups, const float* x, int64_t n, float* y) {
  DSQ_CHECK(groups > 0 && w.rows % groups == 0, "linear_grouped: ", w.rows, " rows do not split into ", groups,
            " groups");
  const int64_t R = w.rows / groups, C = w.cols;
  for (int64_t g = 0; g < groups; ++g) linear_rows(x + g * C, n, groups * C, w, g * R, (g + 1) * R, y + g * R, w.rows);
}

void CpuOps::rms_norm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float eps,
                      float* y) {
  cpu::rms_norm(x, n, dim, stride, weight, eps, y);
}

void CpuOps::rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const int64_t* positions,
                  const RopeFrequencies& table, bool inverse) {
  apply_rope(x, n_tokens, heads, dim, positions, table, inverse);
}

void CpuOps::norm_rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const float* weight, float eps,
                       const int64_t* positions, const RopeFrequencies& table) {
  cpu::rms_norm(x, n_tokens * heads, dim, dim, weight, eps, x);
  apply_rope(x, n_tokens, heads, dim, positions, table, false);
}

void CpuOps::rms_norm_and_norm_rope(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight,
                                    float* y, float* heads_x, int64_t n_tokens, int64_t heads, int64_t head_dim,
                                    const float* head_weight, float eps, const int64_t* positions,
                                    const RopeFrequencies& table) {
  rms_norm(x, n, dim, stride, weight, eps, y);
  norm_rope(heads_x, n_tokens, heads, head_dim, head_weight, eps, positions, table);
}

void CpuOps::swiglu(const float* gate, const float* up, int64_t n, float limit, float* out) {
  swiglu_clamped(gate, up, n, limit, out);
}

void CpuOps::add(float* dst, const float* src, int64_t n) {
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dst[i] += src[i];
  });
}

void CpuOps::gather_rows(const float* src, const int64_t* rows, int64_t n, int64_t width, float* dst) {
  for (int64_t r = 0; r < n; ++r) std::memcpy(dst + r * width, src + rows[r] * width, size_t(width) * sizeof(float));
}

void CpuOps::embed_streams(const QuantizedMatrix& table, const int64_t* ids, int64_t T, int64_t n_streams,
                           float* streams) {
  const int64_t H = table.cols;
  std::vector<float> embedded(size_t(T * H));
  embedding(table, ids, T, embedded.data());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < n_streams; ++j)
      std::memcpy(streams + (t * n_streams + j) * H, embedded.data() + t * H, size_t(H) * sizeof(float));
}

void CpuOps::mhc_mix(const float* streams, int64_t T, int64_t width, float eps, const QuantizedMatrix& fn,
                     float* mix) {
  std::vector<float> normed(size_t(T * width));
  cpu::rms_norm(streams, T, width, width, nullptr, eps, normed.data());
  cpu::linear(normed.data(), T, fn, mix);
}

std::vector<float> CpuOps::mixing_logits(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps,
                                         int64_t N, int64_t H, const char* op) {
  const int64_t n_mix = (2 + N) * N;
  DSQ_CHECK(N <= 64, "hc_mult ", N, " too large");
  DSQ_CHECK(fn.rows == n_mix && fn.cols == N * H, op, ": the mixing weight [", fn.rows, ", ", fn.cols, "] is not [",
            n_mix, ", ", N * H, "]");
  std::vector<float> mix(size_t(T * n_mix));
  mhc_mix(streams, T, N * H, mix_eps, fn, mix.data());
  return mix;
}

void CpuOps::mhc_pre(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base,
                     const float* scale, int64_t N, int64_t H, int64_t sinkhorn_iters, float eps,
                     const float* norm_weight, float norm_eps, float* x, float* post, float* comb) {
  DSQ_CHECK((post == nullptr) == (comb == nullptr), "mhc_pre: post and comb must both be given or both be null");
  const int64_t n_mix = (2 + N) * N;
  const std::vector<float> mix_rows = mixing_logits(streams, T, fn, mix_eps, N, H, "mhc_pre");
  const float* mix = mix_rows.data();
  parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    float pre[64], unused_post[64];
    std::vector<float> unused_comb(post ? 0 : size_t(N * N));
    for (int64_t t = t0; t < t1; ++t) {
      cpu::mhc_coefficients(mix + t * n_mix, base, scale, N, sinkhorn_iters, eps, pre,
                            post ? post + t * N : unused_post,
                            comb ? comb + t * N * N : unused_comb.data());
      mhc_collapse(streams + t * N * H, pre, N, H, x + t * H);
      if (norm_weight) cpu::rms_norm(x + t * H, 1, H, H, norm_weight, norm_eps, x + t * H);
    }
  });
}

void CpuOps::mhc_coefficients(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps,
                              const float* base, const float* scale, int64_t N, int64_t H, int64_t sinkhorn_iters,
                              float eps, float* post, float* comb) {
  const int64_t n_mix = (2 + N) * N;
  const std::vector<float> mix_rows = mixing_logits(streams, T, fn, mix_eps, N, H, "mhc_coefficients");
  parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    float pre[64];
    for (int64_t t = t0; t < t1; ++t)
      cpu::mhc_coefficients(mix_rows.data() + t * n_mix, base, scale, N, sinkhorn_iters, eps, pre, post + t * N,
                            comb + t * N * N);
  });
}

void CpuOps::mhc_post(float* streams, const float* post, const float* comb, const float* y, const float* y_extra,
                      int64_t T, int64_t N, int64_t H) {
  parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    std::vector<float> sum(y_extra ? size_t(H) : 0);
    for (int64_t t = t0; t < t1; ++t) {
      const float* a = y + t * H;
      if (y_extra) {
        for (int64_t c = 0; c < H; ++c) sum[size_t(c)] = a[c] + y_extra[t * H + c];
        a = sum.data();
      }
      mhc_update(streams + t * N * H, post + t * N, comb + t * N * N, a, N, H);
    }
  });
}

void CpuOps::hc_head(const float* streams, const float* mix, const float* base, float scale, int64_t n, int64_t N,
                     int64_t H, float eps, float* out) {
  DSQ_CHECK(N <= 64, "hc_mult ", N, " too large");
  for (int64_t i = 0; i < n; ++i) {
    float pre[64];
    hc_head_weights(mix + i * N, base, scale, N, eps, pre);
    mhc_collapse(streams + i * N * H, pre, N, H, out + i * H);
  }
}

void CpuOps::route(const float* logits, int64_t T, int64_t E, const float* bias, const int64_t* tid2eid,
                   const int64_t* tokens, int64_t vocab, int64_t k, float scaling, int64_t* chosen, float* weights) {
  parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (tid2eid) {
        const int64_t id = tokens[t];
        DSQ_CHECK(id >= 0 && id < vocab, "token id ", id, " outside the vocabulary");
        route_hash(logits + t * E, E, tid2eid + id * k, k, scaling, chosen + t * k, weights + t * k);
      } else {
        route_topk(logits + t * E, E, bias, k, scaling, chosen + t * k, weights + t * k);
      }
    }
  });
}

void CpuOps::moe_experts(const float* x, int64_t T, int64_t H, const backend::ExpertLinears* experts,
                         int64_t n_experts, const int64_t* chosen, const float* weights, int64_t k, float limit,
                         float* out, backend::ExpertInputTap* tap) {
  // Tokens (and their weights) per expert, in token order.
  std::vector<std::vector<std::pair<int64_t, float>>> routed(static_cast<size_t>(n_experts));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = chosen[t * k + j];
      DSQ_CHECK(e >= 0 && e < n_experts, "moe: expert id ", e, " outside [0, ", n_experts, ")");
      routed[size_t(e)].push_back({t, weights[t * k + j]});
    }

  std::fill(out, out + T * H, 0.0f);
  std::vector<float> xe, gate, up, ye;
  for (int64_t e = 0; e < n_experts; ++e) {
    const auto& rows = routed[size_t(e)];
    if (rows.empty()) continue;
    const backend::ExpertLinears& ex = experts[e];
    const int64_t n = int64_t(rows.size()), F = ex.gate->rows;
    xe.resize(size_t(n * H));
    gate.resize(size_t(n * F));
    up.resize(size_t(n * F));
    ye.resize(size_t(n * H));
    parallel_for(n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::memcpy(xe.data() + r * H, x + rows[r].first * H, H * sizeof(float));
    });
    // Expert(x) = W2 · (SiLU(min(W1·x, λ)) ⊙ clamp(W3·x, −λ, λ)).
    if (tap) tap->on_expert_input(e, 0, xe.data(), n, H);
    cpu::linear(xe.data(), n, *ex.gate, gate.data());
    cpu::linear(xe.data(), n, *ex.up, up.data());
    swiglu_clamped(gate.data(), up.data(), n * F, limit, gate.data());
    if (tap) tap->on_expert_input(e, 1, gate.data(), n, F);
    cpu::linear(gate.data(), n, *ex.down, ye.data());
    // Each token appears once per expert, so rows write disjoint outputs.
    parallel_for(n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* o = out + rows[r].first * H;
        const float wt = rows[r].second;
        for (int64_t h = 0; h < H; ++h) o[h] += wt * ye[r * H + h];
      }
    });
  }
}

}  // namespace dsq::cpu
