// The one table of DeepSeek-V4 tensor names (shared/docs/dsv4-architecture.md §5).
//
// dsq names every tensor by its DeepSeek release ("native") name: `embed.weight`,
// `layers.3.attn.kv_norm.weight`, `layers.3.ffn.experts.7.w1.weight`, `hc_head_fn`, ...
// A checkpoint may spell them as the release does, as transformers 5.17 writes them
// (`model.` prefix, `model.embed_tokens.weight`, `head.weight`, `model.hc_head.hc_fn`,
// `attn.norm.weight` for the kv norm), or with transformers' module names
// (`self_attn.q_a_proj`, fused 3-D `mlp.experts.gate_up_proj` / `down_proj`).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dsq {

// A checkpoint tensor seen under its native name. A fused transformers expert tensor holds
// one native tensor per expert (axis 0): `name` is then a pattern with "{e}" for the expert
// index, and `fused_part` says which rows of each slice it is (gate_up_proj rows [0,F) are
// w1, [F,2F) are w3).
struct NativeName {
  std::string name;          // native name; for fused tensors a pattern with "{e}"
  bool fused_experts = false;
  int fused_part = 0;        // gate_up_proj: 0 = w1 (gate), 1 = w3 (up); down_proj: 0 = w2
};

// One row of the name table: the same tensor in the three spellings (§5.1, §5.2, §5.3).
// Layer rows are relative to "layers.{i}." (release), "model.layers.{i}." (transformers,
// fixture); global rows are whole names. "{e}" stands for a routed-expert index. An empty
// transformers spelling means transformers has no such tensor (MTP-only tensors).
struct WeightNameRow {
  enum class Scope { Global, Layer, MtpOnly };
  Scope scope;
  std::string_view release;       // the native name (relative to the layer for layer rows)
  std::string_view transformers;  // transformers module spelling; fused experts: the 3-D tensor
  std::string_view fixture;       // what transformers 5.17 writes into model.safetensors
  // A linear layer: its `.weight` may be replaced by quantized siblings with the same module
  // (quantized_suffixes() below), e.g. attn.wq_a.scale, ffn.experts.{e}.w1.weight_packed.
  bool linear = false;
  // Routed experts in transformers are fused: gate_up_proj [E, 2F, H] holds w1 (part 0,
  // rows [0,F)) and w3 (part 1, rows [F,2F)); down_proj [E, H, F] holds w2 (part 0).
  int fused_part = -1;
};

// Every tensor of the model, in the order of the spec's tables.
const std::vector<WeightNameRow>& weight_name_table();

// Leaf suffixes a quantized linear module may carry instead of (or next to) `weight`:
// release FP8/FP4 `scale`, transformers FP8 `weight_scale_inv`, compressed-tensors
// `weight_packed`/`weight_scale`/`weight_shape`/`weight_zero_point`/`weight_g_idx`/
// `input_scale`. They keep their suffix in the native name: a module's scales are found as
// "<native module>.<suffix>".
const std::vector<std::string_view>& quantized_suffixes();

// Maps any accepted spelling to its native name(s): empty for a name that is not part of
// the model (rotary buffers, unknown tensors), two entries for a fused gate_up_proj.
std::vector<NativeName> to_native_names(std::string_view checkpoint_name);

// The first of to_native_names() (for gate_up_proj: the w1 part), or nullopt.
std::optional<NativeName> to_native_name(std::string_view checkpoint_name);

}  // namespace dsq
