// The compressors' per-channel softmax pooling (spec §2.7 HCA, §2.8 CSA): for each
// channel c, α = softmax over slots of logit[slot][c], entry[c] = Σ α·value[slot][c].
// A slot given as null is empty (logit −∞, weight 0): the missing predecessor half of the
// first CSA window.
#pragma once

#include <cstdint>

namespace dsq::cpu {

// values/logits: n_slots row pointers of `width` values (logits already include the
// position bias); out: [width].
void softmax_pool(const float* const* values, const float* const* logits, int64_t n_slots,
                  int64_t width, float* out);

}  // namespace dsq::cpu
