#include "backend/profiling_ops.h"

#include <algorithm>
#include <cstdio>
#include <vector>

namespace dsq::backend {

std::string ProfilingOps::table() const {
  std::vector<std::pair<std::string, Entry>> rows(totals_.begin(), totals_.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  double total = 0;
  for (const auto& r : rows) total += r.second.seconds;
  std::string out = "| op | calls | total ms | per call us | share |\n|---|---:|---:|---:|---:|\n";
  char line[256];
  for (const auto& [name, e] : rows) {
    std::snprintf(line, sizeof line, "| %s | %lld | %.3f | %.1f | %.1f %% |\n", name.c_str(), (long long)e.calls,
                  e.seconds * 1e3, e.seconds * 1e6 / double(std::max<int64_t>(e.calls, 1)),
                  total > 0 ? 100.0 * e.seconds / total : 0.0);
    out += line;
  }
  return out;
}

void ProfilingOps::linear(const QuantizedMatrix& w, const float* x, int64_t n, float* y) {
  timed("linear " + std::string(weight_format_name(w.format)), [&] {
    inner_->linear(w, x, n, y);
  });
}

void ProfilingOps::linear_many(const QuantizedMatrix* const* ws, float* const* ys, int64_t count, const float* x,
                               int64_t n) {
  timed("linear_many", [&] {
    inner_->linear_many(ws, ys, count, x, n);
  });
}

void ProfilingOps::linear_grouped(const QuantizedMatrix& w, int64_t groups, const float* x, int64_t n, float* y) {
  timed("linear_grouped", [&] {
    inner_->linear_grouped(w, groups, x, n, y);
  });
}

void ProfilingOps::rms_norm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float eps, float* y) {
  timed("rms_norm", [&] {
    inner_->rms_norm(x, n, dim, stride, weight, eps, y);
  });
}

void ProfilingOps::rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const int64_t* positions, const cpu::RopeFrequencies& table, bool inverse) {
  timed("rope", [&] {
    inner_->rope(x, n_tokens, heads, dim, positions, table, inverse);
  });
}

void ProfilingOps::swiglu(const float* gate, const float* up, int64_t n, float limit, float* out) {
  timed("swiglu", [&] {
    inner_->swiglu(gate, up, n, limit, out);
  });
}

void ProfilingOps::add(float* dst, const float* src, int64_t n) {
  timed("add", [&] {
    inner_->add(dst, src, n);
  });
}

void ProfilingOps::gather_rows(const float* src, const int64_t* rows, int64_t n, int64_t width, float* dst) {
  timed("gather_rows", [&] {
    inner_->gather_rows(src, rows, n, width, dst);
  });
}

void ProfilingOps::embed_streams(const QuantizedMatrix& table, const int64_t* ids, int64_t T, int64_t n_streams, float* streams) {
  timed("embed_streams", [&] {
    inner_->embed_streams(table, ids, T, n_streams, streams);
  });
}

void ProfilingOps::norm_rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const float* weight, float eps, const int64_t* positions, const cpu::RopeFrequencies& table) {
  timed("norm_rope", [&] {
    inner_->norm_rope(x, n_tokens, heads, dim, weight, eps, positions, table);
  });
}

void ProfilingOps::rms_norm_and_norm_rope(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float* y, float* heads_x, int64_t n_tokens, int64_t heads, int64_t head_dim, const float* head_weight, float eps, const int64_t* positions, const cpu::RopeFrequencies& table) {
  timed("rms_norm_and_norm_rope", [&] {
    inner_->rms_norm_and_norm_rope(x, n, dim, stride, weight, y, heads_x, n_tokens, heads, head_dim, head_weight, eps, positions, table);
  });
}

void ProfilingOps::mhc_mix(const float* streams, int64_t T, int64_t width, float eps, const QuantizedMatrix& fn, float* mix) {
  timed("mhc_mix", [&] {
    inner_->mhc_mix(streams, T, width, eps, fn, mix);
  });
}

void ProfilingOps::mhc_pre(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base, const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps, const float* norm_weight, float norm_eps, float* x, float* post, float* comb) {
  timed("mhc_pre", [&] {
    inner_->mhc_pre(streams, T, fn, mix_eps, base, scale, n_streams, hidden, sinkhorn_iters, eps, norm_weight, norm_eps, x, post, comb);
  });
}

void ProfilingOps::mhc_post(float* streams, const float* post, const float* comb, const float* y, const float* y_extra, int64_t T, int64_t n_streams, int64_t hidden) {
  timed("mhc_post", [&] {
    inner_->mhc_post(streams, post, comb, y, y_extra, T, n_streams, hidden);
  });
}

