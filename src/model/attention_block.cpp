// The attention of one layer over a batch (spec §2.5–§2.10, state update §3.2): q/kv
// projections for all tokens at once; per sequence the window and the compressors (and
// the indexer scores); the indexer selection and sink attention of all tokens together;
// then the grouped output projection.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/attention.h"
#include "backend/cpu/indexer.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/rms_norm.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/layer_blocks.h"

namespace dsq::model {

namespace {

std::vector<int64_t> repeat_each(const std::vector<int64_t>& v, int64_t times) {
  std::vector<int64_t> out;
  out.reserve(v.size() * size_t(times));
  for (int64_t x : v) out.insert(out.end(), size_t(times), x);
  return out;
}

}  // namespace

void attention_block(const PassContext& ctx, int layer, const AttentionWeights& w,
                     const cpu::RopeFrequencies& rope, const float* x, float* out) {
  const ModelConfig& c = ctx.config;
  const int64_t T = ctx.num_tokens(), D = c.head_dim, nh = c.num_heads, qr = c.q_lora_rank;
  const float eps = float(c.rms_norm_eps);
  const AttentionKind kind = c.attention[layer];
  const int64_t rate = c.compress_rate(layer);

  // Queries: q_residual = q_norm(wq_a·x); per-head unweighted norm; rope.
  std::vector<float> q_residual(size_t(T * qr));
  run_linear(ctx, w.wq_a, x, T, q_residual.data());
  cpu::rms_norm(q_residual.data(), T, qr, qr, w.q_norm.data(), eps, q_residual.data());
  std::vector<float> q(size_t(T * nh * D));
  run_linear(ctx, w.wq_b, q_residual.data(), T, q.data());
  cpu::rms_norm(q.data(), T * nh, D, D, nullptr, eps, q.data());
  const std::vector<int64_t> head_positions = repeat_each(ctx.positions, nh);
  cpu::apply_rope(q.data(), T * nh, D, D, head_positions.data(), rope, false);

  // The shared key/value head.
  std::vector<float> kv(size_t(T * D));
  run_linear(ctx, w.wkv, x, T, kv.data());
  cpu::rms_norm(kv.data(), T, D, D, w.kv_norm.data(), eps, kv.data());
  cpu::apply_rope(kv.data(), T, D, D, ctx.positions.data(), rope, false);

  // Raw compressor projections.
  const bool csa = kind == AttentionKind::CSA;
  const int64_t raw = csa ? 2 * D : D;
  std::vector<float> comp_kv, comp_gate;
  if (kind != AttentionKind::Sliding) {
    comp_kv.resize(size_t(T * raw));
    comp_gate.resize(size_t(T * raw));
    run_linear(ctx, w.compressor.wkv, x, T, comp_kv.data());
    run_linear(ctx, w.compressor.wgate, x, T, comp_gate.data());
  }
  // Indexer queries (from the q_residual), head weights (from x) and its compressor.
  const int64_t nI = c.index_n_heads, DI = c.index_head_dim;
  std::vector<float> iq, iw, ikv, igate;
  if (csa) {
    iq.resize(size_t(T * nI * DI));
    run_linear(ctx, w.indexer.wq_b, q_residual.data(), T, iq.data());
    const std::vector<int64_t> index_positions = repeat_each(ctx.positions, nI);
    cpu::apply_rope(iq.data(), T * nI, DI, DI, index_positions.data(), rope, false);
    iw.resize(size_t(T * nI));
    run_linear(ctx, w.indexer.weights_proj, x, T, iw.data());
    ikv.resize(size_t(T * 2 * DI));
    igate.resize(size_t(T * 2 * DI));
    run_linear(ctx, w.indexer.compressor.wkv, x, T, ikv.data());
    run_linear(ctx, w.indexer.compressor.wgate, x, T, igate.data());
  }

  // Per sequence (in order): window keys, compressor updates, indexer scores. Keys of
  // sequence b: its cached window rows, then this call's; keys[k] sits at first_pos + k.
  struct SequenceKeys {
    std::vector<float> keys;
    int64_t first_pos = 0;
    std::vector<float> scores;  // CSA: [S, entries]
    const LayerState* state = nullptr;
  };
  const int64_t W = c.sliding_window;
  std::vector<SequenceKeys> seqs(ctx.batch.size());
  std::vector<size_t> sequence_of(static_cast<size_t>(T));
  for (size_t b = 0; b < ctx.batch.size(); ++b) {
    LayerState& ls = ctx.batch[b].state->layers[size_t(layer)];
    const int64_t s0 = ctx.offsets[b], S = ctx.offsets[b + 1] - s0;
    SequenceKeys& sk = seqs[b];
    sk.state = &ls;
    std::fill(sequence_of.begin() + s0, sequence_of.begin() + s0 + S, b);
    if (S == 0) continue;
    sk.first_pos = ctx.batch[b].state->position - ls.window_rows;
    sk.keys.assign(ls.window.begin(), ls.window.begin() + ls.window_rows * D);
    sk.keys.insert(sk.keys.end(), kv.begin() + s0 * D, kv.begin() + (s0 + S) * D);
    // Keep the last W−1 keys for the next call.
    const int64_t n_keys = ls.window_rows + S, keep = std::min(W - 1, n_keys);
    ls.window.assign(sk.keys.end() - keep * D, sk.keys.end());
    ls.window_rows = keep;

    // Compressors before attention, so tokens that close a window can see its entry.
    if (kind != AttentionKind::Sliding)
      compress_tokens(ls.compressor, w.compressor, csa, rate, D, comp_kv.data() + s0 * raw,
                      comp_gate.data() + s0 * raw, S, rope, eps);
    if (csa) {
      compress_tokens(ls.indexer, w.indexer.compressor, true, rate, DI, ikv.data() + s0 * 2 * DI,
                      igate.data() + s0 * 2 * DI, S, rope, eps);
      DSQ_CHECK(ls.indexer.count == ls.compressor.count, "layer ", layer,
                ": indexer and compressor entry counts differ");
      // Indexer scores of this sequence's queries against all entries now held.
      sk.scores.resize(size_t(S * ls.compressor.count));
      cpu::indexer_scores(iq.data() + s0 * nI * DI, iw.data() + s0 * nI, S, nI, DI, ls.indexer.entries.data(),
                          ls.compressor.count, sk.scores.data());
    }
  }

  // Attention of every token of every sequence, split over the thread pool.
  std::vector<float> o(size_t(T * nh * D));
  const float scale = 1.0f / std::sqrt(float(D));
  parallel_for(T, 4, [&](int64_t t0, int64_t t1) {
    std::vector<const float*> key_rows;
    std::vector<float> scratch;
    for (int64_t t = t0; t < t1; ++t) {
      SequenceKeys& sk = seqs[sequence_of[t]];  // token t alone touches its row of scores
      const CompressorState& comp = sk.state->compressor;
      const int64_t p = ctx.positions[t], i = t - ctx.offsets[sequence_of[t]];
      key_rows.clear();
      for (int64_t u = std::max(p - W + 1, sk.first_pos); u <= p; ++u)
        key_rows.push_back(sk.keys.data() + (u - sk.first_pos) * D);
      const int64_t visible = (p + 1) / std::max<int64_t>(rate, 1);
      if (kind == AttentionKind::HCA) {
        for (int64_t s = 0; s < std::min(visible, comp.count); ++s) key_rows.push_back(comp.entries.data() + s * D);
      } else if (csa) {
        for (int64_t s : cpu::indexer_select(sk.scores.data() + i * comp.count, comp.count, c.index_topk, visible))
          key_rows.push_back(comp.entries.data() + s * D);
      }
      scratch.resize(key_rows.size());
      float* ot = o.data() + t * nh * D;
      cpu::sink_attention(q.data() + t * nh * D, nh, D, key_rows.data(), int64_t(key_rows.size()), w.sinks.data(),
                          scale, ot, scratch.data());
      for (int64_t h = 0; h < nh; ++h) cpu::apply_rope_one(ot + h * D, D, p, rope, true);
    }
  });

  // Grouped output projection: group g's heads through rows [g·R, (g+1)·R) of wo_a.
  const int64_t G = c.o_groups, R = c.o_lora_rank, group_width = nh * D / G;
  std::vector<float> z(size_t(T * G * R));
  std::vector<float> group_in;
  for (int64_t g = 0; g < G; ++g) {
    if (ctx.observer) {
      group_in.resize(size_t(T * group_width));
      for (int64_t t = 0; t < T; ++t)
        std::memcpy(group_in.data() + t * group_width, o.data() + t * nh * D + g * group_width,
                    group_width * sizeof(float));
      ctx.observer->on_linear({w.wo_a.name, group_in.data(), T, group_width, g * R, (g + 1) * R});
    }
    cpu::linear_rows(o.data() + g * group_width, T, nh * D, w.wo_a.w, g * R, (g + 1) * R, z.data() + g * R,
                     G * R);
  }
  run_linear(ctx, w.wo_b, z.data(), T, out);
}

}  // namespace dsq::model
