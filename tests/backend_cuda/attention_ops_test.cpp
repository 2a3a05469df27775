// CudaOps' attention-state ops (compress, indexer_scores, indexer_topk, sink_attention,
// update_window, store_rings, decode_attention) against CpuOps on random inputs, table-driven, at the
// tiny fixtures' shapes (head dim 32, 4 heads, rope 8, window 8, CSA m = 4, HCA m = 16,
// indexer 16 × 16, top-4) and at DeepSeek-V4-Flash's (head dim 512, 64 heads, rope 64
// with YaRN, window 128, CSA m = 4, HCA m = 128, indexer 64 × 128, top-512) up to
// 64k-token contexts.
//
// Tolerances. Everything is fp32 on both sides; the GPU sums in a different order (tree
// reductions, tiled dot products, an online softmax split over blocks) and its expf /
// cosf / sinf differ from glibc's by an ulp or two. Each output element therefore
// differs by a few ulp relative to its magnitude, a relative L2 error of ~1e-6; the
// bound is 1e-5. Pure copies (the rings) and index sets (top-k) must match exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/rope.h"
#include "backend_cuda/op_check.h"

namespace dsq::test {
namespace {

using backend::EntrySelection;

constexpr double kTolerance = 1e-5;  // relative L2, see the header comment

class AttentionOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSQ_REQUIRE_GPU();
    gpu_ = std::make_unique<cuda::CudaOps>(cuda::Precision::F32);
  }
  cpu::CpuOps cpu_;
  std::unique_ptr<cuda::CudaOps> gpu_;
};

float* device_floats(Tensor& t) { return t.mutable_data<float>(); }
int64_t* device_ints(Tensor& t) { return t.mutable_data<int64_t>(); }

cpu::RopeFrequencies compress_rope(int64_t rope_dim, bool yarn) {
  cpu::YarnScaling scaling{16.0, 65536, 32.0, 1.0};  // V4-Flash's compress table (spec §1.4)
  return cpu::rope_frequencies(rope_dim, 160000.0, yarn ? &scaling : nullptr);
}

std::vector<float> rows_of(const std::vector<float>& v, int64_t begin, int64_t end, int64_t width) {
  return std::vector<float>(v.begin() + begin * width, v.begin() + end * width);
}

// ---- compress: a sequence of calls from position 0, state carried between them ----

struct CompressCase {
  std::string name;
  int64_t width, rate;
  bool overlap;
  int64_t rope_dim;
  bool yarn;
  std::vector<int64_t> chunks;  // S of each call
};

const std::vector<CompressCase> kCompressCases = {
    // Calls close windows at their last row (S = 1 at p0 = 3, S = 4 at p0 = 4), in the
    // middle, several per call, and none.
    {"tiny CSA", 32, 4, true, 8, false, {1, 2, 1, 4, 13, 3, 1, 7}},
    {"tiny HCA", 32, 16, false, 8, false, {5, 11, 1, 40, 15, 1}},
    {"tiny indexer", 16, 4, true, 8, false, {9, 1, 2}},
    {"V4 CSA", 512, 4, true, 64, true, {8190, 1, 1, 37}},
    {"V4 HCA", 512, 128, false, 64, true, {8190, 1, 1, 300}},
    {"V4 indexer", 128, 4, true, 64, true, {1000, 3, 1}},
};

// One compressor's weights. CudaOps keeps device copies of them keyed by host address,
// so every case's weights live as long as the ops object (as a model's do).
struct CompressorWeights {
  std::vector<float> ape, norm;
  cpu::RopeFrequencies rope;
};

