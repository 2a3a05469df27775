// The transformers-reference checks of a whole model, for any backend: the stateless
// forward, the chunked prefill and token-by-token decode through the decoding state,
// greedy continuation, and batching independence. The CPU test runs them on CpuOps; the
// GPU test (tests/backend_cuda) on CudaOps. Each returns the worst per-position relative
// L2 error it saw, which the tests print.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "formats/safetensors.h"
#include "model/model.h"
#include "reference_fixture.h"
#include "support/paths.h"

namespace dsq::test {

// The fixture's weights and its reference logits. tiny-brown's weights are read from the
// project's embedded copy (models/tiny-brown, byte-identical to ../shared's), so the GPU
// machine needs only the reference file from ../shared.
struct ReferenceFixture {
  model::Model model;
  std::shared_ptr<const SafetensorsFile> ref;
  ReferenceFixture(const std::string& name, std::shared_ptr<backend::Ops> ops)
      : model(model::Model::load(
            name == "tiny-brown" ? project_path("models/tiny-brown") : shared_path("models/" + name), std::move(ops))),
        ref(SafetensorsFile::open(shared_path("models/" + name + "/reference.safetensors"))) {}
};

// logits_full, logits_chunked and the greedy logits_decode of fixture `name`.
inline double check_all_paths(const std::string& name, std::shared_ptr<backend::Ops> ops, double tolerance) {
  using model::SequenceState;
  ReferenceFixture f(name, std::move(ops));
  const std::vector<int64_t> ids = ids_of(f.ref->get("input_ids"));
  const int64_t V = f.model.config().vocab_size;
  double worst = 0;

  // Stateless: one call on an empty state.
  SequenceState full = f.model.new_sequence();
  worst = std::max(worst, expect_logits_match(f.model.forward({{&full, ids}}), f.ref->get("logits_full"), 0,
                                              name + " logits_full", tolerance));

  // Chunked prefill through the state.
  SequenceState s = f.model.new_sequence();
  int64_t begin = 0;
  Tensor last;
  for (int64_t len : ids_of(f.ref->get("chunks"))) {
    const std::span<const int64_t> chunk(ids.data() + begin, size_t(len));
    last = f.model.forward({{&s, chunk}});
    worst = std::max(worst, expect_logits_match(last, f.ref->get("logits_chunked"), begin,
                                                name + " logits_chunked", tolerance));
    begin += len;
  }
  EXPECT_EQ(begin, int64_t(ids.size()));

  // Greedy decode, one token per step, continuing from the chunked state.
  const std::vector<int64_t> decode_ids = ids_of(f.ref->get("decode_ids"));
  const Tensor logits_decode = f.ref->get("logits_decode");
  int64_t next = argmax_row(last.data<float>() + (last.dim(0) - 1) * V, V);
  for (size_t k = 0; k < decode_ids.size(); ++k) {
    EXPECT_EQ(next, decode_ids[k]) << name << ": greedy token " << k;
    if (next != decode_ids[k]) break;
    const int64_t token[] = {next};
    const Tensor step = f.model.forward({{&s, token}});
    worst = std::max(worst, expect_logits_match(step, logits_decode.reshaped({1, logits_decode.dim(1), V}),
                                                int64_t(k), name + " logits_decode", tolerance));
    next = argmax_row(step.data<float>(), V);
  }
  return worst;
}

// tiny-brown: logits_full, then (when check_greedy) the greedy continuation greedy_ids.
inline double check_tiny_brown(std::shared_ptr<backend::Ops> ops, double tolerance, bool check_greedy) {
  ReferenceFixture f("tiny-brown", std::move(ops));
  const std::vector<int64_t> ids = ids_of(f.ref->get("input_ids"));
  const std::vector<int64_t> greedy = ids_of(f.ref->get("greedy_ids"));
  const int64_t V = f.model.config().vocab_size;
  model::SequenceState s = f.model.new_sequence();
  Tensor logits = f.model.forward({{&s, ids}});
  const double worst =
      expect_logits_match(logits, f.ref->get("logits_full"), 0, "tiny-brown logits_full", tolerance, check_greedy);
  if (!check_greedy) return worst;
  EXPECT_GT(greedy.size(), ids.size());
  EXPECT_TRUE(std::equal(ids.begin(), ids.end(), greedy.begin()));
  int64_t next = argmax_row(logits.data<float>() + (logits.dim(0) - 1) * V, V);
  for (size_t k = ids.size(); k < greedy.size(); ++k) {
    EXPECT_EQ(next, greedy[k]) << "tiny-brown greedy token at " << k;
    if (next != greedy[k]) break;
    const int64_t token[] = {next};
    logits = f.model.forward({{&s, token}});
    next = argmax_row(logits.data<float>(), V);
  }
  return worst;
}

// Two different sequences in one call give the same logits as each alone: the batch
// shares only the linear layers. Bit-identical is not required (GEMM tiling may group
// rows differently), so the caller's bound applies.
inline void check_batching(std::shared_ptr<backend::Ops> ops, double tolerance) {
  using model::LogitRows;
  using model::SequenceState;
  ReferenceFixture f("tiny-b", std::move(ops));
  const std::vector<int64_t> ids = ids_of(f.ref->get("input_ids"));
  const std::vector<int64_t> a(ids.begin(), ids.end());
  std::vector<int64_t> b(ids.rbegin(), ids.rend());
  b.resize(b.size() * 2 / 3);
  SequenceState sa = f.model.new_sequence(), sb = f.model.new_sequence();
  const Tensor both = f.model.forward({{&sa, a}, {&sb, b}});
  SequenceState alone_a = f.model.new_sequence(), alone_b = f.model.new_sequence();
  const Tensor ra = f.model.forward({{&alone_a, a}});
  const Tensor rb = f.model.forward({{&alone_b, b}});
  const int64_t V = f.model.config().vocab_size, na = int64_t(a.size());
  expect_logits_match(both.slice_rows(0, na), ra.reshaped({1, na, V}), 0, "batched sequence a", tolerance);
  expect_logits_match(both.slice_rows(na, both.dim(0)), rb.reshaped({1, rb.dim(0), V}), 0, "batched sequence b",
                      tolerance);
  // And decode steps of both together (one decode_attention call per layer, whose window
  // updates the next step reads) continue each state correctly.
  for (size_t k = 0; k < 3; ++k) {
    const int64_t ta[] = {a[a.size() - 1 - k]}, tb[] = {b[b.size() - 1 - k]};
    const Tensor step = f.model.forward({{&sa, ta}, {&sb, tb}}, LogitRows::Last);
    const Tensor step_a = f.model.forward({{&alone_a, ta}});
    const Tensor step_b = f.model.forward({{&alone_b, tb}});
    const std::string at = " (step " + std::to_string(k) + ")";
    expect_logits_match(step.slice_rows(0, 1), step_a.reshaped({1, 1, V}), 0, "batched decode a" + at, tolerance);
    expect_logits_match(step.slice_rows(1, 2), step_b.reshaped({1, 1, V}), 0, "batched decode b" + at, tolerance);
  }
}

}  // namespace dsq::test
