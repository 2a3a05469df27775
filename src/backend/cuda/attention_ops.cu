// CudaOps' attention-state ops (spec §2.5–§2.10, §3.2) over the decoding-state layout of
// backend/ops.h: the compressors' window pooling, the Lightning indexer's scores and
// top-k, the sink attention of the queries over window + compressed keys, and the window
// ring update. All arithmetic is fp32, as in CpuOps; results differ from it only by
// summation order (and, for the top-k, by which of exactly tied scores is picked).
//
// sink_attention is the speed-critical one. Keys are shared by every head (MQA, V = K),
// so a block copies a tile of 32 keys (16 for a decode over a few hundred keys) into
// shared memory once and serves 8 heads with it (logits: one lane per key, the warps
// splitting the dims; softmax: one warp per head; value sums: all threads over the dims),
// with an online softmax across tiles. A query's keys are at most W + top-k (CSA) or
// W + visible entries (HCA), so at decode the few hundred keys are split over
// blocks (flash-decoding) and a combine kernel merges the partial softmaxes with the
// sink; a prefill has enough queries to fill the GPU without a split. Whichever kernel
// writes the output also applies its inverse rope (output_rope), which would otherwise
// be a launch of its own on the decode step's critical path. decode_attention runs the
// same kernels over a decode step's sequences at once (block row = sequence, their key
// sets passed as kernel parameters), then one launch stores every sequence's new key in
// its window ring: a batch of sequences costs the launches of one.
#include <cub/block/block_scan.cuh>
#include <cuda_pipeline.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/dependent_launch.h"
#include "backend/cuda/rope_turn.cuh"

namespace dsq::cuda {

namespace {

constexpr float kNegInf = -INFINITY;

__device__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
__device__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

int blocks_for(int64_t n, int threads) { return int(std::min<int64_t>((n + threads - 1) / threads, 65535)); }

// ---- ring writes (update_window, the compressor rings, store_rings) ----

// Ring stores per launch (block row y = store y), passed in the kernel's parameter space:
// a decode step's window update and its two compressors' kv and gate rings fit, and a
// decode batch's window keys (decode_attention) go 8 sequences per launch.
constexpr int kRingStoresPerLaunch = 8;
struct RingStores {
  backend::RingStore store[kRingStoresPerLaunch];
};

// Store blockIdx.y (see backend::RingStore): ring[(p0 + i) mod ring_rows] = rows[i] for
// the last min(S, ring_rows) of S rows.
__global__ void store_rings_kernel(const __grid_constant__ RingStores stores) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  const backend::RingStore& r = stores.store[blockIdx.y];
  const int64_t first = r.S > r.ring_rows ? r.S - r.ring_rows : 0;
  const int64_t total = (r.S - first) * r.width;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = first + idx / r.width, c = idx % r.width;
    r.ring[((r.p0 + i) % r.ring_rows) * r.width + c] = r.rows[i * r.width + c];
  }
}

// The stores with rows to store, kRingStoresPerLaunch per launch; a launch's grid is
// sized by its largest store.
void launch_ring_stores(const GpuContext& ctx, const backend::RingStore* stores, int64_t n) {
  RingStores batch{};
  int count = 0, blocks = 0;
  const auto launch = [&] {
    if (count == 0) return;
    launch_dependent(ctx, store_rings_kernel, dim3(unsigned(blocks), unsigned(count)), 256, 0, batch);
    DSQ_CUDA_CHECK_LAUNCH();
    count = blocks = 0;
  };
  for (int64_t k = 0; k < n; ++k) {
    const backend::RingStore& r = stores[k];
    DSQ_CHECK(r.ring_rows > 0 && r.width > 0, "store_rings: a ring of ", r.ring_rows, " rows of ", r.width,
              " values");
    if (r.S <= 0) continue;
    batch.store[count++] = r;
    blocks = std::max(blocks, blocks_for(std::min(r.S, r.ring_rows) * r.width, 256));
    if (count == kRingStoresPerLaunch) launch();
  }
  launch();
}

// ---- compress ----

struct CompressArgs {
  float* ring_kv;
  float* ring_gate;
  const float* kv;    // this call's raw rows [S, raw]
  const float* gate;
  const float* ape;   // [m, raw]
  const float* norm;  // [width]
  const float* freqs; // [rope_dim / 2]
  float* entries;
  int64_t p0, S, rate, width, raw, rope_dim, first_entry, n_close;
  bool overlap;
  float eps;
};

constexpr int kCompressThreads = 1024;
constexpr int kCompressBatch = 8;  // slots whose loads one thread has in flight at once

// Channel lanes and slot groups of a compress block: `lanes` threads cover the channels
// (each lanes-th one), and `groups` such sets of threads split a window's slots between
// them, so that a narrow entry still keeps a full block of loads in flight.
struct CompressLayout {
  int lanes, groups;
};
__host__ __device__ inline CompressLayout compress_layout(int64_t width, int64_t n_slots) {
  const int lanes = int(width < kCompressThreads ? width : kCompressThreads);
  const int64_t groups = kCompressThreads / lanes < n_slots ? kCompressThreads / lanes : n_slots;
  return {lanes, int(groups)};
}

