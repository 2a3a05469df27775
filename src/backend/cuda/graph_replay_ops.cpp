// GraphReplayOps (graph_replay_ops.h): segments of ops, deferred, signed, and run
// eagerly, captured or replayed (the stateful ones re-parameterised at each replay).
#include "backend/cuda/graph_replay_ops.h"

#include <cstdio>
#include <cstdlib>
#include <type_traits>

namespace dsq::cuda {

namespace {

// One tag per pure op, so that two ops with equal arguments sign differently.
enum class Op : uint8_t {
  Linear,
  LinearMany,
  LinearGrouped,
  RmsNorm,
  Rope,
  NormRope,
  RmsNormAndNormRope,
  Swiglu,
  Add,
  GatherRows,
  EmbedStreams,
  MhcMix,
  MhcPre,
  MhcPost,
  MhcPostPre,
  MhcCoefficients,
  HcHead,
  Route,
  MoeExperts,
  StartSideWork,
  EndSideWork,
  WaitSideWork,
  PrefetchWeights,
  Compress,
  IndexerScores,
  IndexerTopk,
  SinkAttention,
  StoreRings,
  DecodeAttention,
};

// Distinct segment signatures kept at most. A server sees prompts of every length, each
// a new prefill signature seen once; past this many, every kept segment and graph is
// dropped (the decode step's 45 or so are captured again two steps later).
constexpr size_t kMaxSegments = 4096;

// Ops in the first segment after the host waited for the device: about one decoder layer,
// so that the GPU starts soon; each later segment may take twice its predecessor's
// (the host prepares the next while the GPU runs it).
constexpr size_t kFirstSegmentOps = 32;

// Sends a CudaOps' launches to an interceptor for a scope (also when an op throws).
class InterceptedLaunches {
 public:
  InterceptedLaunches(CudaOps& ops, LaunchInterceptor* interceptor) : ops_(ops) {
    ops_.set_launch_interceptor(interceptor);
  }
  ~InterceptedLaunches() { ops_.set_launch_interceptor(nullptr); }
  InterceptedLaunches(const InterceptedLaunches&) = delete;
  InterceptedLaunches& operator=(const InterceptedLaunches&) = delete;

