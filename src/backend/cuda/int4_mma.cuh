// Device code shared by the W4A16 decode kernels (int4_linear.cu's grouped decode kernels,
// int4_moe_decode.cu's device-id kernels): the bf16 tensor-core MMA they accumulate with,
// the exact nibble → bf16 conversion of the packed weights, the streamed load of one
// warp's slice of the mma-tile layout and the loop that multiplies that slice with up to
// MT token tiles of staged activations, group scales applied in fp32.
//
// Mma-tile layout (int4_linear.cu's file comment has the nibble table): per expert,
// tiles[n16][k64][lane] one 16-byte word per lane holding its A fragments of the four
// 16×16 sub-tiles of a 16-row × 64-input piece; scales fp32 [E][K/128][N].
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>

namespace dsq::cuda {

constexpr int kInt4Group = 128;  // inputs per scale
constexpr int kInt4Chunk = 64;   // inputs per 16-byte lane word

// c += a · b for one m16n8k16 bf16 tile (fp32 accumulators).
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two nibbles u (bits 0-3 and 16-19 after the shift) to the bf16 pair q = u − 8, exactly:
// 0x4300 | u is bf16(128 + u) (u lands in the mantissa), then 136 is subtracted.
__device__ __forceinline__ uint32_t nibbles_to_bf16x2(uint32_t word, int shift) {
  const uint32_t biased = ((word >> shift) & 0x000F000Fu) | 0x43004300u;
  const uint32_t offset_bits = 0x43084308u;  // (136, 136)
  const __nv_bfloat162 r = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&biased),
                                   *reinterpret_cast<const __nv_bfloat162*>(&offset_bits));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// A warp's CH lane words of 16-row tile `ntile` of `expert`, inputs [k0, k0 + 64·CH),
// loaded with the streaming hint (each weight byte is used once per launch).
template <int CH>
__device__ __forceinline__ void load_int4_slice(const uint4* __restrict__ tiles, int expert, int ntile, int k0, int N,
                                                int K, int lane, uint4 (&wv)[CH]) {
  const uint4* src =
      tiles + ((size_t(expert) * (N / 16) + ntile) * (K / kInt4Chunk) + k0 / kInt4Chunk) * 32 + lane;
#pragma unroll
  for (int c = 0; c < CH; ++c) wv[c] = __ldcs(src + c * 32);
}

// acc[m] += W_slice · x_tile(m)ᵀ for the slice in wv (inputs [k0, k0 + 64·CH), k0 a
// multiple of 128, CH even) and MT 8-row token tiles: token row r at xs + r·row_stride
// (bf16, column 0 = input k0); rows >= rows read as zero. scale: the fp32 scale of W row
// ntile·16 + g in the slice's first group (the next group's is N floats further). C
// fragment: acc[m][0..1] = (row g, tokens 2t, 2t+1), acc[m][2..3] = (row g + 8, same).
// Lanes past the rows read the last row and select zero: the shared-memory loads stay
// unconditional, so the compiler issues them ahead of the MMAs (with a branch around
// each load pair the loop ran ~10 % slower on an H100).
template <int MT, int CH>
__device__ __forceinline__ void mma_int4_slice(const uint4 (&wv)[CH], const __nv_bfloat16* xs, int row_stride,
                                               int rows, const float* __restrict__ scale, int N, int lane,
                                               float (&acc)[MT][4]) {
  static_assert(CH % 2 == 0, "a slice covers whole 128-input groups");
  const int g = lane / 4, t = lane % 4;
  const __nv_bfloat16* xrow[MT];
  bool valid[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    valid[m] = m * 8 + g < rows;
    xrow[m] = xs + min(m * 8 + g, rows - 1) * row_stride + 2 * t;
  }
  float part[MT][4];
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    if (c % 2 == 0) {
#pragma unroll
      for (int m = 0; m < MT; ++m) part[m][0] = part[m][1] = part[m][2] = part[m][3] = 0.0f;
    }
    const uint32_t words[4] = {wv[c].x, wv[c].y, wv[c].z, wv[c].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t a[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = nibbles_to_bf16x2(words[j], 4 * r);
      const int kk = c * kInt4Chunk + j * 16;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(xrow[m] + kk);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(xrow[m] + kk + 8);
        mma_bf16_16816(part[m], a, valid[m] ? b0 : 0u, valid[m] ? b1 : 0u);
      }
    }
    if (c % 2 == 1) {  // a 128-wide group is complete: apply its scales in fp32
      const float* s = scale + size_t(c / 2) * N;
      const float s0 = __ldg(s), s1 = __ldg(s + 8);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        acc[m][0] += part[m][0] * s0;
        acc[m][1] += part[m][1] * s0;
        acc[m][2] += part[m][2] * s1;
        acc[m][3] += part[m][3] * s1;
      }
    }
  }
}

// The end of a whole-K decode block (one 16-row tile of W, `warps` warps each a K slice):
// every thread has put its m16n8 C fragment in sums[threadIdx.x]; lane `lane` of warp 0
// adds the warps' fragments in warp order: (row g, token 2t), (row g, token 2t+1),
// (row g+8, token 2t), (row g+8, token 2t+1) of the tile, g = lane / 4, t = lane % 4.
__device__ __forceinline__ float4 summed_fragment(const float4* sums, int warps, int lane) {
  float4 s = sums[lane];
#pragma unroll
  for (int w = 1; w < warps; ++w) {
    const float4 p = sums[w * 32 + lane];
    s.x += p.x;
    s.y += p.y;
    s.z += p.z;
    s.w += p.w;
  }
  return s;
}

// summed_fragment's rows g and g + 8 of the tile stored for tokens 2t and 2t+1 of the
// item's `rows` (y is [.., N], the item starting at row_begin). Called by warp 0.
__device__ __forceinline__ void store_summed_tile(const float4* sums, int warps, int lane, int ntile, int rows,
                                                  int64_t row_begin, int N, float* y) {
  const int g = lane / 4, t = lane % 4;
  const float4 s = summed_fragment(sums, warps, lane);
  const int n = ntile * 16 + g;
  if (2 * t < rows) {
    float* out = y + size_t(row_begin + 2 * t) * N + n;
    out[0] = s.x;
    out[8] = s.z;
  }
  if (2 * t + 1 < rows) {
    float* out = y + size_t(row_begin + 2 * t + 1) * N + n;
    out[0] = s.y;
    out[8] = s.w;
  }
}

}  // namespace dsq::cuda