// Blocks 0 … n_close−1: entry s = first_entry + blockIdx.x. Every channel's softmax pool
// over the window's slots (the previous window's first-half channels and the own
// window's second half with overlap), as an online softmax over batches of slots whose
// loads are all in flight together; the slot groups' partial pools merge in shared
// memory; then RMSNorm and rope at position s·m. Any blocks from n_close on store the
// call's rows in the rings: legal in the same launch only when no ring row they
// overwrite is one that a closing window reads (compress() checks).
__global__ void __launch_bounds__(kCompressThreads) compress_kernel(CompressArgs a) {
  extern __shared__ float pooled[];  // [width]
  __shared__ float part_max[kCompressThreads], part_sum[kCompressThreads], part_acc[kCompressThreads];
  __shared__ float partial[32];
  if (blockIdx.x >= a.n_close) {  // ring store
    wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
    allow_dependent_launch();
    const int64_t first = a.S > 2 * a.rate ? a.S - 2 * a.rate : 0, total = (a.S - first) * a.raw;
    for (int64_t idx = (blockIdx.x - a.n_close) * int64_t(blockDim.x) + threadIdx.x; idx < 2 * total;
         idx += int64_t(gridDim.x - a.n_close) * blockDim.x) {
      const bool is_gate = idx >= total;
      const int64_t e = is_gate ? idx - total : idx, i = first + e / a.raw, c = e % a.raw;
      float* ring = is_gate ? a.ring_gate : a.ring_kv;
      ring[((a.p0 + i) % (2 * a.rate)) * a.raw + c] = (is_gate ? a.gate : a.kv)[i * a.raw + c];
    }
    return;
  }
  const int64_t s = a.first_entry + blockIdx.x;
  // Slot arithmetic in 32 bits, without a division per slot: slot t (t < m of an overlap:
  // the previous window) is position base + t, found in this call's rows (row
  // base + t − p0) from slot `fresh_from` on and in ring row (base_row + t) mod 2m before.
  const int rate = int(a.rate), raw = int(a.raw), width = int(a.width);
  const int n_slots = a.overlap ? 2 * rate : rate;
  const int64_t base = a.overlap ? (s - 1) * a.rate : s * a.rate;
  const int fresh_from = int(std::clamp<int64_t>(a.p0 - base, 0, n_slots));
  const int fresh_shift = int(base - a.p0);  // row of slot t among this call's rows: t + fresh_shift
  const int base_row = int(((base % (2 * a.rate)) + 2 * a.rate) % (2 * a.rate));
  const CompressLayout layout = compress_layout(width, n_slots);
  const int lane = int(threadIdx.x) % layout.lanes, group = int(threadIdx.x) / layout.lanes;
  const bool active = group < layout.groups;
  const bool has_previous = a.overlap && s > 0;
  const int own = a.overlap ? width : 0;  // channel offset of the own-window half
  // Raw column of slot t, channel c, and its position-bias row (the slot within its window).
  auto slot_column = [&](int t, int c) { return t < rate && a.overlap ? c : own + c; };
  auto slot_ape = [&](int t, int c) { return a.ape[(t < rate ? t : t - rate) * raw + slot_column(t, c)]; };
  auto usable = [&](int t) { return t < n_slots && (has_previous || !a.overlap || t >= rate); };

  // The weights of the first pass (position bias, norm weight, rope frequency) are read
  // before waiting for the kernel that writes the rows.
  const int nope = width - int(a.rope_dim);
  const int c_first = threadIdx.x;
  const float norm_first = c_first < width ? a.norm[c_first] : 0.0f;
  const float freq_first = c_first >= nope && c_first < width ? a.freqs[(c_first - nope) / 2] : 0.0f;
  float first_ape[kCompressBatch];
#pragma unroll
  for (int x = 0; x < kCompressBatch; ++x) {
    const int t = group + x * layout.groups;
    first_ape[x] = active && usable(t) ? slot_ape(t, lane) : 0.0f;
  }
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();

  for (int c = lane; c < width; c += layout.lanes) {
    float run_max = kNegInf, run_sum = 0, run_acc = 0;
    if (active)
      for (int t0 = group; t0 < n_slots; t0 += kCompressBatch * layout.groups) {
        float g[kCompressBatch], v[kCompressBatch];
#pragma unroll
        for (int x = 0; x < kCompressBatch; ++x) {
          const int t = t0 + x * layout.groups;
          g[x] = kNegInf, v[x] = 0;
          if (!usable(t)) continue;
          const bool fresh = t >= fresh_from;
          int row = fresh ? t + fresh_shift : base_row + t;
          if (!fresh && row >= 2 * rate) row -= 2 * rate;
          const int64_t at = int64_t(row) * raw + slot_column(t, c);
          const float ape = t0 == group && c == lane ? first_ape[x] : slot_ape(t, c);
          g[x] = (fresh ? a.gate : a.ring_gate)[at] + ape;
          v[x] = (fresh ? a.kv : a.ring_kv)[at];
        }
        float batch_max = kNegInf;
#pragma unroll
        for (int x = 0; x < kCompressBatch; ++x) batch_max = fmaxf(batch_max, g[x]);
        if (batch_max == kNegInf) continue;
        const float new_max = fmaxf(run_max, batch_max);
        const float rescale = run_max == kNegInf ? 0.0f : expf(run_max - new_max);
        run_sum *= rescale, run_acc *= rescale;
#pragma unroll
        for (int x = 0; x < kCompressBatch; ++x) {
          const float e = g[x] == kNegInf ? 0.0f : expf(g[x] - new_max);
          run_sum += e;
          run_acc += e * v[x];
        }
        run_max = new_max;
      }
    if (layout.groups > 1) {  // the groups' partial pools of this channel
      __syncthreads();
      if (active) {
        part_max[threadIdx.x] = run_max, part_sum[threadIdx.x] = run_sum, part_acc[threadIdx.x] = run_acc;
      }
      __syncthreads();
      if (group == 0) {
        float top = kNegInf;
        for (int r = 0; r < layout.groups; ++r) top = fmaxf(top, part_max[r * layout.lanes + lane]);
        run_sum = 0, run_acc = 0;
        for (int r = 0; r < layout.groups; ++r) {
          const float m = part_max[r * layout.lanes + lane];
          const float w = m == kNegInf ? 0.0f : expf(m - top);
          run_sum += part_sum[r * layout.lanes + lane] * w;
          run_acc += part_acc[r * layout.lanes + lane] * w;
        }
      }
    }
    if (group == 0) pooled[c] = run_acc / run_sum;
  }
  __syncthreads();
  float sum_sq = 0;
  for (int c = threadIdx.x; c < width; c += blockDim.x) sum_sq += pooled[c] * pooled[c];
  sum_sq = warp_sum(sum_sq);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum_sq;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
    v = warp_sum(v);
    if (threadIdx.x == 0) partial[0] = v;
  }
  __syncthreads();
  const float inv = 1.0f / sqrtf(partial[0] / float(width) + a.eps);
  for (int c = threadIdx.x; c < width; c += blockDim.x)
    pooled[c] = (c == c_first ? norm_first : a.norm[c]) * (pooled[c] * inv);
  __syncthreads();
  // Rope rotates the pairs (nope + 2i, nope + 2i + 1) by the angle s·m·freq[i].
  float* entry = a.entries + s * a.width;
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    if (c < nope) {
      entry[c] = pooled[c];
      continue;
    }
    const int i = (c - nope) / 2, x_at = nope + 2 * i;
    const float angle = float(s * a.rate) * (c == c_first ? freq_first : a.freqs[i]);
    const float cs = cosf(angle), sn = sinf(angle);
    const float x = pooled[x_at], y = pooled[x_at + 1];
    entry[c] = c == x_at ? x * cs - y * sn : y * cs + x * sn;
  }
}

// ---- indexer scores ----

constexpr int kIxHeads = 64, kIxDim = 64;  // block tile of heads × dims; 16×16 threads, 4 heads each
constexpr int kIxQLoads = kIxHeads * kIxDim / 4 / 256;  // float4 loads of q per thread and slice

// Block (key tile, query i) of 16·KPT keys (KPT keys per thread): the q·k products of up
// to 64 heads × 16·KPT keys per pass over the heads, accumulated over head_dim in slices
// of 64; ReLU and the head weight are applied per pass and the per-key sums reduced over
// the 16 thread rows at the end. Tiles are stored dim-major so that a thread reads its 4
// heads as one float4 and its KPT keys side by side. A decode at a few thousand entries
// takes the narrower tile so that the grid covers more of the GPU; head_dim is a
// multiple of 4.
template <int KPT>
__global__ void __launch_bounds__(256) indexer_scores_kernel(const float* q, const float* weights, int64_t S,
                                                             int n_heads, int head_dim, const float* keys,
                                                             int n_keys, float scale, float* scores) {
  constexpr int kKeys = 16 * KPT;
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  __shared__ __align__(16) float q_s[kIxDim][kIxHeads];
  __shared__ __align__(16) float k_s[kIxDim][kKeys];
  __shared__ float key_sum[16][kKeys];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int s0 = blockIdx.x * kKeys;
  for (int64_t i = blockIdx.y; i < S; i += gridDim.y) {
    const float* qi = q + i * n_heads * head_dim;
    float total[KPT] = {};
    for (int h0 = 0; h0 < n_heads; h0 += kIxHeads) {
      float acc[4][KPT] = {};
      for (int d0 = 0; d0 < head_dim; d0 += kIxDim) {
        // All loads of the slice first (they overlap), then the transposed stores; a warp
        // covers 32 rows at one dim offset, so the stores hit 32 banks.
        const float4 zero = make_float4(0, 0, 0, 0);
        float4 qv[kIxQLoads], kv[KPT];
#pragma unroll
        for (int x = 0; x < kIxQLoads; ++x) {
          const int idx = threadIdx.x + 256 * x, h = h0 + idx % kIxHeads, d = d0 + 4 * (idx / kIxHeads);
          qv[x] = h < n_heads && d < head_dim ? *reinterpret_cast<const float4*>(qi + h * head_dim + d) : zero;
        }
#pragma unroll
        for (int x = 0; x < KPT; ++x) {
          const int idx = threadIdx.x + 256 * x, s = s0 + idx % kKeys, d = d0 + 4 * (idx / kKeys);
          kv[x] = s < n_keys && d < head_dim ? *reinterpret_cast<const float4*>(keys + int64_t(s) * head_dim + d)
                                             : zero;
        }
#pragma unroll
        for (int x = 0; x < kIxQLoads; ++x) {
          const int idx = threadIdx.x + 256 * x, r = idx % kIxHeads, d = 4 * (idx / kIxHeads);
          q_s[d][r] = qv[x].x, q_s[d + 1][r] = qv[x].y, q_s[d + 2][r] = qv[x].z, q_s[d + 3][r] = qv[x].w;
        }
#pragma unroll
        for (int x = 0; x < KPT; ++x) {
          const int idx = threadIdx.x + 256 * x, r = idx % kKeys, d = 4 * (idx / kKeys);
          k_s[d][r] = kv[x].x, k_s[d + 1][r] = kv[x].y, k_s[d + 2][r] = kv[x].z, k_s[d + 3][r] = kv[x].w;
        }
        __syncthreads();
#pragma unroll 8
        for (int d = 0; d < kIxDim; ++d) {
          const float4 a = *reinterpret_cast<const float4*>(&q_s[d][4 * ty]);
          const float av[4] = {a.x, a.y, a.z, a.w};
          float bv[KPT];
#pragma unroll
          for (int y = 0; y < KPT; ++y) bv[y] = k_s[d][KPT * tx + y];
#pragma unroll
          for (int x = 0; x < 4; ++x)
#pragma unroll
            for (int y = 0; y < KPT; ++y) acc[x][y] += av[x] * bv[y];
        }
        __syncthreads();
      }
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int h = h0 + 4 * ty + x;
        if (h >= n_heads) continue;
        const float w = weights[i * n_heads + h];
#pragma unroll
        for (int y = 0; y < KPT; ++y) total[y] += fmaxf(acc[x][y], 0.0f) * w;
      }
    }
#pragma unroll
    for (int y = 0; y < KPT; ++y) key_sum[ty][KPT * tx + y] = total[y];
    __syncthreads();
    if (threadIdx.x < kKeys && s0 + int(threadIdx.x) < n_keys) {
      float v = 0;
      for (int r = 0; r < 16; ++r) v += key_sum[r][threadIdx.x];
      scores[i * n_keys + s0 + threadIdx.x] = v * scale;
    }
    __syncthreads();  // key_sum is rewritten for the next query
  }
}

