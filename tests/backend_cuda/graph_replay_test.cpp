// GraphReplayOps (CUDA-graph replay of repeating op segments):
//  - op level: a step of deterministic ops (no atomics: cuBLAS fp32 GEMM, norms, RoPE,
//    mHC) on new inputs each step gives bit-identical results with and without replay,
//    and the replayed graphs read the inputs uploaded after they were captured; the
//    stateful attention ops replayed at new positions (their kernel nodes updated) give
//    the outputs of plain launches bit for bit;
//  - model level: the fixture checks keep their CudaOps tolerances with replay, and a long
//    decode of a model in the serving formats (a `dsq synth` model with INT4 experts,
//    whose decode path never waits for the device, so every segment is capturable) stays
//    as close to plain launches as two runs of plain launches are to each other. Plain
//    runs differ by the order of split-K atomic adds; the fp8 activation rounding of the
//    next layer turns some of those ulps into fp8 steps, so the two-run difference of
//    a random model is ~1e-2, not ~1e-7, and a fixed bound would say nothing.
// With F32 precision or experts the INT4 kernels do not take, the MoE path reads expert
// counts on the host inside side work: those decode steps run as plain launches.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "backend/cuda/graph_replay_ops.h"
#include "op_check.h"
#include "reference_checks.h"
#include "support/paths.h"