TEST_F(AttentionOpsTest, CompressMatchesCpu) {
  std::vector<CompressorWeights> weights;
  weights.reserve(kCompressCases.size());
  for (const CompressCase& c : kCompressCases) {
    SCOPED_TRACE(c.name);
    std::mt19937 rng(7);
    const int64_t raw = c.overlap ? 2 * c.width : c.width, ring_rows = 2 * c.rate;
    const int64_t total = std::accumulate(c.chunks.begin(), c.chunks.end(), int64_t(0));
    const int64_t capacity = total / c.rate;
    CompressorWeights& w = weights.emplace_back();
    w.ape = random_floats(size_t(c.rate * raw), rng, 0.5f);
    w.norm = random_floats(size_t(c.width), rng, 0.1f);
    for (float& x : w.norm) x += 1.0f;
    w.rope = compress_rope(c.rope_dim, c.yarn);
    const backend::CompressorParams params{&w.ape, &w.norm, c.rate, c.width, c.overlap, 1e-6f, &w.rope};

    std::vector<float> cpu_ring_kv(size_t(ring_rows * raw)), cpu_ring_gate(cpu_ring_kv.size());
    std::vector<float> cpu_entries(size_t(capacity * c.width), std::nanf(""));
    Tensor ring_kv = gpu_->alloc(DType::F32, {ring_rows, raw}), ring_gate = gpu_->alloc(DType::F32, {ring_rows, raw});
    Tensor entries = poisoned_gpu(*gpu_, capacity * c.width);
    int64_t p0 = 0;
    for (int64_t S : c.chunks) {
      SCOPED_TRACE("p0 = " + std::to_string(p0) + ", S = " + std::to_string(S));
      const std::vector<float> kv = random_floats(size_t(S * raw), rng), gate = random_floats(size_t(S * raw), rng);
      cpu_.compress(params, cpu_ring_kv.data(), cpu_ring_gate.data(), cpu_entries.data(), kv.data(), gate.data(), p0,
                    S);
      Tensor gpu_kv = on_gpu(*gpu_, kv), gpu_gate = on_gpu(*gpu_, gate);
      gpu_->compress(params, device_floats(ring_kv), device_floats(ring_gate), device_floats(entries),
                     gpu_kv.data<float>(), gpu_gate.data<float>(), p0, S);
      p0 += S;
      const int64_t closed = p0 / c.rate;
      const std::vector<float> got = floats_of(*gpu_, entries);
      expect_close(rows_of(got, 0, closed, c.width), rows_of(cpu_entries, 0, closed, c.width), kTolerance,
                   "entries");
      const std::vector<float> untouched = rows_of(got, closed, capacity, c.width);
      EXPECT_TRUE(std::all_of(untouched.begin(), untouched.end(), [](float v) { return std::isnan(v); }))
          << "entries past the closed windows were written";
      EXPECT_EQ(floats_of(*gpu_, ring_kv), cpu_ring_kv) << "kv ring";
      EXPECT_EQ(floats_of(*gpu_, ring_gate), cpu_ring_gate) << "gate ring";
    }
  }
}

// ---- indexer_scores ----

struct ScoresCase {
  std::string name;
  int64_t S, heads, head_dim, n_keys;
};

const std::vector<ScoresCase> kScoresCases = {
    {"tiny one key", 1, 16, 16, 1},
    {"tiny decode", 1, 16, 16, 5},
    {"tiny prefill", 13, 16, 16, 70},
    {"V4 decode 8k", 1, 64, 128, 2048},
    {"V4 decode 64k", 1, 64, 128, 16384},
    {"V4 4 queries 64k", 4, 64, 128, 16384},
    {"V4 prefill", 64, 64, 128, 300},
    {"more queries than one grid row holds", 70000, 16, 16, 3},
};

