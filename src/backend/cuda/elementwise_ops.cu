// CudaOps' small memory-bound ops (cuda_ops.h): rms_norm, rope, norm_rope,
// rms_norm_and_norm_rope, swiglu, add, gather_rows, embed_streams, the mHC ops
// mhc_mix / mhc_pre / mhc_post / hc_head (spec §2.4, §2.12) and MoE routing (§2.11).
// Each op is one kernel launch on the context's stream (mhc_mix with many rows: a norm
// and a GEMM), with the semantics of the CPU functions in backend/cpu/ (the
// specification). Every kernel is a programmatic dependent
// (dependent_launch.h) that lets its own dependent launch at once: in a decode step,
// where most of these kernels run for a few microseconds, the next kernel is already
// resident when one ends, and a weight-streaming kernel after it loads its weights early.
//
// Rows whose width is a multiple of 4 at 16-byte aligned addresses move as float4
// (kernels templated on the vector width V = 4), everything else one float at a time
// (V = 1). The mHC coefficients repeat the CPU's arithmetic in the CPU's order (sequential
// sums, true divisions), so they differ from it only by the last bits of expf; reductions
// over a row (rms_norm, the router's weight sum) use a tree order instead.
//
// Bad indices. A kernel cannot throw, and checking a device flag would cost a host sync
// per call, so an index the CPU would reject poisons the result instead of faulting: a
// token id outside the embedding table gives a NaN row, and in hash routing a token outside
// [0, vocab) or a table entry outside [0, n_experts) gives expert 0 with weight NaN for
// the whole token. The forward's logits then come out NaN, never a read out of bounds.
// (gather_rows is not checked: it is not told how many rows `src` has.)
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/dependent_launch.h"
#include "backend/cuda/rope_turn.cuh"

namespace dsq::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxStreams = 8;  // mHC kernels are instantiated for 1..8 streams
constexpr int kRouteSlots = 16;  // experts per lane: route takes up to 32·16 = 512
constexpr int kRouteWarps = 4;   // tokens per route block

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads of a one-block-per-row kernel over rows of `chunks` vectors: a thread per vector
// up to 512, whole warps.
int row_threads(int64_t chunks) {
  return int(std::min<int64_t>(512, std::max<int64_t>(32, ceil_div(chunks, 32) * 32)));
}

// Whether rms_norm's rows and norm_rope's vectors can move as float4.
bool rms_norm_vectorizable(const float* x, int64_t dim, int64_t stride, const float* weight, const float* y) {
  return dim % 4 == 0 && stride % 4 == 0 && aligned16(x) && aligned16(y) && (!weight || aligned16(weight));
}
bool norm_rope_vectorizable(const float* x, int64_t dim, const float* weight) {
  return dim % 4 == 0 && aligned16(x) && (!weight || aligned16(weight));
}

// Blocks for a grid-stride loop over `items`: enough to fill the GPU, no more.
unsigned grid_for(int64_t items, const GpuContext& ctx) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceil_div(items, kThreads), int64_t(ctx.sm_count()) * 8)));
}

// V consecutive floats, moved as one float4 when V == 4.
template <int V>
struct Floats {
  float v[V];
};

template <int V>
__device__ Floats<V> load(const float* p) {
  Floats<V> f;
  if constexpr (V == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    f.v[0] = q.x, f.v[1] = q.y, f.v[2] = q.z, f.v[3] = q.w;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) f.v[i] = p[i];
  }
  return f;
}

template <int V>
__device__ void store(float* p, const Floats<V>& f) {
  if constexpr (V == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(f.v[0], f.v[1], f.v[2], f.v[3]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = f.v[i];
  }
}

__device__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// torch's softplus returns x itself above 20 (cpu/router.cpp).
__device__ float sqrt_softplus(float x) { return sqrtf(x > 20.0f ? x : log1pf(expf(x))); }

__device__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The sum of v over the block, returned to every thread. blockDim.x is a multiple of 32.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < int(blockDim.x / 32) ? partial[lane] : 0.0f;
    s = warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// ---- rms_norm: one block per row ----

// Thread threadIdx.x's first V-wide chunk of a row norm's weight (ones where there is
// none). Weights are constant, so kernels load it before their programmatic wait: the
// scaling after the row's sum of squares then waits for no memory.
template <int V>
__device__ Floats<V> first_weight_chunk(const float* weight, int64_t dim) {
  Floats<V> w;
  if (weight != nullptr && threadIdx.x < dim / V) return load<V>(weight + threadIdx.x * V);
#pragma unroll
  for (int e = 0; e < V; ++e) w.v[e] = 1.0f;
  return w;
}

// yr = rms_norm(xr) · weight (weight may be null) by the whole block; yr may alias xr.
// w0: first_weight_chunk(weight, dim). The thread's first chunk of x stays in registers
// between the two passes (one chunk per thread covers the decode rows).
template <int V>
__device__ void normalize_row(const float* xr, int64_t dim, const float* weight, float eps, float* yr,
                              const Floats<V>& w0) {
  const int64_t chunks = dim / V;
  float squares = 0;
  Floats<V> x0{};
  for (int64_t i = threadIdx.x; i < chunks; i += blockDim.x) {
    const Floats<V> f = load<V>(xr + i * V);
    if (i == threadIdx.x) x0 = f;
#pragma unroll
    for (int e = 0; e < V; ++e) squares += f.v[e] * f.v[e];
  }
  // Every thread has read its elements before any is written (y may alias x).
  const float inv = 1.0f / sqrtf(block_sum(squares) / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < chunks; i += blockDim.x) {
    const bool first = i == threadIdx.x;
    Floats<V> f = first ? x0 : load<V>(xr + i * V);
    if (weight) {
      const Floats<V> w = first ? w0 : load<V>(weight + i * V);
#pragma unroll
      for (int e = 0; e < V; ++e) f.v[e] = w.v[e] * (f.v[e] * inv);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) f.v[e] = f.v[e] * inv;
    }
    store<V>(yr + i * V, f);
  }
}

template <int V>
__global__ void rms_norm_kernel(const float* x, int64_t dim, int64_t stride, const float* weight, float eps,
                                float* y) {
  const Floats<V> w0 = first_weight_chunk<V>(weight, dim);
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  normalize_row<V>(x + int64_t(blockIdx.x) * stride, dim, weight, eps, y + int64_t(blockIdx.x) * stride, w0);
}

// mix[row][0..R) /= rms(x[row]) for row blockIdx.x of x [rows, K]: the mixing sums of
// the raw rows (a GEMM) scaled as if taken on the normalised rows.
template <int V>
__global__ void scale_by_inv_rms_kernel(const float* x, int64_t K, float eps, int R, float* mix) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  const float* xr = x + int64_t(blockIdx.x) * K;
  float squares = 0;
  for (int64_t i = threadIdx.x; i < K / V; i += blockDim.x) {
    const Floats<V> f = load<V>(xr + i * V);
#pragma unroll
    for (int e = 0; e < V; ++e) squares += f.v[e] * f.v[e];
  }
  const float inv = 1.0f / sqrtf(block_sum(squares) / float(K) + eps);
  if (int(threadIdx.x) < R) mix[int64_t(blockIdx.x) * R + threadIdx.x] *= inv;
}

// ---- rope: one thread per rotated pair ----

__global__ void rope_kernel(float* x, int64_t pairs, int64_t heads, int64_t dim, int64_t rope_dim,
                            const int64_t* positions, const float* freqs, bool inverse) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  const int64_t half = rope_dim / 2;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < pairs;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t vec = idx / half, i = idx % half;
    float* slice = x + vec * dim + (dim - rope_dim);
    const float2 r = RopeTurn(float(positions[vec / heads]), freqs[i], inverse)(slice[2 * i], slice[2 * i + 1]);
    slice[2 * i] = r.x;
    slice[2 * i + 1] = r.y;
  }
}

// ---- norm_rope: one block per vector, rms_norm_kernel's arithmetic then rope_kernel's ----

// The constants of one vector's norm_rope that a thread uses, loaded before the
// programmatic wait: its first chunk of the norm weight, the token's position (uploaded
// by the host before the step's kernels) and its first rotation frequency.
template <int V>
struct NormRopeConstants {
  Floats<V> w0;
  float position;
  float freq0;
};
template <int V>
__device__ NormRopeConstants<V> norm_rope_constants(int64_t vec, int64_t dim, const float* weight, int64_t heads,
                                                    int64_t rope_dim, const int64_t* positions, const float* freqs) {
  return {first_weight_chunk<V>(weight, dim), positions ? float(positions[vec / heads]) : 0.0f,
          threadIdx.x < rope_dim / 2 ? freqs[threadIdx.x] : 0.0f};
}

// Vector `vec` of x (vectors of `dim`, `heads` per token) normalised in place, then its
// trailing rope_dim entries rotated by its token's position, by the whole block.
template <int V>
__device__ void norm_rope_vector(float* x, int64_t vec, int64_t dim, const float* weight, float eps,
                                 int64_t rope_dim, const float* freqs, const NormRopeConstants<V>& k) {
  float* xr = x + vec * dim;
  normalize_row<V>(xr, dim, weight, eps, xr, k.w0);
  __syncthreads();  // the rotated pairs were normalised by other threads
  float* slice = xr + (dim - rope_dim);
  for (int64_t i = threadIdx.x; i < rope_dim / 2; i += blockDim.x) {
    const float2 r = RopeTurn(k.position, i == threadIdx.x ? k.freq0 : freqs[i], false)(slice[2 * i], slice[2 * i + 1]);
    slice[2 * i] = r.x;
    slice[2 * i + 1] = r.y;
  }
}

