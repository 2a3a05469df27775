// GPTQ sweep and its linear algebra (see gptq.h for the algorithm and its choices).
#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/int4_group.h"

namespace dsq::quant {

namespace {

// In-place lower Cholesky factor of the symmetric positive definite a[n x n] (lower
// triangle used). Column by column (Crout); the rows below the diagonal of a column are
// independent, so they run in parallel. Returns false if a is not positive definite.
bool cholesky_lower(std::vector<double>& a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double* rj = a.data() + j * n;
    double d = 0.0;
#pragma omp simd reduction(+ : d)
    for (int64_t k = 0; k < j; ++k) d += rj[k] * rj[k];
    d = rj[j] - d;
    if (!(d > 0.0) || !std::isfinite(d)) return false;
    const double l = std::sqrt(d);
    rj[j] = l;
    parallel_for(n - j - 1, 64, [&](int64_t b0, int64_t b1) {
      for (int64_t i = j + 1 + b0; i < j + 1 + b1; ++i) {
        double* ri = a.data() + i * n;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t k = 0; k < j; ++k) s += ri[k] * rj[k];
        ri[j] = (ri[j] - s) / l;
      }
    });
  }
  return true;
}

// U upper triangular with U^T U = H^-1, for symmetric positive definite h (f64 copy).
// With J the reversal permutation: chol(J H J) = L gives H = (J L J)(J L J)^T = R R^T,
// R upper; so H^-1 = R^-T R^-1 and U = R^-1 = J L^-1 J. One Cholesky and one triangular
// inverse instead of llm-compressor's Cholesky, inverse and second Cholesky; same U.
bool inverse_upper_factor(const std::vector<double>& h, int64_t n, std::vector<float>& u) {
  std::vector<double> a(n * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) a[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)];
  if (!cholesky_lower(a, n)) return false;
  // Column j of L^-1 (x[k] = Linv[k][j], k >= j): forward substitution, columns independent.
  u.assign(n * n, 0.0f);
  bool finite = true;
  parallel_for(n, 8, [&](int64_t j0, int64_t j1) {
    std::vector<double> x(n);
    for (int64_t j = j0; j < j1; ++j) {
      x[j] = 1.0 / a[j * n + j];
      for (int64_t i = j + 1; i < n; ++i) {
        const double* li = a.data() + i * n;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t k = j; k < i; ++k) s += li[k] * x[k];
        x[i] = -s / li[i];
      }
      for (int64_t i = j; i < n; ++i) {
        if (!std::isfinite(x[i])) finite = false;
        u[(n - 1 - i) * n + (n - 1 - j)] = float(x[i]);  // U = J Linv J
      }
    }
  });
  return finite;
}

}  // namespace