TEST_F(AttentionOpsTest, IndexerScoresMatchCpu) {
  for (const ScoresCase& c : kScoresCases) {
    SCOPED_TRACE(c.name);
    std::mt19937 rng(11);
    const std::vector<float> q = random_floats(size_t(c.S * c.heads * c.head_dim), rng);
    const std::vector<float> w = random_floats(size_t(c.S * c.heads), rng);
    const std::vector<float> keys = random_floats(size_t(c.n_keys * c.head_dim), rng);
    std::vector<float> want(size_t(c.S * c.n_keys));
    cpu_.indexer_scores(q.data(), w.data(), c.S, c.heads, c.head_dim, keys.data(), c.n_keys, want.data());
    Tensor gq = on_gpu(*gpu_, q), gw = on_gpu(*gpu_, w), gk = on_gpu(*gpu_, keys);
    Tensor got = poisoned_gpu(*gpu_, c.S * c.n_keys);
    gpu_->indexer_scores(gq.data<float>(), gw.data<float>(), c.S, c.heads, c.head_dim, gk.data<float>(), c.n_keys,
                         device_floats(got));
    expect_close(floats_of(*gpu_, got), want, kTolerance, "scores");
  }
}

// ---- indexer_topk ----

struct TopkCase {
  std::string name;
  int64_t S, n_keys, topk, p0, rate;
  bool ties;  // scores from a few integer values: many exact ties at the boundary
};

const std::vector<TopkCase> kTopkCases = {
    {"tiny decode", 1, 5, 4, 23, 4, false},
    {"tiny prefill, later entries invisible", 12, 5, 4, 8, 4, false},
    {"topk above the entry count", 1, 3, 4, 11, 4, false},
    {"V4 decode 8k", 1, 2048, 512, 8191, 4, false},
    {"V4 decode 64k", 1, 16384, 512, 65535, 4, false},
    {"V4 16 queries 64k", 16, 16384, 512, 65520, 4, false},
    {"V4 decode 120k (row read from global memory)", 1, 30000, 512, 119999, 4, false},
    {"V4 topk above the visible entries", 8, 600, 512, 1990, 4, false},
    {"V4 early prefill", 32, 40, 512, 100, 4, false},
    {"tiny ties", 6, 20, 4, 60, 4, true},
    {"V4 ties 8k", 4, 2048, 512, 8180, 4, true},
    {"V4 ties 64k", 1, 16384, 512, 65535, 4, true},
    {"V4 ties 120k", 1, 30000, 512, 119999, 4, true},
};

TEST_F(AttentionOpsTest, IndexerTopkMatchesCpu) {
  for (const TopkCase& c : kTopkCases) {
    SCOPED_TRACE(c.name);
    std::mt19937 rng(13);
    std::vector<float> scores = random_floats(size_t(c.S * c.n_keys), rng);
    if (c.ties)
      for (float& s : scores) s = std::floor(4.0f * s);
    const std::vector<float> original = scores;
    std::vector<int64_t> want(size_t(c.S * c.topk));
    cpu_.indexer_topk(scores.data(), c.S, c.n_keys, c.topk, c.p0, c.rate, want.data());
    Tensor gscores = on_gpu(*gpu_, original);
    Tensor gsel = on_gpu(*gpu_, std::vector<int64_t>(size_t(c.S * c.topk), -7));  // −7: never written
    gpu_->indexer_topk(device_floats(gscores), c.S, c.n_keys, c.topk, c.p0, c.rate, device_ints(gsel));
    const std::vector<int64_t> got = ints_of(*gpu_, gsel);
    for (int64_t i = 0; i < c.S; ++i) {
      SCOPED_TRACE("query " + std::to_string(i));
      std::vector<int64_t> g(got.begin() + i * c.topk, got.begin() + (i + 1) * c.topk);
      std::vector<int64_t> w(want.begin() + i * c.topk, want.begin() + (i + 1) * c.topk);
      std::sort(g.begin(), g.end());
      std::sort(w.begin(), w.end());
      const int64_t visible = std::min(c.n_keys, (c.p0 + i + 1) / c.rate);
      ASSERT_TRUE(std::adjacent_find(g.begin(), g.end(), [](int64_t a, int64_t b) { return a == b && a >= 0; }) ==
                  g.end())
          << "an entry picked twice";
      ASSERT_TRUE(std::all_of(g.begin(), g.end(), [&](int64_t s) { return s == -1 || (s >= 0 && s < visible); }))
          << "a pick outside [0, " << visible << ") that is not −1";
      if (!c.ties) {
        EXPECT_EQ(g, w);
      } else {
        // Exact ties may resolve to other indices: the picked scores must be the same.
        auto picked_scores = [&](const std::vector<int64_t>& picks) {
          std::vector<float> v;
          for (int64_t s : picks) v.push_back(s < 0 ? -INFINITY : original[size_t(i * c.n_keys + s)]);
          std::sort(v.begin(), v.end());
          return v;
        };
        EXPECT_EQ(picked_scores(g), picked_scores(w));
      }
    }
  }
}