 private:
  CudaOps& ops_;
};

}  // namespace

GraphReplayOps::GraphReplayOps(std::shared_ptr<CudaOps> inner)
    : inner_(std::move(inner)), segment_budget_(kFirstSegmentOps), scratch_epoch_(inner_->scratch_epoch()) {}

GraphReplayOps::~GraphReplayOps() {
  try {
    flush();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsq: deferred GPU work failed at shutdown: %s\n", e.what());
  }
  drop_graphs();
}

void GraphReplayOps::set_enabled(bool on) {
  flush();
  enabled_ = on;
}

template <typename... Args>
void GraphReplayOps::defer_op(bool stateful, std::function<void()> work, const Args&... args) {
  static_assert((std::is_trivially_copyable_v<Args> && ...), "a signed argument must be plain bytes");
  if (!enabled_) return work();
  (sign(&args, sizeof(Args)), ...);
  pending_.push_back({std::move(work), stateful});
  if (pending_.size() >= segment_budget_ && !side_started_ && !side_open_ && !segment_starts_open_) {
    flush();
    segment_budget_ *= 2;
  }
}

void GraphReplayOps::run(const std::vector<Deferred>& work) {
  for (const Deferred& op : work) op.work();
}

bool GraphReplayOps::capture(const std::vector<Deferred>& work, Segment& segment) {
  const cudaStream_t stream = inner_->context().stream();
  std::vector<CapturedLaunch> state_launches;
  KernelNodeRecorder recorder(state_launches);
  // Thread-local mode: an op that waits for the device or copies to the host (the
  // many-token MoE path reads its expert counts) gets an error instead of reading
  // results that a capture never produced, and the capture is abandoned.
  DSQ_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  bool ran = true;
  try {
    for (const Deferred& op : work) {
      if (!op.stateful) {
        op.work();
        continue;
      }
      InterceptedLaunches recorded(*inner_, &recorder);
      op.work();
    }
  } catch (const std::exception& e) {
    ran = false;
    trace(work.size(), (std::string("capture failed, plain launches: ") + e.what()).c_str());
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  cudaGetLastError();  // a failed capture leaves its error as the last one; it is handled here
  cudaGraphExec_t exec = nullptr;
  if (ran && ended == cudaSuccess && graph != nullptr &&
      // Per-node priorities: a captured kernel keeps its lane's stream priority.
      cudaGraphInstantiateWithFlags(&exec, graph, cudaGraphInstantiateFlagUseNodePriority) == cudaSuccess) {
    segment.graph = exec;
    segment.source = graph;  // kept: the recorded nodes are its nodes
    segment.state_launches = std::move(state_launches);
    ++stats_.graphs;
  } else {
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    return false;
  }
  DSQ_CUDA_CHECK(cudaGraphLaunch(segment.graph, stream));
  return true;
}

bool GraphReplayOps::update_state_launches(const std::vector<Deferred>& work, Segment& segment) {
  if (segment.state_launches.empty()) return true;
  const uint64_t epoch = inner_->scratch_epoch();
  KernelNodeUpdater updater(segment.graph, segment.state_launches);
  {
    InterceptedLaunches updated(*inner_, &updater);
    for (const Deferred& op : work)
      if (op.stateful) op.work();
  }
  if (inner_->scratch_epoch() != epoch) {
    trace(work.size(), "captured again: scratch memory moved");
    return false;
  }
  if (!updater.matched()) trace(work.size(), ("captured again: " + updater.mismatch()).c_str());
  return updater.matched();
}

void GraphReplayOps::trace(size_t ops, const char* what) {
  static const bool tracing = std::getenv("DSQ_GRAPH_TRACE") != nullptr;
  if (tracing) std::fprintf(stderr, "dsq: CUDA graph segment of %zu ops: %s\n", ops, what);
}

void GraphReplayOps::destroy_graph(Segment& segment) {
  if (segment.graph != nullptr) cudaGraphExecDestroy(segment.graph);
  if (segment.source != nullptr) cudaGraphDestroy(segment.source);
  segment.graph = nullptr;
  segment.source = nullptr;
  segment.state_launches.clear();
}

void GraphReplayOps::flush() {
  if (pending_.empty()) return;
  // Taken out first: if an op throws, its segment is not run again by the next flush.
  const std::vector<Deferred> work = std::move(pending_);
  const std::string signature = std::move(signature_);
  pending_.clear();
  signature_.clear();
  if (inner_->scratch_epoch() != scratch_epoch_) {
    drop_graphs();
    scratch_epoch_ = inner_->scratch_epoch();
  }
  // A capture must end with every lane joined: a segment that crosses open side work
  // runs as plain launches (not remembered).
  const bool crosses_side_work = segment_starts_open_ || side_open_;
  segment_starts_open_ = side_open_;
  if (crosses_side_work) {
    trace(work.size(), "plain launches: crosses open side work");
    run(work);
    ++stats_.eager;
    return;
  }
  if (segments_.size() >= kMaxSegments && segments_.count(signature) == 0) {
    drop_graphs();
    segments_.clear();
  }
  Segment& segment = segments_[signature];
  if (segment.graph != nullptr && !update_state_launches(work, segment)) {
    destroy_graph(segment);  // captured again below
    --stats_.graphs;
    ++stats_.recaptured;
  }
  if (segment.graph != nullptr) {
    DSQ_CUDA_CHECK(cudaGraphLaunch(segment.graph, inner_->context().stream()));
    ++stats_.replayed;
  } else if (segment.capturable && segment.sightings > 0) {
    if (capture(work, segment)) {
      trace(work.size(), "captured");
      ++stats_.captured;
    } else {
      ++stats_.failed_captures;
      // A capture that failed because scratch memory grew may succeed next time (every
      // graph is dropped at the next flush then); any other failure will repeat.
      if (inner_->scratch_epoch() == scratch_epoch_) segment.capturable = false;
      run(work);
      ++stats_.eager;
    }
  } else {
    trace(work.size(), segment.capturable ? "plain launches: first sighting" : "plain launches: not capturable");
    run(work);
    ++stats_.eager;
  }
  ++segment.sightings;
}

void GraphReplayOps::flush_before_wait() {
  flush();
  segment_budget_ = kFirstSegmentOps;
}

void GraphReplayOps::drop_graphs() {
  for (auto& [signature, segment] : segments_) destroy_graph(segment);
  stats_.graphs = 0;
}

// ---- calls that end a segment, then go straight to CudaOps ----

Tensor GraphReplayOps::alloc(DType dtype, Shape shape) {
  flush();  // a buffer it replaces is freed by the caller right after
  return inner_->alloc(dtype, std::move(shape));
}

Tensor GraphReplayOps::upload(const Tensor& host) {
  flush();
  return inner_->upload(host);
}

Tensor GraphReplayOps::to_host(const Tensor& t) {
  flush_before_wait();
  return inner_->to_host(t);
}

void GraphReplayOps::upload_into(void* dst, const void* host, size_t bytes) {
  flush();
  inner_->upload_into(dst, host, bytes);
}

void GraphReplayOps::grow_rows(Tensor& t, int64_t rows, int64_t width) {
  if (t.defined() && t.dim(0) >= rows) return;  // nothing moves
  flush();
  inner_->grow_rows(t, rows, width);
}

void GraphReplayOps::copy(float* dst, const float* src, int64_t n) {
  flush();
  inner_->copy(dst, src, n);
}

void GraphReplayOps::synchronize() {
  flush_before_wait();
  inner_->synchronize();
}

// ---- stateful ops: deferred, signed without their positions and counts ----

void GraphReplayOps::compress(const backend::CompressorParams& p, float* ring_kv, float* ring_gate, float* entries,
                              const float* kv, const float* gate, int64_t p0, int64_t S) {
  defer_stateful([=, this] { inner_->compress(p, ring_kv, ring_gate, entries, kv, gate, p0, S); }, Op::Compress,
                 p.ape, p.norm, p.rate, p.width, p.overlap, p.eps, p.rope, ring_kv, ring_gate, entries, kv, gate, S);
}

void GraphReplayOps::indexer_scores(const float* q, const float* weights, int64_t S, int64_t n_heads,
                                    int64_t head_dim, const float* keys, int64_t n_keys, float* scores) {
  defer_stateful([=, this] { inner_->indexer_scores(q, weights, S, n_heads, head_dim, keys, n_keys, scores); },
                 Op::IndexerScores, q, weights, S, n_heads, head_dim, keys, scores);
}

void GraphReplayOps::indexer_topk(float* scores, int64_t S, int64_t n_keys, int64_t topk, int64_t p0, int64_t rate,
                                  int64_t* selected) {
  defer_stateful([=, this] { inner_->indexer_topk(scores, S, n_keys, topk, p0, rate, selected); }, Op::IndexerTopk,
                 scores, S, topk, rate, selected);
}

void GraphReplayOps::sink_attention(const float* q, int64_t S, int64_t n_heads, int64_t dim, const float* new_keys,
                                    const float* ring, int64_t p0, int64_t window, backend::EntrySelection selection,
                                    const float* entries, int64_t n_entries, int64_t rate, const int64_t* selected,
                                    int64_t topk, const float* sinks, float scale,
                                    const cpu::RopeFrequencies* output_rope, float* out) {
  defer_stateful(
      [=, this] {
        inner_->sink_attention(q, S, n_heads, dim, new_keys, ring, p0, window, selection, entries, n_entries, rate,
                               selected, topk, sinks, scale, output_rope, out);
      },
      Op::SinkAttention, q, S, n_heads, dim, new_keys, ring, window, selection, entries, rate, selected, topk, sinks,
      scale, output_rope, out);
}

void GraphReplayOps::store_rings(const backend::RingStore* stores, int64_t n) {
  std::vector<backend::RingStore> kept(stores, stores + n);
  if (enabled_) {
    for (const backend::RingStore& s : kept) {
      const int64_t shape[] = {s.S, s.width, s.ring_rows};
      sign(&s.ring, sizeof s.ring);
      sign(&s.rows, sizeof s.rows);
      sign(shape, sizeof shape);
    }
  }
  defer_stateful([=, this] { inner_->store_rings(kept.data(), n); }, Op::StoreRings, n);
}

void GraphReplayOps::decode_attention(const float* q, int64_t n, const backend::DecodeSequence* seqs, int64_t n_heads,
                                      int64_t dim, const float* new_keys, int64_t window,
                                      backend::EntrySelection selection, int64_t rate, int64_t topk,
                                      const float* sinks, float scale, const cpu::RopeFrequencies* output_rope,
                                      float* out) {
  std::vector<backend::DecodeSequence> kept(seqs, seqs + n);
  if (enabled_) {
    for (const backend::DecodeSequence& s : kept) {
      const void* state[] = {s.ring, s.entries, s.selected};
      sign(state, sizeof state);
    }
  }
  defer_stateful(
      [=, this] {
        inner_->decode_attention(q, n, kept.data(), n_heads, dim, new_keys, window, selection, rate, topk, sinks,
                                 scale, output_rope, out);
      },
      Op::DecodeAttention, q, n, n_heads, dim, new_keys, window, selection, rate, topk, sinks, scale, output_rope,
      out);
}

// ---- pure ops: deferred and signed ----

void GraphReplayOps::start_side_work() {
  DSQ_CHECK(!side_started_, "start_side_work: side work is already open");
  side_started_ = true;
  side_open_ = enabled_;
  defer([this] { inner_->start_side_work(); }, Op::StartSideWork);
}

void GraphReplayOps::end_side_work() {
  DSQ_CHECK(side_started_, "end_side_work: no side work is open");
  side_started_ = false;
  defer([this] { inner_->end_side_work(); }, Op::EndSideWork);
}

void GraphReplayOps::wait_side_work() {
  defer([this] { inner_->wait_side_work(); }, Op::WaitSideWork);
  side_open_ = false;
}

void GraphReplayOps::linear(const QuantizedMatrix& w, const float* x, int64_t n, float* y) {
  const QuantizedMatrix* wp = &w;
  defer([=, this] { inner_->linear(*wp, x, n, y); }, Op::Linear, wp, x, n, y);
}

void GraphReplayOps::linear_many(const QuantizedMatrix* const* ws, float* const* ys, int64_t count, const float* x,
                                 int64_t n) {
  std::vector<const QuantizedMatrix*> weights(ws, ws + count);
  std::vector<float*> outputs(ys, ys + count);
  if (enabled_) {  // signed before defer(), which may end the segment
    sign(weights.data(), weights.size() * sizeof(void*));
    sign(outputs.data(), outputs.size() * sizeof(void*));
  }
  defer([=, this] { inner_->linear_many(weights.data(), outputs.data(), count, x, n); }, Op::LinearMany, count, x,
        n);
}

void GraphReplayOps::linear_grouped(const QuantizedMatrix& w, int64_t groups, const float* x, int64_t n, float* y) {
  const QuantizedMatrix* wp = &w;
  defer([=, this] { inner_->linear_grouped(*wp, groups, x, n, y); }, Op::LinearGrouped, wp, groups, x, n, y);
}

void GraphReplayOps::rms_norm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float eps,
                              float* y) {
  defer([=, this] { inner_->rms_norm(x, n, dim, stride, weight, eps, y); }, Op::RmsNorm, x, n, dim, stride, weight,
        eps, y);
}

void GraphReplayOps::rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const int64_t* positions,
                          const cpu::RopeFrequencies& table, bool inverse) {
  const cpu::RopeFrequencies* tp = &table;
  defer([=, this] { inner_->rope(x, n_tokens, heads, dim, positions, *tp, inverse); }, Op::Rope, x, n_tokens, heads,
        dim, positions, tp, inverse);
}

