// Attention of one query token over a gathered key set, with a per-head sink (spec §2.1,
// §2.5): ℓ = (q_h · key)·scale, softmax with an extra sink column sinks[h] that has no
// value, and V = K (the output is the probability-weighted sum of the keys themselves).
// Masking is done by the caller: `keys` lists only the keys this query may see.
#pragma once

#include <cstdint>

namespace dsq::cpu {

// q: [n_heads, dim]; keys: n_keys pointers to rows of `dim`; sinks: [n_heads];
// out: [n_heads, dim]. scratch: n_keys floats. With no keys the output is zero.
void sink_attention(const float* q, int64_t n_heads, int64_t dim, const float* const* keys,
                    int64_t n_keys, const float* sinks, float scale, float* out, float* scratch);

}  // namespace dsq::cpu