// ---- sink_attention ----

struct AttentionCase {
  std::string name;
  int64_t heads, dim, window;
  EntrySelection selection;
  int64_t rate, topk;
  int64_t p0, S;
};

constexpr auto kNone = EntrySelection::None;
constexpr auto kAll = EntrySelection::AllVisible;
constexpr auto kSel = EntrySelection::Selected;

const std::vector<AttentionCase> kAttentionCases = {
    {"tiny sliding first token", 4, 32, 8, kNone, 0, 0, 0, 1},
    {"tiny sliding prefill past the window", 4, 32, 8, kNone, 0, 0, 0, 20},
    {"tiny sliding ring partly filled", 4, 32, 8, kNone, 0, 0, 5, 1},
    {"tiny sliding decode", 4, 32, 8, kNone, 0, 0, 30, 1},
    {"tiny sliding chunk", 4, 32, 8, kNone, 0, 0, 30, 11},
    {"tiny HCA decode", 4, 32, 8, kAll, 16, 0, 40, 1},
    {"tiny HCA prefill", 4, 32, 8, kAll, 16, 0, 0, 50},
    {"tiny HCA decode closing a window", 4, 32, 8, kAll, 16, 0, 47, 1},
    {"tiny HCA chunk", 4, 32, 8, kAll, 16, 0, 10, 30},
    {"tiny HCA decode split over blocks", 4, 32, 8, kAll, 4, 0, 400, 1},
    {"tiny CSA prefill", 4, 32, 8, kSel, 4, 4, 0, 12},
    {"tiny CSA decode", 4, 32, 8, kSel, 4, 4, 30, 1},
    {"tiny CSA chunk", 4, 32, 8, kSel, 4, 4, 30, 9},
    {"tiny CSA topk above visible", 4, 32, 8, kSel, 4, 4, 3, 1},
    {"V4 sliding first token", 64, 512, 128, kNone, 0, 0, 0, 1},
    {"V4 sliding decode 8k", 64, 512, 128, kNone, 0, 0, 8191, 1},
    {"V4 sliding prefill", 64, 512, 128, kNone, 0, 0, 100, 40},
    {"V4 HCA decode 8k", 64, 512, 128, kAll, 128, 0, 8191, 1},
    {"V4 HCA decode 64k", 64, 512, 128, kAll, 128, 0, 65535, 1},
    {"V4 HCA prefill", 64, 512, 128, kAll, 128, 0, 1000, 300},
    {"V4 CSA decode 8k", 64, 512, 128, kSel, 4, 512, 8191, 1},
    {"V4 CSA decode 64k", 64, 512, 128, kSel, 4, 512, 65535, 1},
    {"V4 CSA 4 tokens 64k", 64, 512, 128, kSel, 4, 512, 65532, 4},
    {"V4 CSA prefill topk above visible", 64, 512, 128, kSel, 4, 512, 1000, 64},
};

// A window ring of `ring_rows` rows of D before position p0: random keys in the rows of
// positions max(0, p0 − ring_rows) … p0 − 1, NaN in the rows that hold no valid position
// (reading one fails the comparison).
std::vector<float> random_window_ring(int64_t p0, int64_t ring_rows, int64_t D, std::mt19937& rng) {
  std::vector<float> ring(size_t(ring_rows * D), std::nanf(""));
  for (int64_t u = std::max<int64_t>(0, p0 - ring_rows); u < p0; ++u) {
    const std::vector<float> row = random_floats(size_t(D), rng);
    std::copy(row.begin(), row.end(), ring.begin() + (u % ring_rows) * D);
  }
  return ring;
}

