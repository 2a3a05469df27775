// CUTLASS's Hopper FP8 GEMM with blockwise scaling applied in the mainloop (example 67's
// groupwise variant: 1x128 activation scales, 128x128 weight scales, fp32 promotion of
// each 128-wide K block). Prefill runs y = xq · W^T with 128x128 tiles; decode runs the
// same product transposed, y^T = W · xq^T, so that the few tokens are a 16-wide tile side
// instead of filling 1/8 of a 128-row tile, with Stream-K spreading K over the SMs.
#include <cstdio>
#include <type_traits>

#include "bench/gpu/cutlass/cutlass_gemms.h"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

namespace dsq::bench::cutlass_gemm {
namespace {

using namespace cute;
using E4m3 = cutlass::float_e4m3_t;
using Bf16 = cutlass::bfloat16_t;
using Major = cute::GMMA::Major;

// Operand A is [rows_a, K] K-major ("row-major A"), B is [rows_b, K] K-major ("column-major
// B"), D is [rows_a, rows_b] in LayoutD. The scale granularities say which operand is which:
// (1, 128) activations as A, (128, 1) weights as A.
template <class TileShape, class ClusterShape, class ScaleConfig, class LayoutD, class Scheduler>
struct Fp8Gemm {
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, LayoutD, 8,  // no C operand
      Bf16, LayoutD, 8, cutlass::epilogue::TmaWarpSpecializedCooperative>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, E4m3, cute::tuple<cutlass::layout::RowMajor, LayoutSFA>,
      16, E4m3, cute::tuple<cutlass::layout::ColumnMajor, LayoutSFB>, 16, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue, Scheduler>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Device::Arguments arguments(int splits, const uint8_t* a, const float* sa, int64_t rows_a, const uint8_t* b,
                                              const float* sb, int64_t rows_b, int64_t K, __nv_bfloat16* d) {
    const int m = int(rows_a), n = int(rows_b), k = int(K);
    const auto problem = make_shape(m, n, k, 1);
    typename Device::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {reinterpret_cast<const E4m3*>(a),
         cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, make_shape(m, k, 1)),
         reinterpret_cast<const E4m3*>(b),
         cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, make_shape(n, k, 1)), sa,
         ScaleConfig::tile_atom_to_shape_SFA(problem), sb, ScaleConfig::tile_atom_to_shape_SFB(problem)},
        {{},
         nullptr,
         typename Kernel::StrideC{},
         reinterpret_cast<Bf16*>(d),
         cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(m, n, 1))}};
    args.epilogue.thread.alpha = 1.0f;
    args.epilogue.thread.beta = 0.0f;
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

  static size_t workspace_bytes(int splits, int64_t rows_a, int64_t rows_b, int64_t K) {
    return Device::get_workspace_size(arguments(splits, nullptr, nullptr, rows_a, nullptr, nullptr, rows_b, K, nullptr));
  }

  static bool run(int splits, const uint8_t* a, const float* sa, int64_t rows_a, const uint8_t* b, const float* sb,
                  int64_t rows_b, int64_t K, __nv_bfloat16* d, void* workspace, cudaStream_t stream) {
    Device gemm;
    const auto args = arguments(splits, a, sa, rows_a, b, sb, rows_b, K, d);
    cutlass::Status st = gemm.can_implement(args);
    if (st == cutlass::Status::kSuccess) st = gemm.initialize(args, workspace, stream);
    if (st == cutlass::Status::kSuccess) st = gemm.run(stream);
    if (st != cutlass::Status::kSuccess) {
      std::fprintf(stderr, "cutlass fp8 gemm %lldx%lldx%lld: %s\n", (long long)rows_a, (long long)rows_b,
                   (long long)K, cutlassGetStatusString(st));
      return false;
    }
    return true;
  }
};

// Prefill: A = activations (scales [K/128][M], M fastest), B = weights (scales k-major).
using PrefillGemm =
    Fp8Gemm<Shape<_128, _128, _128>, Shape<_1, _2, _1>,
            cutlass::detail::Sm90BlockwiseScaleConfig<1, 128, 128, Major::MN, Major::K>, cutlass::layout::RowMajor,
            cutlass::gemm::PersistentScheduler>;
// Decode: A = weights, B = activations; D = y^T [N, M] column-major, i.e. y row-major.
using DecodeGemm =
    Fp8Gemm<Shape<_128, _16, _128>, Shape<_1, _1, _1>,
            cutlass::detail::Sm90BlockwiseScaleConfig<128, 1, 128, Major::K, Major::MN>, cutlass::layout::ColumnMajor,
            cutlass::gemm::StreamKScheduler>;

}  // namespace

size_t fp8_workspace_bytes(Tile tile, int splits, int64_t M, int64_t N, int64_t K) {
  return tile == Tile::Prefill ? PrefillGemm::workspace_bytes(0, M, N, K) : DecodeGemm::workspace_bytes(splits, N, M, K);
}

bool fp8_gemm(Tile tile, int splits, const uint8_t* xq, const float* sx, int64_t M, const uint8_t* w, const float* sw,
              int64_t N, int64_t K, __nv_bfloat16* y, void* workspace, cudaStream_t stream) {
  return tile == Tile::Prefill ? PrefillGemm::run(0, xq, sx, M, w, sw, N, K, y, workspace, stream)
                               : DecodeGemm::run(splits, w, sw, N, xq, sx, M, K, y, workspace, stream);
}

}  // namespace dsq::bench::cutlass_gemm
