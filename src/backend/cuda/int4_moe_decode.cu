// The device-id decode path of the routed experts (int4_moe_decode.h): W4A16 mma
// kernels whose blocks find their expert and token rows in `chosen` themselves (one for
// several tokens, one for a single token), the SwiGLU pass and the weighted combine,
// each adding the K-slice partial sums in order.
//
// The weights are in the mma-tile layout of int4_linear.cu (its file comment); the weight
// loads and the MMA loop are int4_mma.cuh's, shared with int4_linear.cu's decode kernels,
// here with one 8-row token tile.
#include "backend/cuda/int4_moe_decode.h"
#include "backend/cuda/int4_mma.cuh"

#include <type_traits>

#include "backend/cuda/dependent_launch.h"

namespace dsq::cuda {

namespace {

constexpr int kGroup = kInt4Group;
constexpr int kThreads = 256;   // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kTileN = 128;     // rows of W per block
constexpr int kChunk = kInt4Chunk;  // inputs per 16-byte lane word
constexpr int kTokenRows = 8;   // slots per block: the n = 8 of mma.m16n8k16
// The single-token kernel: each warp's K slice in 64-wide chunks (256 inputs: on an H100
// the decode step took 7.48-7.52 ms with it, 7.69-7.75 with 512 and 7.67-7.70 with 128),
// and at least 4 blocks per SM (<= 64 registers).
constexpr int kTokenChunks = 4;
constexpr int kTokenBlocksPerSm = 4;
constexpr int kMaxSlots = int(kMoeDecodeMaxSlots);
static_assert(kMaxSlots <= 64, "the slot scan uses the first two warps");
// 512-wide K slices: on an H100 (V4-Flash widths, 256 experts) as fast as or faster than
// 256- and 1024-wide ones at 1, 2 and 4 tokens (bench/gpu/gemm_bench.cu --tune).
constexpr int kDefaultChunks = 8;
int g_forced_chunks = 0;  // int4_moe_decode_force_chunks()

// The K slice, in 64-wide chunks, on a weight of K inputs (K % 512 == 0;
// 1024-wide slices only where they divide K).
int chunks_for(int64_t K) {
  const int chunks = g_forced_chunks ? g_forced_chunks : kDefaultChunks;
  return K % (chunks * kChunk) == 0 ? chunks : 8;
}

// Eight activations as bf16 (RNE, as the grouped path's gather does), 16 bytes.
__device__ __forceinline__ uint4 load8_bf16(const float* p) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  const __nv_bfloat162 v[4] = {__floats2bfloat162_rn(a.x, a.y), __floats2bfloat162_rn(a.z, a.w),
                               __floats2bfloat162_rn(b.x, b.y), __floats2bfloat162_rn(b.z, b.w)};
  return *reinterpret_cast<const uint4*>(v);
}
__device__ __forceinline__ uint4 load8_bf16(const __nv_bfloat16* p) { return *reinterpret_cast<const uint4*>(p); }

// One block's token tile: up to 8 slots that chose one expert.
struct SlotTile {
  int expert;  // -1: this block has no tile
  int rows;
  int first_rank;  // rank of its first slot among the expert's slots
  int slot[kTokenRows];
};

// Tiles are numbered by their first slot: slot s starts a tile when it is the 0th, 8th,
// 16th… slot (in slot order) of its expert. Block z takes the z-th tile; the tile holds
// that slot and the next up-to-7 slots of the same expert. Called by the whole block.
__device__ void find_tile(const int64_t* __restrict__ chosen, int slots, int E, int z, SlotTile& tile) {
  __shared__ int ids[kMaxSlots], rank[kMaxSlots], warp_starts[2];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid < slots) {
    const int64_t e = __ldcg(chosen + tid);  // from L2: may run before this grid's wait (down projection)
    ids[tid] = e >= 0 && e < E ? int(e) : -1;
  }
  if (tid == 0) {
    tile.expert = -1;
    tile.rows = 0;
  }
  __syncthreads();
  bool starts = false;
  if (tid < slots && ids[tid] >= 0) {
    int r = 0;
    for (int i = 0; i < tid; ++i) r += ids[i] == ids[tid];
    rank[tid] = r;
    starts = r % kTokenRows == 0;
  }
  unsigned mask = 0;
  if (warp < 2) {
    mask = __ballot_sync(0xffffffffu, starts);
    if (lane == 0) warp_starts[warp] = __popc(mask);
  }
  __syncthreads();
  if (starts && __popc(mask & ((1u << lane) - 1u)) + (warp == 1 ? warp_starts[0] : 0) == z) {
    tile.expert = ids[tid];
    tile.first_rank = rank[tid];
  }
  __syncthreads();
  if (tile.expert < 0) return;
  if (tid < slots && ids[tid] == tile.expert) {
    const int r = rank[tid] - tile.first_rank;
    if (r >= 0 && r < kTokenRows) {
      tile.slot[r] = tid;
      atomicAdd(&tile.rows, 1);  // an integer count: order-independent
    }
  }
  __syncthreads();
}