namespace dsq::test {
namespace {

std::shared_ptr<cuda::GraphReplayOps> graph_ops(cuda::Precision p) {
  return std::make_shared<cuda::GraphReplayOps>(std::make_shared<cuda::CudaOps>(p));
}

// One step of deterministic ops (9 tokens of 4 streams of 128: mhc_pre's GEMM path, the
// one-launch paths of fewer tokens are covered by MhcPreMatchesCpu), its
// inputs uploaded first and its outputs read back last: both calls end a segment, so the
// ops between are one segment. Returns the outputs.
std::vector<float> deterministic_step(backend::Ops& ops, const std::vector<float>& host_x,
                                      const std::vector<int64_t>& host_pos, const QuantizedMatrix& w,
                                      const QuantizedMatrix& fn, const cpu::RopeFrequencies& rope, Tensor& x,
                                      Tensor& pos, Tensor& y, Tensor& post, Tensor& comb,
                                      const std::vector<float>& base, const std::vector<float>& scale,
                                      const std::vector<float>& norm_w) {
  const int64_t T = 9, N = 4, H = 128;
  ops.upload_into(x.mutable_bytes(), host_x.data(), host_x.size() * sizeof(float));
  ops.upload_into(pos.mutable_bytes(), host_pos.data(), host_pos.size() * sizeof(int64_t));
  float* streams = x.mutable_data<float>();
  float* out = y.mutable_data<float>();
  ops.mhc_pre(streams, T, fn, 1e-6f, ops.resident(base), ops.resident(scale), N, H, 20, 1e-6f, ops.resident(norm_w),
              1e-6f, out, post.mutable_data<float>(), comb.mutable_data<float>());
  ops.linear(w, out, T, out + T * H);
  ops.norm_rope(out + T * H, T, 2, 64, nullptr, 1e-6f, pos.data<int64_t>(), rope);
  ops.swiglu(out, out + T * H, T * H, 10.0f, out + 2 * T * H);
  ops.mhc_post(streams, post.data<float>(), comb.data<float>(), out + 2 * T * H, out, T, N, H);
  ops.add(out, streams, T * H);
  const Tensor ys = ops.to_host(y), xs = ops.to_host(x);
  std::vector<float> result(ys.data<float>(), ys.data<float>() + ys.numel());
  result.insert(result.end(), xs.data<float>(), xs.data<float>() + xs.numel());
  return result;
}

TEST(GpuGraphReplay, DeterministicOpsReplayBitIdentically) {
  DSQ_REQUIRE_GPU();
  const int64_t T = 9, N = 4, H = 128, NH = N * H, n_mix = (2 + N) * N;
  std::mt19937 rng(9);
  const QuantizedMatrix w = QuantizedMatrix::dense(Tensor::from_f32(random_floats(size_t(H * H), rng, 0.1f), {H, H}));
  const QuantizedMatrix fn =
      QuantizedMatrix::dense(Tensor::from_f32(random_floats(size_t(n_mix * NH), rng, 0.05f), {n_mix, NH}));
  const std::vector<float> base = random_floats(size_t(n_mix), rng), scale = {0.7f, 1.3f, 2.0f},
                           norm_w = random_floats(size_t(H), rng);
  const cpu::RopeFrequencies rope = cpu::rope_frequencies(32, 10000.0);
  auto plain = std::make_shared<cuda::CudaOps>(cuda::Precision::F32);
  cuda::GraphReplayOps replay(std::make_shared<cuda::CudaOps>(cuda::Precision::F32));
  struct Buffers {
    Tensor x, pos, y, post, comb;
  };
  const auto buffers = [&](backend::Ops& ops) {
    return Buffers{ops.alloc(DType::F32, {T, NH}), ops.alloc(DType::I64, {T}), ops.alloc(DType::F32, {3 * T * H}),
                   ops.alloc(DType::F32, {T, N}), ops.alloc(DType::F32, {T, N * N})};
  };
  Buffers a = buffers(*plain), b = buffers(replay);
  for (int step = 0; step < 6; ++step) {
    const std::vector<float> x = random_floats(size_t(T * NH), rng);
    std::vector<int64_t> pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = 100 * step + t;
    const std::vector<float> want =
        deterministic_step(*plain, x, pos, w, fn, rope, a.x, a.pos, a.y, a.post, a.comb, base, scale, norm_w);
    const std::vector<float> got =
        deterministic_step(replay, x, pos, w, fn, rope, b.x, b.pos, b.y, b.post, b.comb, base, scale, norm_w);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "step " << step;
  }
  // Steps 0 and 1 run and capture the segment; 2..5 replay it.
  EXPECT_EQ(replay.stats().replayed, 4);
  EXPECT_EQ(replay.stats().captured, 1);
  EXPECT_EQ(replay.stats().failed_captures, 0);
}

// A wait with no side work since the last wait joins nothing, also when the last side
// work was recorded inside a captured graph (a layer block with no side work of its
// own after one that had some): it used to wait on that capture's event and fail.
TEST(GpuGraphReplay, WaitWithoutSideWorkAfterACapturedSegment) {
  DSQ_REQUIRE_GPU();
  cuda::GraphReplayOps ops(std::make_shared<cuda::CudaOps>(cuda::Precision::F32));
  const int64_t n = 256;
  Tensor a = ops.alloc(DType::F32, {n}), b = ops.alloc(DType::F32, {n});
  for (int step = 1; step <= 4; ++step) {  // the first segment runs, is captured, then replayed twice
    const std::vector<float> host(static_cast<size_t>(n), float(step));
    ops.upload_into(a.mutable_bytes(), host.data(), host.size() * sizeof(float));
    ops.upload_into(b.mutable_bytes(), host.data(), host.size() * sizeof(float));
    ops.start_side_work();
    ops.add(a.mutable_data<float>(), b.data<float>(), n);  // a = 2·step
    ops.end_side_work();
    ops.wait_side_work();
    ops.add(b.mutable_data<float>(), a.data<float>(), n);  // b = 3·step
    ops.synchronize();                                     // ends the segment
    ops.wait_side_work();
    ops.add(b.mutable_data<float>(), a.data<float>(), n);  // b = 5·step
    const Tensor got = ops.to_host(b);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got.data<float>()[i], 5.0f * float(step)) << "step " << step;
  }
  EXPECT_EQ(ops.stats().failed_captures, 0);
  EXPECT_GE(ops.stats().replayed, 2);
}

// The stateful attention ops of a CSA decode step (indexer scores and top-k, split sink
// attention, the window ring's store) at positions 0 … 47, once through graph replay and
// once as plain launches, on the same inputs: bit-identical outputs and rings (all four
// kernels sum in a fixed order). Their signature leaves the position and the entry
// count out, so from the third step on the captured graph is re-parameterised; on the
// way the launches change (no scores kernel while there are no entries, no combine
// kernel while the keys fit one block), and the segment must be captured again.
TEST(GpuGraphReplay, StatefulOpsReplayAtNewPositions) {
  DSQ_REQUIRE_GPU();
  const int64_t H = 16, D = 64, nI = 4, DI = 32, window = 16, rate = 4, topk = 8, capacity = 16;
  std::mt19937 rng(21);
  const std::vector<float> index_keys = random_floats(size_t(capacity * DI), rng);
  const std::vector<float> entries = random_floats(size_t(capacity * D), rng);
  const std::vector<float> sinks = random_floats(size_t(H), rng);
  const cpu::RopeFrequencies rope = cpu::rope_frequencies(16, 10000.0);
  struct State {
    std::shared_ptr<backend::Ops> ops;
    Tensor q, key, iq, iw, index_keys, entries, sinks, scores, selected, ring, out;
  };
  const auto state = [&](std::shared_ptr<backend::Ops> ops) {
    State st;
    st.ops = ops;
    st.q = ops->alloc(DType::F32, {H * D});
    st.key = ops->alloc(DType::F32, {D});
    st.iq = ops->alloc(DType::F32, {nI * DI});
    st.iw = ops->alloc(DType::F32, {nI});
    st.index_keys = ops->upload(Tensor::from_f32(index_keys, {capacity, DI}));
    st.entries = ops->upload(Tensor::from_f32(entries, {capacity, D}));
    st.sinks = ops->upload(Tensor::from_f32(sinks, {H}));
    st.scores = ops->alloc(DType::F32, {capacity});
    st.selected = ops->alloc(DType::I64, {topk});
    st.ring = ops->upload(Tensor::from_f32(std::vector<float>(size_t((window - 1) * D), 0.0f), {window - 1, D}));
    st.out = ops->alloc(DType::F32, {H * D});
    return st;
  };
  auto replay = graph_ops(cuda::Precision::F32);
  State a = state(replay), b = state(std::make_shared<cuda::CudaOps>(cuda::Precision::F32));
  for (int64_t p0 = 0; p0 < 48; ++p0) {
    const std::vector<float> q = random_floats(size_t(H * D), rng), key = random_floats(size_t(D), rng),
                             iq = random_floats(size_t(nI * DI), rng), iw = random_floats(size_t(nI), rng);
    const int64_t n_entries = (p0 + 1) / rate;
    std::vector<float> got[2];
    for (State* st : {&a, &b}) {
      backend::Ops& ops = *st->ops;
      ops.upload_into(st->q.mutable_bytes(), q.data(), q.size() * sizeof(float));
      ops.upload_into(st->key.mutable_bytes(), key.data(), key.size() * sizeof(float));
      ops.upload_into(st->iq.mutable_bytes(), iq.data(), iq.size() * sizeof(float));
      ops.upload_into(st->iw.mutable_bytes(), iw.data(), iw.size() * sizeof(float));
      float* scores = st->scores.mutable_data<float>();
      int64_t* selected = st->selected.mutable_data<int64_t>();
      ops.indexer_scores(st->iq.data<float>(), st->iw.data<float>(), 1, nI, DI, st->index_keys.data<float>(),
                         n_entries, scores);
      ops.indexer_topk(scores, 1, n_entries, topk, p0, rate, selected);
      ops.sink_attention(st->q.data<float>(), 1, H, D, st->key.data<float>(), st->ring.data<float>(), p0, window,
                         backend::EntrySelection::Selected, st->entries.data<float>(), n_entries, rate, selected, topk,
                         st->sinks.data<float>(), 0.125f, &rope, st->out.mutable_data<float>());
      const backend::RingStore store{st->ring.mutable_data<float>(), st->key.data<float>(), p0, 1, D, window - 1};
      ops.store_rings(&store, 1);
      const Tensor out = ops.to_host(st->out), ring = ops.to_host(st->ring);
      std::vector<float>& g = got[st == &a ? 0 : 1];
      g.assign(out.data<float>(), out.data<float>() + out.numel());
      g.insert(g.end(), ring.data<float>(), ring.data<float>() + ring.numel());
    }
    ASSERT_EQ(std::memcmp(got[0].data(), got[1].data(), got[0].size() * sizeof(float)), 0) << "position " << p0;
  }
  const cuda::GraphReplayOps::Stats& st = replay->stats();
  std::printf("stateful ops at 48 positions: %lld eager, %lld captured, %lld recaptured, %lld replayed\n",
              (long long)st.eager, (long long)st.captured, (long long)st.recaptured, (long long)st.replayed);
  EXPECT_GE(st.recaptured, 1);
  EXPECT_GE(st.replayed, 36);
  EXPECT_EQ(st.failed_captures, 0);
}

// F32 experts read their counts on the host, mostly inside the MoE's side work, so the
// decode segments run as plain launches (the others fail their capture once): this
// checks the deferral itself (order, side lanes, state ops run at flush time); the
// replayed path is checked by the tests above and below.
TEST(GpuGraphReplay, TinyAAllPathsF32) {
  DSQ_REQUIRE_GPU();
  auto ops = graph_ops(cuda::Precision::F32);
  std::printf("tiny-a GPU f32 with graph replay: worst relative L2 %.3g\n", check_all_paths("tiny-a", ops, 1e-3));
  EXPECT_GT(ops->stats().eager, 0);
}

TEST(GpuGraphReplay, TinyBrownGreedyFast) {
  DSQ_REQUIRE_GPU();
  auto ops = graph_ops(cuda::Precision::Fast);
  std::printf("tiny-brown GPU fast with graph replay: worst relative L2 %.3g\n", check_tiny_brown(ops, 1e-2, false));
}

// A random checkpoint in the serving formats (INT4 experts, FP8 attention) whose
// dimensions fit the decode kernels (hidden and expert width multiples of 512), with a
// sliding, a CSA and an HCA layer, written once per run by `dsq synth`. Every layer is
// hash-routed and the indexer's top-k covers every entry the test reaches, so the
// logits are a continuous function of the work: no near-tie expert or entry choice can
// turn rounding noise into a different computation.
const std::string& synth_serving_model() {
  static const std::string dir = [] {
    const std::string d = make_temp_dir("graph-replay");
    const std::string config = d + "/config.json";
    std::FILE* f = std::fopen(config.c_str(), "w");
    DSQ_CHECK(f != nullptr, "cannot write ", config);
    std::fputs(R"({
  "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
  "vocab_size": 512, "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false,
  "hidden_size": 512, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,
  "head_dim": 128, "qk_rope_head_dim": 32, "q_lora_rank": 256, "o_groups": 2, "o_lora_rank": 256,
  "sliding_window": 16, "compress_ratios": [0, 4, 128],
  "compress_rope_theta": 160000.0, "rope_theta": 10000.0,
  "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                   "beta_fast": 32, "beta_slow": 1},
  "max_position_embeddings": 4096, "index_n_heads": 4, "index_head_dim": 128, "index_topk": 64,
  "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "moe_intermediate_size": 512,
  "num_hash_layers": 3, "scoring_func": "sqrtsoftplus", "routed_scaling_factor": 1.5, "swiglu_limit": 10.0,
  "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-06, "rms_norm_eps": 1e-06,
  "num_nextn_predict_layers": 0
})",
               f);
    std::fclose(f);
    const std::string model = d + "/model";
    const std::string cmd = dsq_binary() + " synth " + model + " --config " + config + " --format w4a16-fp8 2>&1";
    DSQ_CHECK(std::system(cmd.c_str()) == 0, "failed: ", cmd);
    return model;
  }();
  return dir;
}