// ---- indexer top-k ----

// Order-preserving map of a float to an unsigned key (larger float, larger key); both
// zeros map to +0's key so that they tie, as they compare equal on the CPU.
__device__ uint32_t order_key(float f) {
  const uint32_t u = f == 0.0f ? 0u : __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ float warp_min(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Rows of up to kTopkHeldKeys visible entries (every decode step up to 64k tokens of
// context) are held in registers, a few consecutive entries per thread, and ranked in a
// handful of block barriers; longer rows take the radix kernel further below.
constexpr int kTopkBins = 2048;
constexpr int kTopkHeldKeys = 16384;
constexpr int kTopkFewCandidates = 32;  // a boundary bin this small is ranked by one warp

// Bin of a score, non-decreasing in the score: equal scores share a bin and a larger
// score never lands in a lower one, so every entry of a higher bin outranks every entry
// of a lower one. Finite scores spread linearly over bins 1 … kTopkBins − 2 from the
// smallest finite score `lo` on (scale = 0: all in bin 1); −∞ and negative NaN go to
// bin 0, +∞ and positive NaN to the top bin, where order_key puts them.
__device__ int coarse_bin(float v, float lo, float scale) {
  if (!isfinite(v)) return signbit(v) ? 0 : kTopkBins - 1;
  return 1 + int(scale > 0.0f ? fminf((v - lo) * scale, float(kTopkBins - 3)) : 0.0f);
}

// The bin holding the wanted-th largest entry of a histogram: its index, the entries in
// the bins above it and its own count. Run by one whole warp; 1 <= wanted <= the total.
struct TopkBoundary {
  int bin, above, count;
};
__device__ void find_boundary(const int* hist, int wanted, TopkBoundary* result) {
  constexpr int kPerLane = kTopkBins / 32;
  const int lane = threadIdx.x % 32;
  // Lane l sums bins 64l … 64l + 63; the lane whose chunk holds the boundary is found by
  // a suffix scan from lane 31 down, then its chunk is scanned two bins per lane.
  auto suffix_sum = [&](int v) {  // v + the values of the lanes above
    for (int off = 1; off < 32; off <<= 1) {
      const int n = __shfl_down_sync(0xffffffffu, v, off);
      if (lane + off < 32) v += n;
    }
    return v;
  };
  const int4* chunk4 = reinterpret_cast<const int4*>(hist + lane * kPerLane);
  int sum = 0;
#pragma unroll
  for (int x = 0; x < kPerLane / 4; ++x) {
    const int4 c = chunk4[x];
    sum += c.x + c.y + c.z + c.w;
  }
  const int chunk_above = suffix_sum(sum) - sum;
  const int chunk = __ffs(__ballot_sync(0xffffffffu, chunk_above < wanted && wanted <= chunk_above + sum)) - 1;
  const int above_chunk = __shfl_sync(0xffffffffu, chunk_above, chunk);
  const int2 pair = reinterpret_cast<const int2*>(hist + chunk * kPerLane)[lane];
  const int pair_sum = pair.x + pair.y;
  const int above = above_chunk + suffix_sum(pair_sum) - pair_sum;
  if (above < wanted && wanted <= above + pair_sum) {
    const int bin = chunk * kPerLane + 2 * lane;
    *result = above + pair.y >= wanted ? TopkBoundary{bin + 1, above, pair.y} : TopkBoundary{bin, above + pair.y, pair.x};
  }
}

// One block per query row, thread t holding entries t·kItems … t·kItems + kItems − 1 of
// the visible ones. The k-th largest entry is located in one histogram pass over
// coarse_bin (the finite scores' range split into 2046 bins, found with one block
// min/max): the entries of higher bins are all taken; in the boundary bin (a few entries
// for scores of any smooth distribution) one warp finds the threshold key, or, when the
// bin is crowded (ties, outliers), three 11-bit radix passes over that bin's keys do.
// Taken are the entries above the threshold and, of those equal to it, the lowest
// indices; they are written in ascending index order (a block scan of the per-thread
// counts), so the output does not depend on timing. Slots past the picks get −1.
template <int kThreads, int kItems>
__global__ void __launch_bounds__(kThreads) indexer_topk_kernel(const float* scores, int64_t n_keys, int64_t topk,
                                                                int64_t p0, int64_t rate, int64_t* selected) {
  constexpr int kWarps = kThreads / 32;
  __shared__ __align__(16) int hist[kTopkBins];
  __shared__ float warp_lo[kWarps], warp_hi[kWarps];
  __shared__ int warp_counts[kWarps];
  __shared__ uint32_t candidates[kTopkFewCandidates];
  __shared__ int n_candidates;
  __shared__ TopkBoundary boundary;
  __shared__ uint32_t threshold;
  __shared__ int threshold_taken;  // how many of the entries equal to the threshold are taken
  for (int b = threadIdx.x; b < kTopkBins; b += kThreads) hist[b] = 0;
  if (threadIdx.x == 0) n_candidates = 0;
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  const int64_t i = blockIdx.x;
  const float* row = scores + i * n_keys;
  int64_t* out = selected + i * topk;
  const int visible = int(std::min<int64_t>((p0 + i + 1) / rate, n_keys));
  const int k = int(std::min<int64_t>(topk, visible));
  for (int64_t j = k + threadIdx.x; j < topk; j += kThreads) out[j] = -1;
  if (k == visible) {  // every visible entry is picked
    for (int j = threadIdx.x; j < k; j += kThreads) out[j] = j;
    return;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int first = threadIdx.x * kItems;
  auto held = [&](int x) { return first + x < visible; };
  float v[kItems];
  if (kItems % 4 == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0 && first + kItems <= visible) {
#pragma unroll
    for (int x = 0; x < kItems; x += 4) {
      const float4 f = *reinterpret_cast<const float4*>(row + first + x);
      v[x] = f.x, v[x + 1] = f.y, v[x + 2] = f.z, v[x + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int x = 0; x < kItems; ++x) v[x] = held(x) ? row[first + x] : 0.0f;
  }

  float lo = INFINITY, hi = -INFINITY;
#pragma unroll
  for (int x = 0; x < kItems; ++x)
    if (held(x) && isfinite(v[x])) lo = fminf(lo, v[x]), hi = fmaxf(hi, v[x]);
  lo = warp_min(lo), hi = warp_max(hi);
  if (lane == 0) warp_lo[warp] = lo, warp_hi[warp] = hi;
  __syncthreads();
  lo = warp_min(lane < kWarps ? warp_lo[lane] : INFINITY);
  hi = warp_max(lane < kWarps ? warp_hi[lane] : -INFINITY);
  const float range = hi - lo;  // NaN (no finite score) and ∞ (overflow) take scale 0
  const float scale = range > 0.0f && range < INFINITY ? fminf(float(kTopkBins - 2) / range, FLT_MAX) : 0.0f;
#pragma unroll
  for (int x = 0; x < kItems; ++x)
    if (held(x)) atomicAdd(&hist[coarse_bin(v[x], lo, scale)], 1);
  __syncthreads();
  if (warp == 0) find_boundary(hist, k, &boundary);
  __syncthreads();
  const TopkBoundary coarse = boundary;
  const int need = k - coarse.above;  // taken from the boundary bin
  auto in_boundary_bin = [&](int x) { return held(x) && coarse_bin(v[x], lo, scale) == coarse.bin; };

  if (coarse.count <= kTopkFewCandidates) {
    // One warp: lane c holds candidate c and counts the candidates above it.
#pragma unroll
    for (int x = 0; x < kItems; ++x)
      if (in_boundary_bin(x)) candidates[atomicAdd(&n_candidates, 1)] = order_key(v[x]);
    __syncthreads();
    if (warp == 0) {
      const uint32_t mine = lane < coarse.count ? candidates[lane] : 0u;
      int greater = 0, not_less = 0;
      for (int c = 0; c < coarse.count; ++c) {
        const uint32_t other = candidates[c];
        greater += other > mine;
        not_less += other >= mine;
      }
      if (lane < coarse.count && greater < need && need <= not_less) {  // lanes of one key write the same
        threshold = mine;
        threshold_taken = need - greater;
      }
    }
  } else {
    // Radix select over the boundary bin's keys: bits 31…21, 20…10, then 10…0 (bit 10 is
    // already fixed by then, which only narrows the last digit's range).
    uint32_t prefix = 0, mask = 0;
    int remaining = need;
    for (int pass = 0; pass < 3; ++pass) {
      const int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;
      __syncthreads();  // hist and boundary are read
      for (int b = threadIdx.x; b < kTopkBins; b += kThreads) hist[b] = 0;
      __syncthreads();
#pragma unroll
      for (int x = 0; x < kItems; ++x) {
        const uint32_t key = order_key(v[x]);
        if (in_boundary_bin(x) && (key & mask) == prefix) atomicAdd(&hist[(key >> shift) & (kTopkBins - 1)], 1);
      }
      __syncthreads();
      if (warp == 0) find_boundary(hist, remaining, &boundary);
      __syncthreads();
      prefix |= uint32_t(boundary.bin) << shift;
      mask |= uint32_t(kTopkBins - 1) << shift;
      remaining -= boundary.above;
    }
    if (threadIdx.x == 0) threshold = prefix, threshold_taken = remaining;
  }
  __syncthreads();
  const uint32_t t_key = threshold;
  const int t_taken = threshold_taken;

  // Output slots in index order: a block scan of each thread's (above, equal) counts,
  // packed as above + 2^16 · equal (at most kTopkHeldKeys each).
  int packed = 0;
#pragma unroll
  for (int x = 0; x < kItems; ++x) {
    const uint32_t key = order_key(v[x]);
    if (held(x)) packed += key > t_key ? 1 : key == t_key ? 1 << 16 : 0;
  }
  int inclusive = packed;
  for (int off = 1; off < 32; off <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, inclusive, off);
    if (lane >= off) inclusive += n;
  }
  if (lane == 31) warp_counts[warp] = inclusive;
  __syncthreads();
  const int before = __reduce_add_sync(0xffffffffu, lane < warp ? warp_counts[lane] : 0) + inclusive - packed;
  int above_before = before & 0xFFFF, equal_before = before >> 16;
#pragma unroll
  for (int x = 0; x < kItems; ++x) {
    if (!held(x)) continue;
    const uint32_t key = order_key(v[x]);
    if (key > t_key) {
      out[above_before + min(equal_before, t_taken)] = first + x;
      ++above_before;
    } else if (key == t_key) {
      if (equal_before < t_taken) out[above_before + equal_before] = first + x;
      ++equal_before;
    }
  }
}

// Rows longer than kTopkHeldKeys (contexts past 64k tokens): one 1024-thread block per
// row, radix select (4 passes of 8 bits, per-warp histograms) of the k-th largest key
// among the visible entries, then the entries above it (any order) and, of those equal to
// it, the lowest indices. Slots past the picks get −1. The row's keys are staged in
// shared memory when `staged` (visible <= kTopkStagedKeys).
constexpr int kTopkThreads = 1024;
constexpr int kTopkWarps = kTopkThreads / 32;
constexpr int64_t kTopkStagedKeys = 24576;

__global__ void __launch_bounds__(kTopkThreads) indexer_topk_long_kernel(const float* scores, int64_t n_keys,
                                                                         int64_t topk, int64_t p0, int64_t rate,
                                                                         bool staged, int64_t* selected) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  using Scan = cub::BlockScan<int, kTopkThreads>;
  extern __shared__ uint32_t staged_keys[];
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int hist[kTopkWarps][256];
  __shared__ int chosen_digit, count_above, count_equal;
  __shared__ int n_written;
  const int64_t i = blockIdx.x;
  const float* row = scores + i * n_keys;
  int64_t* out = selected + i * topk;
  const int64_t visible = std::min<int64_t>((p0 + i + 1) / rate, n_keys);
  const int64_t k = std::min(topk, visible);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t j = k + threadIdx.x; j < topk; j += blockDim.x) out[j] = -1;
  if (k == visible) {  // every visible entry is picked
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) out[j] = j;
    return;
  }
  if (staged) {
    constexpr int kBatch = 8;  // loads in flight per thread
    for (int64_t s0 = 0; s0 < visible; s0 += kBatch * blockDim.x) {
      float v[kBatch];
#pragma unroll
      for (int x = 0; x < kBatch; ++x) {
        const int64_t s = s0 + x * blockDim.x + threadIdx.x;
        v[x] = s < visible ? row[s] : 0.0f;
      }
#pragma unroll
      for (int x = 0; x < kBatch; ++x) {
        const int64_t s = s0 + x * blockDim.x + threadIdx.x;
        if (s < visible) staged_keys[s] = order_key(v[x]);
      }
    }
  }
  auto key_at = [&](int64_t s) { return staged ? staged_keys[s] : order_key(row[s]); };

  uint32_t prefix = 0, mask = 0;
  int remaining = int(k);  // how many of the keys matching `prefix` are still to be taken
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = lane; d < 256; d += 32) hist[warp][d] = 0;
    __syncthreads();
    for (int64_t s = threadIdx.x; s < visible; s += blockDim.x) {
      const uint32_t key = key_at(s);
      if ((key & mask) == prefix) atomicAdd(&hist[warp][(key >> shift) & 0xFF], 1);
    }
    __syncthreads();
    if (threadIdx.x < 256) {
      int sum = 0;
      for (int w = 0; w < kTopkWarps; ++w) sum += hist[w][threadIdx.x];
      hist[0][threadIdx.x] = sum;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l holds digits 255−8l … 248−8l (descending); scan the lanes from the top.
      int c[8], local = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) local += (c[j] = hist[0][255 - 8 * lane - j]);
      int inclusive = local;
      for (int off = 1; off < 32; off <<= 1) {
        const int n = __shfl_up_sync(0xffffffffu, inclusive, off);
        if (lane >= off) inclusive += n;
      }
      int run = inclusive - local;
      if (run < remaining && remaining <= inclusive) {
        for (int j = 0; j < 8; ++j) {
          if (run + c[j] >= remaining) {
            chosen_digit = 255 - 8 * lane - j;
            count_above = run;
            count_equal = c[j];
            break;
          }
          run += c[j];
        }
      }
    }
    __syncthreads();
    prefix |= uint32_t(chosen_digit) << shift;
    mask |= 0xFFu << shift;
    remaining -= count_above;
    __syncthreads();  // hist, chosen_digit and count_above are rewritten by the next pass
  }
  // `prefix` is now the k-th largest key; `remaining` of the keys equal to it are taken:
  // all of them when that is all there are (no tie at the boundary), else the lowest
  // indices, in an ordered scan.
  const bool take_all_equal = count_equal == remaining;
  if (threadIdx.x == 0) n_written = 0;
  __syncthreads();
  for (int64_t start = 0; start < visible; start += blockDim.x) {
    const int64_t s = start + threadIdx.x;
    const bool above = s < visible && (take_all_equal ? key_at(s) >= prefix : key_at(s) > prefix);
    const unsigned ballot = __ballot_sync(0xffffffffu, above);
    int base = 0;
    if (lane == 0 && ballot) base = atomicAdd(&n_written, __popc(ballot));
    base = __shfl_sync(0xffffffffu, base, 0);
    if (above) out[base + __popc(ballot & ((1u << lane) - 1))] = s;
  }
  if (take_all_equal) return;
  const int64_t tie_base = k - remaining;
  int taken = 0;
  for (int64_t start = 0; start < visible && taken < remaining; start += blockDim.x) {
    const int64_t s = start + threadIdx.x;
    const int flag = (s < visible && key_at(s) == prefix) ? 1 : 0;
    int pos, total;
    Scan(scan_storage).ExclusiveSum(flag, pos, total);
    if (flag && taken + pos < remaining) out[tie_base + taken + pos] = s;
    taken += total;
    __syncthreads();
  }
}

