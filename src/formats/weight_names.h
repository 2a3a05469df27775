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

namespace dsq {

// A checkpoint tensor seen under its native name. A fused transformers expert tensor
// maps to several native tensors: `expert` selects the slice of axis 0 and `row_begin`/
// `row_end` a row range of that slice (gate_up_proj rows [0,F) are w1, [F,2F) are w3).
struct NativeName {
  std::string name;          // native name; for fused tensors a pattern with "{e}"
  bool fused_experts = false;
  int fused_part = 0;        // gate_up_proj: 0 = w1 (gate), 1 = w3 (up); down_proj: 0 = w2
};

// Maps any accepted spelling to the native name. Returns nullopt for a name that is not
// part of the model (e.g. a quantization scale handled elsewhere, or rotary buffers).
std::optional<NativeName> to_native_name(std::string_view checkpoint_name);

}  // namespace dsq
