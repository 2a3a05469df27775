#include "model/forward_pass.h"

#include <string>

#include "core/error.h"

namespace dsq::model {

namespace {

// Host ids in a workspace buffer of the ops' memory.
const int64_t* ids_on_device(backend::Ops& ops, Workspace& ws, const char* name,
                             const std::vector<int64_t>& ids) {
  int64_t* dev = ws.i64(name, int64_t(ids.size()));
  ops.upload_into(dev, ids.data(), ids.size() * sizeof(int64_t));
  return dev;
}

}  // namespace

PassTokens::PassTokens(backend::Ops& ops, Workspace& workspace, const std::vector<SequenceInput>& batch,
                       int64_t vocab_size) {
  offsets.push_back(0);
  for (const SequenceInput& in : batch) {
    DSQ_CHECK(in.state != nullptr, "forward: a batch entry has no sequence state");
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      // Checked here, on the host, for every backend: a GPU kernel cannot throw.
      DSQ_CHECK(in.tokens[i] >= 0 && in.tokens[i] < vocab_size, "forward: token id ", in.tokens[i],
                " outside the vocabulary [0, ", vocab_size, ")");
      tokens.push_back(in.tokens[i]);
      positions.push_back(in.state->position + int64_t(i));
    }
    offsets.push_back(int64_t(tokens.size()));
  }
  tokens_dev = ids_on_device(ops, workspace, "pass.tokens", tokens);
  positions_dev = ids_on_device(ops, workspace, "pass.positions", positions);
}

void run_linear(const PassContext& ctx, const Linear& w, const float* x, int64_t n, float* y) {
  if (ctx.observer && n > 0) ctx.observer->on_linear({w.name, x, n, w.w.cols, 0, w.w.rows});
  ctx.ops.linear(w.w, x, n, y);
}

void run_linears(const PassContext& ctx, const float* x, int64_t n, const std::vector<LinearTarget>& targets) {
  std::vector<const QuantizedMatrix*> ws;
  std::vector<float*> ys;
  for (const LinearTarget& t : targets) {
    if (ctx.observer && n > 0) ctx.observer->on_linear({t.w->name, x, n, t.w->w.cols, 0, t.w->w.rows});
    ws.push_back(&t.w->w);
    ys.push_back(t.y);
  }
  ctx.ops.linear_many(ws.data(), ys.data(), int64_t(ws.size()), x, n);
}

ForwardPass::ForwardPass(const Model& model, std::vector<SequenceInput> batch, LinearObserver* observer)
    : model_(model), batch_(std::move(batch)), observer_(observer), ids_(model.ops(), model.workspace(), batch_, model.config().vocab_size) {
  const ModelConfig& c = model_.config();
  DSQ_CHECK(observer_ == nullptr || model_.ops().device() == Device::CPU,
            "forward: a linear observer needs the CPU backend");
  for (const SequenceInput& in : batch_)
    DSQ_CHECK(int64_t(in.state->layers.size()) == c.num_layers, "forward: sequence state has ",
              in.state->layers.size(), " layers, the model ", c.num_layers);
  // Embedding, copied into each of the N streams. A workspace buffer (one forward at a
  // time per model): the same memory every call, so a decode step's work repeats exactly
  // (backend/cuda/graph_replay_ops.h replays it).
  const int64_t T = num_tokens(), NH = c.hc_mult * c.hidden_size;
  streams_ = Tensor::writable_view(DType::F32, {T, NH}, model_.workspace().f32("pass.streams", T * NH), nullptr,
                                   model_.ops().device());
  model_.ops().embed_streams(model_.weights().embed, ids_.tokens_dev, T, c.hc_mult, streams());
}

PassContext ForwardPass::context() const {
  return PassContext{.config = model_.config(),
                     .ops = model_.ops(),
                     .workspace = model_.workspace(),
                     .batch = batch_,
                     .ids = ids_,
                     .observer = observer_};
}

