// Ops: the operations the DeepSeek-V4 forward (model/) is written against, once, for every
// device. CpuOps (backend/cpu/cpu_ops.h) is the fp32 reference; CudaOps
// (backend/cuda/cuda_ops.h) runs the same functions on a GPU.
//
// Memory. Every float*/int* argument points into the ops' own device memory (host memory
// for CpuOps, GPU memory for CudaOps): buffers come from alloc() / upload(), and results
// go back to the host with to_host(). Host-side facts the forward needs to plan the work
// (token counts, positions, entry counts) are passed as plain integers.
//
// Parameters. Weights stay host objects (QuantizedMatrix, std::vector<float>); an op that
// takes one keeps its own device copy, made on first use and kept for the life of the
// ops object, keyed by the host object's address (so weights must not move or change
// while an Ops uses them). resident() is that mechanism for plain vectors.
//
// Decoding state layout (spec §3.1), owned by model/SequenceState but laid out here so
// that the stateful ops agree on it. For one layer and one sequence at position p0 (tokens
// consumed before this call):
//  - window ring [W−1, D]: the key of position u (normalised, rotated) at row u mod (W−1);
//    rows of positions max(0, p0−W+1) … p0−1 are valid.
//  - compressor raw rings kv, gate [2m, raw]: the raw projections (gate without position
//    bias) of position u at row u mod 2m; positions max(0, p0−2m) … p0−1 are valid. That
//    covers the unfinished window and, for CSA, the whole previous window.
//  - entries [capacity, width]: entry j (pooled, normalised, rotated at position j·m);
//    the first ⌊p0/m⌋ are valid. The caller grows capacity (grow_rows) before a call
//    that closes windows.
// The indexer of a CSA layer has its own rings and entries with the same layout.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "backend/cpu/rope.h"
#include "core/tensor.h"
#include "formats/quantized_matrix.h"

// (CUDA sources include this header and compile as C++17: no std::span here.)

namespace dsq::backend {

// One routed expert's three weights (spec §2.11): gate [F, H], up [F, H], down [H, F].
struct ExpertLinears {
  const QuantizedMatrix* gate;
  const QuantizedMatrix* up;
  const QuantizedMatrix* down;
};

// Called by CpuOps::moe_experts with the input rows of one expert's weights (gate and up
// share `rows`, reported once with which = 0; the down projection's input with which = 1).
// Quantizer calibration uses it; CudaOps refuses a tap.
class ExpertInputTap {
 public:
  virtual ~ExpertInputTap() = default;
  virtual void on_expert_input(int64_t expert, int which, const float* rows, int64_t n_rows, int64_t cols) = 0;
};

// The weights a compressor op needs (spec §2.7/§2.8): the position bias ape [m, raw] and
// the entry norm weight [width]; both are host vectors (see resident()).
struct CompressorParams {
  const std::vector<float>* ape;
  const std::vector<float>* norm;
  int64_t rate;     // m
  int64_t width;    // entry width; raw width is 2·width when overlap
  bool overlap;     // CSA
  float eps;
  const cpu::RopeFrequencies* rope;  // entries are rotated at their window's first position
};

// One sequence of a decode_attention call: its state, its position p0 (the one query is
// at p0), and for EntrySelection::Selected its picks [topk].
struct DecodeSequence {
  float* ring;           // window ring [W−1, D]: read, then takes the new key
  const float* entries;  // [n_entries, D]
  int64_t n_entries;
  const int64_t* selected;
  int64_t p0;
};

// S rows of `width` floats into a ring of `ring_rows` rows, as the decoding state's rings
// keep them: row i goes to ring row (p0 + i) mod ring_rows, and only the last
// min(S, ring_rows) rows are stored.
struct RingStore {
  float* ring;
  const float* rows;
  int64_t p0, S, width, ring_rows;
};

// compress()'s raw-row stores: the call's S kv and gate rows into the compressor's two
// rings of 2·rate rows (rows of 2·width under overlap, else width). A call that closes no
// window does nothing else.
inline std::array<RingStore, 2> compressor_ring_stores(const CompressorParams& p, float* ring_kv, float* ring_gate,
                                                       const float* kv, const float* gate, int64_t p0, int64_t S) {
  const int64_t raw = p.overlap ? 2 * p.width : p.width;
  return {{{ring_kv, kv, p0, S, raw, 2 * p.rate}, {ring_gate, gate, p0, S, raw, 2 * p.rate}}};
}

// Which compressed entries a query of one sequence sees in sink_attention.
enum class EntrySelection {
  None,        // sliding layer: window keys only
  AllVisible,  // HCA: entries [0, min(⌊(p+1)/m⌋, n_entries))
  Selected,    // CSA: the indexer's picks (indexer_topk), −1 = none
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual Device device() const = 0;

