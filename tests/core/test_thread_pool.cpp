#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace dsq {
namespace {

TEST(ThreadPool, CoversRangeExactlyOnce) {
  set_num_threads(4);
  std::vector<std::atomic<int>> hits(1000);
  parallel_for(1000, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i]++;
  });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(ThreadPool, PropagatesErrors) {
  set_num_threads(3);
  EXPECT_THROW(parallel_for(100, 1, [&](int64_t b, int64_t) {
                 if (b > 0) throw error("boom");
               }),
               Error);
  // The pool still works afterwards, and nested calls run inline.
  std::atomic<int> total{0};
  parallel_for(10, 1, [&](int64_t b, int64_t e) {
    parallel_for(e - b, 1, [&](int64_t b2, int64_t e2) { total += int(e2 - b2); });
  });
  EXPECT_EQ(total.load(), 10);
}

TEST(ThreadPool, ResizingAfterUseStartsWorkersOnTheCurrentJob) {
  // Workers created after earlier jobs ran must not replay a finished job.
  for (int threads : {2, 4, 3, 1, 2}) {
    set_num_threads(threads);
    std::atomic<int64_t> sum{0};
    parallel_for(64, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sum += i;
    });
    EXPECT_EQ(sum.load(), 64 * 63 / 2) << threads << " threads";
  }
}

}  // namespace
}  // namespace dsq
