// GPTQ sweep and its linear algebra (see gptq.h for the algorithm and its choices).
#include "quant/gptq.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/int4_group.h"

namespace dsq::quant {

namespace {

constexpr int64_t kPanel = 64;  // block width of the factorisation and the inverse

// In-place lower Cholesky factor of the symmetric positive definite a[n x n] (lower
// triangle used). Blocked right-looking: factor a 64-column panel, then subtract its rank-64
// product from the trailing matrix with dot products over contiguous panel rows, so the
// trailing matrix is streamed from memory once per panel instead of once per column. Rows
// are independent within each step and run in parallel (paired first/last so the triangular
// work splits evenly). Returns false if a is not positive definite.
bool cholesky_lower(std::vector<double>& a, int64_t n) {
  auto dot = [&](int64_t i, int64_t j, int64_t k0, int64_t k1) {
    const double* ri = a.data() + i * n;
    const double* rj = a.data() + j * n;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = k0; k < k1; ++k) s += ri[k] * rj[k];
    return s;
  };
  for (int64_t k0 = 0; k0 < n; k0 += kPanel) {
    const int64_t k1 = std::min(n, k0 + kPanel);
    // Diagonal block and the panel below it, column by column within the panel.
    for (int64_t j = k0; j < k1; ++j) {
      const double d = a[j * n + j] - dot(j, j, k0, j);
      if (!(d > 0.0) || !std::isfinite(d)) return false;
      const double l = std::sqrt(d);
      a[j * n + j] = l;
      parallel_for(n - j - 1, 64, [&](int64_t b0, int64_t b1) {
        for (int64_t i = j + 1 + b0; i < j + 1 + b1; ++i) a[i * n + j] = (a[i * n + j] - dot(i, j, k0, j)) / l;
      });
    }
    // Trailing update: a[i][j] -= L[i, k0:k1] . L[j, k0:k1] for k1 <= j <= i.
    const int64_t m = n - k1;
    auto update_row = [&](int64_t i) {
      for (int64_t j = k1; j <= i; ++j) a[i * n + j] -= dot(i, j, k0, k1);
    };
    parallel_for((m + 1) / 2, 4, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t lo = k1 + p, hi = n - 1 - p;
        update_row(lo);
        if (hi != lo) update_row(hi);
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
  // L^-1 by forward substitution, 64 columns at a time: X[i][c] = -(sum_k L[i][k] X[k][c]) /
  // L[i][i] below the diagonal. Each row of L is read once per column block and the inner
  // loop runs over the block's columns (contiguous, vectorisable). Blocks are independent.
  u.assign(n * n, 0.0f);
  std::atomic<bool> finite{true};
  const int64_t blocks = (n + kPanel - 1) / kPanel;
  parallel_for(blocks, 1, [&](int64_t q0, int64_t q1) {
    std::vector<double> x;
    double s[kPanel];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t j0 = q * kPanel, w = std::min(kPanel, n - j0);
      x.assign((n - j0) * kPanel, 0.0);  // rows j0..n-1 of the block's columns
      for (int64_t i = j0; i < n; ++i) {
        const double* li = a.data() + i * n;
        for (int64_t c = 0; c < kPanel; ++c) s[c] = 0.0;
        for (int64_t k = j0; k < i; ++k) {
          const double lik = li[k];
          const double* xk = x.data() + (k - j0) * kPanel;
#pragma omp simd
          for (int64_t c = 0; c < kPanel; ++c) s[c] += lik * xk[c];
        }
        double* xi = x.data() + (i - j0) * kPanel;
        for (int64_t c = 0; c < w; ++c) {
          const int64_t col = j0 + c;
          xi[c] = i < col ? 0.0 : (i == col ? 1.0 / li[i] : -s[c] / li[i]);
          if (!std::isfinite(xi[c])) finite = false;
          if (i >= col) u[(n - 1 - i) * n + (n - 1 - col)] = float(xi[c]);  // U = J Linv J
        }
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