GptqResult gptq_int4(const float* w, int64_t rows, int64_t cols, const float* hessian,
                     const GptqOptions& options) {
  const int64_t group = options.group, block = options.block;
  DSQ_CHECK(cols % group == 0, "gptq: ", cols, " inputs are not a multiple of group ", group);
  const std::vector<uint16_t> scales = int4_group_scales(w, rows, cols, group);
  const int64_t groups = cols / group;

  GptqResult result;
  bool finite = true;
  for (int64_t i = 0; i < cols * cols; ++i) finite = finite && std::isfinite(hessian[i]);
  if (!finite) {  // nothing to sort or factor: RTN with the same scales
    result.cholesky_failed = true;
    result.matrix = quantize_int4_rtn(w, rows, cols, group);
    return result;
  }

  // Column order: descending diag(H), ties by index (stable), or natural order.
  std::vector<int64_t> perm(cols);
  std::iota(perm.begin(), perm.end(), 0);
  if (options.actorder)
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
      return hessian[a * cols + a] > hessian[b * cols + b];
    });

  std::vector<double> h(cols * cols);
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) h[i * cols + j] = hessian[perm[i] * cols + perm[j]];
  double diag_sum = 0.0;
  for (int64_t i = 0; i < cols; ++i) {
    double& d = h[i * cols + i];
    if (d == 0.0) {
      d = 1.0;
      ++result.dead_columns;
    }
    diag_sum += d;
  }
  const double damp = options.dampening * diag_sum / double(cols);
  for (int64_t i = 0; i < cols; ++i) h[i * cols + i] += damp;

  std::vector<float> u;
  if (!inverse_upper_factor(h, cols, u)) {
    result.cholesky_failed = true;
    u.assign(cols * cols, 0.0f);
    for (int64_t i = 0; i < cols; ++i) u[i * cols + i] = 1.0f;
  }
  h.clear();
  h.shrink_to_fit();

  std::vector<int8_t> codes(rows * cols);
  std::vector<double> row_loss(rows, 0.0);
  constexpr int64_t kChunk = 8;  // rows swept together so each U row is loaded once per chunk
  parallel_for((rows + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> wp(kChunk * cols), err(kChunk * block);
    std::vector<float> scale(kChunk * cols);  // per permuted column, the scale of its group
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      const int64_t r0 = chunk * kChunk, nr = std::min(kChunk, rows - r0);
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t j = 0; j < cols; ++j) {
          wp[r * cols + j] = w[(r0 + r) * cols + perm[j]];
          scale[r * cols + j] = bf16_to_f32(scales[(r0 + r) * groups + perm[j] / group]);
        }
      for (int64_t b1 = 0; b1 < cols; b1 += block) {
        const int64_t b2 = std::min(cols, b1 + block);
        for (int64_t i = b1; i < b2; ++i) {
          const float* ui = u.data() + i * cols;
          const float d = ui[i];
          for (int64_t r = 0; r < nr; ++r) {
            float* wr = wp.data() + r * cols;
            const float s = scale[r * cols + i];
            const int8_t q = int4_code(wr[i], s);
            codes[(r0 + r) * cols + perm[i]] = q;
            const float diff = wr[i] - int4_value(q, s);
            row_loss[r0 + r] += 0.5 * double(diff) * diff / (double(d) * d);
            const float e = diff / d;
            err[r * block + (i - b1)] = e;
            for (int64_t j = i + 1; j < b2; ++j) wr[j] -= e * ui[j];
          }
        }
        for (int64_t i = b1; i < b2; ++i) {
          const float* ui = u.data() + i * cols;
          for (int64_t r = 0; r < nr; ++r) {
            const float e = err[r * block + (i - b1)];
            float* wr = wp.data() + r * cols;
            for (int64_t j = b2; j < cols; ++j) wr[j] -= e * ui[j];
          }
        }
      }
    }
  });
  for (double l : row_loss) result.loss += l;
  result.matrix = make_int4_matrix(codes, scales, rows, cols, group);
  return result;
}

double output_error(const float* w, const QuantizedMatrix& q, const float* hessian, int64_t tokens) {
  if (tokens == 0) return 0.0;
  const int64_t rows = q.rows, cols = q.cols;
  // sum_r d_r^T H d_r, d_r = row r of (Q - W). Eight rows at a time, so each row of H is
  // read from memory once per eight rows of the weight.
  constexpr int64_t kChunk = 8;
  const int64_t chunks = (rows + kChunk - 1) / kChunk;
  std::vector<double> per_chunk(chunks, 0.0);
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> delta(kChunk * cols);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * kChunk, nr = std::min(kChunk, rows - r0);
      q.dequantize_rows(r0, r0 + nr, delta.data());
      for (int64_t i = 0; i < nr * cols; ++i) delta[i] -= w[r0 * cols + i];
      double total = 0.0;
      for (int64_t i = 0; i < cols; ++i) {
        const float* hi = hessian + i * cols;
        for (int64_t r = 0; r < nr; ++r) {
          const float* d = delta.data() + r * cols;
          if (d[i] == 0.0f) continue;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (int64_t j = 0; j < cols; ++j) s += double(hi[j]) * double(d[j]);
          total += double(d[i]) * s;
        }
      }
      per_chunk[c] = total;
    }
  });
  double sum = 0.0;
  for (double v : per_chunk) sum += v;
  return sum / double(tokens);
}

}  // namespace dsq::quant