void GraphReplayOps::norm_rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const float* weight, float eps,
                               const int64_t* positions, const cpu::RopeFrequencies& table) {
  const cpu::RopeFrequencies* tp = &table;
  defer([=, this] { inner_->norm_rope(x, n_tokens, heads, dim, weight, eps, positions, *tp); }, Op::NormRope, x,
        n_tokens, heads, dim, weight, eps, positions, tp);
}

void GraphReplayOps::rms_norm_and_norm_rope(const float* x, int64_t n, int64_t dim, int64_t stride,
                                            const float* weight, float* y, float* heads_x, int64_t n_tokens,
                                            int64_t heads, int64_t head_dim, const float* head_weight, float eps,
                                            const int64_t* positions, const cpu::RopeFrequencies& table) {
  const cpu::RopeFrequencies* tp = &table;
  defer(
      [=, this] {
        inner_->rms_norm_and_norm_rope(x, n, dim, stride, weight, y, heads_x, n_tokens, heads, head_dim, head_weight,
                                       eps, positions, *tp);
      },
      Op::RmsNormAndNormRope, x, n, dim, stride, weight, y, heads_x, n_tokens, heads, head_dim, head_weight, eps,
      positions, tp);
}

void GraphReplayOps::swiglu(const float* gate, const float* up, int64_t n, float limit, float* out) {
  defer([=, this] { inner_->swiglu(gate, up, n, limit, out); }, Op::Swiglu, gate, up, n, limit, out);
}

