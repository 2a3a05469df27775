// Helpers for comparing engine logits with the HF reference files (spec §7.2–§7.4).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/tensor.h"

namespace dsq::test {

inline std::vector<int64_t> ids_of(const Tensor& t) {
  std::vector<int64_t> ids(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) ids[i] = t.get_i64(i);
  return ids;
}

inline int64_t argmax_row(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (row[i] > row[best]) best = i;
  return best;
}

// Per-position relative L2 error ‖got − ref‖ / ‖ref‖ and argmax agreement, for rows
// [0, n) of got (f32 [n, V]) against rows [ref_row0, ref_row0 + n) of ref ([1, L, V]).
// Returns the largest error seen (for reporting how far inside the bound a backend is).
// 1e-4 allows fp32 summation-order noise through 4–5 layers of mHC and Sinkhorn while a
// real defect (a wrong mask, rope pair or routing) is orders of magnitude larger.
inline double expect_logits_match(const Tensor& got, const Tensor& ref, int64_t ref_row0, const std::string& what,
                                  double tolerance = 1e-4, bool check_argmax = true) {
  const int64_t V = ref.dim(-1), n = got.dim(0);
  EXPECT_EQ(got.dim(1), V) << what;
  if (got.dim(1) != V) return INFINITY;
  double worst = 0;
  const Tensor ref32 = ref.to_f32();
  const float* g = got.data<float>();
  const float* r = ref32.data<float>() + ref_row0 * V;
  for (int64_t i = 0; i < n; ++i) {
    double diff = 0, norm = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double d = double(g[i * V + v]) - r[i * V + v];
      diff += d * d;
      norm += double(r[i * V + v]) * r[i * V + v];
    }
    const double err = std::sqrt(diff / norm);
    worst = std::max(worst, err);
    EXPECT_LE(err, tolerance) << what << ": position " << ref_row0 + i;
    if (check_argmax) {
      EXPECT_EQ(argmax_row(g + i * V, V), argmax_row(r + i * V, V)) << what << ": argmax at " << ref_row0 + i;
    }
  }
  return worst;
}

}  // namespace dsq::test
