// dsq_model_bench: whole-model speed of the CUDA backend on a checkpoint (typically a
// `dsq synth` model with DeepSeek-V4-Flash's per-layer dimensions and fewer layers or
// experts), next to the limits of the same GPU measured in the same run.
//
//   dsq_model_bench <model dir> [--context 8192] [--steps 32] [--prefill-chunk 4096] [--batch 1]
//                   [--moe-chunks 4|8|16] [--skip op,op,...] [--out FILE] [--trace FILE]
// --skip drops those ops (names as in the per-op table) from the timed decode steps: a
// what-if for the cost of each part of the step in the real, replayed pipeline (the
// results are wrong then, and the skipped ops are missing from the per-op table).
//
// Prefill: `context` random tokens through one sequence in chunks, timed after a warm-up
// (which also uploads and prepares every weight), reported as tokens/s next to the model
// card's 7,410 tok/s per GPU (vLLM, W4A8, 2 × H200, 24k-token prompts).
// Decode: batch 1 at that context, `steps` single-token steps; median step time against
// the HBM roofline: the bytes a step must read (every weight of every layer except the
// routed experts, k routed experts per layer at their stored size, the head, one
// embedding row, and the decoding state the attention reads: window keys, compressed
// entries — all visible for HCA, top-k for CSA — and the CSA indexer's keys) divided
// by the device-to-device copy bandwidth measured here. Decode runs as served, through
// GraphReplayOps (repeating work replayed as CUDA graphs), and again with every kernel
// launched directly, for comparison. With --batch N, N sequences (each its own random
// prompt of `context` tokens, prefilled first; the first one's prefill is the one timed)
// decode together, one token each per step: the step time is reported with the tokens/s
// it gives, the roofline for batch 1 only. Then one replayed step between
// cudaProfilerStart/Stop (for `ncu --profile-from-start off`: every kernel of one step,
// timed alone; or `nsys profile --capture-range=cudaProfilerApi --cuda-graph-trace=node`:
// the step's timeline, both lanes), and the same steps once more through
// backend::ProfilingOps, printing where a step's time goes, op by op. --trace writes the
// kernel timeline of one more replayed step as CSV (kernel_trace.h;
// bench/tools/trace_report.py reads it); recording runs from the start, so every time
// printed by a traced run includes CUPTI's overhead.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <cuda_profiler_api.h>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/graph_replay_ops.h"
#include "backend/cuda/int4_moe_decode.h"
#include "backend/profiling_ops.h"
#include "bench/gpu/copy_bandwidth.h"
#include "bench/gpu/kernel_trace.h"
#include "core/error.h"
#include "model/model.h"

namespace {

using dsq::model::Model;

struct Options {
  std::string model_dir, out_file, trace_file;
  int64_t context = 8192, steps = 32, chunk = 4096, batch = 1;
  int moe_chunks = 0;  // the routed experts' K slice at decode, in 64-wide chunks (0: the default)
  std::set<std::string> skipped;  // ops dropped from the timed decode steps (ProfilingOps::set_skipped)
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      DSQ_CHECK(i + 1 < argc, a, " needs a value");
      return argv[++i];
    };
    if (a == "--context") o.context = std::stoll(value());
    else if (a == "--steps") o.steps = std::stoll(value());
    else if (a == "--prefill-chunk") o.chunk = std::stoll(value());
    else if (a == "--batch") o.batch = std::stoll(value());
    else if (a == "--out") o.out_file = value();
    else if (a == "--trace") o.trace_file = value();
    else if (a == "--moe-chunks") o.moe_chunks = std::stoi(value());
    else if (a == "--skip") {
      std::stringstream names(value());
      for (std::string name; std::getline(names, name, ',');) o.skipped.insert(name);
    }
    else if (a.rfind("--", 0) == 0) throw dsq::error("unknown option ", a);
    else o.model_dir = a;
  }
  DSQ_CHECK(!o.model_dir.empty(),
            "usage: dsq_model_bench <model dir> [--context N] [--steps N] [--batch N] [--out FILE]");
  DSQ_CHECK(o.batch >= 1 && o.context >= 1 && o.steps >= 1, "--batch, --context and --steps must be at least 1");
  return o;
}

