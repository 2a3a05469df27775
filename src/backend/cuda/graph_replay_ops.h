// GraphReplayOps: CudaOps with CUDA-graph replay of the work that repeats. A decode step
// is about a thousand kernels, most of them on a few kilobytes: launched one by one, the
// GPU waits for the host. This decorator turns the repeating runs of them into graph launches,
// without the model knowing.
//
// How. The calls are split into segments at every memory or host-transfer call (alloc,
// upload, upload_into, to_host, synchronize, copy, a grow_rows that grows) and, so that
// the GPU never waits long for the host, wherever a segment has reached its budget of
// ops (32 after each wait for the device, doubling with each segment: a decode step is
// a few segments, the first of about one layer). Inside a segment the ops are not run at
// once: each is kept as a closure and its arguments are appended to the segment's
// signature (op, pointers, sizes, scalars, bytewise). At the segment's end:
//  - first time a signature is seen: the closures run as plain launches (this prepares
//    weights and grows scratch memory, which must not happen inside a capture);
//  - second time: they run under stream capture, and the graph is kept;
//  - from then on: the graph is launched instead.
// Pure ops (linears, norms, rope, mHC, routing, experts, ...) are functions of their
// arguments and device memory: their graph nodes are the same work every time. The
// stateful attention ops (compress, indexer_scores, indexer_topk, sink_attention,
// store_rings, decode_attention) take the sequence position and the entry counts from the
// host: their signature leaves those out, and at every replay they run again with their
// launches turned into updates of the kernel nodes they made at capture
// (graph_kernel_nodes.h); launches that no longer match those nodes (another kernel or
// count) have the segment captured again. What else could differ is CudaOps' own memory
// (scratch buffers are reallocated when they grow): when CudaOps reports that, every
// graph is dropped (and captured again at the segment's next sighting). A
// segment whose capture fails (an op that waits for the device, e.g. the many-token MoE
// path reading its expert counts) runs as plain launches from then on; set
// DSQ_GRAPH_TRACE=1 to have every segment that is not replayed, and why, printed. The
// model keeps side work open through most of a layer (graph segments end only where
// none is), so a model whose experts take such a path (any but the INT4 decode kernels:
// F32 checking, MXFP4, many tokens) runs its decode steps as plain launches. At most
// 4,096 signatures are remembered (prefills of every length would otherwise pile up);
// past that, all are dropped and the repeating ones are captured again.
//
// Side work (start/end/wait_side_work) is deferred like a pure op, so a segment that
// opens and waits for its side work is captured with both lanes as one graph of two
// branches; a segment never ends by its budget while side work is open. A segment that
// ends while side work is open (a memory call between the start and the wait) runs as
// plain launches, still on two lanes.
//
// Deferred work runs, in order, no later than the next call that ends a segment, and in
// the destructor. So a caller may release device memory that deferred ops used only
// after such a call (the forward always ends with one).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/graph_kernel_nodes.h"

namespace dsq::cuda {

class GraphReplayOps final : public backend::Ops {
 public:
  explicit GraphReplayOps(std::shared_ptr<CudaOps> inner);
  ~GraphReplayOps() override;
  GraphReplayOps(const GraphReplayOps&) = delete;
  GraphReplayOps& operator=(const GraphReplayOps&) = delete;

  // What happened to the segments so far (each ended segment counts once).
  struct Stats {
    int64_t eager = 0;     // ran as plain launches (first sighting, or not capturable)
    int64_t captured = 0;  // ran under capture (the graph is kept)
    int64_t replayed = 0;  // ran as one graph launch
    int64_t recaptured = 0;  // captured again: its stateful launches no longer matched the graph
    int64_t failed_captures = 0;
    int64_t graphs = 0;    // graphs currently kept
  };
  const Stats& stats() const { return stats_; }
  // While disabled every call goes straight to CudaOps (pending work is run first); the
  // kept graphs stay for when it is enabled again. Enabled on construction.
  void set_enabled(bool on);
  CudaOps& inner() { return *inner_; }

  Device device() const override { return Device::CUDA; }
  Tensor alloc(DType dtype, Shape shape) override;
  Tensor upload(const Tensor& host) override;
  Tensor to_host(const Tensor& t) override;
  void upload_into(void* dst, const void* host, size_t bytes) override;
  void grow_rows(Tensor& t, int64_t rows, int64_t width) override;
  const float* resident(const std::vector<float>& host) override { return inner_->resident(host); }
  const int64_t* resident(const std::vector<int64_t>& host) override { return inner_->resident(host); }
  void copy(float* dst, const float* src, int64_t n) override;
  void synchronize() override;
  void start_side_work() override;
  void end_side_work() override;
  void wait_side_work() override;
  void prefetch_weights(const QuantizedMatrix& w) override;

