// CudaOps: backend::Ops on one GPU (Hopper, sm_90a). Every activation between ops is
// fp32 in GPU memory, as on the CPU; what differs is the input precision of the linear
// layers, chosen once per CudaOps:
//  - Precision::Fast (serving): activations enter each GEMM as bf16 (dense bf16 weights
//    through cuBLAS, INT4 through the W4A16 kernels, MXFP4 through its own kernels where
//    its shape fits them, else dequantized to bf16 at load)
//    or as fp8 with 1×128 scales (FP8-block weights through Fp8BlockLinear), fp32
//    accumulation; dense weights at a few rows keep fp32 activations (dense_gemv.h).
//    On tiny-brown perplexity moves by −0.02% (H100; bench/results/gpu-model.md).
//  - Precision::F32 (checking): every weight is dequantized exactly to fp32 at load and
//    runs through cuBLAS SGEMM without TF32, so the GPU forward can be held to the CPU
//    reference's tolerance on the random tiny fixtures, whose logits move by 15–50% when
//    the linear inputs are rounded to bf16 (their random weights amplify rounding).
//
// The methods are implemented by concept, one file each:
//   cuda_ops.cpp           construction, memory, parameters, scratch
//   linear_ops.cu          linear / linear_many / linear_grouped / moe_experts, and the
//                          prepared-weight cache (linear_cache.h)
//   elementwise_ops.cu     rms_norm, rope, norm_rope, swiglu, add, gather_rows,
//                          embed_streams, mhc_mix / mhc_pre / mhc_post / hc_head, route
//   attention_ops.cu       compress, indexer_scores, indexer_topk, sink_attention,
//                          update_window, store_rings, decode_attention
#pragma once

#include <memory>
#include <unordered_map>

#include "backend/cuda/gpu_context.h"
#include "backend/cuda/linear_cache.h"
#include "backend/ops.h"

namespace dsq::cuda {

enum class Precision { Fast, F32 };

class CudaOps final : public backend::Ops {
 public:
  explicit CudaOps(Precision precision = Precision::Fast);
  ~CudaOps() override;

  Precision precision() const { return precision_; }
  // The lane that ops issue their work to now (see start_side_work()).
  GpuContext& context() { return ctx(); }
  // Hands both lanes' launches to `interceptor` (null: to the streams again).
  void set_launch_interceptor(LaunchInterceptor* interceptor) {
    for (GpuContext& lane : lanes_) lane.set_launch_interceptor(interceptor);
  }

  Device device() const override { return Device::CUDA; }
  Tensor alloc(DType dtype, Shape shape) override;
  Tensor upload(const Tensor& host) override;
  Tensor to_host(const Tensor& t) override;
  void upload_into(void* dst, const void* host, size_t bytes) override;
  void grow_rows(Tensor& t, int64_t rows, int64_t width) override;
  const float* resident(const std::vector<float>& host) override;
  const int64_t* resident(const std::vector<int64_t>& host) override;
  // The device copy of a host tensor's raw bytes (kept, keyed by host.bytes(); same rule
  // as resident()): the embedding table, in its stored dtype.
  const void* resident_bytes(const Tensor& host);
  void copy(float* dst, const float* src, int64_t n) override;

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
  void mhc_coefficients(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base,
                        const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps,
                        float* post, float* comb) override;
  void mhc_post_pre(float* streams, const float* post, const float* comb, const float* y, const float* y_extra,
                    int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base, const float* scale,
                    int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps, const float* norm_weight,
                    float norm_eps, float* x, float* next_post, float* next_comb) override;
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
  void decode_attention(const float* q, int64_t n, const backend::DecodeSequence* seqs, int64_t n_heads, int64_t dim,
                        const float* new_keys, int64_t window, backend::EntrySelection selection, int64_t rate,
                        int64_t topk, const float* sinks, float scale, const cpu::RopeFrequencies* output_rope,
                        float* out) override;

  // The side lane is a second stream with its own cuBLAS handles, workspace and scratch
  // slots, so work on the two lanes shares no mutable memory of CudaOps; events order
  // them. Nesting is refused.
  void start_side_work() override;
  void end_side_work() override;
  void wait_side_work() override;
  // Loads the device copy of w (if it has run before) into the L2 cache (l2_prefetch.h).
  void prefetch_weights(const QuantizedMatrix& w) override;
  void synchronize() override;

  // The device copy of a RoPE table's frequencies (kept, keyed by the table's address).
  const float* rope_table(const cpu::RopeFrequencies& table);
  // Scratch memory for one op call, reused across calls (grows; never shrinks). The
  // pointer is valid until the next scratch() call with the same slot. Slots by file:
  // cuda_ops.cpp + linear_ops.cu 0–9, elementwise_ops.cu 10–19, attention_ops.cu 20–29.
  // Each lane has its own set.
  void* scratch(int slot, size_t bytes);
  // scratch() whose bytes are zero when it is (re)allocated: for kernels that keep their
  // accumulators zero between calls.
  void* zeroed_scratch(int slot, size_t bytes);
  // The fp32 device copy of a linear weight as linear() prepared it, or null when this
  // precision keeps that weight in another form (dense f32 weights stay fp32 in both).
  const float* prepared_f32(const QuantizedMatrix& w);
  // Counts scratch reallocations: work recorded earlier (a CUDA graph, graph_replay_ops.h)
  // may hold a freed scratch pointer once this has changed.
  uint64_t scratch_epoch() const { return scratch_epoch_; }

 private:
  GpuContext& ctx() { return lanes_[lane_]; }

  Precision precision_;
  // Both lanes at one priority: with the side lane below the main lane (sessions 4-6) the
  // 43-layer decode step was 0.03-0.10 ms slower in each of 6 alternating pairs on an
  // H100, and with it above, 0.45 ms slower (bench/results/gpu-model.md, Session 7).
  GpuContext lanes_[2] = {GpuContext(StreamPriority::High), GpuContext(StreamPriority::High)};  // main, side
  int lane_ = 0;
  cudaEvent_t side_start_ = nullptr;  // main lane's work before the side work
  cudaEvent_t side_done_ = nullptr;   // the side work
  // Side work ended since the last wait_side_work(). Without any, a wait joins nothing;
  // waiting on side_done_ then could even fail, its last record having been part of a
  // CUDA-graph capture.
  bool side_unjoined_ = false;
  LinearCache linears_;
  std::unordered_map<const void*, DeviceBuffer<float>> float_params_;
  std::unordered_map<const void*, DeviceBuffer<int64_t>> int_params_;
  std::unordered_map<const void*, DeviceBuffer<unsigned char>> byte_params_;
  std::unordered_map<int, DeviceBuffer<unsigned char>> scratch_;  // by lane·kSlotsPerLane + slot
  uint64_t scratch_epoch_ = 0;
};

}  // namespace dsq::cuda
