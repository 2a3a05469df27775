#include "model/model_weights.h"

#include "core/error.h"
#include "model/weight_format.h"

namespace dsq::model {

namespace {

std::vector<float> load_vector(const Checkpoint& ckpt, const std::string& name, const Shape& shape) {
  const Tensor t = ckpt.get_checked(name, shape).to_f32();
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

Linear load_linear(const Checkpoint& ckpt, const std::string& module, int64_t rows, int64_t cols) {
  return Linear{module + ".weight", load_linear_weight(ckpt, module, rows, cols)};
}

// mHC projections stay dense: they are f32 in every checkpoint and never quantized.
Linear load_dense(const Checkpoint& ckpt, const std::string& name, int64_t rows, int64_t cols) {
  return Linear{name, QuantizedMatrix::dense(ckpt.get_checked(name, {rows, cols}))};
}

HyperConnection load_hc(const Checkpoint& ckpt, const std::string& prefix, const ModelConfig& c) {
  const int64_t N = c.hc_mult, mix = (2 + N) * N;
  HyperConnection hc;
  hc.fn = load_dense(ckpt, prefix + "_fn", mix, N * c.hidden_size);
  hc.base = load_vector(ckpt, prefix + "_base", {mix});
  hc.scale = load_vector(ckpt, prefix + "_scale", {3});
  return hc;
}

CompressorWeights load_compressor(const Checkpoint& ckpt, const std::string& prefix, int64_t width,
                                  int64_t raw_width, int64_t rate, int64_t hidden) {
  CompressorWeights w;
  w.wkv = load_linear(ckpt, prefix + ".wkv", raw_width, hidden);
  w.wgate = load_linear(ckpt, prefix + ".wgate", raw_width, hidden);
  w.ape = load_vector(ckpt, prefix + ".ape", {rate, raw_width});
  w.norm = load_vector(ckpt, prefix + ".norm.weight", {width});
  return w;
}

ExpertWeights load_expert(const Checkpoint& ckpt, const std::string& prefix, int64_t F, int64_t H) {
  return ExpertWeights{load_linear(ckpt, prefix + ".w1", F, H), load_linear(ckpt, prefix + ".w2", H, F),
                       load_linear(ckpt, prefix + ".w3", F, H)};
}

LayerWeights load_layer(const Checkpoint& ckpt, const ModelConfig& c, int i) {
  const std::string p = "layers." + std::to_string(i) + ".";
  const int64_t H = c.hidden_size, D = c.head_dim;
  DSQ_CHECK(c.num_heads % c.o_groups == 0, ckpt.directory(), ": ", c.num_heads,
            " heads do not split into ", c.o_groups, " output groups");
  LayerWeights L;
  L.attn_norm = load_vector(ckpt, p + "attn_norm.weight", {H});
  L.ffn_norm = load_vector(ckpt, p + "ffn_norm.weight", {H});
  L.hc_attn = load_hc(ckpt, p + "hc_attn", c);
  L.hc_ffn = load_hc(ckpt, p + "hc_ffn", c);

  AttentionWeights& a = L.attn;
  a.wq_a = load_linear(ckpt, p + "attn.wq_a", c.q_lora_rank, H);
  a.q_norm = load_vector(ckpt, p + "attn.q_norm.weight", {c.q_lora_rank});
  a.wq_b = load_linear(ckpt, p + "attn.wq_b", c.num_heads * D, c.q_lora_rank);
  a.wkv = load_linear(ckpt, p + "attn.wkv", D, H);
  // The release calls the kv norm attn.kv_norm, transformers' files attn.norm.
  const std::string kv_norm = ckpt.has(p + "attn.kv_norm.weight") ? p + "attn.kv_norm.weight"
                                                                   : p + "attn.norm.weight";
  a.kv_norm = load_vector(ckpt, kv_norm, {D});
  a.wo_a = load_linear(ckpt, p + "attn.wo_a", c.o_groups * c.o_lora_rank, c.num_heads * D / c.o_groups);
  a.wo_b = load_linear(ckpt, p + "attn.wo_b", H, c.o_groups * c.o_lora_rank);
  a.sinks = load_vector(ckpt, p + "attn.attn_sink", {c.num_heads});
  const AttentionKind kind = c.attention[i];
  if (kind != AttentionKind::Sliding) {
    const bool csa = kind == AttentionKind::CSA;
    a.compressor = load_compressor(ckpt, p + "attn.compressor", D, csa ? 2 * D : D, c.compress_rate(i), H);
    if (csa) {
      const int64_t DI = c.index_head_dim;
      a.indexer.wq_b = load_linear(ckpt, p + "attn.indexer.wq_b", c.index_n_heads * DI, c.q_lora_rank);
      a.indexer.weights_proj = load_linear(ckpt, p + "attn.indexer.weights_proj", c.index_n_heads, H);
      a.indexer.compressor =
          load_compressor(ckpt, p + "attn.indexer.compressor", DI, 2 * DI, c.compress_rate(i), H);
    }
  }

  MoeWeights& m = L.ffn;
  const int64_t E = c.n_routed_experts, F = c.moe_intermediate_size;
  m.gate = load_linear(ckpt, p + "ffn.gate", E, H);
  if (c.moe[i] == MoeKind::Hash) {
    const std::string name = p + "ffn.gate.tid2eid";
    const Tensor t = ckpt.get(name);
    DSQ_CHECK(t.shape() == Shape({c.vocab_size, c.num_experts_per_tok}), ckpt.describe(name),
              ": expected shape ", shape_string({c.vocab_size, c.num_experts_per_tok}), ", found ",
              shape_string(t.shape()));
    DSQ_CHECK(t.dtype() == DType::I64 || t.dtype() == DType::I32, ckpt.describe(name),
              ": expected an integer table, found ", dtype_name(t.dtype()));
    m.tid2eid.resize(size_t(t.numel()));
    for (int64_t k = 0; k < t.numel(); ++k) {
      m.tid2eid[k] = t.get_i64(k);
      DSQ_CHECK(m.tid2eid[k] >= 0 && m.tid2eid[k] < E, ckpt.describe(name), ": expert id ", m.tid2eid[k],
                " outside [0, ", E, ")");
    }
  } else {
    m.bias = load_vector(ckpt, p + "ffn.gate.bias", {E});
  }
  for (int64_t e = 0; e < E; ++e)
    m.experts.push_back(load_expert(ckpt, p + "ffn.experts." + std::to_string(e), F, H));
  DSQ_CHECK(c.n_shared_experts == 1, ckpt.directory(), ": n_shared_experts = ", c.n_shared_experts,
            " is not supported (DeepSeek-V4 has exactly one)");
  m.shared = load_expert(ckpt, p + "ffn.shared_experts", F, H);
  return L;
}

}  // namespace

ModelWeights ModelWeights::load(const Checkpoint& ckpt) {
  const ModelConfig& c = ckpt.config();
  const int64_t H = c.hidden_size, N = c.hc_mult;
  ModelWeights w;
  w.embed = load_linear_weight(ckpt, "embed", c.vocab_size, H);
  w.head = load_linear(ckpt, "head", c.vocab_size, H);
  w.norm = load_vector(ckpt, "norm.weight", {H});
  w.hc_head_fn = load_dense(ckpt, "hc_head_fn", N, N * H);
  w.hc_head_base = load_vector(ckpt, "hc_head_base", {N});
  w.hc_head_scale = load_vector(ckpt, "hc_head_scale", {1})[0];
  for (int i = 0; i < int(c.num_layers); ++i) w.layers.push_back(load_layer(ckpt, c, i));
  return w;
}

}  // namespace dsq::model
