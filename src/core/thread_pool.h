// A process-wide pool of worker threads and parallel_for over an index range.
//
// CPU ops split their outer loop with parallel_for; the pool size comes from
// --threads (default: hardware concurrency). Work is split into contiguous chunks so
// each thread touches a contiguous slice of the output (no false sharing, deterministic
// per-element results whatever the thread count).
#pragma once

#include <cstdint>
#include <functional>

namespace dsq {

// Sets the number of threads used by parallel_for (>= 1). Not thread-safe against
// concurrent parallel_for calls; call it at start-up.
void set_num_threads(int n);
int num_threads();

// Calls fn(begin, end) on disjoint sub-ranges covering [0, n). Ranges are at least
// `grain` long (except the last). Runs inline when the pool has one thread or n is small.
// Nested calls run inline. Exceptions from fn are rethrown in the caller.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace dsq
