// The compressor state update of spec §3.2: buffer raw rows, close complete windows into
// entries, carry the CSA overlap (Ca half of the last closed window) to the next call.
#include <algorithm>
#include <cstring>

#include "backend/cpu/compressor_pool.h"
#include "backend/cpu/rms_norm.h"
#include "core/thread_pool.h"
#include "model/layer_blocks.h"

namespace dsq::model {

void compress_tokens(CompressorState& st, const CompressorWeights& w, bool overlap, int64_t rate,
                     int64_t width, const float* kv, const float* gate, int64_t S,
                     const cpu::RopeFrequencies& rope, float eps) {
  const int64_t raw = overlap ? 2 * width : width;
  // seq = buffer rows then the new rows; it starts at position count·rate, a window start.
  const int64_t n = st.buffered + S;
  std::vector<float> seq_kv(st.buffer_kv.begin(), st.buffer_kv.begin() + st.buffered * raw);
  std::vector<float> seq_gate(st.buffer_gate.begin(), st.buffer_gate.begin() + st.buffered * raw);
  seq_kv.insert(seq_kv.end(), kv, kv + S * raw);
  seq_gate.insert(seq_gate.end(), gate, gate + S * raw);
  const int64_t n_new = n / rate;

  // Gates of the closing windows with the position bias of their in-window offset.
  std::vector<float> biased(seq_gate.begin(), seq_gate.begin() + n_new * rate * raw);
  for (int64_t row = 0; row < n_new * rate; ++row)
    for (int64_t c = 0; c < raw; ++c) biased[row * raw + c] += w.ape[(row % rate) * raw + c];

  const int64_t first = st.count;
  st.entries.resize(size_t((first + n_new) * width));
  const bool has_overlap = !st.overlap_kv.empty();
  parallel_for(n_new, 1, [&](int64_t i0, int64_t i1) {
    std::vector<const float*> values, logits;
    for (int64_t i = i0; i < i1; ++i) {
      values.clear();
      logits.clear();
      if (overlap) {
        // Slots 0…m−1: the Ca half (channels [0, width)) of the previous window.
        for (int64_t j = 0; j < rate; ++j) {
          if (i > 0) {
            values.push_back(seq_kv.data() + ((i - 1) * rate + j) * raw);
            logits.push_back(biased.data() + ((i - 1) * rate + j) * raw);
          } else if (has_overlap) {
            values.push_back(st.overlap_kv.data() + j * width);
            logits.push_back(st.overlap_gate.data() + j * width);
          } else {
            values.push_back(nullptr);
            logits.push_back(nullptr);
          }
        }
      }
      // Own window: the Cb half (channels [width, 2·width)) under overlap, else all.
      const int64_t own = overlap ? width : 0;
      for (int64_t j = 0; j < rate; ++j) {
        values.push_back(seq_kv.data() + (i * rate + j) * raw + own);
        logits.push_back(biased.data() + (i * rate + j) * raw + own);
      }
      float* entry = st.entries.data() + (first + i) * width;
      cpu::softmax_pool(values.data(), logits.data(), int64_t(values.size()), width, entry);
      cpu::rms_norm(entry, 1, width, width, w.norm.data(), eps, entry);
      cpu::apply_rope_one(entry, width, (first + i) * rate, rope, false);
    }
  });

  if (overlap && n_new > 0) {
    st.overlap_kv.resize(size_t(rate * width));
    st.overlap_gate.resize(size_t(rate * width));
    const int64_t last = (n_new - 1) * rate;
    for (int64_t j = 0; j < rate; ++j) {
      std::memcpy(st.overlap_kv.data() + j * width, seq_kv.data() + (last + j) * raw, width * sizeof(float));
      std::memcpy(st.overlap_gate.data() + j * width, biased.data() + (last + j) * raw, width * sizeof(float));
    }
  }
  st.buffered = n - n_new * rate;
  st.buffer_kv.assign(seq_kv.begin() + n_new * rate * raw, seq_kv.end());
  st.buffer_gate.assign(seq_gate.begin() + n_new * rate * raw, seq_gate.end());
  st.count = first + n_new;
}

}  // namespace dsq::model
