// The attention of one layer over a batch (spec §2.5–§2.10, state update §3.2): q/kv
// projections for all tokens at once; per sequence the compressors' update, the indexer's
// scores and selection, the sink attention over window, new keys and entries (its output
// turned back by the inverse rope in the same op), and the window update (for a decode
// step of several sequences, both as one decode_attention call); then the grouped output
// projection.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "model/layer_blocks.h"

namespace dsq::model {

namespace {

// Allocates a layer's state buffers on first use (sizes from the config).
void ensure_layer_state(backend::Ops& ops, const ModelConfig& c, AttentionKind kind, int64_t rate,
                        LayerState& ls) {
  if (ls.window.defined()) return;
  const int64_t D = c.head_dim, DI = c.index_head_dim;
  ls.window = ops.alloc(DType::F32, {std::max<int64_t>(c.sliding_window - 1, 1), D});
  if (kind == AttentionKind::Sliding) return;
  const int64_t raw = kind == AttentionKind::CSA ? 2 * D : D;
  ls.compressor.ring_kv = ops.alloc(DType::F32, {2 * rate, raw});
  ls.compressor.ring_gate = ops.alloc(DType::F32, {2 * rate, raw});
  if (kind != AttentionKind::CSA) return;
  ls.indexer.ring_kv = ops.alloc(DType::F32, {2 * rate, 2 * DI});
  ls.indexer.ring_gate = ops.alloc(DType::F32, {2 * rate, 2 * DI});
}

// Whether a sequence's S new rows from position p0 close a compressor window of `rate`.
bool closes_window(int64_t p0, int64_t S, int64_t rate) { return (p0 + S) / rate > p0 / rate; }

// Runs one compressor over a sequence's S new raw rows; returns the entries now valid.
// When the rows close no window, compress() would only store them in the compressor's
// rings, which nothing reads before the next call: those stores are appended to
// *deferred instead (the caller runs them with its window update, ops.h store_rings).
int64_t run_compressor(backend::Ops& ops, CompressorState& st, const CompressorWeights& w, bool overlap,
                       int64_t rate, int64_t width, const cpu::RopeFrequencies& rope, float eps, const float* kv,
                       const float* gate, int64_t p0, int64_t S, std::vector<backend::RingStore>& deferred) {
  const int64_t count = (p0 + S) / rate;
  ops.grow_rows(st.entries, std::max<int64_t>(count, 1), width);
  const backend::CompressorParams params{&w.ape, &w.norm, rate, width, overlap, eps, &rope};
  if (!closes_window(p0, S, rate)) {
    const auto stores = backend::compressor_ring_stores(params, st.ring_kv.mutable_data<float>(),
                                                        st.ring_gate.mutable_data<float>(), kv, gate, p0, S);
    deferred.insert(deferred.end(), stores.begin(), stores.end());
    return count;
  }
  ops.compress(params, st.ring_kv.mutable_data<float>(), st.ring_gate.mutable_data<float>(),
               st.entries.mutable_data<float>(), kv, gate, p0, S);
  return count;
}

}  // namespace

void attention_block(const PassContext& ctx, int layer, const AttentionWeights& w,
                     const cpu::RopeFrequencies& rope, const float* x, float* out) {
  const ModelConfig& c = ctx.config;
  backend::Ops& ops = ctx.ops;
  Workspace& ws = ctx.workspace;
  const int64_t T = ctx.num_tokens(), D = c.head_dim, nh = c.num_heads, qr = c.q_lora_rank;
  const float eps = float(c.rms_norm_eps);
  const AttentionKind kind = c.attention[layer];
  const int64_t rate = c.compress_rate(layer);
  const bool csa = kind == AttentionKind::CSA;

  // The projections of x: the query and key/value heads on the main lane; the
  // compressors' raw rows and the indexer's head weights, which nothing reads before the
  // compressors run, as side work (ops.h) concurrent with the query path.
  const int64_t raw = csa ? 2 * D : D;
  const int64_t nI = c.index_n_heads, DI = c.index_head_dim, topk = c.index_topk;
  float* q_residual = ws.f32("attn.q_residual", T * qr);
  float* kv = ws.f32("attn.kv", T * D);
  float* q = ws.f32("attn.q", T * nh * D);
  float* iq = csa ? ws.f32("attn.index_q", T * nI * DI) : nullptr;
  std::vector<LinearTarget> side_from_x;
  float *comp_kv = nullptr, *comp_gate = nullptr;
  if (kind != AttentionKind::Sliding) {
    comp_kv = ws.f32("attn.comp_kv", T * raw);
    comp_gate = ws.f32("attn.comp_gate", T * raw);
    side_from_x.insert(side_from_x.end(), {{&w.compressor.wkv, comp_kv}, {&w.compressor.wgate, comp_gate}});
  }
  float *iw = nullptr, *ikv = nullptr, *igate = nullptr;
  if (csa) {
    iw = ws.f32("attn.index_w", T * nI);
    ikv = ws.f32("attn.index_kv", T * 2 * DI);
    igate = ws.f32("attn.index_gate", T * 2 * DI);
    side_from_x.insert(side_from_x.end(), {{&w.indexer.weights_proj, iw},
                                           {&w.indexer.compressor.wkv, ikv},
                                           {&w.indexer.compressor.wgate, igate}});
  }
  if (!side_from_x.empty()) {
    ops.start_side_work();
    run_linears(ctx, x, T, side_from_x);
    ops.end_side_work();
  }
  run_linears(ctx, x, T, {{&w.wq_a, q_residual}, {&w.wkv, kv}});

  // q_residual = q_norm(wq_a·x), and the shared key/value head's norm and rope in the same
  // op (one launch): the head needs nothing of wq_b.
  ops.rms_norm_and_norm_rope(q_residual, T, qr, qr, ops.resident(w.q_norm), q_residual, kv, T, 1, D,
                             ops.resident(w.kv_norm), eps, ctx.ids.positions_dev, rope);

  // Queries: wq_b·q_residual; per-head unweighted norm; rope. The CSA indexer's queries
  // come from the same q_residual: both projections in one launch.
  if (csa)
    run_linears(ctx, q_residual, T, {{&w.wq_b, q}, {&w.indexer.wq_b, iq}});
  else
    run_linear(ctx, w.wq_b, q_residual, T, q);
  ops.norm_rope(q, T, nh, D, nullptr, eps, ctx.ids.positions_dev, rope);
  if (csa) ops.rope(iq, T, nI, DI, ctx.ids.positions_dev, rope, false);

  // The side work (this block's projections and the layer's mixing coefficients) is
  // joined before the attention state only where that reads it: the CSA indexer's scores
  // read its head weights, and compress() (a step that closes a window) the compressors'
  // rows. Otherwise (sliding layers; an HCA layer's decode step inside a window, 127 in
  // 128) the attention starts beside the side lane's tail, and the block joins at its end.
  bool any_closes = false;
  for (size_t b = 0; b < ctx.batch.size() && kind != AttentionKind::Sliding; ++b)
    any_closes = any_closes || closes_window(ctx.batch[b].state->position,
                                             ctx.ids.offsets[b + 1] - ctx.ids.offsets[b], rate);
  const bool join_first = csa || any_closes;
  // The attention state moves little memory: wo_a's weights load into the L2 meanwhile,
  // behind the side lane's tail where that is not joined (beside the state, the load
  // delays the state's own reads, and on the main lane its issue would be on the chain).
  if (join_first) {
    ops.wait_side_work();
    ops.prefetch_weights(w.wo_a.w);
  } else {
    ops.start_side_work();
    ops.prefetch_weights(w.wo_a.w);
    ops.end_side_work();
  }
  // The ring stores (ops.h store_rings) are side work too: nothing reads them before the
  // next step, and the window's must follow the attention's read of the ring, which
  // start_side_work orders.
  const auto store_beside = [&](std::vector<backend::RingStore>& stores) {
    ops.start_side_work();
    ops.store_rings(stores.data(), int64_t(stores.size()));
    ops.end_side_work();
    stores.clear();
  };

  // Per sequence: compressors first (a token that closes a window sees its entry), the
  // indexer's picks, attention (with the output's inverse rope), then the window ring
  // takes the new keys, in one op with the compressors' deferred ring stores (a decode
  // step that closes no window: one launch where there were three, off the chain from
  // the query path to the attention). A decode step of several sequences (one token
  // each) leaves the attention and the window update to one decode_attention call for
  // all of them, after the deferred stores.
  float* o = ws.f32("attn.o", T * nh * D);
  const float scale = 1.0f / std::sqrt(float(D));
  const bool batched_decode = ctx.batch.size() >= 2 && T == int64_t(ctx.batch.size());
  std::vector<backend::DecodeSequence> decoding;
  int64_t* selected_all = csa ? ws.i64("attn.index_selected", T * topk) : nullptr;
  backend::EntrySelection selection = backend::EntrySelection::None;
  std::vector<backend::RingStore> ring_stores;
  for (size_t b = 0; b < ctx.batch.size(); ++b) {
    const int64_t s0 = ctx.ids.offsets[b], S = ctx.ids.offsets[b + 1] - s0;
    if (S == 0) continue;
    const int64_t p0 = ctx.batch[b].state->position;
    LayerState& ls = ctx.batch[b].state->layers[size_t(layer)];
    ensure_layer_state(ops, c, kind, rate, ls);
    int64_t n_entries = 0;
    int64_t* selected = nullptr;
    if (kind != AttentionKind::Sliding) {
      n_entries = run_compressor(ops, ls.compressor, w.compressor, csa, rate, D, rope, eps, comp_kv + s0 * raw,
                                 comp_gate + s0 * raw, p0, S, ring_stores);
      selection = backend::EntrySelection::AllVisible;
    }
    if (csa) {
      run_compressor(ops, ls.indexer, w.indexer.compressor, true, rate, DI, rope, eps, ikv + s0 * 2 * DI,
                     igate + s0 * 2 * DI, p0, S, ring_stores);
      // Sized by the entries' capacity, which grows geometrically: sized by n_entries it
      // would be reallocated (a device allocation and free) every m decode steps.
      float* scores = ws.f32("attn.index_scores", S * std::max<int64_t>(ls.indexer.entries.dim(0), n_entries));
      ops.indexer_scores(iq + s0 * nI * DI, iw + s0 * nI, S, nI, DI, ls.indexer.entries.data<float>(), n_entries,
                         scores);
      selected = selected_all + s0 * topk;
      ops.indexer_topk(scores, S, n_entries, topk, p0, rate, selected);
      selection = backend::EntrySelection::Selected;
    }
    const float* entries = n_entries > 0 ? ls.compressor.entries.data<float>() : nullptr;
    if (batched_decode) {
      decoding.push_back({ls.window.mutable_data<float>(), entries, n_entries, selected, p0});
      continue;
    }
    ops.sink_attention(q + s0 * nh * D, S, nh, D, kv + s0 * D, ls.window.data<float>(), p0, c.sliding_window,
                       selection, entries, n_entries, rate, selected, topk, ops.resident(w.sinks), scale, &rope,
                       o + s0 * nh * D);
    if (c.sliding_window > 1)  // as update_window
      ring_stores.push_back({ls.window.mutable_data<float>(), kv + s0 * D, p0, S, D, c.sliding_window - 1});
    if (!ring_stores.empty()) store_beside(ring_stores);
  }
  if (!ring_stores.empty()) store_beside(ring_stores);
  if (batched_decode)
    ops.decode_attention(q, int64_t(decoding.size()), decoding.data(), nh, D, kv, c.sliding_window, selection, rate,
                         topk, ops.resident(w.sinks), scale, &rope, o);

  // Grouped output projection: group g's heads through rows [g·R, (g+1)·R) of wo_a.
  const int64_t G = c.o_groups, R = c.o_lora_rank, group_width = nh * D / G;
  float* z = ws.f32("attn.z", T * G * R);
  if (ctx.observer) {
    std::vector<float> group_in(size_t(T * group_width));
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t t = 0; t < T; ++t)
        std::memcpy(group_in.data() + t * group_width, o + t * nh * D + g * group_width, group_width * sizeof(float));
      ctx.observer->on_linear({w.wo_a.name, group_in.data(), T, group_width, g * R, (g + 1) * R});
    }
  }
  ops.linear_grouped(w.wo_a.w, G, o, T, z);
  run_linear(ctx, w.wo_b, z, T, out);
  ops.wait_side_work();
}

}  // namespace dsq::model