void GraphReplayOps::add(float* dst, const float* src, int64_t n) {
  defer([=, this] { inner_->add(dst, src, n); }, Op::Add, dst, src, n);
}

void GraphReplayOps::gather_rows(const float* src, const int64_t* rows, int64_t n, int64_t width, float* dst) {
  defer([=, this] { inner_->gather_rows(src, rows, n, width, dst); }, Op::GatherRows, src, rows, n, width, dst);
}

void GraphReplayOps::embed_streams(const QuantizedMatrix& table, const int64_t* ids, int64_t T, int64_t n_streams,
                                   float* streams) {
  const QuantizedMatrix* tp = &table;
  defer([=, this] { inner_->embed_streams(*tp, ids, T, n_streams, streams); }, Op::EmbedStreams, tp, ids, T,
        n_streams, streams);
}

void GraphReplayOps::mhc_mix(const float* streams, int64_t T, int64_t width, float eps, const QuantizedMatrix& fn,
                             float* mix) {
  const QuantizedMatrix* fp = &fn;
  defer([=, this] { inner_->mhc_mix(streams, T, width, eps, *fp, mix); }, Op::MhcMix, streams, T, width, eps, fp, mix);
}

void GraphReplayOps::mhc_pre(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps,
                             const float* base, const float* scale, int64_t n_streams, int64_t hidden,
                             int64_t sinkhorn_iters, float eps, const float* norm_weight, float norm_eps, float* x,
                             float* post, float* comb) {
  const QuantizedMatrix* fp = &fn;
  defer(
      [=, this] {
        inner_->mhc_pre(streams, T, *fp, mix_eps, base, scale, n_streams, hidden, sinkhorn_iters, eps, norm_weight,
                        norm_eps, x, post, comb);
      },
      Op::MhcPre, streams, T, fp, mix_eps, base, scale, n_streams, hidden, sinkhorn_iters, eps, norm_weight, norm_eps,
      x, post, comb);
}