// ---- sink attention ----

constexpr int kAttnThreads = 256;
constexpr int kAttnHeads = 8;   // heads per block: one warp each for the softmax
constexpr int kAttnMaxDim = 512;

// Where the keys of query i (position p0 + i) live: key k < n_window is window position
// first(p) + k (the ring before p0, new_keys from p0 on); the rest are entries.
struct KeySet {
  const float* new_keys;
  const float* ring;
  const float* entries;
  const int64_t* selected;
  int64_t p0, window, dim, n_entries, rate, topk;
  backend::EntrySelection selection;

  __host__ __device__ __forceinline__ int64_t first_window_position(int64_t p) const {
    return p - window + 1 > 0 ? p - window + 1 : 0;
  }
  __host__ __device__ __forceinline__ int64_t n_window(int64_t p) const { return p - first_window_position(p) + 1; }
  // Keys of query i (the last query has the most: the host sizes the grid by it).
  __host__ __device__ __forceinline__ int64_t count(int64_t i) const {
    const int64_t p = p0 + i;
    int64_t n = n_window(p);
    if (selection == backend::EntrySelection::AllVisible) n += std::min((p + 1) / rate, n_entries);
    if (selection == backend::EntrySelection::Selected) n += topk;
    return n;
  }
  // Row of key k of query i, or null for an empty CSA pick (−1).
  __device__ __forceinline__ const float* row(int64_t i, int64_t k) const {
    const int64_t p = p0 + i, nw = n_window(p);
    if (k < nw) {
      const int64_t u = first_window_position(p) + k;
      return u < p0 ? ring + (u % (window - 1)) * dim : new_keys + (u - p0) * dim;
    }
    const int64_t j = k - nw;
    if (selection == backend::EntrySelection::Selected) {
      const int64_t s = selected[i * topk + j];
      return s >= 0 ? entries + s * dim : nullptr;
    }
    return entries + j * dim;
  }
};

