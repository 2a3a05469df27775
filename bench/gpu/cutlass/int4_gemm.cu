// CUTLASS's Hopper mixed-input GEMM (bf16 activations x int4 weights with one bf16 scale
// per 128 inputs), configured as CUTLASS example 55 does for INT4 x BF16: the int4 operand
// must pass through registers, so it is the kernel's A operand and the problem is computed
// transposed (y^T[N, M] = W[N, K] · x^T), which lets the TMA epilogue write y row-major.
#include <cstdio>
#include <type_traits>

#include "bench/gpu/cutlass/cutlass_gemms.h"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/mixed_dtype_utils.hpp"
#include "cutlass/util/packed_stride.hpp"

namespace dsq::bench::cutlass_gemm {
namespace {

using namespace cute;

using Bf16 = cutlass::bfloat16_t;
using Int4 = cutlass::int4b_t;
constexpr int kGroup = 128;

// W [N, K] K-major (CUTLASS's "column-major B" before the swap), x [M, K] row-major.
using StrideW = cutlass::detail::TagToStrideB_t<cutlass::layout::ColumnMajor>;
using StrideX = cutlass::detail::TagToStrideA_t<cutlass::layout::RowMajor>;
// Values one thread reads for a bf16 wgmma, contiguous, in the nibble order [0,2,4,6,1,3,5,7]
// that lets the int4 -> bf16 conversion extract several nibbles per instruction.
using ValueShuffle = Layout<Shape<_2, _4>, Stride<_4, _1>>;
using LayoutAtomQuant =
    decltype(cutlass::compute_memory_reordering_atom<Bf16, Layout<Shape<_1, _1>>, ValueShuffle>());
using LayoutW = decltype(cute::tile_to_shape(LayoutAtomQuant{}, Layout<Shape<int, int, int>, StrideW>{}));

template <class TileShape, class Scheduler>
struct Int4Gemm {
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, Shape<_1, _1, _1>,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, cutlass::layout::ColumnMajor, 4,  // no C operand (beta = 0)
      float, cutlass::layout::ColumnMajor, 4,  // y^T column-major = y row-major
      cutlass::epilogue::TmaWarpSpecializedCooperative>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cute::tuple<Int4, Bf16>, LayoutW, 32, Bf16,
      cutlass::layout::ColumnMajor, 8, float, TileShape, Shape<_1, _1, _1>,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue, Scheduler>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Device::Arguments arguments(int splits, const __nv_bfloat16* x, int64_t M, const void* w,
                                              const __nv_bfloat16* scales, int64_t N, int64_t K, float* y) {
    const int m = int(M), n = int(N), k = int(K);
    const LayoutW layout_w = cute::tile_to_shape(LayoutAtomQuant{}, make_shape(n, k, 1));
    const auto stride_x = cutlass::make_cute_packed_stride(StrideX{}, make_shape(m, k, 1));
    const auto stride_s =
        cutlass::make_cute_packed_stride(typename Mainloop::StrideScale{}, make_shape(n, k / kGroup, 1));
    const auto stride_y = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(n, m, 1));
    typename Device::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {n, m, k, 1},
        {static_cast<const Int4*>(w), layout_w, reinterpret_cast<const Bf16*>(x), stride_x,
         reinterpret_cast<const Bf16*>(scales), stride_s, kGroup},
        {{1.0f, 0.0f}, nullptr, typename Kernel::StrideC{}, y, stride_y}};
    args.hw_info.sm_count = sm_count();
    if constexpr (std::is_same_v<Scheduler, cutlass::gemm::StreamKScheduler>) {
      using Mode = decltype(args.scheduler.decomposition_mode);
      args.scheduler.splits = splits > 1 ? splits : 1;
      args.scheduler.decomposition_mode = splits > 1 ? Mode::SplitK : splits == kStreamK ? Mode::StreamK : Mode::Heuristic;
    }
    return args;
  }

  static int sm_count() {
    static const int count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(0);
    return count;
  }

  static size_t workspace_bytes(int splits, int64_t M, int64_t N, int64_t K) {
    return Device::get_workspace_size(arguments(splits, nullptr, M, nullptr, nullptr, N, K, nullptr));
  }

  static bool run(int splits, const __nv_bfloat16* x, int64_t M, const void* w, const __nv_bfloat16* scales, int64_t N,
                  int64_t K, float* y, void* workspace, cudaStream_t stream) {
    Device gemm;
    const auto args = arguments(splits, x, M, w, scales, N, K, y);
    cutlass::Status st = gemm.can_implement(args);
    if (st == cutlass::Status::kSuccess) st = gemm.initialize(args, workspace, stream);
    if (st == cutlass::Status::kSuccess) st = gemm.run(stream);
    if (st != cutlass::Status::kSuccess) {
      std::fprintf(stderr, "cutlass int4 gemm M=%lld N=%lld K=%lld: %s\n", (long long)M, (long long)N,
                   (long long)K, cutlassGetStatusString(st));
      return false;
    }
    return true;
  }
};

using PrefillGemm = Int4Gemm<Shape<_128, _128, _64>, cutlass::gemm::PersistentScheduler>;
using DecodeGemm = Int4Gemm<Shape<_128, _16, _64>, cutlass::gemm::StreamKScheduler>;

// dsq stores q + 8 in each nibble; two's complement q is that with the top bit flipped.
__global__ void offset_to_twos_complement(uint32_t* words, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    words[i] ^= 0x88888888u;
}

}  // namespace

void int4_prepare_weights(void* packed, int64_t E, int64_t N, int64_t K) {
  offset_to_twos_complement<<<1024, 256>>>(static_cast<uint32_t*>(packed), size_t(E * N * K / 8));
  const int n = int(N), k = int(K);
  const auto layout_src = make_layout(make_shape(n, k, 1), cutlass::make_cute_packed_stride(StrideW{}, make_shape(n, k, 1)));
  const LayoutW layout_dst = cute::tile_to_shape(LayoutAtomQuant{}, make_shape(n, k, 1));
  for (int64_t e = 0; e < E; ++e) {
    Int4* expert = reinterpret_cast<Int4*>(static_cast<uint8_t*>(packed) + size_t(e * N * K / 2));
    cutlass::reorder_tensor(expert, layout_src, layout_dst);
  }
  cudaDeviceSynchronize();
}

size_t int4_workspace_bytes(Tile tile, int splits, int64_t M, int64_t N, int64_t K) {
  return tile == Tile::Prefill ? PrefillGemm::workspace_bytes(0, M, N, K) : DecodeGemm::workspace_bytes(splits, M, N, K);
}

bool int4_gemm(Tile tile, int splits, const __nv_bfloat16* x, int64_t M, const void* w,
               const __nv_bfloat16* scales, int64_t N, int64_t K, float* y, void* workspace, cudaStream_t stream) {
  return tile == Tile::Prefill ? PrefillGemm::run(0, x, M, w, scales, N, K, y, workspace, stream)
                               : DecodeGemm::run(splits, x, M, w, scales, N, K, y, workspace, stream);
}

}  // namespace dsq::bench::cutlass_gemm
