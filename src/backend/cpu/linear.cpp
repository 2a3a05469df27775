#include "backend/cpu/linear.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace dsq::cpu {

namespace {

typedef float v8f __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline float hsum(v8f v) {
  float s = 0;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

// Rows of W (already f32) times 4 input rows at once: each loaded weight vector is used
// four times and each input vector twice (two weight rows per step).
void tile_times_rows(const float* wt, int64_t tile_rows, int64_t cols, const float* x, int64_t n,
                     int64_t x_stride, float* y, int64_t y_stride) {
  const int64_t vec_cols = cols / 8 * 8;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* x0 = x + i * x_stride;
    const float* x1 = x0 + x_stride;
    const float* x2 = x1 + x_stride;
    const float* x3 = x2 + x_stride;
    int64_t o = 0;
    for (; o + 2 <= tile_rows; o += 2) {
      const float* wa = wt + o * cols;
      const float* wb = wa + cols;
      v8f a0{}, a1{}, a2{}, a3{}, b0{}, b1{}, b2{}, b3{};
      for (int64_t k = 0; k < vec_cols; k += 8) {
        const v8f va = load8(wa + k), vb = load8(wb + k);
        const v8f u0 = load8(x0 + k), u1 = load8(x1 + k), u2 = load8(x2 + k), u3 = load8(x3 + k);
        a0 += va * u0; a1 += va * u1; a2 += va * u2; a3 += va * u3;
        b0 += vb * u0; b1 += vb * u1; b2 += vb * u2; b3 += vb * u3;
      }
      float s[8] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3), hsum(b0), hsum(b1), hsum(b2), hsum(b3)};
      for (int64_t k = vec_cols; k < cols; ++k) {
        s[0] += wa[k] * x0[k]; s[1] += wa[k] * x1[k]; s[2] += wa[k] * x2[k]; s[3] += wa[k] * x3[k];
        s[4] += wb[k] * x0[k]; s[5] += wb[k] * x1[k]; s[6] += wb[k] * x2[k]; s[7] += wb[k] * x3[k];
      }
      for (int r = 0; r < 4; ++r) {
        y[(i + r) * y_stride + o] = s[r];
        y[(i + r) * y_stride + o + 1] = s[4 + r];
      }
    }
    for (; o < tile_rows; ++o) {
      const float* wa = wt + o * cols;
      const float* xs[4] = {x0, x1, x2, x3};
      for (int r = 0; r < 4; ++r) {
        v8f acc{};
        for (int64_t k = 0; k < vec_cols; k += 8) acc += load8(wa + k) * load8(xs[r] + k);
        float s = hsum(acc);
        for (int64_t k = vec_cols; k < cols; ++k) s += wa[k] * xs[r][k];
        y[(i + r) * y_stride + o] = s;
      }
    }
  }
  for (; i < n; ++i) {
    const float* xr = x + i * x_stride;
    for (int64_t o = 0; o < tile_rows; ++o) {
      const float* wa = wt + o * cols;
      v8f acc{};
      for (int64_t k = 0; k < vec_cols; k += 8) acc += load8(wa + k) * load8(xr + k);
      float s = hsum(acc);
      for (int64_t k = vec_cols; k < cols; ++k) s += wa[k] * xr[k];
      y[i * y_stride + o] = s;
    }
  }
}

// Rows [r0, r1) of W as f32: a direct pointer for dense f32, else converted into `buf`.
const float* weight_rows_f32(const QuantizedMatrix& w, int64_t r0, int64_t r1, std::vector<float>& buf) {
  const int64_t cols = w.cols;
  if (w.format == WeightFormat::Dense) {
    switch (w.values.dtype()) {
      case DType::F32:
        return w.values.data<float>() + r0 * cols;
      case DType::BF16: {
        buf.resize(size_t((r1 - r0) * cols));
        const uint16_t* src = w.values.data<uint16_t>() + r0 * cols;
        for (int64_t k = 0; k < (r1 - r0) * cols; ++k) buf[k] = bf16_to_f32(src[k]);
        return buf.data();
      }
      case DType::F16: {
        buf.resize(size_t((r1 - r0) * cols));
        const uint16_t* src = w.values.data<uint16_t>() + r0 * cols;
        for (int64_t k = 0; k < (r1 - r0) * cols; ++k) buf[k] = f16_to_f32(src[k]);
        return buf.data();
      }
      default:
        break;
    }
  }
  buf.resize(size_t((r1 - r0) * cols));
  w.dequantize_rows(r0, r1, buf.data());
  return buf.data();
}

}  // namespace

void linear_rows(const float* x, int64_t n, int64_t x_stride, const QuantizedMatrix& w,
                 int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  DSQ_CHECK(row_begin >= 0 && row_begin <= row_end && row_end <= w.rows, "linear: row range [",
            row_begin, ", ", row_end, ") outside a weight of ", w.rows, " rows");
  if (n == 0 || row_begin == row_end) return;
  // A tile of about 64 KiB of f32 weights: it stays in L2 while every input row passes it.
  const int64_t tile = std::clamp<int64_t>(16384 / std::max<int64_t>(w.cols, 1), 8, 256);
  // Quantized tiles are dequantized on whole format blocks, so align tiles to them.
  const int64_t align = w.format == WeightFormat::Fp8Block ? w.group_size : 1;
  const int64_t tile_rows = std::max<int64_t>(align, tile / align * align);
  const int64_t first_tile = row_begin / tile_rows;
  const int64_t n_tiles = (row_end - 1) / tile_rows - first_tile + 1;
  parallel_for(n_tiles, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> buf;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = std::max(row_begin, (first_tile + t) * tile_rows);
      const int64_t r1 = std::min(row_end, (first_tile + t + 1) * tile_rows);
      const float* wt = weight_rows_f32(w, r0, r1, buf);
      tile_times_rows(wt, r1 - r0, w.cols, x, n, x_stride, y + (r0 - row_begin), y_stride);
    }
  });
}

}  // namespace dsq::cpu