// Which keys a sink_attention block row serves: one sequence's queries (row = query
// index), or a decode batch's sequences of one query each (row = sequence); a row's
// position (for the output's inverse rope) follows. Kernels take them as
// __grid_constant__ parameters, so a row's KeySet is read in place.
struct OneSequence {
  KeySet keys;
  __device__ const KeySet& keys_of(int64_t) const { return keys; }
  __device__ int64_t query_of(int64_t row) const { return row; }
  __device__ int64_t position_of(int64_t row) const { return keys.p0 + row; }
};
constexpr int kDecodeBatch = 32;  // sequences per decode_attention launch (kernel parameter space)
struct DecodeBatch {
  KeySet seq[kDecodeBatch];
  __device__ const KeySet& keys_of(int64_t row) const { return seq[row]; }
  __device__ int64_t query_of(int64_t) const { return 0; }
  __device__ int64_t position_of(int64_t row) const { return seq[row].p0; }
};

constexpr int kAttnWarps = kAttnThreads / 32;

// The logits' partial dot products: 32 / kKeys dim groups per warp, one lane per key.
template <int kKeys>
constexpr int kAttnDimGroups = kAttnWarps * (32 / kKeys);

template <int kKeys>
size_t attention_smem_bytes(int64_t dim) {
  const int64_t d4 = dim / 4;
  return sizeof(float4) * size_t(kKeys * (d4 + 1) + kAttnHeads * d4) +
         sizeof(float) * size_t(kAttnDimGroups<kKeys> * kAttnHeads * kKeys + kAttnHeads * kKeys + 3 * kAttnHeads);
}

// The output rotation of sink_attention's output_rope for the pair at dims (d, d + 1) (d
// even) of a row at `position`: the inverse RopeTurn, or no turn below the trailing
// rope_dim dims (all of them when rope_dim is 0: no output rotation, freqs unread).
struct OutputTurn {
  bool turns = false;
  RopeTurn turn;
  __device__ OutputTurn(int d, int dim, int rope_dim, const float* freqs, int64_t position) {
    const int first = dim - rope_dim;
    if (d < first) return;
    turns = true;
    turn = RopeTurn(float(position), freqs[(d - first) / 2], true);
  }
  __device__ float2 operator()(float a, float b) const { return turns ? turn(a, b) : make_float2(a, b); }
};