template <int V>
__global__ void norm_rope_kernel(float* x, int64_t dim, const float* weight, float eps, int64_t heads,
                                 int64_t rope_dim, const int64_t* positions, const float* freqs) {
  const auto k = norm_rope_constants<V>(blockIdx.x, dim, weight, heads, rope_dim, positions, freqs);
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  norm_rope_vector<V>(x, blockIdx.x, dim, weight, eps, rope_dim, freqs, k);
}

// ---- rms_norm_and_norm_rope: blocks [0, rows) are rms_norm_kernel's, the rest norm_rope_kernel's ----
// VN, VR: the vector widths of the two parts. The block is as wide as the wider part
// needs; the narrower part's extra threads hold no elements and add zeros to its sums,
// so both parts come out bit-identical to their own kernels.

template <int VN, int VR>
__global__ void rms_norm_and_norm_rope_kernel(const float* x, int64_t rows, int64_t dim, int64_t stride,
                                              const float* weight, float* y, float* heads_x, int64_t head_dim,
                                              const float* head_weight, int64_t heads, int64_t rope_dim,
                                              const int64_t* positions, const float* freqs, float eps) {
  const bool norm = int64_t(blockIdx.x) < rows;
  const int64_t vec = int64_t(blockIdx.x) - rows;
  const Floats<VN> w0 = first_weight_chunk<VN>(norm ? weight : nullptr, dim);
  const auto k = norm_rope_constants<VR>(norm ? 0 : vec, head_dim, norm ? nullptr : head_weight, heads,
                                         norm ? 0 : rope_dim, norm ? nullptr : positions, freqs);
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  if (norm)
    normalize_row<VN>(x + int64_t(blockIdx.x) * stride, dim, weight, eps, y + int64_t(blockIdx.x) * stride, w0);
  else
    norm_rope_vector<VR>(heads_x, vec, head_dim, head_weight, eps, rope_dim, freqs, k);
}

// ---- mhc_mix, few rows: fn · x / rms(x) in one pass over fn ----
// Block b takes kMixChunk columns of every row of fn and of every token's x: its partial
// dot products and partial sums of squares go to its own slot of a partials buffer; the
// last block to finish (a ticket) adds the slots in a fixed order, so the sums are the
// same on every run, scales them into `mix` and clears the ticket for the next call: the
// op is one launch. Each warp loads its rows' weights before waiting for the previous kernel
// (they are constant), so their latency hides behind it.
// mhc_mix_pre_kernel (below) continues in that last block with the whole mhc_pre.

constexpr int kMixChunk = 256;       // columns per block: 64 float4, two per lane
constexpr int kMixThreads = 512;     // 16 warps
constexpr int kMixMaxTokens = 8;
constexpr int kMixMaxRows = 64;
constexpr int kMixRowsPerWarp = (kMixMaxRows + 1 + kMixThreads / 32 - 1) / (kMixThreads / 32);  // + the squares row
constexpr int kMixSlot = kMixMaxTokens * (kMixMaxRows + 1);  // floats of one block's partial sums

// This block's share of the mixing sums of T rows of x [T, K] with fn [R, K], into its
// slot of `partials` (row stride R + 1: R dot products, then the sum of squares); true in
// the block that finishes last, which then finds every block's slot written.
__device__ bool mix_partials(const float* x, int T, int64_t K, const float* fn, int R, float* partials,
                             unsigned* ticket) {
  __shared__ float4 xs[kMixMaxTokens][kMixChunk / 4];
  __shared__ bool last;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int64_t c0 = int64_t(blockIdx.x) * kMixChunk;
  const int quads = int((K - c0 < kMixChunk ? K - c0 : int64_t(kMixChunk)) / 4);
  // Row k of this warp is r = warp + k·warps; row R stands for the squares (x · x).
  float4 w[kMixRowsPerWarp][2];
#pragma unroll
  for (int k = 0; k < kMixRowsPerWarp; ++k) {
    const int r = warp + k * warps;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = lane + 32 * h;
      w[k][h] = r < R && j < quads ? *reinterpret_cast<const float4*>(fn + int64_t(r) * K + c0 + 4 * j)
                                   : make_float4(0, 0, 0, 0);
    }
  }
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  for (int i = threadIdx.x; i < T * quads; i += blockDim.x)
    xs[i / quads][i % quads] = *reinterpret_cast<const float4*>(x + int64_t(i / quads) * K + c0 + 4 * (i % quads));
  __syncthreads();
  const int stride = R + 1;
  float* const slot = partials + int64_t(blockIdx.x) * kMixSlot;
#pragma unroll
  for (int k = 0; k < kMixRowsPerWarp; ++k) {
    const int r = warp + k * warps;
    if (r > R) break;
    float d[kMixMaxTokens];
#pragma unroll
    for (int t = 0; t < kMixMaxTokens; ++t) d[t] = 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = lane + 32 * h;
      if (j >= quads) break;
#pragma unroll
      for (int t = 0; t < kMixMaxTokens; ++t) {
        if (t < T) {
          const float4 v = xs[t][j];
          const float4 u = r == R ? v : w[k][h];
          d[t] += u.x * v.x + u.y * v.y + u.z * v.z + u.w * v.w;
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kMixMaxTokens; ++t) {
      if (t < T) {
        const float sum = warp_sum(d[t]);
        if (lane == 0) slot[t * stride + r] = sum;
      }
    }
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(ticket, 1u) == gridDim.x - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// Lanes that add up one sum of finish_mix when one pass of the block covers every sum (a
// decode token's): lane g takes slots g, g + 16, ... in order (their loads in flight
// together), then the 16 lanes' sums meet in a fixed shuffle tree. One thread per sum,
// walking all 64 slots, took a chain of L2 round trips: most of the mixing-coefficient
// kernel's time at one token. With more sums than 16-lane groups (a batch of 8 tokens:
// 200), each thread keeps a sum of its own: the grouped passes made a step of batch 8
// 2 % slower on an H100.
constexpr int kFinishLanes = 16;

// The last block: mix [T, R] = the sums (every block's slot) scaled by each row's 1/rms;
// then the ticket is cleared for the next call.
__device__ void finish_mix(int T, int64_t K, int R, float eps, const float* partials, unsigned* ticket, float* mix) {
  __shared__ float sums[kMixSlot];
  const int stride = R + 1, n_sums = T * stride;
  if (n_sums <= int(blockDim.x) / kFinishLanes) {
    const int lane = threadIdx.x % kFinishLanes, i = int(threadIdx.x) / kFinishLanes;
    float sum = 0;
    if (i < n_sums) {
#pragma unroll 4
      for (unsigned b = lane; b < gridDim.x; b += kFinishLanes) sum += __ldcg(partials + int64_t(b) * kMixSlot + i);
    }
#pragma unroll
    for (int o = kFinishLanes / 2; o > 0; o /= 2) sum += __shfl_down_sync(0xffffffffu, sum, o, kFinishLanes);
    if (lane == 0 && i < n_sums) sums[i] = sum;
  } else {
    for (int i = threadIdx.x; i < n_sums; i += blockDim.x) {
      float sum = 0;
      for (unsigned b = 0; b < gridDim.x; ++b) sum += __ldcg(partials + int64_t(b) * kMixSlot + i);
      sums[i] = sum;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < T * R; i += blockDim.x) {
    const int t = i / R, r = i % R;
    mix[i] = sums[t * stride + r] * (1.0f / sqrtf(sums[t * stride + R] / float(K) + eps));
  }
  if (threadIdx.x == 0) *ticket = 0;
}

__global__ void __launch_bounds__(kMixThreads) mhc_mix_kernel(const float* x, int T, int64_t K, const float* fn, int R,
                                                              float eps, float* partials, unsigned* ticket, float* mix) {
  if (mix_partials(x, T, K, fn, R, partials, ticket)) finish_mix(T, K, R, eps, partials, ticket, mix);
}

// ---- elementwise: grid-stride over V-chunks, the last n % V elements one by one ----

struct SwigluOp {
  float limit;
  __device__ float operator()(float g, float u) const {
    if (limit > 0) {
      g = fminf(g, limit);
      u = fminf(fmaxf(u, -limit), limit);
    }
    return g / (1.0f + expf(-g)) * u;
  }
};

struct AddOp {
  __device__ float operator()(float d, float s) const { return d + s; }
};

// out[i] = op(a[i], b[i]); out may alias a.
template <int V, typename Op>
__global__ void binary_kernel(const float* a, const float* b, int64_t n, Op op, float* out) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  const int64_t chunks = n / V;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = first; i < chunks; i += step) {
    const Floats<V> fa = load<V>(a + i * V), fb = load<V>(b + i * V);
    Floats<V> r;
#pragma unroll
    for (int e = 0; e < V; ++e) r.v[e] = op(fa.v[e], fb.v[e]);
    store<V>(out + i * V, r);
  }
  const int64_t tail = chunks * V + first;
  if (tail < n) out[tail] = op(a[tail], b[tail]);
}

template <typename Op>
void launch_binary(const float* a, const float* b, int64_t n, Op op, float* out, const GpuContext& ctx) {
  if (n <= 0) return;
  if (aligned16(a) && aligned16(b) && aligned16(out))
    launch_dependent(ctx, binary_kernel<4, Op>, grid_for(ceil_div(n, 4), ctx), kThreads, 0, a, b, n, op, out);
  else
    launch_dependent(ctx, binary_kernel<1, Op>, grid_for(n, ctx), kThreads, 0, a, b, n, op, out);
  DSQ_CUDA_CHECK_LAUNCH();
}

// ---- gather_rows: blockIdx.x = output row (up to 2³¹−1; y is limited to 65535) ----

template <int V>
__global__ void gather_rows_kernel(const float* src, const int64_t* rows, int64_t width, float* dst) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  const int64_t r = blockIdx.x;
  const int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (i * V >= width) return;
  store<V>(dst + r * width + i * V, load<V>(src + rows[r] * width + i * V));
}