// The indexer's picks for query i: min(topk, visible) distinct visible entries at random
// slots, the other slots −1.
std::vector<int64_t> random_selection(const AttentionCase& c, int64_t n_entries, std::mt19937& rng) {
  std::vector<int64_t> selected(size_t(c.S * c.topk), -1);
  for (int64_t i = 0; i < c.S; ++i) {
    const int64_t visible = std::min(n_entries, (c.p0 + i + 1) / c.rate);
    std::vector<int64_t> pool(static_cast<size_t>(visible));
    std::iota(pool.begin(), pool.end(), int64_t(0));
    std::shuffle(pool.begin(), pool.end(), rng);
    pool.resize(size_t(std::min(c.topk, visible)));
    pool.resize(size_t(c.topk), -1);
    std::shuffle(pool.begin(), pool.end(), rng);
    std::copy(pool.begin(), pool.end(), selected.begin() + i * c.topk);
  }
  return selected;
}

// Every case without and with the output's inverse rope: the V4 model's 64 dims, and 6 at
// head dim 32 so that a float4 column of the combine kernel straddles the rotated part's
// start. Both output paths are covered: the V4 decodes, the 4-token chunk and "tiny HCA
// decode split over blocks" split their keys over blocks (the combine kernel writes the
// output), the prefills and the other tiny cases do not (the attention kernel does).
TEST_F(AttentionOpsTest, SinkAttentionMatchesCpu) {
  for (const AttentionCase& c : kAttentionCases)
    for (bool rotated : {false, true}) {
      SCOPED_TRACE(c.name + (rotated ? ", output rope" : ""));
      const cpu::RopeFrequencies rope = cpu::rope_frequencies(c.dim == 32 ? 6 : 64, 10000.0);
      const cpu::RopeFrequencies* output_rope = rotated ? &rope : nullptr;
      std::mt19937 rng(17);
      const int64_t D = c.dim, ring_rows = c.window - 1;
      const int64_t n_entries = c.selection == kNone ? 0 : (c.p0 + c.S) / c.rate;
      const std::vector<float> q = random_floats(size_t(c.S * c.heads * D), rng);
      const std::vector<float> new_keys = random_floats(size_t(c.S * D), rng);
      const std::vector<float> ring = random_window_ring(c.p0, ring_rows, D, rng);
      const std::vector<float> entries = random_floats(size_t(std::max<int64_t>(n_entries, 1) * D), rng);
      const std::vector<int64_t> selected =
          c.selection == kSel ? random_selection(c, n_entries, rng) : std::vector<int64_t>{-1};
      const std::vector<float> sinks = random_floats(size_t(c.heads), rng);
      const float scale = 1.0f / std::sqrt(float(D));

      std::vector<float> want(size_t(c.S * c.heads * D));
      cpu_.sink_attention(q.data(), c.S, c.heads, D, new_keys.data(), ring.data(), c.p0, c.window, c.selection,
                          entries.data(), n_entries, c.rate, selected.data(), c.topk, sinks.data(), scale, output_rope,
                          want.data());
      Tensor gq = on_gpu(*gpu_, q), gnew = on_gpu(*gpu_, new_keys), gring = on_gpu(*gpu_, ring);
      Tensor gentries = on_gpu(*gpu_, entries), gsel = on_gpu(*gpu_, selected), gsinks = on_gpu(*gpu_, sinks);
      Tensor got = poisoned_gpu(*gpu_, c.S * c.heads * D);
      gpu_->sink_attention(gq.data<float>(), c.S, c.heads, D, gnew.data<float>(), gring.data<float>(), c.p0, c.window,
                           c.selection, gentries.data<float>(), n_entries, c.rate, gsel.data<int64_t>(), c.topk,
                           gsinks.data<float>(), scale, output_rope, device_floats(got));
      expect_close(floats_of(*gpu_, got), want, kTolerance, "attention output");
    }
}

