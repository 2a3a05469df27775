// Device helpers shared by the W4A16 kernels (int4_linear.cu, int4_moe_decode.cu): the
// bf16 tensor-core MMA they accumulate with, and the exact nibble → bf16 conversion of
// the packed weights.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

namespace dsq::cuda {

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

}  // namespace dsq::cuda