// ---- embed_streams: blockIdx.x = token ----

__device__ float widen(float v) { return v; }
__device__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ float widen(__half v) { return __half2float(v); }

template <typename T, int V>
__global__ void embed_streams_kernel(const T* table, int64_t vocab, int64_t hidden, const int64_t* ids,
                                     int64_t n_streams, float* streams) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  const int64_t t = blockIdx.x;
  const int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (i * V >= hidden) return;
  const int64_t id = ids[t];
  Floats<V> f;
  if (id >= 0 && id < vocab) {
    const T* src = table + id * hidden + i * V;
#pragma unroll
    for (int e = 0; e < V; ++e) f.v[e] = widen(src[e]);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) f.v[e] = __int_as_float(0x7fc00000);  // NaN: see the header
  }
  float* out = streams + t * n_streams * hidden + i * V;
  for (int64_t j = 0; j < n_streams; ++j) store<V>(out + j * hidden, f);
}

template <typename T>
void launch_embed(const void* table, int64_t vocab, int64_t hidden, const int64_t* ids, int64_t T_, int64_t n,
                  float* streams, const GpuContext& ctx) {
  const T* tab = static_cast<const T*>(table);
  // V = 4 stores float4 into the streams; table elements are read one by one.
  if (hidden % 4 == 0 && aligned16(streams)) {
    const dim3 grid(unsigned(T_), unsigned(ceil_div(hidden / 4, kThreads)));
    launch_dependent(ctx, embed_streams_kernel<T, 4>, grid, kThreads, 0, tab, vocab, hidden, ids, n, streams);
  } else {
    const dim3 grid(unsigned(T_), unsigned(ceil_div(hidden, kThreads)));
    launch_dependent(ctx, embed_streams_kernel<T, 1>, grid, kThreads, 0, tab, vocab, hidden, ids, n, streams);
  }
  DSQ_CUDA_CHECK_LAUNCH();
}

// ---- mHC (spec §2.4): blockIdx.x = token, blockIdx.y = a slice of kThreads·V columns ----
// The stream count N is a template parameter (1..kMaxStreams) so that the per-stream
// loops unroll and the old streams of mhc_post stay in registers.

// Sinkhorn of cpu::mhc_coefficients on the N×N matrix A, by one warp, in registers: lane
// l holds entries l, l + 32, ... (a[s] = A[l + 32·s]). Each step fetches the N entries of
// an entry's row or column with shuffles and sums them sequentially in the CPU's order,
// so the arithmetic is the CPU's; no shared memory or warp barriers on the way (this
// chain of ~40 dependent steps is most of a decode-time mhc_pre).
template <int N>
struct SinkhornLanes {
  static constexpr int kNN = N * N, kPerLane = (kNN + 31) / 32;
  float a[kPerLane];

  // A[idx] from whichever lane holds it (every lane must call, with any idx < NN).
  __device__ float entry(int idx) const {
    float v = 0;
#pragma unroll
    for (int s = 0; s < kPerLane; ++s) {
      const float t = __shfl_sync(0xffffffffu, a[s], idx % 32);
      if (idx / 32 == s) v = t;
    }
    return v;
  }
};

template <int N>
__device__ void sinkhorn_lanes(SinkhornLanes<N>& A, int64_t iters, float eps) {
  constexpr int NN = N * N, P = SinkhornLanes<N>::kPerLane;
  const int lane = threadIdx.x % 32;
  // Row softmax, then + eps.
  float next[P];
#pragma unroll
  for (int s = 0; s < P; ++s) {
    const int idx = min(lane + 32 * s, NN - 1), row = idx / N;
    float v[N];
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = A.entry(row * N + k);
    float m = v[0];
#pragma unroll
    for (int k = 1; k < N; ++k) m = fmaxf(m, v[k]);
    float sum = 0;
#pragma unroll
    for (int k = 0; k < N; ++k) sum += expf(v[k] - m);
    next[s] = expf(A.a[s] - m) / sum + eps;
  }
#pragma unroll
  for (int s = 0; s < P; ++s) A.a[s] = next[s];
  // One column normalisation, then (rows, columns) × (iters − 1).
  const int64_t steps = iters > 1 ? 2 * iters - 1 : 1;
  for (int64_t it = 0; it < steps; ++it) {
    const bool columns = it % 2 == 0;
#pragma unroll
    for (int s = 0; s < P; ++s) {
      const int idx = min(lane + 32 * s, NN - 1), j = idx / N, k = idx % N;
      float sum = 0;
#pragma unroll
      for (int q = 0; q < N; ++q) sum += A.entry(columns ? q * N + k : j * N + q);
      next[s] = A.a[s] / (sum + eps);
    }
#pragma unroll
    for (int s = 0; s < P; ++s) A.a[s] = next[s];
  }
}

// x[c] = Σ_j pre[j]·X[j][c] for this block's slice of columns (in the CPU's j order).
template <int N, int V>
__device__ void collapse_slice(const float* X, const float* pre, int64_t hidden, float* x) {
  const int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (i * V >= hidden) return;
  Floats<V> acc;
#pragma unroll
  for (int e = 0; e < V; ++e) acc.v[e] = 0;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const Floats<V> f = load<V>(X + j * hidden + i * V);
#pragma unroll
    for (int e = 0; e < V; ++e) acc.v[e] += pre[j] * f.v[e];
  }
  store<V>(x + i * V, acc);
}

// comb = Sinkhorn of the token's mixing logits m, by one whole warp; written when `writer`.
template <int N>
__device__ void mhc_warp_comb(const float* m, const float* base, const float* scale, int64_t iters, float eps,
                              bool writer, float* comb) {
  constexpr int NN = N * N, P = SinkhornLanes<N>::kPerLane;
  const int lane = threadIdx.x % 32;
  SinkhornLanes<N> A;
#pragma unroll
  for (int s = 0; s < P; ++s) {
    const int i = lane + 32 * s;
    A.a[s] = i < NN ? m[2 * N + i] * scale[2] + base[2 * N + i] : 0.0f;
  }
  sinkhorn_lanes<N>(A, iters, eps);
  if (writer) {
#pragma unroll
    for (int s = 0; s < P; ++s)
      if (lane + 32 * s < NN) comb[lane + 32 * s] = A.a[s];
  }
}

// The token's pre (into shared memory) and post (written when `writer`), by threads < N.
template <int N>
__device__ void mhc_pre_post(const float* m, const float* base, const float* scale, float eps, bool writer, float* pre,
                             float* post) {
  const int j = threadIdx.x;
  if (j < N) {
    pre[j] = sigmoid(m[j] * scale[0] + base[j]) + eps;
    if (writer) post[j] = 2.0f * sigmoid(m[N + j] * scale[1] + base[N + j]);
  }
}

// The block's token coefficients (warp 0): pre into shared memory; post and comb written
// out when `writer`.
template <int N>
__device__ void mhc_block_coefficients(const float* m, const float* base, const float* scale, int64_t iters, float eps,
                                       bool writer, float* pre, float* post, float* comb) {
  if (threadIdx.x < 32) {
    mhc_pre_post<N>(m, base, scale, eps, writer, pre, post);
    mhc_warp_comb<N>(m, base, scale, iters, eps, writer, comb);
  }
  __syncthreads();
}

// Every block recomputes its token's coefficients (a few hundred flops) so that the
// columns of one token spread over several blocks; blocks with blockIdx.y == 0 write
// post and comb.
template <int N, int V>
__global__ void mhc_pre_kernel(const float* streams, const float* mix, const float* base, const float* scale,
                               int64_t hidden, int64_t iters, float eps, float* x, float* post, float* comb) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  __shared__ float pre[N];
  const int64_t t = blockIdx.x;
  mhc_block_coefficients<N>(mix + t * (2 + N) * N, base, scale, iters, eps, blockIdx.y == 0, pre, post + t * N,
                            comb + t * N * N);
  collapse_slice<N, V>(streams + t * N * hidden, pre, hidden, x + t * hidden);
}

// post and comb of token blockIdx.x from its mixing logits (mhc_coefficients), one warp.
template <int N>
__global__ void mhc_coefficients_kernel(const float* mix, const float* base, const float* scale, int64_t iters,
                                        float eps, float* post, float* comb) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  __shared__ float pre[N];
  const int64_t t = blockIdx.x;
  mhc_block_coefficients<N>(mix + t * (2 + N) * N, base, scale, iters, eps, true, pre, post + t * N,
                            comb + t * N * N);
}

// mhc_coefficients of up to kMixMaxTokens tokens in one launch: the mixing pass as
// mhc_mix_kernel, then its last block turns each token's mix into post and comb.
template <int N>
__global__ void __launch_bounds__(kMixThreads)
    mhc_mix_coefficients_kernel(const float* streams, int T, int64_t K, const float* fn, float mix_eps, float* partials,
                                unsigned* ticket, const float* base, const float* scale, int64_t iters, float eps,
                                float* post, float* comb) {
  constexpr int R = (2 + N) * N;
  __shared__ float mix[kMixMaxTokens * R];
  __shared__ float pre[N];
  // base and scale (constants) copied before the wait inside mix_partials: the last
  // block's coefficients then start without a memory round trip.
  __shared__ float constants[R + 3];  // base [R], then scale [3]
  if (int(threadIdx.x) < R + 3)
    __pipeline_memcpy_async(&constants[threadIdx.x], threadIdx.x < R ? base + threadIdx.x : scale + (threadIdx.x - R),
                            sizeof(float));
  __pipeline_commit();
  const bool last = mix_partials(streams, T, K, fn, R, partials, ticket);
  __pipeline_wait_prior(0);  // no thread leaves with a copy in flight
  if (!last) return;
  finish_mix(T, K, R, mix_eps, partials, ticket, mix);
  __syncthreads();
  for (int t = 0; t < T; ++t)
    mhc_block_coefficients<N>(mix + t * R, constants, constants + R, iters, eps, true, pre, post + t * N,
                              comb + t * N * N);
}

