// ProfilingOps: a backend::Ops that forwards every call to another Ops and measures it:
// after each op it waits for the device, so the wall time it adds to the op's total is
// the op's own run time (plus one synchronisation). For finding where a forward spends
// its time (dsq_model_bench prints its table); the waiting makes the whole forward slower, so
// its totals are a breakdown, not a speed.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "backend/ops.h"

namespace dsq::backend {

class ProfilingOps final : public Ops {
 public:
  explicit ProfilingOps(std::shared_ptr<Ops> inner) : inner_(std::move(inner)) {}
  // While disabled (the default) calls are only forwarded: no waiting, no totals.
  void set_enabled(bool on) { enabled_ = on; }

  struct Entry {
    int64_t calls = 0;
    double seconds = 0;
  };
  // Totals per op name ("linear fp8-block", "sink_attention", ...) since the last reset.
  const std::map<std::string, Entry>& totals() const { return totals_; }
  void reset() { totals_.clear(); }
  // A markdown table of the totals, largest first, with each op's share.
  std::string table() const;
  // Ops (by their table names) to drop instead of forwarding: a what-if for timing only
  // (what a forward costs without them). The results are then wrong.
  void set_skipped(std::set<std::string> names) { skipped_ = std::move(names); }
  // Wall time spent in to_host() since construction, enabled or not: the host waiting
  // for the device. A forward's wall time minus this is the host's own time to issue it.
  double to_host_seconds() const { return to_host_seconds_; }

  Device device() const override { return inner_->device(); }
  Tensor alloc(DType dtype, Shape shape) override { return inner_->alloc(dtype, std::move(shape)); }
  Tensor upload(const Tensor& host) override { return inner_->upload(host); }
  Tensor to_host(const Tensor& t) override {
    const Clock::time_point t0 = Clock::now();
    Tensor h = inner_->to_host(t);
    to_host_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
    return h;
  }
  void upload_into(void* dst, const void* host, size_t bytes) override { inner_->upload_into(dst, host, bytes); }
  void grow_rows(Tensor& t, int64_t rows, int64_t width) override { inner_->grow_rows(t, rows, width); }
  const float* resident(const std::vector<float>& host) override { return inner_->resident(host); }
  const int64_t* resident(const std::vector<int64_t>& host) override { return inner_->resident(host); }
  void copy(float* dst, const float* src, int64_t n) override { inner_->copy(dst, src, n); }
  void synchronize() override { inner_->synchronize(); }
  // Forwarded: while enabled every op is waited for anyway, so the lanes never overlap.
  void start_side_work() override { inner_->start_side_work(); }
  void end_side_work() override { inner_->end_side_work(); }
  void wait_side_work() override { inner_->wait_side_work(); }
  void prefetch_weights(const QuantizedMatrix& w) override;

  void linear(const QuantizedMatrix& w, const float* x, int64_t n, float* y) override;
  void linear_many(const QuantizedMatrix* const* ws, float* const* ys, int64_t count, const float* x,
                   int64_t n) override;
  void linear_grouped(const QuantizedMatrix& w, int64_t groups, const float* x, int64_t n, float* y) override;
  void rms_norm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float eps, float* y) override;
  void rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const int64_t* positions, const cpu::RopeFrequencies& table, bool inverse) override;
  void swiglu(const float* gate, const float* up, int64_t n, float limit, float* out) override;
  void add(float* dst, const float* src, int64_t n) override;
  void gather_rows(const float* src, const int64_t* rows, int64_t n, int64_t width, float* dst) override;
  void embed_streams(const QuantizedMatrix& table, const int64_t* ids, int64_t T, int64_t n_streams, float* streams) override;
  void norm_rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const float* weight, float eps, const int64_t* positions, const cpu::RopeFrequencies& table) override;
  void rms_norm_and_norm_rope(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float* y, float* heads_x, int64_t n_tokens, int64_t heads, int64_t head_dim, const float* head_weight, float eps, const int64_t* positions, const cpu::RopeFrequencies& table) override;
  void mhc_mix(const float* streams, int64_t T, int64_t width, float eps, const QuantizedMatrix& fn, float* mix) override;
  void mhc_pre(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base, const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps, const float* norm_weight, float norm_eps, float* x, float* post, float* comb) override;
  void mhc_post(float* streams, const float* post, const float* comb, const float* y, const float* y_extra, int64_t T, int64_t n_streams, int64_t hidden) override;
  void mhc_coefficients(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base, const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps, float* post, float* comb) override;
  void mhc_post_pre(float* streams, const float* post, const float* comb, const float* y, const float* y_extra, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base, const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps, const float* norm_weight, float norm_eps, float* x, float* next_post, float* next_comb) override;
  void hc_head(const float* streams, const float* mix, const float* base, float scale, int64_t n, int64_t n_streams, int64_t hidden, float eps, float* out) override;
  void route(const float* logits, int64_t T, int64_t n_experts, const float* bias, const int64_t* tid2eid, const int64_t* tokens, int64_t vocab, int64_t k, float scaling, int64_t* chosen, float* weights) override;
  void moe_experts(const float* x, int64_t T, int64_t hidden, const backend::ExpertLinears* experts, int64_t n_experts, const int64_t* chosen, const float* weights, int64_t k, float limit, float* out, backend::ExpertInputTap* tap) override;
  void compress(const backend::CompressorParams& p, float* ring_kv, float* ring_gate, float* entries, const float* kv, const float* gate, int64_t p0, int64_t S) override;
  void indexer_scores(const float* q, const float* weights, int64_t S, int64_t n_heads, int64_t head_dim, const float* keys, int64_t n_keys, float* scores) override;
  void indexer_topk(float* scores, int64_t S, int64_t n_keys, int64_t topk, int64_t p0, int64_t rate, int64_t* selected) override;
  void sink_attention(const float* q, int64_t S, int64_t n_heads, int64_t dim, const float* new_keys, const float* ring, int64_t p0, int64_t window, backend::EntrySelection selection, const float* entries, int64_t n_entries, int64_t rate, const int64_t* selected, int64_t topk, const float* sinks, float scale, const cpu::RopeFrequencies* output_rope, float* out) override;
  void store_rings(const RingStore* stores, int64_t n) override;
  void decode_attention(const float* q, int64_t n, const DecodeSequence* seqs, int64_t n_heads, int64_t dim,
                        const float* new_keys, int64_t window, EntrySelection selection, int64_t rate, int64_t topk,
                        const float* sinks, float scale, const cpu::RopeFrequencies* output_rope,
                        float* out) override;

 private:
  using Clock = std::chrono::steady_clock;
  // Runs `call` (the forwarded op) unless `name` is skipped; while enabled, waits for the
  // device before and after it and adds the wall time to the op's total.
  template <typename Call>
  void timed(const std::string& name, Call&& call) {
    if (!skipped_.empty() && skipped_.count(name) != 0) return;
    if (!enabled_) return call();
    inner_->synchronize();
    const Clock::time_point t0 = Clock::now();
    call();
    inner_->synchronize();
    Entry& e = totals_[name];
    ++e.calls;
    e.seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  }

  std::shared_ptr<Ops> inner_;
  bool enabled_ = false;
  std::map<std::string, Entry> totals_;
  std::set<std::string> skipped_;
  double to_host_seconds_ = 0;
};

}  // namespace dsq::backend