void ProfilingOps::mhc_coefficients(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base, const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps, float* post, float* comb) {
  timed("mhc_coefficients", [&] {
    inner_->mhc_coefficients(streams, T, fn, mix_eps, base, scale, n_streams, hidden, sinkhorn_iters, eps, post, comb);
  });
}

void ProfilingOps::mhc_post_pre(float* streams, const float* post, const float* comb, const float* y, const float* y_extra, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base, const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps, const float* norm_weight, float norm_eps, float* x, float* next_post, float* next_comb) {
  timed("mhc_post_pre", [&] {
    inner_->mhc_post_pre(streams, post, comb, y, y_extra, T, fn, mix_eps, base, scale, n_streams, hidden, sinkhorn_iters, eps, norm_weight, norm_eps, x, next_post, next_comb);
  });
}

void ProfilingOps::prefetch_weights(const QuantizedMatrix& w) {
  timed("prefetch_weights", [&] {
    inner_->prefetch_weights(w);
  });
}

void ProfilingOps::hc_head(const float* streams, const float* mix, const float* base, float scale, int64_t n, int64_t n_streams, int64_t hidden, float eps, float* out) {
  timed("hc_head", [&] {
    inner_->hc_head(streams, mix, base, scale, n, n_streams, hidden, eps, out);
  });
}

void ProfilingOps::route(const float* logits, int64_t T, int64_t n_experts, const float* bias, const int64_t* tid2eid, const int64_t* tokens, int64_t vocab, int64_t k, float scaling, int64_t* chosen, float* weights) {
  timed("route", [&] {
    inner_->route(logits, T, n_experts, bias, tid2eid, tokens, vocab, k, scaling, chosen, weights);
  });
}

void ProfilingOps::moe_experts(const float* x, int64_t T, int64_t hidden, const ExpertLinears* experts, int64_t n_experts, const int64_t* chosen, const float* weights, int64_t k, float limit, float* out, ExpertInputTap* tap) {
  timed("moe_experts", [&] {
    inner_->moe_experts(x, T, hidden, experts, n_experts, chosen, weights, k, limit, out, tap);
  });
}

void ProfilingOps::compress(const CompressorParams& p, float* ring_kv, float* ring_gate, float* entries, const float* kv, const float* gate, int64_t p0, int64_t S) {
  timed("compress", [&] {
    inner_->compress(p, ring_kv, ring_gate, entries, kv, gate, p0, S);
  });
}

void ProfilingOps::indexer_scores(const float* q, const float* weights, int64_t S, int64_t n_heads, int64_t head_dim, const float* keys, int64_t n_keys, float* scores) {
  timed("indexer_scores", [&] {
    inner_->indexer_scores(q, weights, S, n_heads, head_dim, keys, n_keys, scores);
  });
}

void ProfilingOps::indexer_topk(float* scores, int64_t S, int64_t n_keys, int64_t topk, int64_t p0, int64_t rate, int64_t* selected) {
  timed("indexer_topk", [&] {
    inner_->indexer_topk(scores, S, n_keys, topk, p0, rate, selected);
  });
}

void ProfilingOps::sink_attention(const float* q, int64_t S, int64_t n_heads, int64_t dim, const float* new_keys, const float* ring, int64_t p0, int64_t window, EntrySelection selection, const float* entries, int64_t n_entries, int64_t rate, const int64_t* selected, int64_t topk, const float* sinks, float scale, const cpu::RopeFrequencies* output_rope, float* out) {
  timed("sink_attention", [&] {
    inner_->sink_attention(q, S, n_heads, dim, new_keys, ring, p0, window, selection, entries, n_entries, rate, selected, topk, sinks, scale, output_rope, out);
  });
}

void ProfilingOps::store_rings(const RingStore* stores, int64_t n) {
  timed("store_rings", [&] { inner_->store_rings(stores, n); });
}

void ProfilingOps::decode_attention(const float* q, int64_t n, const DecodeSequence* seqs, int64_t n_heads,
                                    int64_t dim, const float* new_keys, int64_t window, EntrySelection selection,
                                    int64_t rate, int64_t topk, const float* sinks, float scale,
                                    const cpu::RopeFrequencies* output_rope, float* out) {
  timed("decode_attention", [&] {
    inner_->decode_attention(q, n, seqs, n_heads, dim, new_keys, window, selection, rate, topk, sinks, scale,
                             output_rope, out);
  });
}

}  // namespace dsq::backend