// x = collapse(X, pre), then rms_norm(x)·norm_weight when norm_weight is not null (the
// block's input norm), with rms_norm_kernel's arithmetic: the columns by the block's
// first `workers` threads, the norm's sum by the whole block (every thread must call).
// `first`: the first column chunk of every stream, already loaded by each thread (when
// Prefetched).
template <int N, int V, bool Prefetched>
__device__ void collapse_norm_row(const float* X, const float* pre, int64_t hidden, const Floats<V> (&first)[N],
                                  const float* norm_weight, float norm_eps, float* xr, int workers) {
  const int64_t chunks = hidden / V;
  float squares = 0;
  for (int64_t i = threadIdx.x; i < chunks && threadIdx.x < workers; i += workers) {
    Floats<V> acc;
#pragma unroll
    for (int e = 0; e < V; ++e) acc.v[e] = 0;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const Floats<V> f = Prefetched && i == threadIdx.x ? first[j] : load<V>(X + j * hidden + i * V);
#pragma unroll
      for (int e = 0; e < V; ++e) acc.v[e] += pre[j] * f.v[e];
    }
#pragma unroll
    for (int e = 0; e < V; ++e) squares += acc.v[e] * acc.v[e];
    store<V>(xr + i * V, acc);
  }
  if (norm_weight == nullptr) return;
  const float inv = 1.0f / sqrtf(block_sum(squares) / float(hidden) + norm_eps);
  for (int64_t i = threadIdx.x; i < chunks && threadIdx.x < workers; i += workers) {  // what each thread wrote
    Floats<V> f = load<V>(xr + i * V);
    const Floats<V> w = load<V>(norm_weight + i * V);
#pragma unroll
    for (int e = 0; e < V; ++e) f.v[e] = w.v[e] * (f.v[e] * inv);
    store<V>(xr + i * V, f);
  }
}

// mhc_pre followed by the block's input RMSNorm: one block per token takes the whole
// row, so the norm's reduction stays in the block.
template <int N, int V>
__global__ void mhc_pre_norm_kernel(const float* streams, const float* mix, const float* base, const float* scale,
                                    int64_t hidden, int64_t iters, float eps, const float* norm_weight,
                                    float norm_eps, float* x, float* post, float* comb) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  __shared__ float pre[N];
  const int64_t t = blockIdx.x;
  const float* X = streams + t * N * hidden;
  // The first column chunk of every stream is loaded while warp 0 computes the
  // coefficients (the whole row when the block covers it, as for H = 4096).
  Floats<V> first[N];
  if (threadIdx.x < hidden / V) {
#pragma unroll
    for (int j = 0; j < N; ++j) first[j] = load<V>(X + j * hidden + threadIdx.x * V);
  }
  mhc_block_coefficients<N>(mix + t * (2 + N) * N, base, scale, iters, eps, true, pre, post + t * N,
                            comb + t * N * N);
  collapse_norm_row<N, V, true>(X, pre, hidden, first, norm_weight, norm_eps, x + t * hidden, int(blockDim.x));
}

// mhc_mix and mhc_pre (with or without the input norm) of up to kMixMaxTokens tokens in one
// launch: the mixing pass as mhc_mix_kernel, then its last block finishes the mix in
// shared memory and runs each token's coefficients, collapse and norm (at decode one
// token: a 64 KB row, read from L2 where the mixing pass just left it). The collapse
// needs only pre, so the Sinkhorn of comb (a chain of ~40 dependent steps) runs on the
// last warp while the other warps collapse.
template <int N, int V>
__global__ void __launch_bounds__(kMixThreads)
    mhc_mix_pre_kernel(const float* streams, int T, int64_t hidden, const float* fn, float mix_eps, float* partials,
                       unsigned* ticket, const float* base, const float* scale, int64_t iters, float eps,
                       const float* norm_weight, float norm_eps, float* x, float* post, float* comb) {
  constexpr int R = (2 + N) * N;
  __shared__ float mix[kMixMaxTokens * R];
  __shared__ float pre[N];
  if (!mix_partials(streams, T, N * hidden, fn, R, partials, ticket)) return;
  finish_mix(T, N * hidden, R, mix_eps, partials, ticket, mix);
  __syncthreads();
  const Floats<V> none[N] = {};
  const int workers = int(blockDim.x) - 32;
  for (int t = 0; t < T; ++t) {
    mhc_pre_post<N>(mix + t * R, base, scale, eps, true, pre, post + t * N);
    __syncthreads();
    if (int(threadIdx.x) >= workers) mhc_warp_comb<N>(mix + t * R, base, scale, iters, eps, true, comb + t * N * N);
    collapse_norm_row<N, V, false>(streams + int64_t(t) * N * hidden, pre, hidden, none, norm_weight, norm_eps,
                                   x + int64_t(t) * hidden, workers);
    __syncthreads();  // pre is the next token's
  }
}

// mhc_pre of up to kClusterMaxTokens tokens by one cluster of kClusterBlocks blocks, with
// no trip through global memory inside the op: block b owns hidden columns
// [b·w, (b+1)·w), w = H / kClusterBlocks, of every stream. Its warps r < R hold, in
// registers from before the programmatic-launch wait, the mixing weights of those
// columns (warp R sums the squares); the blocks' partial sums meet through distributed
// shared memory, added in rank order. With the mixing sums the blocks exchange the Gram
// matrix of their stream columns (G[j][k] = Σ X_j·X_k), so that every block then has the
// whole mix and, once it has pre, the norm of the collapsed row too: |x|² = preᵀ·G·pre,
// with no second exchange. It collapses its columns from the stream slice already in its
// shared memory and normalises them. With the coefficients, block 0's last warp runs the
// Sinkhorn of comb meanwhile (the longest chain: the others wait for it at the exit
// barrier); without them (x alone, mhc_coefficients gives post and comb), the blocks mix
// only the N pre rows. Against the one-block tail of mhc_mix_pre_kernel, the chain after
// the wait is one cluster barrier instead of atomics, a ticket and a lone block's pass.
//
// With `update` (mhc_post_pre), the previous block's residual update comes first: each
// block updates its own columns of the streams in shared memory (the column split makes
// the update local) and writes them back, so the update needs no launch of its own.
constexpr int kClusterBlocks = 16;  // a non-portable cluster size: H100 GPCs hold >= 16 SMs
constexpr int kClusterThreads = 1024;
constexpr int kClusterMaxTokens = 4;
constexpr int kClusterMaxQuads = 256;  // float4 per block and token: N·w <= 1024 (8 per lane)
constexpr int kClusterMaxWidth = 256;  // w: one column per collapsing thread

// Threads per block: a warp per mixing row and one for the squares, plus block 0's
// Sinkhorn warp, with the coefficients; the N pre rows alone (x only) need a quarter of
// that, and such blocks (at most 64 registers a thread) fit beside the previous kernel's
// blocks, so they start (and load their weights) before that kernel has left 16 whole SMs.
template <bool kCoefficients>
constexpr int cluster_threads() {
  return kCoefficients ? kClusterThreads : kClusterMaxWidth;
}
// The threads that collapse and sum squares: all but the Sinkhorn warp.
template <bool kCoefficients>
constexpr int cluster_workers() {
  return kCoefficients ? kClusterThreads - 32 : kClusterMaxWidth;
}
// Whether the kernel with the coefficients has its warps for n streams: one per mixing
// row, one for the squares and at least one for the Gram matrix (the x-only kernel needs
// fewer).
constexpr bool cluster_fits_streams(int64_t n) {
  return (2 + n) * n + 2 <= cluster_workers<true>() / 32;
}

// The residual update mhc_post(streams, post, comb, y, y_extra) folded into the cluster
// kernel; post == nullptr: none.
struct ResidualUpdate {
  float* streams;  // the same memory as the kernel's streams, written back
  const float* post;
  const float* comb;
  const float* y;
  const float* y_extra;
};

// Entry e of the upper triangle (j <= k) of an N×N matrix, counted row by row.
struct GramEntry {
  int j, k;
};
template <int N>
__host__ __device__ constexpr GramEntry gram_entry(int e) {
  int j = 0;
  while (e >= N - j) e -= N - j, ++j;
  return {j, j + e};
}
static_assert(gram_entry<4>(0).j == 0 && gram_entry<4>(3).k == 3 && gram_entry<4>(4).j == 1 &&
                  gram_entry<4>(4).k == 1 && gram_entry<4>(8).j == 2 && gram_entry<4>(8).k == 3 &&
                  gram_entry<4>(9).j == 3 && gram_entry<4>(9).k == 3,
              "the upper triangle of 4 streams, row by row");