// Block (query i, heads 8·blockIdx.y …, split blockIdx.z): online softmax over the keys
// [split·keys_per_split, …) of query i in tiles of kKeys (32, or 16 where that spreads a
// decode over more SMs: each block then does half the arithmetic). With one split the
// block finishes the softmax with the sink and writes `out` (turned by OutputTurn);
// otherwise it leaves its running max, sum and unnormalised value sum for
// combine_kernel. dim is a multiple of 4, at most 512.
template <int kKeys, typename Source>
__global__ void __launch_bounds__(kAttnThreads, 2) sink_attention_kernel(const __grid_constant__ Source source,
                                                                      const float* q, int n_heads,
                                                                      const float* sinks, float scale,
                                                                      int keys_per_split, const float* out_freqs,
                                                                      int out_rope_dim, float* out,
                                                                      float* part_acc, float* part_max,
                                                                      float* part_sum) {
  constexpr int kGroups = kAttnDimGroups<kKeys>;
  const int64_t row = blockIdx.x, i = source.query_of(row);  // output row, query of its sequence
  const KeySet& keys = source.keys_of(row);
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  extern __shared__ float4 smem4[];
  // Key rows padded by 16 bytes: the 128-bit reads of 8 lanes (one per key) at the same
  // offset then fall into 8 different bank groups.
  const int D = int(keys.dim), D4 = D / 4, stride4 = D4 + 1;
  float4* k_s = smem4;                                          // [kKeys][D4 + 1]
  float4* q_s = k_s + kKeys * stride4;                          // [kAttnHeads][D4]
  float* dot_s = reinterpret_cast<float*>(q_s + kAttnHeads * D4);  // [kGroups][kAttnHeads][kKeys]
  float* p_s = dot_s + kGroups * kAttnHeads * kKeys;                // [kAttnHeads][kKeys]
  float* alpha_s = p_s + kAttnHeads * kKeys;
  float* max_s = alpha_s + kAttnHeads;
  float* sum_s = max_s + kAttnHeads;
  __shared__ const float* rows[kKeys];

  const int h0 = blockIdx.y * kAttnHeads, split = blockIdx.z, n_splits = gridDim.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int heads_here = min(kAttnHeads, n_heads - h0);
  const int64_t k_begin = int64_t(split) * keys_per_split;
  const int64_t k_end = std::min(keys.count(i), k_begin + keys_per_split);

  // Shared-memory tiles are filled with asynchronous copies (cp.async): all of a tile's
  // loads are in flight at once instead of one round trip per loop iteration.
  const float4* q4 = reinterpret_cast<const float4*>(q + (row * n_heads + h0) * D);
  for (int idx = threadIdx.x; idx < kAttnHeads * D4; idx += blockDim.x) {
    if (idx < heads_here * D4)
      __pipeline_memcpy_async(q_s + idx, q4 + idx, sizeof(float4));
    else
      q_s[idx] = make_float4(0, 0, 0, 0);
  }
  __pipeline_commit();

  // Value sums: thread t owns dims 2t, 2t + 1 of every head of the block.
  const bool owns_dims = 2 * int(threadIdx.x) < D;
  float acc[kAttnHeads][2] = {};
  float run_max = kNegInf, run_sum = 0;  // of head h0 + warp, the same in every lane
  for (int64_t kt = k_begin; kt < k_end; kt += kKeys) {
    __syncthreads();  // the previous tile is consumed (and q_s is written, first time)
    if (threadIdx.x < kKeys) rows[threadIdx.x] = kt + threadIdx.x < k_end ? keys.row(i, kt + threadIdx.x) : nullptr;
    __syncthreads();
    for (int kk = warp; kk < kKeys; kk += kAttnWarps) {
      const float4* r = reinterpret_cast<const float4*>(rows[kk]);
      for (int d4 = lane; d4 < D4; d4 += 32) {
        if (r)
          __pipeline_memcpy_async(k_s + kk * stride4 + d4, r + d4, sizeof(float4));
        else
          k_s[kk * stride4 + d4] = make_float4(0, 0, 0, 0);
      }
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);
    __syncthreads();
    // Logits: lane = key (of the lane's dim group: 32 / kKeys groups per warp); group g
    // sums the dims d4 ≡ g (mod kGroups) for all 8 heads, so each key element is read
    // from shared memory once and q is a broadcast.
    {
      const int key = lane % kKeys, group = warp * (32 / kKeys) + lane / kKeys;
      const float4* kr = k_s + key * stride4;
      float part[kAttnHeads] = {};
      for (int d4 = group; d4 < D4; d4 += kGroups) {
        const float4 kv = kr[d4];
#pragma unroll
        for (int h = 0; h < kAttnHeads; ++h) {
          const float4 qv = q_s[h * D4 + d4];
          part[h] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
        }
      }
#pragma unroll
      for (int h = 0; h < kAttnHeads; ++h) dot_s[(group * kAttnHeads + h) * kKeys + key] = part[h];
    }
    __syncthreads();
    float logit = kNegInf;  // warp = head, lane = key from here on
    if (warp < heads_here && lane < kKeys && rows[lane]) {
      float dot = 0;
#pragma unroll
      for (int g = 0; g < kGroups; ++g) dot += dot_s[(g * kAttnHeads + warp) * kKeys + lane];
      logit = dot * scale;
    }
    const float new_max = fmaxf(run_max, warp_max(logit));
    const float p = logit == kNegInf ? 0.0f : expf(logit - new_max);
    const float alpha = run_max == kNegInf ? 0.0f : expf(run_max - new_max);
    run_sum = run_sum * alpha + warp_sum(p);
    run_max = new_max;
    if (lane < kKeys) p_s[warp * kKeys + lane] = p;
    if (lane == 0) alpha_s[warp] = alpha;
    __syncthreads();
    if (owns_dims) {
#pragma unroll
      for (int h = 0; h < kAttnHeads; ++h) {
        const float a = alpha_s[h];
        acc[h][0] *= a;
        acc[h][1] *= a;
      }
      for (int kk = 0; kk < kKeys; kk += 4) {
        float4 pw[kAttnHeads];
#pragma unroll
        for (int h = 0; h < kAttnHeads; ++h) pw[h] = *reinterpret_cast<const float4*>(p_s + h * kKeys + kk);
        float2 v[4];
#pragma unroll
        for (int x = 0; x < 4; ++x) v[x] = reinterpret_cast<const float2*>(k_s + (kk + x) * stride4)[threadIdx.x];
#pragma unroll
        for (int h = 0; h < kAttnHeads; ++h) {
          acc[h][0] += pw[h].x * v[0].x + pw[h].y * v[1].x + pw[h].z * v[2].x + pw[h].w * v[3].x;
          acc[h][1] += pw[h].x * v[0].y + pw[h].y * v[1].y + pw[h].z * v[2].y + pw[h].w * v[3].y;
        }
      }
    }
  }
  if (lane == 0) {
    max_s[warp] = run_max;
    sum_s[warp] = run_sum;
  }
  __syncthreads();
  if (!owns_dims) return;
  // Thread t's dims 2t, 2t + 1 are one rope pair: one angle serves all its heads.
  const OutputTurn turn(2 * threadIdx.x, D, n_splits == 1 ? out_rope_dim : 0, out_freqs, keys.p0 + i);
#pragma unroll
  for (int h = 0; h < kAttnHeads; ++h) {  // unrolled: acc stays in registers
    if (h >= heads_here) continue;
    const int head = h0 + h;
    const float m = max_s[h];
    if (n_splits == 1) {
      const float sink = sinks[head], top = fmaxf(sink, m);
      const float weight = m == kNegInf ? 0.0f : expf(m - top);
      const float denom = expf(sink - top) + sum_s[h] * weight;
      reinterpret_cast<float2*>(out + (row * n_heads + head) * D)[threadIdx.x] =
          turn(acc[h][0] * weight / denom, acc[h][1] * weight / denom);
    } else {
      const int64_t slot = (row * n_splits + split) * n_heads + head;
      if (threadIdx.x == 0) {
        part_max[slot] = m;
        part_sum[slot] = sum_s[h];
      }
      reinterpret_cast<float2*>(part_acc + slot * D)[threadIdx.x] = make_float2(acc[h][0], acc[h][1]);
    }
  }
}

constexpr int kMaxSplits = 64;
constexpr int kCombineThreads = kAttnMaxDim / 4;  // one per float4 column of a head
constexpr int kCombineBatch = 8;                   // splits whose loads a thread has in flight at once