  // ---- memory ----
  // A zero-filled buffer on the device.
  virtual Tensor alloc(DType dtype, Shape shape) = 0;
  // A device copy of a host tensor (contiguous).
  virtual Tensor upload(const Tensor& host) = 0;
  // A host copy of a device tensor (waits for the device).
  virtual Tensor to_host(const Tensor& t) = 0;
  // Copies `bytes` host bytes into device memory at dst, in order with the ops' work; the
  // host memory may be reused when it returns. No allocation: the per-call path.
  virtual void upload_into(void* dst, const void* host, size_t bytes) = 0;
  // Makes t hold at least `rows` rows (leading axis) of its row width, keeping the
  // existing rows; grows geometrically. An undefined t becomes [rows, width] f32.
  virtual void grow_rows(Tensor& t, int64_t rows, int64_t width) = 0;
  // The device copy of a host parameter vector (kept; see the header comment).
  virtual const float* resident(const std::vector<float>& host) = 0;
  virtual const int64_t* resident(const std::vector<int64_t>& host) = 0;
  // dst[i] = src[i] (device to device), n floats.
  virtual void copy(float* dst, const float* src, int64_t n) = 0;

  // ---- dense math ----
  // y[n, w.rows] = x[n, w.cols] · Wᵀ for a weight in any format (cpu/linear.h).
  virtual void linear(const QuantizedMatrix& w, const float* x, int64_t n, float* y) = 0;
  // Several linears of one input: y_i[n, W_i.rows] = x[n, cols] · W_iᵀ for i < count (every
  // W_i has the same cols). A backend may read x once and launch once for all of them.
  virtual void linear_many(const QuantizedMatrix* const* ws, float* const* ys, int64_t count, const float* x,
                           int64_t n) = 0;
  // Grouped projection (attn.wo_a, spec §2.10): for g < groups,
  //   y[:, g·R:(g+1)·R] = x[:, g·C:(g+1)·C] · W[g·R:(g+1)·R, :]ᵀ
  // with R = w.rows / groups, C = w.cols; x: [n, groups·C], y: [n, w.rows].
  virtual void linear_grouped(const QuantizedMatrix& w, int64_t groups, const float* x, int64_t n, float* y) = 0;
  // cpu/rms_norm.h semantics; weight: device pointer or null.
  virtual void rms_norm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float eps,
                        float* y) = 0;
  // Rotates the trailing rope_dim entries of vectors x[t][h] (n_tokens × heads vectors of
  // `dim`, contiguous) by positions[t] (device, per token); cpu/rope.h semantics.
  virtual void rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const int64_t* positions,
                    const cpu::RopeFrequencies& table, bool inverse) = 0;
  // rms_norm (weight: device pointer or null) of each of those vectors, then rope forward:
  // a head's norm and rotation in one op (the queries and the key of attention).
  virtual void norm_rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const float* weight, float eps,
                         const int64_t* positions, const cpu::RopeFrequencies& table) = 0;
  // rms_norm(x, n, dim, stride, weight, eps, y), then norm_rope(heads_x, n_tokens, heads,
  // head_dim, head_weight, eps, positions, table), as one op: two independent small
  // norms that a backend may run in one launch (attention's q_residual norm and its
  // key/value head). The two outputs must not overlap each other or the other's input.
  virtual void rms_norm_and_norm_rope(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight,
                                      float* y, float* heads_x, int64_t n_tokens, int64_t heads, int64_t head_dim,
                                      const float* head_weight, float eps, const int64_t* positions,
                                      const cpu::RopeFrequencies& table) = 0;
  // cpu/swiglu.h semantics (out may alias gate).
  virtual void swiglu(const float* gate, const float* up, int64_t n, float limit, float* out) = 0;
  // dst[i] += src[i].
  virtual void add(float* dst, const float* src, int64_t n) = 0;
  // dst[r] = src[rows[r]] for n rows of `width` floats; rows: device i64.
  virtual void gather_rows(const float* src, const int64_t* rows, int64_t n, int64_t width, float* dst) = 0;

  // ---- embedding and mHC (spec §2.4, §2.12) ----
  // streams[t][j] = table[ids[t]] for each of the N streams: streams [T, N·H].
  virtual void embed_streams(const QuantizedMatrix& table, const int64_t* ids, int64_t T, int64_t n_streams,
                             float* streams) = 0;
  // The mixing logits of T rows of streams (width N·H): mix[t] = fn · rms_norm(streams[t])
  // (no norm weight); fn: dense [(2+N)·N, N·H]. One op so that a backend can fold the
  // norm, a per-row scalar, into the product.
  virtual void mhc_mix(const float* streams, int64_t T, int64_t width, float eps, const QuantizedMatrix& fn,
                       float* mix) = 0;
  // Per token: mix = mhc_mix(streams[t]) with fn [(2+N)·N, N·H] and mix_eps,
  // (pre, post, comb) = mhc_coefficients(mix, base, scale) and
  // x[t] = mhc_collapse(streams[t], pre), then, when norm_weight is not null,
  // x[t] = rms_norm(x[t]) · norm_weight (the block's input norm). base [(2+N)·N];
  // scale [3]. One op so that a backend can run the whole chain in one launch.
  // post and comb may both be null: then only x is wanted (mhc_coefficients gives them,
  // e.g. as side work: the block's input needs only pre, the residual update after the
  // block needs post and comb, whose Sinkhorn is the longest chain of the op).
  virtual void mhc_pre(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base,
                       const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps,
                       const float* norm_weight, float norm_eps, float* x, float* post, float* comb) = 0;
  // post and comb of mhc_pre (the same arguments) without x.
  virtual void mhc_coefficients(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps,
                                const float* base, const float* scale, int64_t n_streams, int64_t hidden,
                                int64_t sinkhorn_iters, float eps, float* post, float* comb) = 0;
  // Per token: mhc_update(streams[t], post[t], comb[t], y[t]), or with y[t] + y_extra[t]
  // when y_extra is not null (the MoE's shared-expert output: its add folded in here).
  virtual void mhc_post(float* streams, const float* post, const float* comb, const float* y, const float* y_extra,
                        int64_t T, int64_t n_streams, int64_t hidden) = 0;
  // mhc_post(streams, post, comb, y, y_extra) followed by mhc_pre(streams, …) writing
  // x, next_post, next_comb: the residual update of one block and the mixing of the next
  // one, as one op so that a backend can do both in one pass over the streams (on a GPU
  // the update then needs no launch of its own). next_post / next_comb must not alias
  // post / comb; both may be null as in mhc_pre. The default runs the two ops.
  virtual void mhc_post_pre(float* streams, const float* post, const float* comb, const float* y,
                            const float* y_extra, int64_t T, const QuantizedMatrix& fn, float mix_eps,
                            const float* base, const float* scale, int64_t n_streams, int64_t hidden,
                            int64_t sinkhorn_iters, float eps, const float* norm_weight, float norm_eps, float* x,
                            float* next_post, float* next_comb) {
    mhc_post(streams, post, comb, y, y_extra, T, n_streams, hidden);
    mhc_pre(streams, T, fn, mix_eps, base, scale, n_streams, hidden, sinkhorn_iters, eps, norm_weight, norm_eps, x,
            next_post, next_comb);
  }
  // Per row: out[t] = mhc_collapse(streams[t], hc_head_weights(mix[t], base, scale)).
  virtual void hc_head(const float* streams, const float* mix, const float* base, float scale, int64_t n,
                       int64_t n_streams, int64_t hidden, float eps, float* out) = 0;

  // ---- MoE (spec §2.11) ----
  // Routing of T tokens: bias-corrected top-k (tid2eid == null) or the hash table
  // tid2eid [V, k] indexed by tokens[t]; cpu/router.h semantics. chosen: i64 [T, k].
  virtual void route(const float* logits, int64_t T, int64_t n_experts, const float* bias, const int64_t* tid2eid,
                     const int64_t* tokens, int64_t vocab, int64_t k, float scaling, int64_t* chosen,
                     float* weights) = 0;
  // out[t] = Σ_j weights[t][j] · Expert_{chosen[t][j]}(x[t]) with the clamped SwiGLU
  // expert of spec §2.11 (limit λ). x, out: [T, hidden]. tap: CPU only, may be null.
  virtual void moe_experts(const float* x, int64_t T, int64_t hidden, const ExpertLinears* experts, int64_t n_experts,
                           const int64_t* chosen, const float* weights, int64_t k, float limit, float* out,
                           ExpertInputTap* tap) = 0;

  // ---- attention state and attention (spec §2.5–§2.10, §3.2), one sequence at a time ----
  // Appends the S new raw rows kv, gate [S, raw] (positions p0 … p0+S−1) to a compressor:
  // every window that closes in this call becomes an entry (softmax pool over its slots,
  // norm, rope at its first position) written at its index in `entries`; then the new
  // rows are stored in the rings. Windows close at positions u with (u+1) mod m == 0.
  virtual void compress(const CompressorParams& p, float* ring_kv, float* ring_gate, float* entries,
                        const float* kv, const float* gate, int64_t p0, int64_t S) = 0;
  // scores[i][s] of cpu/indexer.h for the S queries against the first n_keys entries.
  virtual void indexer_scores(const float* q, const float* weights, int64_t S, int64_t n_heads, int64_t head_dim,
                              const float* keys, int64_t n_keys, float* scores) = 0;
  // Per query i (position p0+i): the entries indexer_select(scores[i], n_keys, topk,
  // ⌊(p0+i+1)/m⌋) picks, into selected[i][0..topk) (i64), padded with −1. The chosen SET
  // matches the CPU (exact ties between finite scores may resolve differently on a GPU);
  // the order inside a row is unspecified.
  virtual void indexer_topk(float* scores, int64_t S, int64_t n_keys, int64_t topk, int64_t p0, int64_t rate,
                            int64_t* selected) = 0;
  // Sink attention (cpu/attention.h) of the S queries q [S, n_heads, D] at positions
  // p0 … p0+S−1 over: the window keys max(0, p−W+1) … p (positions < p0 from `ring`,
  // the others from new_keys [S, D]), then the compressed entries given by `selection`
  // (entries [n_entries, D]; `selected` [S, topk] for Selected). out [S, n_heads, D].
  // With output_rope, each output row i is then turned back by the inverse rope at its
  // position p0+i, exactly as rope(out, S, n_heads, D, positions, *output_rope, true):
  // the rotation the keys' values carry (V = K) undone in the same op, so that a backend
  // needs no launch of its own for it. Null: no rotation.
  virtual void sink_attention(const float* q, int64_t S, int64_t n_heads, int64_t dim, const float* new_keys,
                              const float* ring, int64_t p0, int64_t window, EntrySelection selection,
                              const float* entries, int64_t n_entries, int64_t rate, const int64_t* selected,
                              int64_t topk, const float* sinks, float scale,
                              const cpu::RopeFrequencies* output_rope, float* out) = 0;
  // The n ring stores, as one op (on a GPU one launch); the rings must not overlap. A
  // compress() call that closes no window stores only its raw rows
  // (compressor_ring_stores), so a decode step can take those with its window update.
  virtual void store_rings(const RingStore* stores, int64_t n) = 0;
  // Stores the last min(S, W−1) of new_keys [S, D] in the window ring (W − 1 rows; none
  // for W = 1): a store_rings call of one ring.
  void update_window(float* ring, const float* new_keys, int64_t p0, int64_t S, int64_t dim, int64_t window) {
    const RingStore store{ring, new_keys, p0, S, dim, window - 1};
    if (window > 1) store_rings(&store, 1);
  }
  // A decode step's attention for n sequences of one token each: for sequence b,
  // sink_attention of q[b] (q [n, n_heads, D]) with its key new_keys[b] (new_keys [n, D])
  // over seqs[b]'s window and entries, into out[b], then update_window of its ring with
  // that key. The sequences' states must not overlap. The default makes those calls one
  // sequence at a time; a backend may run each part for all sequences at once.
  virtual void decode_attention(const float* q, int64_t n, const DecodeSequence* seqs, int64_t n_heads, int64_t dim,
                                const float* new_keys, int64_t window, EntrySelection selection, int64_t rate,
                                int64_t topk, const float* sinks, float scale,
                                const cpu::RopeFrequencies* output_rope, float* out) {
    for (int64_t b = 0; b < n; ++b) {
      const DecodeSequence& s = seqs[b];
      sink_attention(q + b * n_heads * dim, 1, n_heads, dim, new_keys + b * dim, s.ring, s.p0, window, selection,
                     s.entries, s.n_entries, rate, s.selected, topk, sinks, scale, output_rope, out + b * n_heads * dim);
    }
    for (int64_t b = 0; b < n; ++b) update_window(seqs[b].ring, new_keys + b * dim, seqs[b].p0, 1, dim, window);
  }

  // ---- concurrency ----
  // A second lane of work. Ops issued between start_side_work() and end_side_work() start
  // after everything issued before them, but may run concurrently with the ops issued
  // after end_side_work(), until wait_side_work(): ops after that see all of them. The
  // caller guarantees that the two lanes do not write what the other reads or writes
  // between the start and the wait. Several start/end pairs may come before one wait,
  // which joins them all. A backend that runs ops in order (the CPU) ignores these calls,
  // which is why they have a default.
  virtual void start_side_work() {}
  virtual void end_side_work() {}
  virtual void wait_side_work() {}

  // ---- hints ----
  // The weights of w will be read soon (by a linear a few ops later): a backend with a
  // cache in front of its memory may start loading them now, beside the ops in between.
  // Results never depend on it; the CPU has nothing to gain, hence the default.
  virtual void prefetch_weights(const QuantizedMatrix& w) { (void)w; }

  // Waits until the device has finished all work queued so far (on every lane).
  virtual void synchronize() = 0;
};

}  // namespace dsq::backend
