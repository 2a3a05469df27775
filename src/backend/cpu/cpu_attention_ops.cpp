// CpuOps' stateful attention ops (cpu_ops.h): the compressor update over the raw-row
// rings, the indexer's selection per query, the sink attention over window ring, new
// keys and compressed entries (then its output's inverse rope), and the window ring
// update (and any ring stores). The state layout is the one backend/ops.h fixes.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cpu/compressor_pool.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/indexer.h"
#include "backend/cpu/rms_norm.h"
#include "backend/cpu/rope.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace dsq::cpu {

void CpuOps::compress(const backend::CompressorParams& p, float* ring_kv, float* ring_gate, float* entries,
                      const float* kv, const float* gate, int64_t p0, int64_t S) {
  const int64_t m = p.rate, width = p.width, raw = p.overlap ? 2 * width : width, ring_rows = 2 * m;
  DSQ_CHECK(m > 0 && int64_t(p.ape->size()) == m * raw && int64_t(p.norm->size()) == width,
            "compress: parameters do not match rate ", m, " and width ", width);
  // Raw rows of position u: from this call's rows, or from the ring for earlier positions.
  auto kv_row = [&](int64_t u) { return u >= p0 ? kv + (u - p0) * raw : ring_kv + (u % ring_rows) * raw; };
  auto gate_row = [&](int64_t u) { return u >= p0 ? gate + (u - p0) * raw : ring_gate + (u % ring_rows) * raw; };

  // Windows i close at position i·m + m − 1; those closing in [p0, p0 + S).
  const int64_t first = p0 / m, end = (p0 + S) / m;
  parallel_for(end - first, 1, [&](int64_t w0, int64_t w1) {
    std::vector<const float*> values, logits;
    std::vector<float> biased(size_t(2 * m * width));
    for (int64_t i = first + w0; i < first + w1; ++i) {
      values.clear();
      logits.clear();
      // One slot: channels [c0, c0 + width) of position u, gate plus the position bias.
      auto add_slot = [&](int64_t u, int64_t c0) {
        const int64_t j = u % m, slot = int64_t(values.size());
        float* b = biased.data() + slot * width;
        const float* g = gate_row(u) + c0;
        const float* a = p.ape->data() + j * raw + c0;
        for (int64_t c = 0; c < width; ++c) b[c] = g[c] + a[c];
        values.push_back(kv_row(u) + c0);
        logits.push_back(b);
      };
      if (p.overlap) {
        // Slots 0…m−1: the first half (Ca) of the previous window; empty before window 0.
        for (int64_t j = 0; j < m; ++j) {
          if (i > 0) {
            add_slot((i - 1) * m + j, 0);
          } else {
            values.push_back(nullptr);
            logits.push_back(nullptr);
          }
        }
      }
      // The window's own slots: the second half (Cb) under overlap, else all channels.
      for (int64_t j = 0; j < m; ++j) add_slot(i * m + j, p.overlap ? width : 0);
      float* entry = entries + i * width;
      softmax_pool(values.data(), logits.data(), int64_t(values.size()), width, entry);
      cpu::rms_norm(entry, 1, width, width, p.norm->data(), p.eps, entry);
      apply_rope_one(entry, width, i * m, *p.rope, false);
    }
  });

  // Keep the last 2m raw rows (unbiased) for later calls.
  const auto raw_rows = backend::compressor_ring_stores(p, ring_kv, ring_gate, kv, gate, p0, S);
  store_rings(raw_rows.data(), 2);
}

void CpuOps::indexer_scores(const float* q, const float* weights, int64_t S, int64_t n_heads, int64_t head_dim,
                            const float* keys, int64_t n_keys, float* scores) {
  cpu::indexer_scores(q, weights, S, n_heads, head_dim, keys, n_keys, scores);
}

void CpuOps::indexer_topk(float* scores, int64_t S, int64_t n_keys, int64_t topk, int64_t p0, int64_t rate,
                          int64_t* selected) {
  parallel_for(S, 4, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const std::vector<int64_t> picks = indexer_select(scores + i * n_keys, n_keys, topk, (p0 + i + 1) / rate);
      int64_t* row = selected + i * topk;
      std::fill(row, row + topk, int64_t(-1));
      std::copy(picks.begin(), picks.end(), row);
    }
  });
}

void CpuOps::sink_attention(const float* q, int64_t S, int64_t n_heads, int64_t dim, const float* new_keys,
                            const float* ring, int64_t p0, int64_t window, backend::EntrySelection selection,
                            const float* entries, int64_t n_entries, int64_t rate, const int64_t* selected,
                            int64_t topk, const float* sinks, float scale,
                            const cpu::RopeFrequencies* output_rope, float* out) {
  DSQ_CHECK(!output_rope || output_rope->rope_dim <= dim, "sink_attention: ", output_rope ? output_rope->rope_dim : 0,
            " rotary dims exceed a head of ", dim);
  const int64_t ring_rows = window - 1;
  parallel_for(S, 4, [&](int64_t i0, int64_t i1) {
    std::vector<const float*> keys;
    std::vector<float> scratch;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t p = p0 + i;
      keys.clear();
      for (int64_t u = std::max<int64_t>(p - window + 1, 0); u <= p; ++u)
        keys.push_back(u >= p0 ? new_keys + (u - p0) * dim : ring + (u % ring_rows) * dim);
      if (selection == backend::EntrySelection::AllVisible) {
        for (int64_t s = 0; s < std::min((p + 1) / rate, n_entries); ++s) keys.push_back(entries + s * dim);
      } else if (selection == backend::EntrySelection::Selected) {
        for (int64_t j = 0; j < topk; ++j) {
          const int64_t s = selected[i * topk + j];
          if (s >= 0) keys.push_back(entries + s * dim);
        }
      }
      scratch.resize(keys.size());
      cpu::sink_attention(q + i * n_heads * dim, n_heads, dim, keys.data(), int64_t(keys.size()), sinks, scale,
                          out + i * n_heads * dim, scratch.data());
      if (output_rope)
        for (int64_t h = 0; h < n_heads; ++h)
          cpu::apply_rope_one(out + (i * n_heads + h) * dim, dim, p, *output_rope, /*inverse=*/true);
    }
  });
}

void CpuOps::store_rings(const backend::RingStore* stores, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const backend::RingStore& r = stores[k];
    DSQ_CHECK(r.ring_rows > 0 && r.width > 0, "store_rings: a ring of ", r.ring_rows, " rows of ", r.width,
              " values");
    for (int64_t u = std::max(r.p0, r.p0 + r.S - r.ring_rows); u < r.p0 + r.S; ++u)
      std::memcpy(r.ring + (u % r.ring_rows) * r.width, r.rows + (u - r.p0) * r.width,
                  size_t(r.width) * sizeof(float));
  }
}

}  // namespace dsq::cpu