// Block (query i, head h): merges the splits' partial softmaxes with the sink logit.
// Thread c merges float4 column c of every split with an online softmax over batches of
// 8 splits, each thread loading the batch's maxima, sums and columns at once and
// deriving the weights itself: up to 8 splits take one round trip to memory, with no
// barrier. The block stays small (128 threads, few registers) so that it becomes
// resident beside the split kernel's blocks and starts as soon as they finish. The
// column's two rope pairs are turned by OutputTurn at its row's position.
template <typename Source>
__global__ void __launch_bounds__(kCombineThreads) combine_kernel(const float* part_acc, const float* part_max,
                                                                  const float* part_sum, int n_splits, int n_heads,
                                                                  int dim, const float* sinks,
                                                                  const __grid_constant__ Source source,
                                                                  const float* out_freqs, int out_rope_dim,
                                                                  float* out) {
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y, column = threadIdx.x;
  // The sink logit and the output rotation are constants (the position is the host's):
  // loaded before the wait, they add no round trip after the merge.
  const float sink = sinks[h];
  const int64_t position = source.position_of(i);
  const bool live = column < dim / 4;  // the others hold no column (and read no frequency)
  const OutputTurn turn_lo(live ? 4 * column : 0, dim, live ? out_rope_dim : 0, out_freqs, position),
      turn_hi(live ? 4 * column + 2 : 0, dim, live ? out_rope_dim : 0, out_freqs, position);
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  if (!live) return;
  auto slot = [&](int s) { return (i * n_splits + s) * n_heads + h; };
  float run_max = sink, run_sum = 1.0f;  // the sink: exp(sink − run_max), no value
  float4 acc = make_float4(0, 0, 0, 0);
  for (int s0 = 0; s0 < n_splits; s0 += kCombineBatch) {
    float m[kCombineBatch], l[kCombineBatch];
    float4 a[kCombineBatch];
#pragma unroll
    for (int x = 0; x < kCombineBatch; ++x) {
      const int s = s0 + x;
      const bool here = s < n_splits;
      m[x] = here ? part_max[slot(s)] : kNegInf;
      l[x] = here ? part_sum[slot(s)] : 0.0f;
      a[x] = here ? reinterpret_cast<const float4*>(part_acc + slot(s) * dim)[column] : make_float4(0, 0, 0, 0);
    }
    float new_max = run_max;
#pragma unroll
    for (int x = 0; x < kCombineBatch; ++x) new_max = fmaxf(new_max, m[x]);
    const float rescale = expf(run_max - new_max);
    run_sum *= rescale;
    acc.x *= rescale, acc.y *= rescale, acc.z *= rescale, acc.w *= rescale;
#pragma unroll
    for (int x = 0; x < kCombineBatch; ++x) {
      const float w = m[x] == kNegInf ? 0.0f : expf(m[x] - new_max);
      run_sum += l[x] * w;
      acc.x += a[x].x * w, acc.y += a[x].y * w, acc.z += a[x].z * w, acc.w += a[x].w * w;
    }
    run_max = new_max;
  }
  const float inv = 1.0f / run_sum;
  const float2 lo = turn_lo(acc.x * inv, acc.y * inv);
  const float2 hi = turn_hi(acc.z * inv, acc.w * inv);
  reinterpret_cast<float4*>(out + (i * n_heads + h) * dim)[column] = make_float4(lo.x, lo.y, hi.x, hi.y);
}

}  // namespace

void CudaOps::compress(const backend::CompressorParams& p, float* ring_kv, float* ring_gate, float* entries,
                       const float* kv, const float* gate, int64_t p0, int64_t S) {
  DSQ_CHECK(p.rate > 0 && p.width > 0 && p.rope && p.ape && p.norm, "compress: incomplete compressor parameters");
  DSQ_CHECK(p.rope->rope_dim <= p.width, "compress: ", p.rope->rope_dim, " rotary dims exceed an entry of ",
            p.width);
  const int64_t raw = p.overlap ? 2 * p.width : p.width;
  DSQ_CHECK(int64_t(p.ape->size()) == p.rate * raw, "compress: position bias has ", p.ape->size(),
            " values, expected ", p.rate * raw);
  DSQ_CHECK(int64_t(p.norm->size()) == p.width, "compress: norm weight has ", p.norm->size(), " values, expected ",
            p.width);
  if (S <= 0) return;
  const int64_t first = p0 / p.rate, n_close = (p0 + S) / p.rate - first;
  const auto raw_rows = backend::compressor_ring_stores(p, ring_kv, ring_gate, kv, gate, p0, S);
  if (n_close == 0) {  // three decode steps in four at m = 4
    launch_ring_stores(ctx(), raw_rows.data(), 2);
    return;
  }
  // The rows go into the rings in the same launch unless a row they overwrite (position
  // w − 2m for a stored position w) is one that a closing window still reads.
  const int64_t lowest_read = first * p.rate - (p.overlap && first > 0 ? p.rate : 0);
  const bool store_in_launch = p0 + S - 1 - 2 * p.rate < lowest_read;
  const int64_t stored_values = 2 * std::min(S, 2 * p.rate) * raw;
  CompressArgs a{ring_kv, ring_gate, kv, gate, resident(*p.ape), resident(*p.norm), rope_table(*p.rope),
                 entries, p0, S, p.rate, p.width, raw, p.rope->rope_dim, first, n_close, p.overlap, p.eps};
  const int64_t blocks = n_close + (store_in_launch ? blocks_for(stored_values, kCompressThreads) : 0);
  launch_dependent(ctx(), compress_kernel, unsigned(blocks), kCompressThreads, size_t(p.width) * sizeof(float), a);
  DSQ_CUDA_CHECK_LAUNCH();
  if (!store_in_launch) launch_ring_stores(ctx(), raw_rows.data(), 2);
}

void CudaOps::indexer_scores(const float* q, const float* weights, int64_t S, int64_t n_heads, int64_t head_dim,
                             const float* keys, int64_t n_keys, float* scores) {
  if (S <= 0 || n_keys <= 0) return;
  DSQ_CHECK(n_keys < INT32_MAX && n_heads * head_dim < INT32_MAX, "indexer_scores: ", n_keys, " keys × ", n_heads,
            " heads × ", head_dim, " dims too many for one call");
  DSQ_CHECK(head_dim % 4 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 &&
                reinterpret_cast<uintptr_t>(keys) % 16 == 0,
            "indexer_scores: head dim ", head_dim, " not a multiple of 4, or q / keys not 16-byte aligned");
  const float scale = 1.0f / std::sqrt(float(head_dim)) / std::sqrt(float(n_heads));
  // The wide tile (q re-read by fewer blocks) when it still gives every SM a block, else
  // the half-wide one (a decode at a few thousand entries: 64 instead of 32 blocks, the
  // faster of the two on an H100 at 8k context).
  const int64_t wide_blocks = (n_keys + 63) / 64 * S;
  const auto launch = [&](auto kernel, int keys_per_block) {
    const dim3 grid{unsigned((n_keys + keys_per_block - 1) / keys_per_block), unsigned(std::min<int64_t>(S, 65535))};
    launch_dependent(ctx(), kernel, grid, 256, 0, q, weights, S, int(n_heads), int(head_dim), keys, int(n_keys),
                     scale, scores);
  };
  if (wide_blocks >= ctx().sm_count())
    launch(indexer_scores_kernel<4>, 64);
  else
    launch(indexer_scores_kernel<2>, 32);
  DSQ_CUDA_CHECK_LAUNCH();
}

void CudaOps::indexer_topk(float* scores, int64_t S, int64_t n_keys, int64_t topk, int64_t p0, int64_t rate,
                           int64_t* selected) {
  DSQ_CHECK(rate > 0, "indexer_topk: compression rate ", rate);
  if (S <= 0 || topk <= 0) return;
  const int64_t longest = std::min(n_keys, (p0 + S) / rate);  // the longest visible part of a row
  if (longest <= kTopkHeldKeys) {
    // The fewest threads that hold the row with up to 8 entries each (16 past 8k): at 2k
    // entries on an H100, 512 threads × 4 entries took 3.8 µs, 1024 × 2 3.9, 256 × 8 4.7.
    const auto launch = [&](auto kernel, int threads) {
      launch_dependent(ctx(), kernel, unsigned(S), threads, 0, scores, n_keys, topk, p0, rate, selected);
    };
    if (longest <= 2048)
      launch(indexer_topk_kernel<512, 4>, 512);
    else if (longest <= 4096)
      launch(indexer_topk_kernel<512, 8>, 512);
    else if (longest <= 8192)
      launch(indexer_topk_kernel<1024, 8>, 1024);
    else
      launch(indexer_topk_kernel<1024, 16>, 1024);
    DSQ_CUDA_CHECK_LAUNCH();
    return;
  }
  // Stage the rows in shared memory when the longest visible part fits.
  const bool staged = longest <= kTopkStagedKeys;
  static const bool smem_ready = [] {
    DSQ_CUDA_CHECK(cudaFuncSetAttribute(indexer_topk_long_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(kTopkStagedKeys * sizeof(uint32_t))));
    return true;
  }();
  (void)smem_ready;
  const size_t smem = staged ? size_t(longest) * sizeof(uint32_t) : 0;
  launch_dependent(ctx(), indexer_topk_long_kernel, unsigned(S), kTopkThreads, smem, scores, n_keys, topk, p0, rate,
                   staged, selected);
  DSQ_CUDA_CHECK_LAUNCH();
}