double relative_l2(const Tensor& a, const Tensor& b) {
  double diff = 0, norm = 0;
  for (int64_t v = 0; v < b.numel(); ++v) {
    const double d = double(a.data<float>()[v]) - b.data<float>()[v];
    diff += d * d;
    norm += double(b.data<float>()[v]) * b.data<float>()[v];
  }
  return std::sqrt(diff / norm);
}

// Decodes the same random tokens with replay and twice with plain launches.
TEST(GpuGraphReplay, LongDecodeMatchesPlainLaunches) {
  DSQ_REQUIRE_GPU();
  const std::string& dir = synth_serving_model();
  auto replay = graph_ops(cuda::Precision::Fast);
  model::Model with_graphs = model::Model::load(dir, replay);
  model::Model plain = model::Model::load(dir, std::make_shared<cuda::CudaOps>(cuda::Precision::Fast));
  model::Model plain2 = model::Model::load(dir, std::make_shared<cuda::CudaOps>(cuda::Precision::Fast));
  const int64_t V = plain.config().vocab_size;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int64_t> token(0, V - 1);
  std::vector<int64_t> prompt(37);
  for (int64_t& t : prompt) t = token(rng);
  model::SequenceState a = with_graphs.new_sequence(), b = plain.new_sequence(), c = plain2.new_sequence();
  with_graphs.forward({{&a, prompt}});
  plain.forward({{&b, prompt}});
  plain2.forward({{&c, prompt}});
  // Past an HCA window (128) and many CSA windows, well past the first captures.
  const int steps = 150;
  double replay_vs_plain = 0, plain_vs_plain = 0;
  for (int step = 0; step < steps; ++step) {
    const int64_t next[] = {token(rng)};
    const Tensor la = with_graphs.forward({{&a, next}});
    const Tensor lb = plain.forward({{&b, next}});
    const Tensor lc = plain2.forward({{&c, next}});
    replay_vs_plain += relative_l2(la, lb) / steps;
    plain_vs_plain += relative_l2(lc, lb) / steps;
  }
  const cuda::GraphReplayOps::Stats& st = replay->stats();
  std::printf("%d decode steps, mean relative L2 of the logits: replay vs plain %.3g, plain vs plain %.3g; "
              "segments: %lld eager, %lld captured, %lld replayed, %lld failed captures\n",
              steps, replay_vs_plain, plain_vs_plain, (long long)st.eager, (long long)st.captured,
              (long long)st.replayed, (long long)st.failed_captures);
  EXPECT_LT(replay_vs_plain, 4 * plain_vs_plain + 1e-4);
  EXPECT_EQ(st.failed_captures, 0);
  // Once warm, every segment of a step is replayed.
  EXPECT_GT(st.replayed, 10 * st.captured);
}

}  // namespace
}  // namespace dsq::test