// partials[blockIdx.y][slot][n] = x_row(slot)[K slice y] · W_e[n][K slice y]ᵀ for the
// slots of this block's tile (expert e). x_row(slot) = x + (slot / slot_div)·K: the token
// row of fp32 x (slot_div = k) or the slot's own bf16 row (slot_div = 1).
//
// ids_ready: `chosen` was complete before this grid could start. The gate/up kernel
// (false) waits for the kernel before it, which wrote the ids, and only then lets its
// dependent (the SwiGLU pass) launch; the down kernel (true), the SwiGLU pass's
// dependent, therefore starts only after the ids were written, so it reads them, finds
// its tile and streams its weights before waiting for the SwiGLU pass: the weights load
// while the gate/up kernel's tail and the SwiGLU pass run. (This relies on every
// programmatic dependent in the stream waiting before it completes, as all of dsq's do:
// then the gate/up kernel's wait returning means all earlier work is done.)
template <typename In, int CH, bool ids_ready>
__global__ void __launch_bounds__(kThreads)
    moe_decode_linear_kernel(const uint4* __restrict__ tiles, const float* __restrict__ scales,
                             const In* __restrict__ x, int slot_div, const int64_t* __restrict__ chosen, int slots,
                             int E, int N, int K, float* __restrict__ partials) {
  constexpr int kSlice = CH * kChunk;
  constexpr int kRowStride = kSlice + 8;  // +16 bytes: conflict-free fragment reads
  __shared__ __align__(16) __nv_bfloat16 xs[kTokenRows * kRowStride];
  __shared__ SlotTile tile;
  if (ids_ready) allow_dependent_launch();
  else wait_for_previous_kernel();  // the ids are known only now
  find_tile(chosen, slots, E, int(blockIdx.z), tile);
  if (!ids_ready) allow_dependent_launch();  // the dependent may now rely on the ids
  if (tile.expert < 0) return;

  const int k0 = blockIdx.y * kSlice;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int ntile = blockIdx.x * (kTileN / 16) + warp;
  const bool active = ntile * 16 < N;
  uint4 wv[CH];
  if (active) load_int4_slice<CH>(tiles, tile.expert, ntile, k0, N, K, lane, wv);
  if (ids_ready) wait_for_previous_kernel();  // x (the SwiGLU output) is written
  for (int i = threadIdx.x; i < tile.rows * (kSlice / 8); i += kThreads) {
    const int r = i / (kSlice / 8), c = i % (kSlice / 8);
    *reinterpret_cast<uint4*>(xs + r * kRowStride + c * 8) =
        load8_bf16(x + size_t(tile.slot[r] / slot_div) * K + k0 + c * 8);
  }
  __syncthreads();
  if (!active) return;

  const int g = lane / 4, t = lane % 4;
  float acc[1][4] = {};
  mma_int4_slice<1, CH>(wv, xs, kRowStride, tile.rows,
                        scales + (size_t(tile.expert) * (K / kGroup) + k0 / kGroup) * N + ntile * 16 + g, N, lane,
                        acc);
  // C fragment: (W row g, tokens 2t, 2t+1) and (W row g+8, same tokens).
  const int n = ntile * 16 + g;
  float* slice = partials + size_t(blockIdx.y) * slots * N;
  if (2 * t < tile.rows) {
    float* out = slice + size_t(tile.slot[2 * t]) * N + n;
    out[0] = acc[0][0];
    out[8] = acc[0][2];
  }
  if (2 * t + 1 < tile.rows) {
    float* out = slice + size_t(tile.slot[2 * t + 1]) * N + n;
    out[0] = acc[0][1];
    out[8] = acc[0][3];
  }
}

