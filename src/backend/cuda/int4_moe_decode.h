// The routed experts of a decode step with the expert ids left on the device: INT4
// gate/up + clamped SwiGLU + down for the T·k (token, expert) pairs of `chosen`, then
// the weighted combine per token, with no host synchronisation and no host-side plan.
//
// The grouped path (int4_grouped_linear) needs the rows per expert on the host, which
// costs a device-to-host copy and a stream synchronisation per layer; in decode that
// drains the launch queue every layer. Here every block reads the ids itself: the grid
// covers (N tiles × K slices × T·k slots); the slots of each expert form tiles of up to 8
// (one mma token tile), block z of the last dimension takes the z-th tile and blocks
// past the last tile exit, so each expert's weights are streamed once per 8 tokens that
// chose it. K slices write fp32 partial sums to separate buffers, added in a fixed order
// by the next kernel (SwiGLU, combine): the result is deterministic, with no atomics and
// no zeroing pass.
//
// A single token (T = 1, batch-1 decode) takes kernels of its own: each slot is its own
// tile, so a block needs only its slot's id, and it covers one 16-row tile of W over all
// of K (one contiguous piece of the weight, its warps' K slices added in shared memory),
// which streams faster than the 128-row × 512-input blocks of the tiled kernel
// (int4_moe_decode.cu has the numbers); their output is a single "slice" of partial sums.
//
// The price: a gate/up block knows which weights to load only after waiting for the
// kernel that wrote `chosen`, so unlike the grouped decode kernel it cannot stream weights
// while the previous kernel finishes. The down projection can: it is launched only after
// every gate/up block has read the ids, so its blocks find their tiles and start loading
// before they wait for the SwiGLU pass.
//
// The SwiGLU pass and the combine stay separate launches on purpose: each way tried of
// folding them into the GEMM kernels cost more than the launch it saved. On an H100, per
// call at T = 1 / 8 tokens (47.5 / 260 µs with four launches): the down kernel
// recomputing h from the gate/up partials 56 / 360 (every column tile reads all of them
// again); a last-block ticket per tile for the SwiGLU and the combine 50 / 284 (every
// block waits for its fence); the gate/up K slices as one cluster summing through shared
// memory 49 / 283; whole-K gate/up blocks with the SwiGLU in their epilogue 48.5 / 295;
// a ticket combine alone 48 / 270. The 43-layer decode step got no faster with any.
//
// Ids outside [0, E) cannot be refused without a synchronisation: such a pair makes its
// token's output row NaN (loud, never a silently wrong number).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>

#include "backend/cuda/gpu_context.h"
#include "backend/cuda/int4_linear.h"

namespace dsq::cuda {

// Largest T·k this path takes. At k = 6 that is T <= 10 tokens, so an expert has at most
// 10 rows: up to 8 the grouped path runs the same mma decode kernel (its GEMM starts at
// kInt4GemmMinRows = 9 rows); 9 or 10 rows, rare with 6 of 256 experts per token, take
// two tiles here (the expert's weights read twice). The partial-sum buffers stay small
// (gate/up: K/512 × 64 × 2F floats, 8 MB at V4-Flash widths).
constexpr int64_t kMoeDecodeMaxSlots = 64;

// Device scratch the call needs for `slots` = T·k pairs (element counts).
struct MoeDecodeScratch {
  size_t gate_up_partials;  // fp32
  size_t activations;       // bf16 (the SwiGLU output)
  size_t down_partials;     // fp32
  size_t tile_counters;     // uint32, zero before the first call (each call leaves them zero)
};
MoeDecodeScratch moe_decode_scratch(const Int4ExpertWeights& gate_up, const Int4ExpertWeights& down, int64_t slots);

// Test and benchmark hook: the K slice per block in 64-wide chunks (4, 8 or 16; 16 only
// where 1024 divides K, else 8); 0 restores the default (8).
void int4_moe_decode_force_chunks(int chunks);

// out[t] = Σ_j weights[t·k+j] · Expert_{chosen[t·k+j]}(x[t]) for t < T, j < k, j in order.
// x, out: fp32 [T, H] on the device; chosen: i64 [T·k], weights: fp32 [T·k] on the device.
// gate_up: Int4ExpertWeights::gate_up() of E experts [2F, H]; down: [E][H, F]. limit:
// SwiGLU clamp (+∞: none). T·k <= kMoeDecodeMaxSlots. Scratch pointers sized by
// moe_decode_scratch(). Every kernel is a programmatic dependent (dependent_launch.h):
// four of them, or at one token two (the SwiGLU and the combine in their epilogues).
void int4_moe_decode(const GpuContext& ctx, const Int4ExpertWeights& gate_up, const Int4ExpertWeights& down,
                     const float* x, int64_t T, const int64_t* chosen, const float* weights, int64_t k, float limit,
                     float* out, float* gate_up_partials, __nv_bfloat16* activations, float* down_partials,
                     unsigned* tile_counters);

}  // namespace dsq::cuda