template <int N, bool kCoefficients>
__global__ void __launch_bounds__(cluster_threads<kCoefficients>(), kCoefficients ? 1 : 4)
    mhc_pre_cluster_kernel(const float* streams, int T, int hidden, const float* fn, float mix_eps,
                           const float* base, const float* scale, int64_t iters, float eps,
                           const float* norm_weight, float norm_eps, float* x, float* post, float* comb,
                           ResidualUpdate update) {
  // The mixing rows computed: all of them, or the first N (pre) without post and comb.
  constexpr int R = kCoefficients ? (2 + N) * N : N;
  constexpr int kGram = N * (N + 1) / 2;  // G[j][k], j <= k, row by row
  constexpr int kSums = R + 1 + kGram;    // the mixing rows, the squares, the Gram matrix
  constexpr int kWorkers = cluster_workers<kCoefficients>();
  constexpr int kGramWarps = kWorkers / 32 - (R + 1);
  static_assert(kGramWarps >= 1, "a warp per mixing row, one for the squares and one for the Gram matrix, beside "
                "the Sinkhorn warp");
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  __shared__ float4 xs[kClusterMaxTokens][kClusterMaxQuads];   // the token rows' slices
  __shared__ float part[kClusterMaxTokens][kSums];              // this block's sums
  __shared__ float mixv[kClusterMaxTokens][kSums];              // the cluster's
  __shared__ float pre[kClusterMaxTokens][N];
  __shared__ float inv_norm[kClusterMaxTokens];
  const int rank = int(cluster.block_rank()), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int width = hidden / kClusterBlocks, h0 = rank * width, seg = width / 4, quads = N * seg;
  const int64_t K = int64_t(N) * hidden;
  // Quad q of the slice is stream q / seg, columns h0 + 4·(q % seg) ….
  auto column = [&](int q) { return int64_t(q / seg) * hidden + h0 + 4 * (q % seg); };
  float4 w[kClusterMaxQuads / 32];
#pragma unroll
  for (int i = 0; i < kClusterMaxQuads / 32; ++i) {
    const int q = lane + 32 * i;
    w[i] = warp < R && q < quads ? *reinterpret_cast<const float4*>(fn + int64_t(warp) * K + column(q))
                                 : make_float4(0, 0, 0, 0);
  }
  __shared__ float nw[kClusterMaxWidth];  // this block's columns of the norm weight
  if (norm_weight && threadIdx.x < width) nw[threadIdx.x] = norm_weight[h0 + threadIdx.x];
  // The coefficients' constants (scale[0..1], base[0..2N)): read after the cluster's
  // sums, they cost a memory round trip there (~1 us of the kernel's ~6 after its wait,
  // timed on an H100). Copied asynchronously, they hold no registers meanwhile.
  constexpr int kConstants = kCoefficients ? 2 + 2 * N : 1 + N;
  __shared__ float constants[kConstants];  // scale[0], base[0..N), then scale[1], base[N..2N)
  if (int(threadIdx.x) < kConstants) {
    const int c = int(threadIdx.x);
    const float* from = c == 0 ? scale : c <= N ? base + (c - 1) : c == N + 1 ? scale + 1 : base + (c - 2);
    __pipeline_memcpy_async(&constants[c], from, sizeof(float));
  }
  __pipeline_commit();
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  for (int i = threadIdx.x; i < T * quads; i += blockDim.x)
    xs[i / quads][i % quads] = *reinterpret_cast<const float4*>(streams + int64_t(i / quads) * K + column(i % quads));
  if (update.post) {
    __shared__ float coef[kClusterMaxTokens][N + N * N];  // post, then comb
    for (int i = threadIdx.x; i < T * (N + N * N); i += blockDim.x) {
      const int t = i / (N + N * N), j = i % (N + N * N);
      coef[t][j] = j < N ? update.post[t * N + j] : update.comb[t * N * N + j - N];
    }
    // The block output of the thread's first update column, requested with the stream
    // slice and the coefficients: one round trip for all three (at one token the only
    // column of each thread).
    auto block_output = [&](int64_t at) { return update.y_extra ? update.y[at] + update.y_extra[at] : update.y[at]; };
    const float a0 = int(threadIdx.x) < T * width
                         ? block_output(int64_t(threadIdx.x / width) * hidden + h0 + threadIdx.x % width)
                         : 0.0f;
    __syncthreads();
    // X[k] ← post[k]·a + Σ_j comb[j][k]·X[j], a = y (+ y_extra): mhc_post_kernel's order.
    // One column per thread (the weights held in registers leave no room for quads).
    for (int i = threadIdx.x; i < T * width; i += blockDim.x) {
      const int t = i / width, col = i % width;
      float* row = reinterpret_cast<float*>(xs[t]);  // stream k's column col at k·width + col
      const int64_t at = int64_t(t) * hidden + h0 + col;
      const float a = i == int(threadIdx.x) ? a0 : block_output(at);
      float old[N];
#pragma unroll
      for (int j = 0; j < N; ++j) old[j] = row[j * width + col];
#pragma unroll
      for (int k = 0; k < N; ++k) {
        float out = coef[t][k] * a;
#pragma unroll
        for (int j = 0; j < N; ++j) out += coef[t][N + j * N + k] * old[j];
        row[k * width + col] = out;
        update.streams[int64_t(t) * K + int64_t(k) * hidden + h0 + col] = out;
      }
    }
  }
  __syncthreads();
  if (warp <= R) {
    for (int t = 0; t < T; ++t) {
      float d = 0;
#pragma unroll
      for (int i = 0; i < kClusterMaxQuads / 32; ++i) {
        const int q = lane + 32 * i;
        if (q < quads) {
          const float4 v = xs[t][q], u = warp == R ? v : w[i];
          d += u.x * v.x + u.y * v.y + u.z * v.z + u.w * v.w;
        }
      }
      d = warp_sum(d);
      if (lane == 0) part[t][warp] = d;
    }
  } else if (warp < kWorkers / 32) {
    for (int e = warp - (R + 1); e < T * kGram; e += kGramWarps) {
      const int t = e / kGram;
      const auto [j, k] = gram_entry<N>(e % kGram);
      float d = 0;
      for (int q = lane; q < seg; q += 32) {
        const float4 a = xs[t][j * seg + q], b = xs[t][k * seg + q];
        d += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
      }
      d = warp_sum(d);
      if (lane == 0) part[t][R + 1 + e % kGram] = d;
    }
  }
  cluster.sync();
  for (int i = threadIdx.x; i < T * kSums; i += blockDim.x) {
    const int t = i / kSums, r = i % kSums;
    float sum = 0;
    for (int b = 0; b < kClusterBlocks; ++b) sum += cluster.map_shared_rank(&part[0][0], b)[t * kSums + r];
    mixv[t][r] = sum;
  }
  // No block reads another's shared memory after this: arrive now, wait before leaving.
  cluster.barrier_arrive();
  __pipeline_wait_prior(0);  // the constants
  __syncthreads();
  // mix = the sums / rms(row) (mhc_mix); pre for every block, post by block 0.
  if (threadIdx.x < T * N) {
    const int t = threadIdx.x / N, k = threadIdx.x % N;
    const float inv = 1.0f / sqrtf(mixv[t][R] / float(K) + mix_eps);
    pre[t][k] = sigmoid(mixv[t][k] * inv * constants[0] + constants[1 + k]) + eps;
    if (kCoefficients && rank == 0)
      post[t * N + k] = 2.0f * sigmoid(mixv[t][N + k] * inv * constants[N + 1] + constants[N + 2 + k]);
  }
  __syncthreads();
  if constexpr (kCoefficients) {
    if (rank == 0 && threadIdx.x >= kWorkers) {
      for (int t = 0; t < T; ++t) {
        const float inv = 1.0f / sqrtf(mixv[t][R] / float(K) + mix_eps);
        float m[R];
#pragma unroll
        for (int r = 0; r < R; ++r) m[r] = mixv[t][r] * inv;
        mhc_warp_comb<N>(m, base, scale, iters, eps, true, comb + t * N * N);
      }
    }
  }
  // The norm: |x|² = Σ_j Σ_k pre[j]·pre[k]·G[j][k].
  if (norm_weight && threadIdx.x < T) {
    const int t = threadIdx.x;
    const float* G = &mixv[t][R + 1];
    float sum = 0;
    for (int e = 0; e < kGram; ++e) {
      const auto [j, k] = gram_entry<N>(e);
      sum += (j == k ? 1.0f : 2.0f) * pre[t][j] * pre[t][k] * G[e];
    }
    inv_norm[t] = 1.0f / sqrtf(sum / float(hidden) + norm_eps);
  }
  __syncthreads();
  // x[t][h] = Σ_k pre[k]·X[k][h] (the CPU's k order), normalised.
  if (threadIdx.x < width)
    for (int t = 0; t < T; ++t) {
      const float* row = reinterpret_cast<const float*>(xs[t]);
      float v = 0;
#pragma unroll
      for (int k = 0; k < N; ++k) v += pre[t][k] * row[k * width + threadIdx.x];
      x[int64_t(t) * hidden + h0 + threadIdx.x] = norm_weight ? nw[threadIdx.x] * (v * inv_norm[t]) : v;
    }
  cluster.barrier_wait();  // no block leaves while another may still read its shared memory
}

template <int N, int V>
__global__ void hc_head_kernel(const float* streams, const float* mix, const float* base, float scale,
                               int64_t hidden, float eps, float* out) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  __shared__ float pre[N];
  const int64_t t = blockIdx.x;
  if (threadIdx.x < N) pre[threadIdx.x] = sigmoid(mix[t * N + threadIdx.x] * scale + base[threadIdx.x]) + eps;
  __syncthreads();
  collapse_slice<N, V>(streams + t * N * hidden, pre, hidden, out + t * hidden);
}