// Σ_j weights[s0+j] · (Σ_slice partials[slice][s0+j][c]) for the k slots s0 … s0+k−1 of
// one token, j and slices in order; NaN if any of them has an id outside [0, E). Up to
// kCombineBatch slots' ids, weights and values are loaded before any is used, so that a
// decode token's k = 6 slots cost one round trip to memory (a slot at a time, they were
// a chain of twelve). Loads from L2: the partials may come from other blocks of the
// calling kernel.
constexpr int kCombineBatch = 8;
__device__ float combined_output(const float* __restrict__ partials, int slices, size_t slice_stride,
                                 const int64_t* __restrict__ chosen, const float* __restrict__ weights, int s0, int k,
                                 int E, int N, int c) {
  float sum = 0.0f;
  bool valid = true;
  for (int j0 = 0; j0 < k; j0 += kCombineBatch) {
    int64_t e[kCombineBatch];
    float w[kCombineBatch], y[kCombineBatch];
#pragma unroll
    for (int x = 0; x < kCombineBatch; ++x) {
      const int slot = s0 + j0 + x;
      const bool here = j0 + x < k;
      e[x] = here ? __ldcg(chosen + slot) : 0;
      w[x] = here ? __ldcg(weights + slot) : 0.0f;
      y[x] = 0.0f;
      for (int sl = 0; sl < slices && here; ++sl) y[x] += __ldcg(partials + sl * slice_stride + size_t(slot) * N + c);
    }
#pragma unroll
    for (int x = 0; x < kCombineBatch; ++x) {
      if (j0 + x >= k) break;
      valid = valid && e[x] >= 0 && e[x] < E;
      sum += w[x] * y[x];
    }
  }
  return valid ? sum : NAN;
}

// What the single-token kernels do with their tile's sums (T = 1, so the k slots are
// the grid's rows y). The gate/up kernel applies the SwiGLU itself: a 16-row tile of
// the interleaved weight holds 8 gates and their 8 ups, so lane 4g ends with gate and up
// of output f = 8·tile + g, and h needs no pass of its own. The down kernel stores its
// rows of the slot's output, and the last of a tile's k blocks to arrive (a counter per
// tile, left at zero) adds the k slots' rows, weighted, in slot order: the combine
// needs no pass of its own either. Both give the passes' sums bit for bit.
struct TokenEpilogue {
  __nv_bfloat16* h;         // gate/up: SwiGLU output [k, F]
  float limit;              // gate/up: SwiGLU clamp
  float* partials;          // down: per-slot outputs [k, N]
  const float* weights;     // down: routing weights [k]
  float* out;               // down: the token's output [N]
  unsigned* tile_counters;  // down: [N / 16], zero between calls
};

// h = SiLU(min(gate, limit)) · clamp(up, −limit, limit) of a gate and up sum, in bf16.
__device__ __forceinline__ __nv_bfloat16 swiglu_bf16(float gate, float up, float limit) {
  gate = fminf(gate, limit);
  up = fminf(fmaxf(up, -limit), limit);
  return __float2bfloat16(gate / (1.0f + __expf(-gate)) * up);
}

// The down kernel's arrival at its tile (every block, also one whose slot has an invalid
// id and computed nothing); the last one writes the tile's rows of out (combined_output
// of the k slots' rows, as moe_decode_combine_kernel) and resets the counter. Called by
// the whole block after its stores.
__device__ void combine_if_last(const TokenEpilogue& ep, const int64_t* __restrict__ chosen, int slots, int E,
                                int ntile, int N) {
  __shared__ bool last;
  __threadfence();  // this block's stores, before its arrival is counted
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(ep.tile_counters + ntile, 1u) == unsigned(slots - 1);
  __syncthreads();
  if (!last) return;
  if (threadIdx.x < 16) {
    const int n = ntile * 16 + int(threadIdx.x);
    ep.out[n] = combined_output(ep.partials, 1, 0, chosen, ep.weights, 0, slots, E, N, n);
  }
  if (threadIdx.x == 0) ep.tile_counters[ntile] = 0;
}