// ---- decode_attention: several sequences of one token each ----

struct DecodeBatchCase {
  std::string name;
  int64_t heads, dim, window;
  EntrySelection selection;
  int64_t rate, topk;
  std::vector<int64_t> positions;  // p0 of each sequence
};

// Sequences at positions before, at and past the window's fill and across entry counts;
// 33 sequences take two launches of the batched kernels (32 per launch).
std::vector<int64_t> spread_positions(int64_t n, int64_t first, int64_t step) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t b = 0; b < n; ++b) p[size_t(b)] = first + b * step;
  return p;
}

const std::vector<DecodeBatchCase> kDecodeBatchCases = {
    {"tiny sliding", 4, 32, 8, kNone, 0, 0, {0, 3, 7, 30, 8}},
    {"tiny HCA", 4, 32, 8, kAll, 16, 0, {40, 2, 47, 15, 100}},
    {"tiny CSA", 4, 32, 8, kSel, 4, 4, {30, 3, 11, 64, 7}},
    {"tiny CSA, 33 sequences", 4, 32, 8, kSel, 4, 4, spread_positions(33, 1, 5)},
    {"V4 sliding", 64, 512, 128, kNone, 0, 0, {8191, 5, 300}},
    {"V4 HCA", 64, 512, 128, kAll, 128, 0, {8191, 127, 4000, 20000, 100, 8300, 64, 1000}},
    {"V4 CSA", 64, 512, 128, kSel, 4, 512, {8191, 10, 3000, 700, 8000, 2047, 130, 4095}},
};

TEST_F(AttentionOpsTest, DecodeAttentionMatchesCpu) {
  for (const DecodeBatchCase& c : kDecodeBatchCases)
    for (bool rotated : {false, true}) {
      SCOPED_TRACE(c.name + (rotated ? ", output rope" : ""));
      const cpu::RopeFrequencies rope = cpu::rope_frequencies(c.dim == 32 ? 6 : 64, 10000.0);
      const cpu::RopeFrequencies* output_rope = rotated ? &rope : nullptr;
      std::mt19937 rng(29);
      const int64_t D = c.dim, ring_rows = c.window - 1, n = int64_t(c.positions.size());
      const std::vector<float> q = random_floats(size_t(n * c.heads * D), rng);
      const std::vector<float> new_keys = random_floats(size_t(n * D), rng);
      const std::vector<float> sinks = random_floats(size_t(c.heads), rng);
      const float scale = 1.0f / std::sqrt(float(D));
      // Per sequence: a ring (NaN where no valid position is), entries with 5 rows past
      // the valid ones, and picks; host copies for the CPU, device copies for the GPU.
      std::vector<std::vector<float>> rings, entries;
      std::vector<std::vector<int64_t>> picks;
      std::vector<Tensor> gpu_rings, gpu_entries, gpu_picks;
      std::vector<backend::DecodeSequence> cpu_seqs, gpu_seqs;
      for (int64_t b = 0; b < n; ++b) {
        const int64_t p0 = c.positions[size_t(b)];
        const std::vector<float>& ring = rings.emplace_back(random_window_ring(p0, ring_rows, D, rng));
        const int64_t n_valid = c.selection == kNone ? 0 : (p0 + 1) / c.rate;
        const int64_t n_rows = c.selection == kNone ? 0 : n_valid + 5;
        entries.push_back(random_floats(size_t(std::max<int64_t>(n_rows, 1) * D), rng));
        const AttentionCase as_case{c.name, c.heads, D, c.window, c.selection, c.rate, c.topk, p0, 1};
        picks.push_back(c.selection == kSel ? random_selection(as_case, n_valid, rng) : std::vector<int64_t>{-1});
        gpu_rings.push_back(on_gpu(*gpu_, ring));
        gpu_entries.push_back(on_gpu(*gpu_, entries.back()));
        gpu_picks.push_back(on_gpu(*gpu_, picks.back()));
      }
      for (int64_t b = 0; b < n; ++b) {
        const int64_t p0 = c.positions[size_t(b)];
        const int64_t n_rows = c.selection == kNone ? 0 : (p0 + 1) / c.rate + 5;
        cpu_seqs.push_back({rings[size_t(b)].data(), entries[size_t(b)].data(), n_rows, picks[size_t(b)].data(), p0});
        gpu_seqs.push_back({device_floats(gpu_rings[size_t(b)]), gpu_entries[size_t(b)].data<float>(), n_rows,
                            gpu_picks[size_t(b)].data<int64_t>(), p0});
      }
      std::vector<float> want(size_t(n * c.heads * D));
      cpu_.decode_attention(q.data(), n, cpu_seqs.data(), c.heads, D, new_keys.data(), c.window, c.selection, c.rate,
                            c.topk, sinks.data(), scale, output_rope, want.data());
      Tensor gq = on_gpu(*gpu_, q), gkeys = on_gpu(*gpu_, new_keys), gsinks = on_gpu(*gpu_, sinks);
      Tensor got = poisoned_gpu(*gpu_, n * c.heads * D);
      gpu_->decode_attention(gq.data<float>(), n, gpu_seqs.data(), c.heads, D, gkeys.data<float>(), c.window,
                             c.selection, c.rate, c.topk, gsinks.data<float>(), scale, output_rope,
                             device_floats(got));
      expect_close(floats_of(*gpu_, got), want, kTolerance, "attention output");
      for (int64_t b = 0; b < n; ++b) {
        // NaN rows (never valid) must stay NaN on both sides; compare bitwise.
        const std::vector<float> ring = floats_of(*gpu_, gpu_rings[size_t(b)]);
        EXPECT_EQ(0, std::memcmp(ring.data(), rings[size_t(b)].data(), ring.size() * sizeof(float)))
            << "ring of sequence " << b;
      }
    }
}