namespace {

// The checks every sink_attention launch makes of its shared arguments.
void check_attention_arguments(int64_t dim, int64_t window, backend::EntrySelection selection, int64_t rate,
                               const cpu::RopeFrequencies* output_rope) {
  DSQ_CHECK(dim > 0 && dim <= kAttnMaxDim && dim % 4 == 0, "sink_attention: head dim ", dim,
            " is not a multiple of 4 in [4, ", kAttnMaxDim, "]");
  DSQ_CHECK(window >= 1, "sink_attention: window ", window);
  DSQ_CHECK(selection == backend::EntrySelection::None || rate > 0, "sink_attention: compression rate ", rate);
  DSQ_CHECK(!output_rope || output_rope->rope_dim <= dim, "sink_attention: ", output_rope ? output_rope->rope_dim : 0,
            " rotary dims exceed a head of ", dim);
}

void check_aligned(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    DSQ_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0,
              "sink_attention: a query, key or output pointer is not 16-byte aligned");
}

// sink_attention_kernel over `rows` rows of `source` (at most max_keys keys each), split
// over blocks so that the grid fills the GPU at decode, then combine_kernel where split.
template <typename Source>
void launch_sink_attention(CudaOps& ops, const Source& source, int64_t rows, int64_t max_keys, const float* q,
                           int64_t n_heads, int64_t dim, const float* sinks, float scale,
                           const cpu::RopeFrequencies* output_rope, float* out) {
  const GpuContext& ctx = ops.context();
  const float* out_freqs = output_rope ? ops.rope_table(*output_rope) : nullptr;
  const int out_rope_dim = output_rope ? int(output_rope->rope_dim) : 0;
  // Split the longest key list so that the grid fills the GPU at decode. Tiles of 16 keys
  // where one such tile per block still fits the GPU twice over (a decode over the window
  // and a few hundred entries at most), else of 32.
  const int64_t head_groups = (n_heads + kAttnHeads - 1) / kAttnHeads;
  const int64_t wanted = 2 * int64_t(ctx.sm_count());
  const int tile_keys = rows * head_groups * ((max_keys + 15) / 16) <= wanted ? 16 : 32;
  const int64_t tiles = (max_keys + tile_keys - 1) / tile_keys;
  int64_t splits = std::clamp<int64_t>((wanted + rows * head_groups - 1) / (rows * head_groups), 1,
                                      std::clamp<int64_t>(tiles, 1, kMaxSplits));
  const int64_t keys_per_split = ((tiles + splits - 1) / splits) * tile_keys;
  splits = std::max<int64_t>(1, (max_keys + keys_per_split - 1) / keys_per_split);

  float* part_acc = nullptr;
  float* part_max = nullptr;
  float* part_sum = nullptr;
  if (splits > 1) {
    const size_t slots = size_t(rows * splits * n_heads);
    float* base = static_cast<float*>(ops.scratch(20, slots * size_t(dim + 2) * sizeof(float)));
    part_acc = base;
    part_max = base + slots * size_t(dim);
    part_sum = part_max + slots;
  }
  DSQ_CHECK(rows <= INT32_MAX && n_heads <= 65535, "sink_attention: ", rows, " queries × ", n_heads, " heads too many");
  const dim3 grid{unsigned(rows), unsigned(head_groups), unsigned(splits)};
  const auto launch = [&](auto keys_per_tile) {
    constexpr int kKeys = decltype(keys_per_tile)::value;
    static const bool smem_ready = [] {
      DSQ_CUDA_CHECK(cudaFuncSetAttribute(sink_attention_kernel<kKeys, Source>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(attention_smem_bytes<kKeys>(kAttnMaxDim))));
      return true;
    }();
    (void)smem_ready;
    launch_dependent(ctx, sink_attention_kernel<kKeys, Source>, grid, kAttnThreads,
                     attention_smem_bytes<kKeys>(dim), source, q, int(n_heads), sinks, scale, int(keys_per_split),
                     out_freqs, out_rope_dim, out, part_acc, part_max, part_sum);
  };
  if (tile_keys == 16)
    launch(std::integral_constant<int, 16>{});
  else
    launch(std::integral_constant<int, 32>{});
  DSQ_CUDA_CHECK_LAUNCH();
  if (splits > 1) {
    launch_dependent(ctx, combine_kernel<Source>, dim3(unsigned(rows), unsigned(n_heads)), kCombineThreads, 0,
                     part_acc, part_max, part_sum, int(splits), int(n_heads), int(dim), sinks, source, out_freqs,
                     out_rope_dim, out);
    DSQ_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

void CudaOps::sink_attention(const float* q, int64_t S, int64_t n_heads, int64_t dim, const float* new_keys,
                             const float* ring, int64_t p0, int64_t window, backend::EntrySelection selection,
                             const float* entries, int64_t n_entries, int64_t rate, const int64_t* selected,
                             int64_t topk, const float* sinks, float scale,
                             const cpu::RopeFrequencies* output_rope, float* out) {
  check_attention_arguments(dim, window, selection, rate, output_rope);
  check_aligned({q, new_keys, ring, entries, out});
  if (S <= 0 || n_heads <= 0) return;
  const OneSequence source{{new_keys, ring, entries, selected, p0, window, dim, n_entries, rate, topk, selection}};
  launch_sink_attention(*this, source, S, source.keys.count(S - 1), q, n_heads, dim, sinks, scale, output_rope, out);
}

void CudaOps::decode_attention(const float* q, int64_t n, const backend::DecodeSequence* seqs, int64_t n_heads,
                               int64_t dim, const float* new_keys, int64_t window, backend::EntrySelection selection,
                               int64_t rate, int64_t topk, const float* sinks, float scale,
                               const cpu::RopeFrequencies* output_rope, float* out) {
  check_attention_arguments(dim, window, selection, rate, output_rope);
  check_aligned({q, new_keys, out});
  if (n <= 0 || n_heads <= 0) return;
  // kDecodeBatch sequences per launch: their key sets travel as kernel parameters.
  for (int64_t b0 = 0; b0 < n; b0 += kDecodeBatch) {
    const int64_t rows = std::min<int64_t>(kDecodeBatch, n - b0);
    DecodeBatch batch{};
    std::vector<backend::RingStore> window_stores;  // each sequence's key into its window ring
    int64_t max_keys = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const backend::DecodeSequence& s = seqs[b0 + r];
      check_aligned({s.ring, s.entries});
      const float* key = new_keys + (b0 + r) * dim;
      batch.seq[r] = {key, s.ring, s.entries, s.selected, s.p0, window, dim, s.n_entries, rate, topk, selection};
      if (window > 1) window_stores.push_back({s.ring, key, s.p0, 1, dim, window - 1});
      max_keys = std::max(max_keys, batch.seq[r].count(0));
    }
    launch_sink_attention(*this, batch, rows, max_keys, q + b0 * n_heads * dim, n_heads, dim, sinks, scale,
                          output_rope, out + b0 * n_heads * dim);
    // Every query has read its ring: each sequence's key goes in now.
    launch_ring_stores(ctx(), window_stores.data(), int64_t(window_stores.size()));
  }
}

void CudaOps::store_rings(const backend::RingStore* stores, int64_t n) { launch_ring_stores(ctx(), stores, n); }

}  // namespace dsq::cuda