// The single-token kernel: y = x_row(slot) · W_e[n]ᵀ over all of K for the rows n of
// 16-row tile blockIdx.x of W and slot blockIdx.y, whose expert e is chosen[slot] (x_row
// as above); what becomes of y is TokenEpilogue's (above).
//
// At one token each slot is a token tile of its own: the token's experts are distinct
// under top-k routing, and an expert repeated by a hash table is still computed
// correctly, its weights read twice. So a block needs no tile search, only its slot's
// id, and can own one 16-row tile of W over all of K, one contiguous piece of the weight,
// as int4_linear.cu's whole-K kernel: warp w multiplies the CH·64-wide K slices w, w + 8,
// … with its own staged copy of x's slice, the warps' sums are added in shared memory in
// warp order, and warp 0 stores. Against moe_decode_linear_kernel at one token (H100, 6
// of 256 V4-Flash experts, bench/results/gpu-model.md Session 9): the routed-expert step
// 39.1-39.7 us against 46.8 (gate/up, SwiGLU, down, combine, graph replay); the 43-layer
// decode step 7.37-7.50 ms against 7.66-7.73. At several tokens
// the tiled kernel stays: the whole-K blocks would stage each token row once per 16 rows
// of W instead of once per 128 (the batch-8 step was 4 % slower with them).
//
// ids_ready as for moe_decode_linear_kernel: false is the gate/up kernel (fp32 x, SwiGLU
// epilogue), true the down kernel (bf16 h, combining epilogue).
template <typename In, int CH, bool ids_ready>
__global__ void __launch_bounds__(kThreads, kTokenBlocksPerSm)
    moe_decode_token_kernel(const uint4* __restrict__ tiles, const float* __restrict__ scales,
                            const In* __restrict__ x, const int64_t* __restrict__ chosen, int E, int N, int K,
                            const TokenEpilogue ep) {
  constexpr int kSlice = CH * kChunk;
  constexpr int kRowStride = kSlice + 8;  // +16 bytes: conflict-free fragment reads
  __shared__ float4 sums[kThreads];
  __shared__ __align__(16) __nv_bfloat16 xs[kWarps][kRowStride];
  if (ids_ready) allow_dependent_launch();
  else wait_for_previous_kernel();  // the ids are known only now
  const int slot = int(blockIdx.y), slots = int(gridDim.y);
  const int64_t id = __ldcg(chosen + slot);  // from L2: may run before this grid's wait (down projection)
  if (!ids_ready) allow_dependent_launch();  // the dependent may now rely on the ids
  const int ntile = int(blockIdx.x);
  if (id < 0 || id >= E) {
    if (ids_ready) {  // it still arrives at its tile
      wait_for_previous_kernel();
      combine_if_last(ep, chosen, slots, E, ntile, N);
    }
    return;
  }
  const int expert = int(id), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, slices = K / kSlice;
  // x_row: the token's fp32 row (gate/up) or the slot's own bf16 row of h (down).
  const In* x_row = x + (ids_ready ? size_t(slot) * K : 0);
  int slice = warp;
  uint4 wv[CH];
  if (slice < slices) load_int4_slice<CH>(tiles, expert, ntile, slice * kSlice, N, K, lane, wv);
  if (ids_ready) wait_for_previous_kernel();  // x (the SwiGLU output) is written
  float acc[1][4] = {};
  while (slice < slices) {
    const int k0 = slice * kSlice;
    for (int c = lane; c < kSlice / 8; c += 32)
      *reinterpret_cast<uint4*>(&xs[warp][c * 8]) = load8_bf16(x_row + k0 + c * 8);
    __syncwarp();
    mma_int4_slice<1, CH>(wv, xs[warp], kRowStride, 1,
                          scales + (size_t(expert) * (K / kGroup) + k0 / kGroup) * N + ntile * 16 + g, N, lane, acc);
    slice += kWarps;
    if (slice >= slices) break;
    __syncwarp();  // every lane has read xs before it is restaged
    load_int4_slice<CH>(tiles, expert, ntile, slice * kSlice, N, K, lane, wv);
  }
  sums[threadIdx.x] = make_float4(acc[0][0], acc[0][1], acc[0][2], acc[0][3]);
  __syncthreads();
  if (ids_ready) {
    if (warp == 0) store_summed_tile(sums, kWarps, lane, ntile, 1, slot, N, ep.partials);  // row `slot` of [k, N]
    combine_if_last(ep, chosen, slots, E, ntile, N);
  } else if (warp == 0) {
    // Lane 4g holds gate (row g) and up (row g + 8) of output 8·ntile + g.
    const float4 s = summed_fragment(sums, kWarps, lane);
    float gate = 0.0f, up = 0.0f;  // summed from zero, as moe_decode_swiglu_kernel's one slice
    gate += s.x;
    up += s.z;
    if (lane % 4 == 0) ep.h[size_t(slot) * (N / 2) + ntile * 8 + g] = swiglu_bf16(gate, up, ep.limit);
  }
}