// ---- update_window, alone and in a decode loop with sink_attention ----

struct WindowCase {
  std::string name;
  int64_t window, dim, p0, S;
};

const std::vector<WindowCase> kWindowCases = {
    {"tiny first token", 8, 32, 0, 1},     {"tiny partly filled", 8, 32, 5, 3},
    {"tiny S past the window", 8, 32, 3, 20}, {"tiny wrap", 8, 32, 13, 3},
    {"V4 decode", 128, 512, 8191, 1},     {"V4 prefill", 128, 512, 100, 300},
};

TEST_F(AttentionOpsTest, UpdateWindowMatchesCpu) {
  for (const WindowCase& c : kWindowCases) {
    SCOPED_TRACE(c.name);
    std::mt19937 rng(19);
    std::vector<float> ring = random_floats(size_t((c.window - 1) * c.dim), rng);
    const std::vector<float> keys = random_floats(size_t(c.S * c.dim), rng);
    Tensor gring = on_gpu(*gpu_, ring), gkeys = on_gpu(*gpu_, keys);
    cpu_.update_window(ring.data(), keys.data(), c.p0, c.S, c.dim, c.window);
    gpu_->update_window(device_floats(gring), gkeys.data<float>(), c.p0, c.S, c.dim, c.window);
    EXPECT_EQ(floats_of(*gpu_, gring), ring);
  }
}

