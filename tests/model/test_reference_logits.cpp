// The CPU engine against transformers' reference logits for the tiny fixtures: the
// stateless forward, the chunked prefill and token-by-token decode through the decoding
// state, greedy continuation, and batching independence.
#include <gtest/gtest.h>

#include <numeric>

#include "formats/safetensors.h"
#include "model/model.h"
#include "reference_fixture.h"
#include "support/paths.h"

namespace dsq::model {
namespace {

using dsq::test::argmax_row;
using dsq::test::expect_logits_match;
using dsq::test::ids_of;

struct Fixture {
  Model model;
  std::shared_ptr<const SafetensorsFile> ref;
  explicit Fixture(const std::string& name)
      : model(Model::load(dsq::test::shared_path("models/" + name))),
        ref(SafetensorsFile::open(dsq::test::shared_path("models/" + name + "/reference.safetensors"))) {}
};

void check_all_paths(const std::string& name) {
  Fixture f(name);
  const std::vector<int64_t> ids = ids_of(f.ref->get("input_ids"));
  const int64_t V = f.model.config().vocab_size;

  // Stateless: one call on an empty state.
  SequenceState full = f.model.new_sequence();
  expect_logits_match(f.model.forward({{&full, ids}}), f.ref->get("logits_full"), 0, name + " logits_full");

  // Chunked prefill through the state.
  SequenceState s = f.model.new_sequence();
  int64_t begin = 0;
  Tensor last;
  for (int64_t len : ids_of(f.ref->get("chunks"))) {
    const std::span<const int64_t> chunk(ids.data() + begin, size_t(len));
    last = f.model.forward({{&s, chunk}});
    expect_logits_match(last, f.ref->get("logits_chunked"), begin, name + " logits_chunked");
    begin += len;
  }
  ASSERT_EQ(begin, int64_t(ids.size()));

  // Greedy decode, one token per step, continuing from the chunked state.
  const std::vector<int64_t> decode_ids = ids_of(f.ref->get("decode_ids"));
  const Tensor logits_decode = f.ref->get("logits_decode");
  int64_t next = argmax_row(last.data<float>() + (last.dim(0) - 1) * V, V);
  for (size_t k = 0; k < decode_ids.size(); ++k) {
    ASSERT_EQ(next, decode_ids[k]) << name << ": greedy token " << k;
    const int64_t token[] = {next};
    const Tensor step = f.model.forward({{&s, token}});
    expect_logits_match(step, logits_decode.reshaped({1, logits_decode.dim(1), V}), int64_t(k),
                        name + " logits_decode");
    next = argmax_row(step.data<float>(), V);
  }
}

TEST(ReferenceLogits, TinyA) { check_all_paths("tiny-a"); }
TEST(ReferenceLogits, TinyB) { check_all_paths("tiny-b"); }

TEST(ReferenceLogits, TinyBrownFullAndGreedy) {
  Fixture f("tiny-brown");
  const std::vector<int64_t> ids = ids_of(f.ref->get("input_ids"));
  const std::vector<int64_t> greedy = ids_of(f.ref->get("greedy_ids"));
  const int64_t V = f.model.config().vocab_size;
  SequenceState s = f.model.new_sequence();
  Tensor logits = f.model.forward({{&s, ids}});
  expect_logits_match(logits, f.ref->get("logits_full"), 0, "tiny-brown logits_full");
  ASSERT_GT(greedy.size(), ids.size());
  ASSERT_TRUE(std::equal(ids.begin(), ids.end(), greedy.begin()));
  int64_t next = argmax_row(logits.data<float>() + (logits.dim(0) - 1) * V, V);
  for (size_t k = ids.size(); k < greedy.size(); ++k) {
    ASSERT_EQ(next, greedy[k]) << "tiny-brown greedy token at " << k;
    const int64_t token[] = {next};
    logits = f.model.forward({{&s, token}});
    next = argmax_row(logits.data<float>(), V);
  }
}

// Two different sequences in one call give the same logits as each alone: the batch
// shares only the linear layers. Bit-identical is not required (GEMM tiling may group
// rows differently), so the same 1e-4 bound applies, at far tighter levels in practice.
TEST(Batching, SequencesInOneCallMatchSeparateCalls) {
  Fixture f("tiny-b");
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
  expect_logits_match(both.slice_rows(0, na), ra.reshaped({1, na, V}), 0, "batched sequence a");
  expect_logits_match(both.slice_rows(na, both.dim(0)), rb.reshaped({1, rb.dim(0), V}), 0,
                      "batched sequence b");
  // And a decode step of both together continues each state correctly.
  const int64_t ta[] = {a.back()}, tb[] = {b.back()};
  const Tensor step = f.model.forward({{&sa, ta}, {&sb, tb}}, LogitRows::Last);
  const Tensor step_a = f.model.forward({{&alone_a, ta}});
  const Tensor step_b = f.model.forward({{&alone_b, tb}});
  expect_logits_match(step.slice_rows(0, 1), step_a.reshaped({1, 1, V}), 0, "batched decode a");
  expect_logits_match(step.slice_rows(1, 2), step_b.reshaped({1, 1, V}), 0, "batched decode b");
}

}  // namespace
}  // namespace dsq::model