// X[k] ← post[k]·a + Σ_j comb[j][k]·X[j] with a = y (+ y_extra): each thread reads all N
// old streams of its columns into registers before writing any.
template <int N, int V>
__global__ void mhc_post_kernel(float* streams, const float* post, const float* comb, const float* y,
                                const float* y_extra, int64_t hidden) {
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  __shared__ float coef[N + N * N];  // post, then comb
  const int64_t t = blockIdx.x;
  for (int i = threadIdx.x; i < N + N * N; i += blockDim.x) coef[i] = i < N ? post[t * N + i] : comb[t * N * N + i - N];
  __syncthreads();
  const int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (i * V >= hidden) return;
  float* X = streams + t * N * hidden + i * V;
  Floats<V> old[N];
#pragma unroll
  for (int j = 0; j < N; ++j) old[j] = load<V>(X + j * hidden);
  Floats<V> a = load<V>(y + t * hidden + i * V);
  if (y_extra) {
    const Floats<V> b = load<V>(y_extra + t * hidden + i * V);
#pragma unroll
    for (int e = 0; e < V; ++e) a.v[e] += b.v[e];
  }
#pragma unroll
  for (int k = 0; k < N; ++k) {
    Floats<V> out;
#pragma unroll
    for (int e = 0; e < V; ++e) out.v[e] = coef[k] * a.v[e];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float w = coef[N + j * N + k];
#pragma unroll
      for (int e = 0; e < V; ++e) out.v[e] += w * old[j].v[e];
    }
    store<V>(X + k * hidden, out);
  }
}

// Calls f(std::integral_constant<int, N>{}) for a runtime stream count N in 1..kMaxStreams.
template <typename F>
void with_stream_count(int64_t n, const char* op, F&& f) {
  switch (n) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: throw error(op, ": ", n, " streams (the CUDA kernels take 1..", kMaxStreams, ")");
  }
}

// The grid over (rows, column slices of kThreads·V) of width-`hidden` rows.
dim3 column_grid(int64_t hidden, int V, int64_t rows) {
  return dim3(unsigned(rows), unsigned(std::max<int64_t>(1, ceil_div(ceil_div(hidden, V), kThreads))));
}

// ---- route (spec §2.11): one warp per token, experts held in registers ----

// A key whose unsigned order is the ranking of (score, expert): torch's "largest" order
// (NaN first, then larger scores; −0 equals +0), lower expert first on exact ties. Key 0
// ranks below every real key and marks an empty or already chosen slot.
__device__ uint64_t rank_key(float score, int expert) {
  uint32_t u = 0xFFFFFFFFu;
  if (!isnan(score)) {
    u = __float_as_uint(score == 0.0f ? 0.0f : score);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  return (uint64_t(u) << 32) | (0xFFFFFFFFu - uint32_t(expert));
}

// Lane j < k ends with the j-th pick in `expert` and its unbiased score in `score`. What
// the kernel reads besides the logits (the bias; for hash routing the token and its
// table row, uploaded by the host before the step) is loaded before its programmatic
// wait, and the picks' scores come from the lanes that computed them: after the wait
// the route is one memory round trip (the logits) and the stores.
__global__ void route_kernel(const float* logits, int64_t T, int E, const float* bias, const int64_t* tid2eid,
                             const int64_t* tokens, int64_t vocab, int k, float scaling, int64_t* chosen,
                             float* weights) {
  const int lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + threadIdx.x / 32;
  int64_t hashed = -1;  // hash routing: this lane's expert (lanes < k)
  float b[kRouteSlots] = {};  // top-k: expert lane + 32·s's bias
  if (t < T && tid2eid) {
    if (lane < k) {
      const int64_t token = tokens[t];
      hashed = token >= 0 && token < vocab ? tid2eid[token * k + lane] : -1;
    }
  } else if (t < T) {
#pragma unroll
    for (int s = 0; s < kRouteSlots; ++s) {
      const int e = lane + 32 * s;
      b[s] = bias && e < E ? bias[e] : 0.0f;
    }
  }
  wait_for_previous_kernel();  // launched as a programmatic dependent (dependent_launch.h)
  allow_dependent_launch();
  if (t >= T) return;  // whole warps leave together
  const float* lg = logits + t * E;
  int expert = 0;
  float score = 0;
  if (tid2eid) {
    if (lane < k) {
      if (hashed >= 0 && hashed < E) {
        expert = int(hashed);
        score = sqrt_softplus(lg[hashed]);
      } else {
        score = __int_as_float(0x7fc00000);  // NaN: see the header
      }
    }
  } else {
    uint64_t keys[kRouteSlots];  // slot s: expert lane + 32·s
    float unbiased[kRouteSlots];
#pragma unroll
    for (int s = 0; s < kRouteSlots; ++s) {
      const int e = lane + 32 * s;
      unbiased[s] = e < E ? sqrt_softplus(lg[e]) : 0.0f;
      keys[s] = e < E ? rank_key(unbiased[s] + b[s], e) : 0;
    }
    for (int j = 0; j < k; ++j) {
      uint64_t best = 0;
#pragma unroll
      for (int s = 0; s < kRouteSlots; ++s) best = max(best, keys[s]);
#pragma unroll
      for (int o = 16; o > 0; o /= 2) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
      // Keys are unique (they hold the expert), so only the owner's slot matches.
      const int pick = int(0xFFFFFFFFu - uint32_t(best));
      float owned = 0;  // the pick's unbiased score, on its owner lane
#pragma unroll
      for (int s = 0; s < kRouteSlots; ++s)
        if (keys[s] == best) {
          keys[s] = 0;
          owned = unbiased[s];
        }
      const float picked = __shfl_sync(0xffffffffu, owned, pick % 32);
      if (lane == j) {
        expert = pick;
        score = picked;
      }
    }
  }
  const float sum = warp_sum(lane < k ? score : 0.0f);
  if (lane < k) {
    chosen[t * k + lane] = expert;
    weights[t * k + lane] = score / (sum + 1e-20f) * scaling;
  }
}

}  // namespace

void CudaOps::rms_norm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight, float eps,
                       float* y) {
  if (n <= 0 || dim <= 0) return;
  const bool vec = rms_norm_vectorizable(x, dim, stride, weight, y);
  const int threads = row_threads(vec ? dim / 4 : dim);
  if (vec)
    launch_dependent(ctx(), rms_norm_kernel<4>, unsigned(n), threads, 0, x, dim, stride, weight, eps, y);
  else
    launch_dependent(ctx(), rms_norm_kernel<1>, unsigned(n), threads, 0, x, dim, stride, weight, eps, y);
  DSQ_CUDA_CHECK_LAUNCH();
}

void CudaOps::rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const int64_t* positions,
                   const cpu::RopeFrequencies& table, bool inverse) {
  DSQ_CHECK(table.rope_dim <= dim, "rope: ", table.rope_dim, " rotary dims exceed a vector of ", dim);
  const int64_t pairs = n_tokens * heads * (table.rope_dim / 2);
  if (pairs <= 0) return;
  const float* freqs = rope_table(table);
  launch_dependent(ctx(), rope_kernel, grid_for(pairs, ctx()), kThreads, 0, x, pairs, heads, dim, table.rope_dim, positions,
                                                                     freqs, inverse);
  DSQ_CUDA_CHECK_LAUNCH();
}

void CudaOps::norm_rope(float* x, int64_t n_tokens, int64_t heads, int64_t dim, const float* weight, float eps,
                        const int64_t* positions, const cpu::RopeFrequencies& table) {
  DSQ_CHECK(table.rope_dim <= dim, "norm_rope: ", table.rope_dim, " rotary dims exceed a vector of ", dim);
  const int64_t n = n_tokens * heads;
  if (n <= 0 || dim <= 0) return;
  const float* freqs = rope_table(table);
  const bool vec = norm_rope_vectorizable(x, dim, weight);
  const int threads = row_threads(vec ? dim / 4 : dim);
  if (vec)
    launch_dependent(ctx(), norm_rope_kernel<4>, unsigned(n), threads, 0, x, dim, weight, eps, heads, table.rope_dim,
                     positions, freqs);
  else
    launch_dependent(ctx(), norm_rope_kernel<1>, unsigned(n), threads, 0, x, dim, weight, eps, heads, table.rope_dim,
                     positions, freqs);
  DSQ_CUDA_CHECK_LAUNCH();
}

void CudaOps::rms_norm_and_norm_rope(const float* x, int64_t n, int64_t dim, int64_t stride, const float* weight,
                                     float* y, float* heads_x, int64_t n_tokens, int64_t heads, int64_t head_dim,
                                     const float* head_weight, float eps, const int64_t* positions,
                                     const cpu::RopeFrequencies& table) {
  const int64_t vectors = n_tokens * heads;
  if (n <= 0 || dim <= 0) return norm_rope(heads_x, n_tokens, heads, head_dim, head_weight, eps, positions, table);
  if (vectors <= 0 || head_dim <= 0) return rms_norm(x, n, dim, stride, weight, eps, y);
  DSQ_CHECK(table.rope_dim <= head_dim, "rms_norm_and_norm_rope: ", table.rope_dim, " rotary dims exceed a vector of ",
            head_dim);
  const float* freqs = rope_table(table);
  const bool norm_vec = rms_norm_vectorizable(x, dim, stride, weight, y);
  const bool rope_vec = norm_rope_vectorizable(heads_x, head_dim, head_weight);
  const int threads = std::max(row_threads(norm_vec ? dim / 4 : dim), row_threads(rope_vec ? head_dim / 4 : head_dim));
  const auto launch = [&](auto kernel) {
    launch_dependent(ctx(), kernel, unsigned(n + vectors), threads, 0, x, n, dim, stride, weight, y, heads_x, head_dim,
                     head_weight, heads, table.rope_dim, positions, freqs, eps);
  };
  if (norm_vec && rope_vec)
    launch(rms_norm_and_norm_rope_kernel<4, 4>);
  else if (norm_vec)
    launch(rms_norm_and_norm_rope_kernel<4, 1>);
  else if (rope_vec)
    launch(rms_norm_and_norm_rope_kernel<1, 4>);
  else
    launch(rms_norm_and_norm_rope_kernel<1, 1>);
  DSQ_CUDA_CHECK_LAUNCH();
}

void CudaOps::swiglu(const float* gate, const float* up, int64_t n, float limit, float* out) {
  launch_binary(gate, up, n, SwigluOp{limit}, out, ctx());
}

