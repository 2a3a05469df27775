#include "model/model.h"

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "model/forward_pass.h"

namespace dsq::model {

namespace {

cpu::RopeFrequencies table_for(const RopeParams& p, int64_t rope_dim) {
  if (p.type == "yarn") {
    const cpu::YarnScaling yarn{p.factor, p.original_max_positions, p.beta_fast, p.beta_slow};
    return cpu::rope_frequencies(rope_dim, p.theta, &yarn);
  }
  DSQ_CHECK(p.type == "default", "rope_type '", p.type, "' is not supported (default or yarn)");
  return cpu::rope_frequencies(rope_dim, p.theta);
}

}  // namespace

Model Model::load(const std::string& dir, std::shared_ptr<backend::Ops> ops) {
  return Model(Checkpoint::open(dir), std::move(ops));
}

Model::Model(Checkpoint checkpoint, std::shared_ptr<backend::Ops> ops)
    : checkpoint_(std::move(checkpoint)),
      weights_(ModelWeights::load(checkpoint_)),
      ops_(ops ? std::move(ops) : std::make_shared<cpu::CpuOps>()),
      workspace_(std::make_unique<Workspace>(*ops_)),
      rope_main_(table_for(config().rope_main, config().rope_dim)),
      rope_compress_(table_for(config().rope_compress, config().rope_dim)) {}

const cpu::RopeFrequencies& Model::rope_for_layer(int layer) const {
  return config().attention[size_t(layer)] == AttentionKind::Sliding ? rope_main_ : rope_compress_;
}

Tensor Model::forward(const std::vector<SequenceInput>& batch, LogitRows rows, LinearObserver* observer) const {
  ForwardPass pass(*this, batch, observer);
  for (int i = 0; i < int(config().num_layers); ++i) pass.run_layer(i);
  Tensor logits = pass.logits(rows);
  pass.commit();
  return logits;
}

}  // namespace dsq::model