// One store_rings call over rings of different widths and lengths: a decode step's window
// and two compressors' rings, rows past a ring's length, a wrap, an empty store, and more
// stores than one launch takes.
TEST_F(AttentionOpsTest, StoreRingsMatchesCpu) {
  struct Ring {
    int64_t width, ring_rows, p0, S;
  };
  const std::vector<Ring> rings = {
      {512, 127, 8191, 1}, {1024, 8, 8190, 1}, {1024, 8, 8190, 1}, {256, 8, 8190, 1}, {256, 8, 8190, 1},
      {32, 7, 3, 20},      {16, 256, 250, 9},  {48, 5, 0, 0},      {512, 256, 8000, 1}, {8, 3, 11, 3},
  };
  std::mt19937 rng(29);
  std::vector<std::vector<float>> cpu_rings, rows;
  std::vector<Tensor> gpu_rings, gpu_rows;
  std::vector<backend::RingStore> cpu_stores, gpu_stores;
  for (const Ring& r : rings) {
    cpu_rings.push_back(random_floats(size_t(r.ring_rows * r.width), rng));
    rows.push_back(random_floats(size_t(std::max<int64_t>(r.S, 1) * r.width), rng));
    gpu_rings.push_back(on_gpu(*gpu_, cpu_rings.back()));
    gpu_rows.push_back(on_gpu(*gpu_, rows.back()));
  }
  for (size_t k = 0; k < rings.size(); ++k) {
    const Ring& r = rings[k];
    cpu_stores.push_back({cpu_rings[k].data(), rows[k].data(), r.p0, r.S, r.width, r.ring_rows});
    gpu_stores.push_back({device_floats(gpu_rings[k]), gpu_rows[k].data<float>(), r.p0, r.S, r.width, r.ring_rows});
  }
  const std::vector<std::vector<float>> before = cpu_rings;
  cpu_.store_rings(cpu_stores.data(), int64_t(cpu_stores.size()));
  gpu_->store_rings(gpu_stores.data(), int64_t(gpu_stores.size()));
  for (size_t k = 0; k < rings.size(); ++k) {
    SCOPED_TRACE("ring " + std::to_string(k));
    EXPECT_EQ(floats_of(*gpu_, gpu_rings[k]), cpu_rings[k]);
    if (rings[k].S > 0) {
      EXPECT_NE(cpu_rings[k], before[k]);  // the store wrote something
    }
  }
}

struct WindowLoopCase {
  std::string name;
  int64_t heads, dim, window;
  std::vector<int64_t> chunks;
};

TEST_F(AttentionOpsTest, SlidingAttentionAcrossCallsMatchesCpu) {
  const std::vector<WindowLoopCase> cases = {
      {"tiny", 4, 32, 8, {3, 1, 1, 9, 1, 1}},
      {"V4", 64, 512, 128, {130, 1, 1, 7}},
  };
  for (const WindowLoopCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::mt19937 rng(23);
    const int64_t D = c.dim;
    const std::vector<float> sinks = random_floats(size_t(c.heads), rng);
    std::vector<float> ring(size_t((c.window - 1) * D));
    Tensor gring = gpu_->alloc(DType::F32, {c.window - 1, D}), gsinks = on_gpu(*gpu_, sinks);
    int64_t p0 = 0;
    for (int64_t S : c.chunks) {
      SCOPED_TRACE("p0 = " + std::to_string(p0) + ", S = " + std::to_string(S));
      const std::vector<float> q = random_floats(size_t(S * c.heads * D), rng);
      const std::vector<float> keys = random_floats(size_t(S * D), rng);
      std::vector<float> want(q.size());
      const float scale = 1.0f / std::sqrt(float(D));
      cpu_.sink_attention(q.data(), S, c.heads, D, keys.data(), ring.data(), p0, c.window, kNone, nullptr, 0, 0,
                          nullptr, 0, sinks.data(), scale, nullptr, want.data());
      cpu_.update_window(ring.data(), keys.data(), p0, S, D, c.window);
      Tensor gq = on_gpu(*gpu_, q), gkeys = on_gpu(*gpu_, keys), got = poisoned_gpu(*gpu_, S * c.heads * D);
      gpu_->sink_attention(gq.data<float>(), S, c.heads, D, gkeys.data<float>(), gring.data<float>(), p0, c.window,
                           kNone, nullptr, 0, 0, nullptr, 0, gsinks.data<float>(), scale, nullptr, device_floats(got));
      gpu_->update_window(device_floats(gring), gkeys.data<float>(), p0, S, D, c.window);
      expect_close(floats_of(*gpu_, got), want, kTolerance, "attention output");
      p0 += S;
    }
  }
}

}  // namespace
}  // namespace dsq::test