// Bytes one decode step at position `pos` must read (see the header comment).
double decode_bytes(const Model& m, int64_t pos) {
  const dsq::ModelConfig& c = m.config();
  const auto& w = m.weights();
  double bytes = double(w.head.w.stored_bytes()) + double(w.hc_head_fn.w.stored_bytes());
  bytes += double(w.embed.stored_bytes()) / double(w.embed.rows);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const auto& L = w.layers[size_t(l)];
    const auto& a = L.attn;
    for (const auto* lin : {&a.wq_a, &a.wq_b, &a.wkv, &a.wo_a, &a.wo_b, &a.compressor.wkv, &a.compressor.wgate,
                            &a.indexer.wq_b, &a.indexer.weights_proj, &a.indexer.compressor.wkv,
                            &a.indexer.compressor.wgate, &L.hc_attn.fn, &L.hc_ffn.fn, &L.ffn.gate,
                            &L.ffn.shared.w1, &L.ffn.shared.w2, &L.ffn.shared.w3})
      if (lin->w.values.defined()) bytes += double(lin->w.stored_bytes());
    const auto& e0 = L.ffn.experts.front();
    bytes += double(c.num_experts_per_tok) *
             double(e0.w1.w.stored_bytes() + e0.w2.w.stored_bytes() + e0.w3.w.stored_bytes());
    // Decoding state, fp32.
    const int64_t D = c.head_dim, rate = c.compress_rate(int(l));
    bytes += 4.0 * double(std::min(pos, c.sliding_window - 1) * D);
    if (c.attention[size_t(l)] == dsq::AttentionKind::HCA) bytes += 4.0 * double((pos / rate) * D);
    if (c.attention[size_t(l)] == dsq::AttentionKind::CSA)
      bytes += 4.0 * double(std::min(c.index_topk, pos / rate) * D + (pos / rate) * c.index_head_dim);
  }
  return bytes;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  dsq::bench::KernelTrace trace;
  if (!o.trace_file.empty()) trace.start();
  dsq::cuda::int4_moe_decode_force_chunks(o.moe_chunks);
  auto gpu = std::make_shared<dsq::cuda::CudaOps>(dsq::cuda::Precision::Fast);
  auto graphs = std::make_shared<dsq::cuda::GraphReplayOps>(gpu);
  auto ops = std::make_shared<dsq::backend::ProfilingOps>(graphs);  // forwards only, until enabled
  const Model m = Model::load(o.model_dir, ops);
  const dsq::ModelConfig& c = m.config();
  cudaDeviceProp prop{};
  DSQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copy_bw = dsq::bench::copy_bandwidth(gpu->context().stream());

  std::mt19937 rng(7);
  std::uniform_int_distribution<int64_t> token(2, c.vocab_size - 1);
  std::vector<std::vector<int64_t>> prompts(size_t(o.batch), std::vector<int64_t>(size_t(o.context)));
  for (auto& prompt : prompts)
    for (int64_t& t : prompt) t = token(rng);
  auto prefill = [&](dsq::model::SequenceState& s, const std::vector<int64_t>& prompt) {
    for (int64_t b = 0; b < o.context; b += o.chunk) {
      const int64_t n = std::min(o.chunk, o.context - b);
      m.forward({{&s, std::span<const int64_t>(prompt.data() + b, size_t(n))}}, dsq::model::LogitRows::Last);
    }
  };
  // Warm-up: uploads and prepares every weight, sizes the workspace.
  {
    auto s = m.new_sequence();
    const auto t0 = std::chrono::steady_clock::now();
    prefill(s, prompts[0]);
    std::fprintf(stderr, "warm-up prefill (weights uploaded on first use): %.1f s\n", seconds_since(t0));
  }
  std::vector<dsq::model::SequenceState> seqs;
  for (int64_t b = 0; b < o.batch; ++b) seqs.push_back(m.new_sequence());
  ops->synchronize();
  auto t0 = std::chrono::steady_clock::now();
  prefill(seqs[0], prompts[0]);  // the one timed
  ops->synchronize();
  const double prefill_s = seconds_since(t0);
  for (int64_t b = 1; b < o.batch; ++b) prefill(seqs[size_t(b)], prompts[size_t(b)]);

  // One decode step of the batch: sequence b takes token next + b (kept in range).
  int64_t next = prompts[0].back();
  auto step = [&]() {
    std::vector<int64_t> tokens(size_t(o.batch));
    std::vector<dsq::model::SequenceInput> in;
    for (int64_t b = 0; b < o.batch; ++b) {
      tokens[size_t(b)] = 2 + (next + b) % (c.vocab_size - 2);
      in.push_back({&seqs[size_t(b)], std::span<const int64_t>(&tokens[size_t(b)], 1)});
    }
    next = 2 + (next + 1) % (c.vocab_size - 2);
    return m.forward(in, dsq::model::LogitRows::Last);  // waits for the GPU
  };
  // Median step time, and the median host time to issue a step: the step's wall time
  // less the time spent waiting for the device in to_host (the logits' copy, last). When
  // the issue time nears the step time, the host, not the GPU, sets the pace.
  struct Decode {
    double step_s, issue_s;
  };
  auto decode_steps = [&](int64_t n) {
    std::vector<double> step_s, issue_s;
    for (int64_t i = 0; i < n; ++i) {
      const double waited = ops->to_host_seconds();
      t0 = std::chrono::steady_clock::now();
      step();
      step_s.push_back(seconds_since(t0));
      issue_s.push_back(step_s.back() - (ops->to_host_seconds() - waited));
    }
    std::sort(step_s.begin(), step_s.end());
    std::sort(issue_s.begin(), issue_s.end());
    return Decode{step_s[step_s.size() / 2], issue_s[issue_s.size() / 2]};
  };
  ops->set_skipped(o.skipped);
  decode_steps(3);  // the first sightings and captures of the decode step's segments
  const dsq::cuda::GraphReplayOps::Stats before = graphs->stats();
  const Decode replayed = decode_steps(o.steps);
  const dsq::cuda::GraphReplayOps::Stats after = graphs->stats();
  graphs->set_enabled(false);
  const Decode plain = decode_steps(o.steps);
  const double median = replayed.step_s, plain_median = plain.step_s;
  graphs->set_enabled(true);
  DSQ_CUDA_CHECK(cudaProfilerStart());
  step();
  DSQ_CUDA_CHECK(cudaProfilerStop());
  if (!o.trace_file.empty()) {
    ops->synchronize();
    const uint64_t from = trace.now_ns();
    step();
    ops->synchronize();
    dsq::bench::write_kernel_trace_csv(trace.stop(from, trace.now_ns()), o.trace_file);
  }
  // Where a decode step's time goes: the same steps again, each op timed on its own.
  ops->set_enabled(true);
  for (int64_t i = 0; i < o.steps; ++i) step();
  ops->set_enabled(false);
  const double bytes = decode_bytes(m, o.context);
  const double roofline_s = bytes / copy_bw;

  std::ostringstream md;
  md << "Device: " << prop.name << ", " << prop.multiProcessorCount << " SMs\n\n";
  md << "Model: " << o.model_dir << " (" << c.num_layers << " layers, " << c.n_routed_experts
     << " routed experts, hidden " << c.hidden_size << ")\n\n";
  if (!o.trace_file.empty()) md << "(Traced run: every time below includes CUPTI's per-kernel overhead.)\n\n";
  md << "Limit measured in this run: device-to-device copy " << int(copy_bw / 1e9) << " GB/s (read+write)\n\n";
  md << "| measurement | value | reference | ratio |\n|---|---:|---:|---:|\n";
  char line[512];
  std::snprintf(line, sizeof line, "| prefill %lld tokens (chunks of %lld) | %.0f tok/s | 7,410 tok/s/GPU (model card) | %.2fx |\n",
                (long long)o.context, (long long)o.chunk, double(o.context) / prefill_s,
                double(o.context) / prefill_s / 7410.0);
  md << line;
  if (o.batch == 1) {
    std::snprintf(line, sizeof line,
                  "| decode step, batch 1, context %lld (median of %lld) | %.3f ms | roofline %.3f ms (%.2f GB at copy BW) | %.1f %% |\n",
                  (long long)o.context, (long long)o.steps, median * 1e3, roofline_s * 1e3, bytes / 1e9,
                  100.0 * roofline_s / median);
    md << line;
    std::snprintf(line, sizeof line, "| the same, every kernel launched directly (no CUDA graphs) | %.3f ms | | %.1f %% |\n",
                  plain_median * 1e3, 100.0 * roofline_s / plain_median);
  } else {
    std::snprintf(line, sizeof line, "| decode step, batch %lld, context %lld (median of %lld) | %.3f ms | %.0f tok/s | |\n",
                  (long long)o.batch, (long long)o.context, (long long)o.steps, median * 1e3,
                  double(o.batch) / median);
    md << line;
    std::snprintf(line, sizeof line, "| the same, every kernel launched directly (no CUDA graphs) | %.3f ms | %.0f tok/s | |\n",
                  plain_median * 1e3, double(o.batch) / plain_median);
  }
  md << line;
  std::snprintf(line, sizeof line, "| host time to issue a step (median): with graphs / without | %.3f / %.3f ms | | |\n",
                replayed.issue_s * 1e3, plain.issue_s * 1e3);
  md << line;
  std::snprintf(line, sizeof line,
                "\nCUDA-graph replay (per decode step, over the %lld timed steps): %.1f segments replayed, %.1f "
                "not; %lld graphs kept\n",
                (long long)o.steps, double(after.replayed - before.replayed) / double(o.steps),
                double(after.eager + after.captured - before.eager - before.captured) / double(o.steps),
                (long long)after.graphs);
  md << line;
  md << "\nDecode step by op (each op timed alone with a device sync around it, summed over " << o.steps
     << " steps; context " << o.context << " and up):\n\n"
     << ops->table();
  std::printf("%s", md.str().c_str());
  if (!o.out_file.empty()) std::ofstream(o.out_file) << md.str();
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "dsq_model_bench: error: %s\n", e.what());
  return 1;
}
