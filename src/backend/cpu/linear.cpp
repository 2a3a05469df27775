#include "backend/cpu/linear.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace dsq::cpu {

namespace {

// The native vector width in floats; the kernel keeps MR × 2 vectors of accumulators.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
constexpr int64_t kPanel = 2 * kLanes;  // weight rows per packed panel (NR)
constexpr int64_t kBlock = 6;           // input rows per register block (MR)

inline Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// One panel (kPanel weight rows, packed as [cols][kPanel]) times M input rows.
template <int M>
void panel_kernel(const float* panel, int64_t cols, const float* x, int64_t x_stride, float* y,
                  int64_t y_stride, int64_t valid_rows) {
  Vec acc[M][2] = {};
  for (int64_t k = 0; k < cols; ++k) {
    const Vec b0 = load_vec(panel + k * kPanel), b1 = load_vec(panel + k * kPanel + kLanes);
    for (int m = 0; m < M; ++m) {
      const float a = x[m * x_stride + k];
      acc[m][0] += a * b0;
      acc[m][1] += a * b1;
    }
  }
  for (int m = 0; m < M; ++m) {
    float out[kPanel];
    std::memcpy(out, &acc[m][0], sizeof(Vec));
    std::memcpy(out + kLanes, &acc[m][1], sizeof(Vec));
    std::memcpy(y + m * y_stride, out, size_t(valid_rows) * sizeof(float));
  }
}

void panel_times_rows(const float* panel, int64_t cols, const float* x, int64_t n, int64_t x_stride, float* y,
                      int64_t y_stride, int64_t valid_rows) {
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock)
    panel_kernel<kBlock>(panel, cols, x + i * x_stride, x_stride, y + i * y_stride, y_stride, valid_rows);
  for (; i < n; ++i) panel_kernel<1>(panel, cols, x + i * x_stride, x_stride, y + i * y_stride, y_stride, valid_rows);
}

// Packs weight rows [r0, r1) as f32 panels: packed[p][k][r] = W[r0 + p·kPanel + r][k],
// zero-padded to whole panels.
void pack_tile(const QuantizedMatrix& w, int64_t r0, int64_t r1, std::vector<float>& packed,
               std::vector<float>& rows_f32) {
  const int64_t cols = w.cols, n_rows = r1 - r0;
  const int64_t n_panels = (n_rows + kPanel - 1) / kPanel;
  packed.assign(size_t(n_panels * kPanel * cols), 0.0f);
  auto place = [&](int64_t r, auto&& value_at) {
    float* dst = packed.data() + (r / kPanel) * kPanel * cols + r % kPanel;
    for (int64_t k = 0; k < cols; ++k) dst[k * kPanel] = value_at(k);
  };
  const bool dense = w.format == WeightFormat::Dense;
  const DType dt = w.values.dtype();
  if (dense && dt == DType::BF16) {
    for (int64_t r = 0; r < n_rows; ++r) {
      const uint16_t* src = w.values.data<uint16_t>() + (r0 + r) * cols;
      place(r, [&](int64_t k) { return bf16_to_f32(src[k]); });
    }
  } else if (dense && dt == DType::F32) {
    for (int64_t r = 0; r < n_rows; ++r) {
      const float* src = w.values.data<float>() + (r0 + r) * cols;
      place(r, [&](int64_t k) { return src[k]; });
    }
  } else if (dense && dt == DType::F16) {
    for (int64_t r = 0; r < n_rows; ++r) {
      const uint16_t* src = w.values.data<uint16_t>() + (r0 + r) * cols;
      place(r, [&](int64_t k) { return f16_to_f32(src[k]); });
    }
  } else {
    rows_f32.resize(size_t(n_rows * cols));
    w.dequantize_rows(r0, r1, rows_f32.data());
    for (int64_t r = 0; r < n_rows; ++r) {
      const float* src = rows_f32.data() + r * cols;
      place(r, [&](int64_t k) { return src[k]; });
    }
  }
}

}  // namespace

void linear_rows(const float* x, int64_t n, int64_t x_stride, const QuantizedMatrix& w,
                 int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  DSQ_CHECK(row_begin >= 0 && row_begin <= row_end && row_end <= w.rows, "linear: row range [",
            row_begin, ", ", row_end, ") outside a weight of ", w.rows, " rows");
  if (n == 0 || row_begin == row_end) return;
  const int64_t cols = w.cols;
  // About 128 KiB of packed f32 weights per tile: it stays in L2 while the inputs pass.
  int64_t tile_rows = std::clamp<int64_t>(32768 / std::max<int64_t>(cols, 1) / kPanel * kPanel, kPanel, 512);
  // Quantized formats dequantize whole scale blocks; keep tiles on block boundaries.
  if (w.format == WeightFormat::Fp8Block) tile_rows = std::max<int64_t>(tile_rows / 128, 1) * 128;
  const int64_t n_tiles = (row_end - row_begin + tile_rows - 1) / tile_rows;
  // With few tiles, also split the input rows so every thread has work.
  const int64_t threads = num_threads();
  const int64_t max_chunks = std::max<int64_t>(1, n / (8 * kBlock));
  const int64_t chunks = std::clamp<int64_t>((2 * threads + n_tiles - 1) / n_tiles, 1, max_chunks);
  parallel_for(n_tiles * chunks, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> packed, rows_f32;
    int64_t packed_tile = -1;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t tile = task / chunks, chunk = task % chunks;
      const int64_t r0 = row_begin + tile * tile_rows, r1 = std::min(row_end, r0 + tile_rows);
      if (tile != packed_tile) {
        pack_tile(w, r0, r1, packed, rows_f32);
        packed_tile = tile;
      }
      const int64_t i0 = n * chunk / chunks, i1 = n * (chunk + 1) / chunks;
      for (int64_t p = 0; p * kPanel < r1 - r0; ++p) {
        const int64_t valid = std::min<int64_t>(kPanel, r1 - r0 - p * kPanel);
        panel_times_rows(packed.data() + p * kPanel * cols, cols, x + i0 * x_stride, i1 - i0, x_stride,
                         y + i0 * y_stride + (r0 - row_begin) + p * kPanel, y_stride, valid);
      }
    }
  });
}

}  // namespace dsq::cpu
