#include "backend/cpu/topk.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.h"

namespace dsq::cpu {

std::vector<int64_t> topk_indices(const float* scores, int64_t n, int64_t k) {
  DSQ_CHECK(k >= 0 && k <= n, "topk: k = ", k, " outside [0, ", n, "]");
  std::vector<int64_t> chosen;
  if (k == 0) return chosen;
  std::vector<std::pair<float, int64_t>> queue(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) queue[i] = {scores[i], i};
  // torch's "largest" comparator: NaN sorts first, then larger scores.
  auto larger = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return (std::isnan(a.first) && !std::isnan(b.first)) || (a.first > b.first);
  };
  if (k * 64 <= n) {
    std::partial_sort(queue.begin(), queue.begin() + k, queue.end(), larger);
  } else {
    std::nth_element(queue.begin(), queue.begin() + (k - 1), queue.end(), larger);
  }
  chosen.reserve(size_t(k));
  for (int64_t i = 0; i < k; ++i) chosen.push_back(queue[i].second);
  return chosen;
}

}  // namespace dsq::cpu