void CudaOps::add(float* dst, const float* src, int64_t n) { launch_binary(dst, src, n, AddOp{}, dst, ctx()); }

void CudaOps::gather_rows(const float* src, const int64_t* rows, int64_t n, int64_t width, float* dst) {
  if (n <= 0 || width <= 0) return;
  if (width % 4 == 0 && aligned16(src) && aligned16(dst)) {
    const dim3 grid(unsigned(n), unsigned(ceil_div(width / 4, kThreads)));
    launch_dependent(ctx(), gather_rows_kernel<4>, grid, kThreads, 0, src, rows, width, dst);
  } else {
    const dim3 grid(unsigned(n), unsigned(ceil_div(width, kThreads)));
    launch_dependent(ctx(), gather_rows_kernel<1>, grid, kThreads, 0, src, rows, width, dst);
  }
  DSQ_CUDA_CHECK_LAUNCH();
}

void CudaOps::embed_streams(const QuantizedMatrix& table, const int64_t* ids, int64_t T, int64_t n_streams,
                            float* streams) {
  const DType dt = table.values.dtype();
  DSQ_CHECK(table.format == WeightFormat::Dense && (dt == DType::F32 || dt == DType::BF16 || dt == DType::F16),
            "embed_streams: the CUDA backend takes a dense f32/bf16/f16 embedding table, got ",
            weight_format_name(table.format), " ", dtype_name(dt));
  if (T <= 0 || n_streams <= 0 || table.cols <= 0) return;
  const void* dev = resident_bytes(table.values);
  if (dt == DType::F32)
    launch_embed<float>(dev, table.rows, table.cols, ids, T, n_streams, streams, ctx());
  else if (dt == DType::BF16)
    launch_embed<__nv_bfloat16>(dev, table.rows, table.cols, ids, T, n_streams, streams, ctx());
  else
    launch_embed<__half>(dev, table.rows, table.cols, ids, T, n_streams, streams, ctx());
}

namespace {

// The per-block partial sums of the fused mixing kernels and their ticket (zero between
// calls).
struct MixPartials {
  float* partials;
  unsigned* ticket;
};
// The ticket (first, at a fixed place: zeroed when the scratch is allocated, left zero
// by every call's last block, whatever the block count) and the partial sums of `blocks`
// mixing blocks after it.
MixPartials mix_partials_scratch(CudaOps& ops, int64_t blocks) {
  constexpr size_t kTicketBytes = 16;  // keeps the partials 16-byte aligned
  auto* base = static_cast<unsigned char*>(
      ops.zeroed_scratch(10, kTicketBytes + size_t(blocks * kMixSlot) * sizeof(float)));
  return {reinterpret_cast<float*>(base + kTicketBytes), reinterpret_cast<unsigned*>(base)};
}

}  // namespace

void CudaOps::mhc_mix(const float* streams, int64_t T, int64_t width, float eps, const QuantizedMatrix& fn,
                      float* mix) {
  DSQ_CHECK(fn.cols == width, "mhc_mix: the mixing weight [", fn.rows, ", ", fn.cols, "] does not take rows of ",
            width);
  if (T <= 0) return;
  const float* w = prepared_f32(fn);
  if (w != nullptr && T <= kMixMaxTokens && fn.rows <= kMixMaxRows && width % 4 == 0 && aligned16(streams) &&
      aligned16(w)) {
    const MixPartials a = mix_partials_scratch(*this, ceil_div(width, kMixChunk));
    launch_dependent(ctx(), mhc_mix_kernel, unsigned(ceil_div(width, kMixChunk)), kMixThreads, 0, streams, int(T),
                     width, w, int(fn.rows), eps, a.partials, a.ticket, mix);
    DSQ_CUDA_CHECK_LAUNCH();
    return;
  }
  // Many rows (or a weight the kernel does not take): the GEMM on the raw rows, then each
  // row's sums scaled by its 1/rms, so that no normalised copy of the rows is written
  // (at prefill, the streams are the largest activations of the layer).
  DSQ_CHECK(fn.rows <= 512, "mhc_mix: ", fn.rows, " mixing rows (the scaling kernel takes up to 512)");
  linear(fn, streams, T, mix);
  const bool vec = width % 4 == 0 && aligned16(streams);
  const int64_t chunks = vec ? width / 4 : width;
  const int threads = int(std::clamp<int64_t>(ceil_div(chunks, 32) * 32, std::max<int64_t>(32, ceil_div(fn.rows, 32) * 32),
                                              512));
  if (vec)
    launch_dependent(ctx(), scale_by_inv_rms_kernel<4>, unsigned(T), threads, 0, streams, width, eps, int(fn.rows), mix);
  else
    launch_dependent(ctx(), scale_by_inv_rms_kernel<1>, unsigned(T), threads, 0, streams, width, eps, int(fn.rows), mix);
  DSQ_CUDA_CHECK_LAUNCH();
}

namespace {

// Launches mhc_pre_cluster_kernel<N, kCoefficients> as a programmatic dependent; false
// (nothing launched) where this GPU cannot hold a cluster of kClusterBlocks such blocks.
template <int N, bool kCoefficients>
bool launch_mhc_pre_cluster_kernel(const GpuContext& ctx, const float* streams, int T, int hidden, const float* fn,
                                   float mix_eps, const float* base, const float* scale, int64_t iters, float eps,
                                   const float* norm_weight, float norm_eps, float* x, float* post, float* comb,
                                   const ResidualUpdate& update) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(kClusterBlocks);
  config.blockDim = dim3(cluster_threads<kCoefficients>());
  config.stream = ctx.stream();
  cudaLaunchAttribute attrs[2]{};
  attrs[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[0].val.programmaticStreamSerializationAllowed = 1;
  attrs[1].id = cudaLaunchAttributeClusterDimension;
  attrs[1].val.clusterDim.x = kClusterBlocks;
  attrs[1].val.clusterDim.y = 1;
  attrs[1].val.clusterDim.z = 1;
  config.attrs = attrs;
  config.numAttrs = 2;
  static const bool fits = [&] {
    const auto kernel = mhc_pre_cluster_kernel<N, kCoefficients>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    int clusters = 0;
    const bool ok = cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) == cudaSuccess;
    cudaGetLastError();
    return ok && clusters > 0;
  }();
  if (!fits) return false;
  DSQ_CUDA_CHECK(cudaLaunchKernelEx(&config, mhc_pre_cluster_kernel<N, kCoefficients>, streams, T, hidden, fn,
                                    mix_eps, base, scale,
                                    iters, eps, norm_weight, norm_eps, x, post, comb, update));
  return true;
}

// The cluster kernel with the coefficients (post and comb given) or without (both null).
template <int N>
bool launch_mhc_pre_cluster(const GpuContext& ctx, const float* streams, int T, int hidden, const float* fn,
                            float mix_eps, const float* base, const float* scale, int64_t iters, float eps,
                            const float* norm_weight, float norm_eps, float* x, float* post, float* comb,
                            const ResidualUpdate& update) {
  return post ? launch_mhc_pre_cluster_kernel<N, true>(ctx, streams, T, hidden, fn, mix_eps, base, scale, iters,
                                                       eps, norm_weight, norm_eps, x, post, comb, update)
              : launch_mhc_pre_cluster_kernel<N, false>(ctx, streams, T, hidden, fn, mix_eps, base, scale, iters,
                                                        eps, norm_weight, norm_eps, x, post, comb, update);
}

// The mixing weight fn must be [(2+N)·N, N·H] (op: the caller's name, for the message).
void check_mixing_weight(const QuantizedMatrix& fn, int64_t n_streams, int64_t hidden, const char* op) {
  const int64_t R = (2 + n_streams) * n_streams, width = n_streams * hidden;
  DSQ_CHECK(fn.rows == R && fn.cols == width, op, ": the mixing weight [", fn.rows, ", ", fn.cols, "] is not [", R,
            ", ", width, "] for ", n_streams, " streams of ", hidden);
}

// Whether mhc_pre's one-cluster kernel takes these shapes (w: fn as prepared f32).
bool cluster_takes(const float* w, const float* streams, int64_t T, int64_t n_streams, int64_t hidden, const float* x,
                   const float* norm_weight) {
  const int64_t R = (2 + n_streams) * n_streams;
  return w != nullptr && aligned16(w) && hidden % 4 == 0 && aligned16(streams) && aligned16(x) &&
         (!norm_weight || aligned16(norm_weight)) && T <= kClusterMaxTokens && cluster_fits_streams(n_streams) &&
         hidden % (4 * kClusterBlocks) == 0 && hidden / kClusterBlocks <= kClusterMaxWidth &&
         n_streams * hidden / kClusterBlocks <= 4 * kClusterMaxQuads;
}

}  // namespace