// h[slot][f] = SiLU(min(g, limit)) · clamp(u, −limit, limit) with g, u the gate/up sums of
// the `slices` partials (interleaved weight: in each 16 columns, 8 gates then their 8
// ups). Slots with an invalid id have no partials; their h is never read.
__global__ void moe_decode_swiglu_kernel(const float* __restrict__ partials, int slices, int slots, int F, float limit,
                                         __nv_bfloat16* __restrict__ h) {
  allow_dependent_launch();
  wait_for_previous_kernel();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= slots * F) return;
  const int s = i / F, f = i % F;
  const float* p = partials + size_t(s) * 2 * F + (f / 8) * 16 + f % 8;
  const size_t slice_stride = size_t(slots) * 2 * F;
  float gate = 0.0f, up = 0.0f;
  for (int sl = 0; sl < slices; ++sl) {
    gate += p[sl * slice_stride];
    up += p[sl * slice_stride + 8];
  }
  h[i] = swiglu_bf16(gate, up, limit);
}

// out[t][c] = combined_output of token t's k slots: the several-token combine pass.
__global__ void moe_decode_combine_kernel(const float* __restrict__ partials, int slices,
                                          const int64_t* __restrict__ chosen, const float* __restrict__ weights,
                                          int E, int T, int k, int H, float* __restrict__ out) {
  allow_dependent_launch();
  wait_for_previous_kernel();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= T * H) return;
  const int t = i / H, c = i % H;
  out[i] = combined_output(partials, slices, size_t(T) * k * H, chosen, weights, t * k, k, E, H, c);
}

// ids_ready: see moe_decode_linear_kernel (the down projection: bf16 input).
template <typename In>
void launch_linear(const GpuContext& ctx, const Int4ExpertWeights& w, const In* x, int slot_div,
                   const int64_t* chosen, int slots, float* partials) {
  constexpr bool ids_ready = std::is_same_v<In, __nv_bfloat16>;
  const int chunks = chunks_for(w.cols());
  const dim3 grid(unsigned((w.rows() + kTileN - 1) / kTileN), unsigned(w.cols() / (chunks * kChunk)),
                  unsigned(slots));
  const auto kernel = chunks == 4   ? moe_decode_linear_kernel<In, 4, ids_ready>
                      : chunks == 8 ? moe_decode_linear_kernel<In, 8, ids_ready>
                                    : moe_decode_linear_kernel<In, 16, ids_ready>;
  launch_dependent(ctx, kernel, grid, dim3(kThreads), 0, w.tiles(), w.scales(), x, slot_div, chosen, slots,
                   int(w.experts()), int(w.rows()), int(w.cols()), partials);
}

