// Top-k index selection with torch's CPU tie behaviour (spec §2.9), used by the indexer
// and the router. torch builds (score, index) pairs in index order and, with comparator
// "a.score > b.score", runs std::partial_sort over the first k when k·64 <= n and
// std::nth_element at k−1 otherwise; the chosen set is the first k pairs. Calling the
// same libstdc++ algorithms on the same input reproduces its choice among exact ties.
#pragma once

#include <cstdint>
#include <vector>

namespace dsq::cpu {

// The k chosen indices (k <= n), in the order the algorithm leaves them.
std::vector<int64_t> topk_indices(const float* scores, int64_t n, int64_t k);

}  // namespace dsq::cpu