void CudaOps::mhc_pre(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps, const float* base,
                      const float* scale, int64_t n_streams, int64_t hidden, int64_t sinkhorn_iters, float eps,
                      const float* norm_weight, float norm_eps, float* x, float* post, float* comb) {
  check_mixing_weight(fn, n_streams, hidden, "mhc_pre");
  const int64_t width = n_streams * hidden, R = (2 + n_streams) * n_streams;
  DSQ_CHECK((post == nullptr) == (comb == nullptr), "mhc_pre: post and comb must both be given or both be null");
  if (T <= 0) return;
  const bool vec = hidden % 4 == 0 && aligned16(streams) && aligned16(x) && (!norm_weight || aligned16(norm_weight));
  const float* w = prepared_f32(fn);
  const bool fused = w != nullptr && aligned16(w) && vec && T <= kMixMaxTokens && R <= kMixMaxRows;
  const bool cluster = fused && cluster_takes(w, streams, T, n_streams, hidden, x, norm_weight);
  with_stream_count(n_streams, "mhc_pre", [&](auto n) {
    constexpr int N = decltype(n)::value;
    if constexpr (cluster_fits_streams(N)) {
      if (cluster && launch_mhc_pre_cluster<N>(ctx(), streams, int(T), int(hidden), w, mix_eps, base, scale,
                                               sinkhorn_iters, eps, norm_weight, norm_eps, x, post, comb, {})) {
        DSQ_CUDA_CHECK_LAUNCH();
        return;
      }
    }
    // The paths below compute post and comb anyway: unwanted ones go to scratch.
    if (!post) {
      post = static_cast<float*>(scratch(13, size_t(T * (N + N * N)) * sizeof(float)));
      comb = post + T * N;
    }
    if constexpr ((2 + N) * N <= kMixMaxRows) {
      if (fused) {
        const MixPartials a = mix_partials_scratch(*this, ceil_div(width, kMixChunk));
        launch_dependent(ctx(), mhc_mix_pre_kernel<N, 4>, unsigned(ceil_div(width, kMixChunk)), kMixThreads, 0,
                         streams, int(T), hidden, w, mix_eps, a.partials, a.ticket, base, scale, sinkhorn_iters, eps,
                         norm_weight, norm_eps, x, post, comb);
        DSQ_CUDA_CHECK_LAUNCH();
        return;
      }
    }
    auto* mix = static_cast<float*>(scratch(12, size_t(T * R) * sizeof(float)));
    mhc_mix(streams, T, width, mix_eps, fn, mix);
    if (norm_weight) {
      const int threads = int(std::min<int64_t>(1024, std::max<int64_t>(32, ceil_div(vec ? hidden / 4 : hidden, 32) * 32)));
      if (vec)
        launch_dependent(ctx(), mhc_pre_norm_kernel<N, 4>, unsigned(T), threads, 0, streams, mix, base, scale, hidden,
                         sinkhorn_iters, eps, norm_weight, norm_eps, x, post, comb);
      else
        launch_dependent(ctx(), mhc_pre_norm_kernel<N, 1>, unsigned(T), threads, 0, streams, mix, base, scale, hidden,
                         sinkhorn_iters, eps, norm_weight, norm_eps, x, post, comb);
    } else if (vec)
      launch_dependent(ctx(), mhc_pre_kernel<N, 4>, column_grid(hidden, 4, T), kThreads, 0, 
          streams, mix, base, scale, hidden, sinkhorn_iters, eps, x, post, comb);
    else
      launch_dependent(ctx(), mhc_pre_kernel<N, 1>, column_grid(hidden, 1, T), kThreads, 0, 
          streams, mix, base, scale, hidden, sinkhorn_iters, eps, x, post, comb);
    DSQ_CUDA_CHECK_LAUNCH();
  });
}

void CudaOps::mhc_post_pre(float* streams, const float* post, const float* comb, const float* y,
                           const float* y_extra, int64_t T, const QuantizedMatrix& fn, float mix_eps,
                           const float* base, const float* scale, int64_t n_streams, int64_t hidden,
                           int64_t sinkhorn_iters, float eps, const float* norm_weight, float norm_eps, float* x,
                           float* next_post, float* next_comb) {
  check_mixing_weight(fn, n_streams, hidden, "mhc_post_pre");
  DSQ_CHECK(next_post != post && next_comb != comb, "mhc_post_pre: the new coefficients would overwrite the old");
  DSQ_CHECK((next_post == nullptr) == (next_comb == nullptr),
            "mhc_post_pre: next_post and next_comb must both be given or both be null");
  if (T <= 0) return;
  const float* w = prepared_f32(fn);
  bool done = false;
  if (cluster_takes(w, streams, T, n_streams, hidden, x, norm_weight) && aligned16(y) &&
      (!y_extra || aligned16(y_extra))) {
    const ResidualUpdate update{streams, post, comb, y, y_extra};
    with_stream_count(n_streams, "mhc_post_pre", [&](auto n) {
      constexpr int N = decltype(n)::value;
      if constexpr (cluster_fits_streams(N))
        done = launch_mhc_pre_cluster<N>(ctx(), streams, int(T), int(hidden), w, mix_eps, base, scale,
                                         sinkhorn_iters, eps, norm_weight, norm_eps, x, next_post, next_comb, update);
    });
  }
  if (done) {
    DSQ_CUDA_CHECK_LAUNCH();
    return;
  }
  mhc_post(streams, post, comb, y, y_extra, T, n_streams, hidden);
  mhc_pre(streams, T, fn, mix_eps, base, scale, n_streams, hidden, sinkhorn_iters, eps, norm_weight, norm_eps, x,
          next_post, next_comb);
}

void CudaOps::mhc_coefficients(const float* streams, int64_t T, const QuantizedMatrix& fn, float mix_eps,
                               const float* base, const float* scale, int64_t n_streams, int64_t hidden,
                               int64_t sinkhorn_iters, float eps, float* post, float* comb) {
  check_mixing_weight(fn, n_streams, hidden, "mhc_coefficients");
  const int64_t width = n_streams * hidden, R = (2 + n_streams) * n_streams;
  if (T <= 0) return;
  // One plain launch, no cluster: this runs as side work, beside kernels that may hold the
  // SMs a cluster would need at once.
  const float* w = prepared_f32(fn);
  if (w != nullptr && aligned16(w) && T <= kMixMaxTokens && R <= kMixMaxRows && width % 4 == 0 &&
      aligned16(streams)) {
    with_stream_count(n_streams, "mhc_coefficients", [&](auto n) {
      constexpr int N = decltype(n)::value;
      if constexpr ((2 + N) * N <= kMixMaxRows) {  // always, given R <= kMixMaxRows above
        const MixPartials a = mix_partials_scratch(*this, ceil_div(width, kMixChunk));
        launch_dependent(ctx(), mhc_mix_coefficients_kernel<N>, unsigned(ceil_div(width, kMixChunk)), kMixThreads, 0,
                         streams, int(T), width, w, mix_eps, a.partials, a.ticket, base, scale, sinkhorn_iters, eps, post,
                         comb);
        DSQ_CUDA_CHECK_LAUNCH();
      }
    });
    return;
  }
  auto* mix = static_cast<float*>(scratch(12, size_t(T * R) * sizeof(float)));
  mhc_mix(streams, T, width, mix_eps, fn, mix);
  with_stream_count(n_streams, "mhc_coefficients", [&](auto n) {
    constexpr int N = decltype(n)::value;
    launch_dependent(ctx(), mhc_coefficients_kernel<N>, unsigned(T), 32, 0, static_cast<const float*>(mix), base,
                     scale, sinkhorn_iters, eps, post, comb);
    DSQ_CUDA_CHECK_LAUNCH();
  });
}

void CudaOps::mhc_post(float* streams, const float* post, const float* comb, const float* y, const float* y_extra,
                       int64_t T, int64_t n_streams, int64_t hidden) {
  const bool vec = hidden % 4 == 0 && aligned16(streams) && aligned16(y) && (!y_extra || aligned16(y_extra));
  with_stream_count(n_streams, "mhc_post", [&](auto n) {
    constexpr int N = decltype(n)::value;
    if (T <= 0 || hidden <= 0) return;
    if (vec)
      launch_dependent(ctx(), mhc_post_kernel<N, 4>, column_grid(hidden, 4, T), kThreads, 0, streams, post, comb, y,
                       y_extra, hidden);
    else
      launch_dependent(ctx(), mhc_post_kernel<N, 1>, column_grid(hidden, 1, T), kThreads, 0, streams, post, comb, y,
                       y_extra, hidden);
    DSQ_CUDA_CHECK_LAUNCH();
  });
}

void CudaOps::hc_head(const float* streams, const float* mix, const float* base, float scale, int64_t n,
                      int64_t n_streams, int64_t hidden, float eps, float* out) {
  const bool vec = hidden % 4 == 0 && aligned16(streams) && aligned16(out);
  with_stream_count(n_streams, "hc_head", [&](auto ns) {
    constexpr int N = decltype(ns)::value;
    if (n <= 0 || hidden <= 0) return;
    if (vec)
      launch_dependent(ctx(), hc_head_kernel<N, 4>, column_grid(hidden, 4, n), kThreads, 0, streams, mix, base, scale,
                                                                                        hidden, eps, out);
    else
      launch_dependent(ctx(), hc_head_kernel<N, 1>, column_grid(hidden, 1, n), kThreads, 0, streams, mix, base, scale,
                                                                                        hidden, eps, out);
    DSQ_CUDA_CHECK_LAUNCH();
  });
}

void CudaOps::route(const float* logits, int64_t T, int64_t n_experts, const float* bias, const int64_t* tid2eid,
                    const int64_t* tokens, int64_t vocab, int64_t k, float scaling, int64_t* chosen,
                    float* weights) {
  DSQ_CHECK(n_experts >= 1 && n_experts <= 32 * kRouteSlots, "route: ", n_experts,
            " experts (the CUDA kernel takes 1..", 32 * kRouteSlots, ")");
  DSQ_CHECK(k >= 1 && k <= 32 && k <= n_experts, "route: k = ", k, " outside [1, min(32, ", n_experts, ")]");
  DSQ_CHECK(!tid2eid || tokens, "route: hash routing needs the token ids");
  if (T <= 0) return;
  launch_dependent(ctx(), route_kernel, unsigned(ceil_div(T, kRouteWarps)), 32 * kRouteWarps, 0, 
      logits, T, int(n_experts), bias, tid2eid, tokens, vocab, int(k), scaling, chosen, weights);
  DSQ_CUDA_CHECK_LAUNCH();
}

}  // namespace dsq::cuda