void GraphReplayOps::mhc_post(float* streams, const float* post, const float* comb, const float* y,
                              const float* y_extra, int64_t T,
                              int64_t n_streams, int64_t hidden) {
  defer([=, this] { inner_->mhc_post(streams, post, comb, y, y_extra, T, n_streams, hidden); }, Op::MhcPost, streams,
        post, comb, y, y_extra, T, n_streams, hidden);
}

void GraphReplayOps::mhc_coefficients(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps,
                                      const float* base, const float* scale, int64_t n_streams, int64_t hidden,
                                      int64_t sinkhorn_iters, float eps, float* post, float* comb) {
  const QuantizedMatrix* fp = &fn;
  defer(
      [=, this] {
        inner_->mhc_coefficients(streams, T, *fp, mix_eps, base, scale, n_streams, hidden, sinkhorn_iters, eps, post,
                                 comb);
      },
      Op::MhcCoefficients, streams, T, fp, mix_eps, base, scale, n_streams, hidden, sinkhorn_iters, eps, post, comb);
}

void GraphReplayOps::mhc_post_pre(float* streams, const float* post, const float* comb, const float* y,
                                  const float* y_extra, int64_t T, const QuantizedMatrix& fn, float mix_eps,
                                  const float* base, const float* scale, int64_t n_streams, int64_t hidden,
                                  int64_t sinkhorn_iters, float eps, const float* norm_weight, float norm_eps,
                                  float* x, float* next_post, float* next_comb) {
  const QuantizedMatrix* fp = &fn;
  defer(
      [=, this] {
        inner_->mhc_post_pre(streams, post, comb, y, y_extra, T, *fp, mix_eps, base, scale, n_streams, hidden,
                             sinkhorn_iters, eps, norm_weight, norm_eps, x, next_post, next_comb);
      },
      Op::MhcPostPre, streams, post, comb, y, y_extra, T, fp, mix_eps, base, scale, n_streams, hidden, sinkhorn_iters,
      eps, norm_weight, norm_eps, x, next_post, next_comb);
}

