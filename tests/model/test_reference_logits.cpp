// The CPU engine (CpuOps) against transformers' reference logits for the tiny fixtures
// (reference_checks.h). 1e-4 allows fp32 summation-order noise through 4–5 layers of mHC
// and Sinkhorn while a real defect (a wrong mask, rope pair or routing) is orders of
// magnitude larger.
#include <gtest/gtest.h>

#include <cstdio>

#include "backend/cpu/cpu_ops.h"
#include "reference_checks.h"

namespace dsq::test {
namespace {

std::shared_ptr<backend::Ops> cpu_ops() { return std::make_shared<cpu::CpuOps>(); }

TEST(ReferenceLogits, TinyA) { std::printf("tiny-a worst relative L2 %.3g\n", check_all_paths("tiny-a", cpu_ops(), 1e-4)); }
TEST(ReferenceLogits, TinyB) { std::printf("tiny-b worst relative L2 %.3g\n", check_all_paths("tiny-b", cpu_ops(), 1e-4)); }
TEST(ReferenceLogits, TinyBrownFullAndGreedy) {
  std::printf("tiny-brown worst relative L2 %.3g\n", check_tiny_brown(cpu_ops(), 1e-4, true));
}
TEST(Batching, SequencesInOneCallMatchSeparateCalls) { check_batching(cpu_ops(), 1e-4); }

}  // namespace
}  // namespace dsq::test
