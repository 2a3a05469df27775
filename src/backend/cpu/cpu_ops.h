// CpuOps: backend::Ops on the host, fp32, multithreaded through the thread pool — the
// reference every other backend is checked against. Each method forwards to the plain
// pointer functions of backend/cpu/ (one op per file); the stateful attention ops
// (compress, sink_attention over the window ring, indexer_topk) are defined in
// cpu_attention_ops.cpp on top of compressor_pool, attention and indexer.
#pragma once

#include <vector>

#include "backend/ops.h"

namespace dsq::cpu {

class CpuOps final : public backend::Ops {
 public:
  Device device() const override { return Device::CPU; }
  Tensor alloc(DType dtype, Shape shape) override;
  Tensor upload(const Tensor& host) override;
  Tensor to_host(const Tensor& t) override;
  void upload_into(void* dst, const void* host, size_t bytes) override;
  void grow_rows(Tensor& t, int64_t rows, int64_t width) override;
  const float* resident(const std::vector<float>& host) override { return host.data(); }
  const int64_t* resident(const std::vector<int64_t>& host) override { return host.data(); }
  void copy(float* dst, const float* src, int64_t n) override;

  void linear(const QuantizedMatrix& w, const float* x, int64_t n, float* y) override;
  void linear_many(const QuantizedMatrix* const* ws, float* const* ys, int64_t count, const float* x,
                   int64_t n) override;
  void linear_grouped(const QuantizedMatrix& w, int64_t groups, const float* x, int64_t n, float* y) override;
  void rms_norm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float eps,
                float* y) override;
  void rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const int64_t* positions,
            const RopeFrequencies& table, bool inverse) override;
  void norm_rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const float* weight, float eps,
                 const int64_t* positions, const RopeFrequencies& table) override;
  void rms_norm_and_norm_rope(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float* y,
                              float* heads_x, int64_t n_tokens, int64_t heads, int64_t head_dim,
                              const float* head_weight, float eps, const int64_t* positions,
                              const RopeFrequencies& table) override;
  void swiglu(const float* gate, const float* up, int64_t n, float limit, float* out) override;
  void add(float* dst, const float* src, int64_t n) override;
  void gather_rows(const float* src, const int64_t* rows, int64_t n, int64_t width, float* dst) override;

  void embed_streams(const QuantizedMatrix& table, const int64_t* ids, int64_t T, int64_t n_streams,
                     float* streams) override;
  void mhc_mix(const float* streams, int64_t T, int64_t width, float eps, const QuantizedMatrix& fn,
               float* mix) override;
  void mhc_pre(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base,
               const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps,
               const float* norm_weight, float norm_eps, float* x, float* post, float* comb) override;
  void mhc_coefficients(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base,
                        const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps,
                        float* post, float* comb) override;
  void mhc_post(float* streams, const float* post, const float* comb, const float* y, const float* y_extra,
                int64_t T, int64_t n_streams, int64_t hidden) override;
  void hc_head(const float* streams, const float* mix, const float* base, float scale, int64_t n,
               int64_t n_streams, int64_t hidden, float eps, float* out) override;

  void route(const float* logits, int64_t T, int64_t n_experts, const float* bias, const int64_t* tid2eid,
             const int64_t* tokens, int64_t vocab, int64_t k, float scaling, int64_t* chosen,
             float* weights) override;
  void moe_experts(const float* x, int64_t T, int64_t hidden, const backend::ExpertLinears* experts, int64_t n_experts,
                   const int64_t* chosen, const float* weights, int64_t k, float limit, float* out,
                   backend::ExpertInputTap* tap) override;

  void compress(const backend::CompressorParams& p, float* ring_kv, float* ring_gate, float* entries,
                const float* kv, const float* gate, int64_t p0, int64_t S) override;
  void indexer_scores(const float* q, const float* weights, int64_t S, int64_t n_heads, int64_t head_dim,
                      const float* keys, int64_t n_keys, float* scores) override;
  void indexer_topk(float* scores, int64_t S, int64_t n_keys, int64_t topk, int64_t p0, int64_t rate,
                    int64_t* selected) override;
  void sink_attention(const float* q, int64_t S, int64_t n_heads, int64_t dim, const float* new_keys,
                      const float* ring, int64_t p0, int64_t window, backend::EntrySelection selection,
                      const float* entries, int64_t n_entries, int64_t rate, const int64_t* selected,
                      int64_t topk, const float* sinks, float scale,
                      const cpu::RopeFrequencies* output_rope, float* out) override;
  void store_rings(const backend::RingStore* stores, int64_t n) override;

  void synchronize() override {}

 private:
  // mhc_mix of the T rows after checking fn's shape [(2+N)·N, N·H] (op: for the message).
  std::vector<float> mixing_logits(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps,
                                   int64_t N, int64_t H, const char* op);
};

}  // namespace dsq::cpu