  void linear(const QuantizedMatrix& w, const float* x, int64_t n, float* y) override;
  void linear_many(const QuantizedMatrix* const* ws, float* const* ys, int64_t count, const float* x,
                   int64_t n) override;
  void linear_grouped(const QuantizedMatrix& w, int64_t groups, const float* x, int64_t n, float* y) override;
  void rms_norm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float eps,
                float* y) override;
  void rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const int64_t* positions,
            const cpu::RopeFrequencies& table, bool inverse) override;
  void norm_rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const float* weight, float eps,
                 const int64_t* positions, const cpu::RopeFrequencies& table) override;
  void rms_norm_and_norm_rope(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float* y,
                              float* heads_x, int64_t n_tokens, int64_t heads, int64_t head_dim,
                              const float* head_weight, float eps, const int64_t* positions,
                              const cpu::RopeFrequencies& table) override;
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
  void mhc_post(float* streams, const float* post, const float* comb, const float* y, const float* y_extra,
                int64_t T, int64_t n_streams, int64_t hidden) override;
  void mhc_coefficients(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base,
                        const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps,
                        float* post, float* comb) override;
  void mhc_post_pre(float* streams, const float* post, const float* comb, const float* y, const float* y_extra,
                    int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base, const float* scale,
                    int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps, const float* norm_weight,
                    float norm_eps, float* x, float* next_post, float* next_comb) override;
  void hc_head(const float* streams, const float* mix, const float* base, float scale, int64_t n,
               int64_t n_streams, int64_t hidden, float eps, float* out) override;
  void route(const float* logits, int64_t T, int64_t n_experts, const float* bias, const int64_t* tid2eid,
             const int64_t* tokens, int64_t vocab, int64_t k, float scaling, int64_t* chosen,
             float* weights) override;
  void moe_experts(const float* x, int64_t T, int64_t hidden, const backend::ExpertLinears* experts,
                   int64_t n_experts, const int64_t* chosen, const float* weights, int64_t k, float limit,
                   float* out, backend::ExpertInputTap* tap) override;

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
  void decode_attention(const float* q, int64_t n, const backend::DecodeSequence* seqs, int64_t n_heads, int64_t dim,
                        const float* new_keys, int64_t window, backend::EntrySelection selection, int64_t rate,
                        int64_t topk, const float* sinks, float scale, const cpu::RopeFrequencies* output_rope,
                        float* out) override;

 private:
  // One ended segment's fate, by signature.
  struct Segment {
    int sightings = 0;
    bool capturable = true;
    cudaGraphExec_t graph = nullptr;
    cudaGraph_t source = nullptr;                // what `graph` was instantiated from
    std::vector<CapturedLaunch> state_launches;  // the stateful ops' kernel nodes, in launch order
  };
  // A deferred op; a stateful one runs again at every replay of its segment.
  struct Deferred {
    std::function<void()> work;
    bool stateful;
  };

  // Appends an op: its arguments (trivially copyable values, bytewise) to the signature,
  // its work to the pending closures; then ends the segment if its budget is reached.
  template <typename... Args>
  void defer(std::function<void()> work, const Args&... args) {
    defer_op(false, std::move(work), args...);
  }
  // The same for a stateful op, whose signed arguments must leave out what changes from
  // step to step (positions, entry counts): its launches are re-parameterised at replay.
  template <typename... Args>
  void defer_stateful(std::function<void()> work, const Args&... args) {
    defer_op(true, std::move(work), args...);
  }
  template <typename... Args>
  void defer_op(bool stateful, std::function<void()> work, const Args&... args);
  void sign(const void* bytes, size_t n) { signature_.append(static_cast<const char*>(bytes), n); }
  // Ends the pending segment: runs, captures or replays it (see the header comment).
  void flush();
  // flush() and the first segment's budget again: the host has just waited for the GPU.
  void flush_before_wait();
  static void run(const std::vector<Deferred>& work);
  // Runs `work` under stream capture and launches the graph; false (nothing ran) if the
  // capture failed.
  bool capture(const std::vector<Deferred>& work, Segment& segment);
  // Runs the stateful ops of `work` again as updates of the segment's graph; false if
  // their launches no longer match it (or scratch memory moved meanwhile).
  bool update_state_launches(const std::vector<Deferred>& work, Segment& segment);
  static void destroy_graph(Segment& segment);
  // With DSQ_GRAPH_TRACE set: one line on stderr about a segment that was not replayed.
  static void trace(size_t ops, const char* what);
  // Destroys every kept graph; the segments stay known (seen before: captured next time).
  void drop_graphs();

  std::shared_ptr<CudaOps> inner_;
  std::vector<Deferred> pending_;
  size_t segment_budget_;  // ops after which the pending segment ends (when no side work is open)
  std::string signature_;
  std::unordered_map<std::string, Segment> segments_;
  uint64_t scratch_epoch_ = 0;
  bool enabled_ = true;
  bool side_started_ = false;        // between start_side_work and end_side_work
  bool side_open_ = false;           // started (once or more) and not yet waited for
  bool segment_starts_open_ = false;  // side work was open when the pending segment began
  Stats stats_;
};

}  // namespace dsq::cuda