void ForwardPass::run_layer(int layer) {
  DSQ_CHECK(layer == next_layer_, "forward: layer ", layer, " run out of order (next is ", next_layer_, ")");
  DSQ_CHECK(!committed_, "forward: run_layer after commit");
  // Each layer's last residual update is applied by the next layer's first mixing op;
  // the last layer's is applied here, so that the streams are complete after it.
  decoder_layer(context(), layer, model_.weights().layers[size_t(layer)], model_.rope_for_layer(layer),
                streams_.mutable_data<float>(), &pending_);
  ++next_layer_;
  if (next_layer_ == model_.config().num_layers) finish_residual(context(), streams_.mutable_data<float>(), pending_);
}

Tensor ForwardPass::final_hidden(LogitRows rows) const {
  const ModelConfig& c = model_.config();
  DSQ_CHECK(next_layer_ == c.num_layers, "forward: output requested after ", next_layer_, " of ",
            c.num_layers, " layers");
  backend::Ops& ops = model_.ops();
  Workspace& ws = model_.workspace();
  const ModelWeights& w = model_.weights();
  const int64_t H = c.hidden_size, N = c.hc_mult, NH = N * H;
  // All rows: the streams as they are; Last: each sequence's last row, gathered.
  const float* rows_in = streams();
  int64_t n = num_tokens();
  if (rows == LogitRows::Last) {
    std::vector<int64_t> picked;
    for (size_t b = 0; b + 1 < ids_.offsets.size(); ++b) {
      DSQ_CHECK(ids_.offsets[b + 1] > ids_.offsets[b], "forward: sequence ", b, " has no new token to take logits of");
      picked.push_back(ids_.offsets[b + 1] - 1);
    }
    n = int64_t(picked.size());
    float* gathered = ws.f32("head.streams", n * NH);
    ops.gather_rows(streams(), ids_on_device(ops, ws, "head.picked", picked), n, NH, gathered);
    rows_in = gathered;
  }
  float* mix = ws.f32("head.mix", n * N);
  ops.mhc_mix(rows_in, n, NH, float(c.rms_norm_eps), w.hc_head_fn.w, mix);
  float* h = ws.f32("head.hidden", n * H);
  const Tensor hidden = Tensor::writable_view(DType::F32, {n, H}, h, nullptr, ops.device());
  ops.hc_head(rows_in, mix, ops.resident(w.hc_head_base), w.hc_head_scale, n, N, H, float(c.hc_eps), h);
  ops.rms_norm(h, n, H, H, ops.resident(w.norm), float(c.rms_norm_eps), h);
  return hidden;
}

Tensor ForwardPass::logits(LogitRows rows) const {
  const Tensor hidden = final_hidden(rows);
  const int64_t n = hidden.dim(0);
  backend::Ops& ops = model_.ops();
  const int64_t V = model_.config().vocab_size;
  // On the host the result is the buffer itself; on a device, a workspace buffer copied
  // back (no device allocation per call).
  Tensor out = ops.device() == Device::CPU
                   ? ops.alloc(DType::F32, {n, V})
                   : Tensor::writable_view(DType::F32, {n, V}, model_.workspace().f32("head.logits", n * V), nullptr,
                                           ops.device());
  run_linear(context(), model_.weights().head, hidden.data<float>(), n, out.mutable_data<float>());
  return ops.device() == Device::CPU ? out : ops.to_host(out);
}

void ForwardPass::commit() {
  DSQ_CHECK(next_layer_ == model_.config().num_layers, "forward: commit after ", next_layer_, " of ",
            model_.config().num_layers, " layers");
  DSQ_CHECK(!committed_, "forward: committed twice");
  for (size_t b = 0; b < batch_.size(); ++b) batch_[b].state->position += ids_.offsets[b + 1] - ids_.offsets[b];
  committed_ = true;
}

}  // namespace dsq::model