// The single-token kernel over W's 16-row tiles × the k slots (CH = 4 needs 8 warps ×
// 256 inputs to divide K, which holds from K = 2048 on; smaller K takes 128-wide slices).
template <typename In>
void launch_token(const GpuContext& ctx, const Int4ExpertWeights& w, const In* x, const int64_t* chosen, int slots,
                  const TokenEpilogue& ep) {
  constexpr bool ids_ready = std::is_same_v<In, __nv_bfloat16>;
  const bool wide = w.cols() % (kWarps * kTokenChunks * kChunk) == 0;
  const auto kernel =
      wide ? moe_decode_token_kernel<In, kTokenChunks, ids_ready> : moe_decode_token_kernel<In, 2, ids_ready>;
  launch_dependent(ctx, kernel, dim3(unsigned(w.rows() / 16), unsigned(slots)), dim3(kThreads), 0, w.tiles(),
                   w.scales(), x, chosen, int(w.experts()), int(w.rows()), int(w.cols()), ep);
}

unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

}  // namespace

MoeDecodeScratch moe_decode_scratch(const Int4ExpertWeights& gate_up, const Int4ExpertWeights& down, int64_t slots) {
  const int64_t gate_up_slices = gate_up.cols() / (chunks_for(gate_up.cols()) * kChunk),
                down_slices = down.cols() / (chunks_for(down.cols()) * kChunk);
  return {size_t(gate_up_slices * slots * gate_up.rows()), size_t(slots * down.cols()),
          size_t(down_slices * slots * down.rows()), size_t(down.rows() / 16)};
}

void int4_moe_decode_force_chunks(int chunks) {
  DSQ_CHECK(chunks == 0 || chunks == 4 || chunks == 8 || chunks == 16, "int4_moe_decode_force_chunks: ", chunks,
            " is not 0, 4, 8 or 16");
  g_forced_chunks = chunks;
}

void int4_moe_decode(const GpuContext& ctx, const Int4ExpertWeights& gate_up, const Int4ExpertWeights& down,
                     const float* x, int64_t T, const int64_t* chosen, const float* weights, int64_t k, float limit,
                     float* out, float* gate_up_partials, __nv_bfloat16* activations, float* down_partials,
                     unsigned* tile_counters) {
  const int64_t slots = T * k, H = gate_up.cols(), F = gate_up.rows() / 2;
  DSQ_CHECK(gate_up.gate_up_interleaved(), "int4_moe_decode: the gate/up weights are not interleaved "
            "(build them with Int4ExpertWeights::gate_up)");
  DSQ_CHECK(down.experts() == gate_up.experts() && down.rows() == H && down.cols() == F, "int4_moe_decode: down [",
            down.experts(), "][", down.rows(), ", ", down.cols(), "] does not match gate/up [", gate_up.experts(),
            "][2x", F, ", ", H, "]");
  DSQ_CHECK(T > 0 && k > 0 && slots <= kMoeDecodeMaxSlots, "int4_moe_decode: ", T, " tokens x k = ", k,
            " is not 1..", kMoeDecodeMaxSlots, " (token, expert) pairs");
  const int s = int(slots);
  const auto* h = static_cast<const __nv_bfloat16*>(activations);
  if (T == 1) {  // the single-token kernels, SwiGLU and combine in their epilogues
    DSQ_CHECK(H % 16 == 0 && tile_counters != nullptr, "int4_moe_decode: no tile counters for ", H, " outputs");
    launch_token(ctx, gate_up, x, chosen, s, TokenEpilogue{activations, limit, nullptr, nullptr, nullptr, nullptr});
    launch_token(ctx, down, h, chosen, s, TokenEpilogue{nullptr, 0.0f, down_partials, weights, out, tile_counters});
    return;
  }
  const int slices_gate_up = int(H / (chunks_for(H) * kChunk)), slices_down = int(F / (chunks_for(F) * kChunk));
  launch_linear(ctx, gate_up, x, int(k), chosen, s, gate_up_partials);
  launch_dependent(ctx, moe_decode_swiglu_kernel, dim3(blocks_for(slots * F)), dim3(kThreads), 0,
                   static_cast<const float*>(gate_up_partials), slices_gate_up, s, int(F), limit, activations);
  launch_linear(ctx, down, h, 1, chosen, s, down_partials);
  launch_dependent(ctx, moe_decode_combine_kernel, dim3(blocks_for(T * H)), dim3(kThreads), 0,
                   static_cast<const float*>(down_partials), slices_down, chosen, weights, int(gate_up.experts()),
                   int(T), int(k), int(H), out);
}

}  // namespace dsq::cuda
