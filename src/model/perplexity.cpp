#include "model/perplexity.h"

#include <cmath>
#include <vector>

#include "backend/cpu/log_softmax.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/forward_pass.h"

namespace dsq::model {

double PerplexityResult::perplexity() const { return std::exp(total_nll / double(scored)); }

int64_t perplexity_windows(int64_t n_tokens, int64_t ctx) {
  int64_t windows = 0;
  for (int64_t i = 0; i < n_tokens - ctx - 1; i += ctx) ++windows;
  return windows;
}

PerplexityResult evaluate_perplexity(const Model& model, std::span<const int64_t> ids, int64_t ctx,
                                     int64_t windows_per_batch, const std::function<void(int64_t)>& on_progress) {
  DSQ_CHECK(ctx >= 2, "perplexity: context ", ctx, " must be at least 2");
  DSQ_CHECK(windows_per_batch >= 1, "perplexity: windows per batch must be at least 1");
  const int64_t n = int64_t(ids.size()), V = model.config().vocab_size;
  const int64_t total_windows = perplexity_windows(n, ctx);
  DSQ_CHECK(total_windows > 0, "perplexity: ", n, " tokens are too few for one window of ", ctx,
            " (need more than ", ctx + 1, ")");
  PerplexityResult result;
  for (int64_t w0 = 0; w0 < total_windows; w0 += windows_per_batch) {
    const int64_t nw = std::min(windows_per_batch, total_windows - w0);
    std::vector<SequenceState> states;
    states.reserve(size_t(nw));
    std::vector<SequenceInput> batch;
    for (int64_t w = 0; w < nw; ++w) {
      states.push_back(model.new_sequence());
      batch.push_back({&states.back(), ids.subspan(size_t((w0 + w) * ctx), size_t(ctx))});
    }
    ForwardPass pass(model, batch);
    for (int i = 0; i < int(model.config().num_layers); ++i) pass.run_layer(i);
    const Tensor hidden = pass.final_hidden(LogitRows::All);
    // Row w·ctx + j predicts ids[(w0 + w)·ctx + j + 1], for j < ctx − 1. The head runs on
    // blocks of rows so the full [rows, V] logits never exist at once.
    const int64_t H = hidden.dim(1), rows = hidden.dim(0), block = 256;
    std::vector<double> nll(static_cast<size_t>(rows), 0.0);
    backend::Ops& ops = model.ops();
    float* logits_dev = model.workspace().f32("ppl.logits", block * V);
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
      const int64_t r1 = std::min(rows, r0 + block);
      ops.linear(model.weights().head.w, hidden.data<float>() + r0 * H, r1 - r0, logits_dev);
      const Tensor block_logits =
          ops.to_host(Tensor::view(DType::F32, {(r1 - r0) * V}, logits_dev, nullptr, ops.device()));
      const float* logits = block_logits.data<float>();
      parallel_for(r1 - r0, 16, [&](int64_t a, int64_t b) {
        for (int64_t r = r0 + a; r < r0 + b; ++r) {
          const int64_t w = r / ctx, j = r % ctx;
          if (j == ctx - 1) continue;
          const int64_t target = ids[size_t((w0 + w) * ctx + j + 1)];
          DSQ_CHECK(target >= 0 && target < V, "perplexity: token id ", target, " outside the vocabulary");
          nll[r] = -cpu::log_prob_of(logits + (r - r0) * V, V, target);
        }
      });
    }
    for (double x : nll) result.total_nll += x;
    result.scored += nw * (ctx - 1);
    result.windows += nw;
    if (on_progress) on_progress(result.windows);
  }
  return result;
}

}  // namespace dsq::model
