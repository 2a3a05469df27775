// The layer-by-layer API and the linear observer that quantizer calibration builds on:
// running ForwardPass by hand equals Model::forward, the observer sees every linear
// weight by its native name with the rows it multiplies, and routed experts see exactly
// the tokens routed to them.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "formats/safetensors.h"
#include "model/forward_pass.h"
#include "model/model.h"
#include "reference_fixture.h"
#include "support/paths.h"

namespace dsq::model {
namespace {

struct RecordingObserver : LinearObserver {
  std::map<std::string, int64_t> rows_seen;  // weight -> total input rows
  std::set<std::string> bad;                 // weights whose cols or row range looked wrong
  const ModelWeights* weights = nullptr;
  void on_linear(const LinearInput& in) override {
    rows_seen[std::string(in.weight)] += in.n_rows;
    if (in.n_rows <= 0 || in.row_begin < 0 || in.row_end <= in.row_begin || in.rows == nullptr)
      bad.insert(std::string(in.weight));
  }
};

TEST(ForwardPass, LayerByLayerWithObserverMatchesForward) {
  const Model m = Model::load(dsq::test::shared_path("models/tiny-a"));
  const ModelConfig& c = m.config();
  const auto ref = SafetensorsFile::open(dsq::test::shared_path("models/tiny-a/reference.safetensors"));
  const std::vector<int64_t> ids = dsq::test::ids_of(ref->get("input_ids"));
  const int64_t T = int64_t(ids.size());

  SequenceState plain = m.new_sequence();
  const Tensor expected = m.forward({{&plain, ids}});

  SequenceState s = m.new_sequence();
  RecordingObserver obs;
  ForwardPass pass(m, {{&s, ids}}, &obs);
  for (int i = 0; i < int(c.num_layers); ++i) pass.run_layer(i);
  const Tensor got = pass.logits(LogitRows::All);
  pass.commit();
  EXPECT_EQ(s.position, T);
  ASSERT_EQ(got.shape(), expected.shape());
  for (int64_t i = 0; i < got.numel(); ++i) ASSERT_EQ(got.data<float>()[i], expected.data<float>()[i]);

  EXPECT_TRUE(obs.bad.empty());
  EXPECT_EQ(obs.rows_seen["head.weight"], T);
  for (int i = 0; i < int(c.num_layers); ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    EXPECT_EQ(obs.rows_seen[p + "attn.wq_a.weight"], T) << p;
    EXPECT_EQ(obs.rows_seen[p + "attn.wo_a.weight"], T * c.o_groups) << p;  // once per group
    EXPECT_EQ(obs.rows_seen[p + "ffn.shared_experts.w2.weight"], T) << p;
    EXPECT_EQ(obs.rows_seen.count(p + "attn.compressor.wkv.weight"), c.attention[i] != AttentionKind::Sliding);
    EXPECT_EQ(obs.rows_seen.count(p + "attn.indexer.wq_b.weight"), c.attention[i] == AttentionKind::CSA);
    // Routed experts: every token reaches k experts, so the rows over all experts sum to T·k.
    int64_t routed = 0;
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      const std::string w1 = p + "ffn.experts." + std::to_string(e) + ".w1.weight";
      const std::string w2 = p + "ffn.experts." + std::to_string(e) + ".w2.weight";
      EXPECT_EQ(obs.rows_seen[w1], obs.rows_seen[w2]);
      routed += obs.rows_seen[w1];
    }
    EXPECT_EQ(routed, T * c.num_experts_per_tok) << p;
  }
  EXPECT_EQ(obs.rows_seen.count("layers.0.hc_attn_fn"), 0u);  // mHC projections are not reported
}

TEST(ForwardPass, OutOfOrderLayersAreRejected) {
  const Model m = Model::load(dsq::test::shared_path("models/tiny-a"));
  SequenceState s = m.new_sequence();
  const std::vector<int64_t> ids = {0, 5, 7};
  ForwardPass pass(m, {{&s, ids}});
  EXPECT_THROW(pass.run_layer(1), Error);
  EXPECT_THROW(pass.commit(), Error);
}

// A token id outside the vocabulary is one clear error before any work, and the state
// is left as it was.
TEST(ForwardPass, TokenOutsideVocabularyIsRejected) {
  const Model m = Model::load(dsq::test::shared_path("models/tiny-a"));
  SequenceState s = m.new_sequence();
  for (int64_t bad : {int64_t(-1), m.config().vocab_size}) {
    const std::vector<int64_t> ids = {0, bad};
    try {
      m.forward({{&s, ids}});
      ADD_FAILURE() << "token " << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
    }
    EXPECT_EQ(s.position, 0);
  }
}

}  // namespace
}  // namespace dsq::model