void GraphReplayOps::prefetch_weights(const QuantizedMatrix& w) {
  const QuantizedMatrix* wp = &w;
  defer([=, this] { inner_->prefetch_weights(*wp); }, Op::PrefetchWeights, wp);
}

void GraphReplayOps::hc_head(const float* streams, const float* mix, const float* base, float scale, int64_t n,
                             int64_t n_streams, int64_t hidden, float eps, float* out) {
  defer([=, this] { inner_->hc_head(streams, mix, base, scale, n, n_streams, hidden, eps, out); }, Op::HcHead, streams,
        mix, base, scale, n, n_streams, hidden, eps, out);
}

void GraphReplayOps::route(const float* logits, int64_t T, int64_t n_experts, const float* bias,
                           const int64_t* tid2eid, const int64_t* tokens, int64_t vocab, int64_t k, float scaling,
                           int64_t* chosen, float* weights) {
  defer([=, this] { inner_->route(logits, T, n_experts, bias, tid2eid, tokens, vocab, k, scaling, chosen, weights); },
        Op::Route, logits, T, n_experts, bias, tid2eid, tokens, vocab, k, scaling, chosen, weights);
}

void GraphReplayOps::moe_experts(const float* x, int64_t T, int64_t hidden, const backend::ExpertLinears* experts,
                                 int64_t n_experts, const int64_t* chosen, const float* weights, int64_t k,
                                 float limit, float* out, backend::ExpertInputTap* tap) {
  DSQ_CHECK(tap == nullptr, "moe_experts: an expert input tap needs the CPU backend");
  // The caller's table of experts is a temporary: keep a copy, sign its entries.
  std::vector<backend::ExpertLinears> table(experts, experts + n_experts);
  if (enabled_) sign(table.data(), table.size() * sizeof(backend::ExpertLinears));  // before defer()'s segment end
  defer([=, this] { inner_->moe_experts(x, T, hidden, table.data(), n_experts, chosen, weights, k, limit, out, nullptr); },
        Op::MoeExperts, x, T, hidden, n_experts, chosen, weights, k, limit, out);
}

}  // namespace dsq::cuda
