// quantize_model: the sequential quantization driver (see quantizer.h).
#include "quant/quantizer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "backend/cpu/linear.h"
#include "backend/cpu/swiglu.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/progress.h"
#include "model/model.h"
#include "quant/calibration_data.h"
#include "quant/checkpoint_units.h"
#include "quant/hessian_collector.h"
#include "quant/layer_runner.h"
#include "quant/output_checkpoint.h"
#include "tokenizer/tokenizer.h"

namespace dsq::quant {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kStateDir = ".dsq-quantize";
constexpr const char* kReportFile = "quantization_report.json";

// ---- the model's linears, by native weight name, to install quantized matrices ----------

std::map<std::string, model::Linear*> linears_by_name(model::LayerWeights& w) {
  std::map<std::string, model::Linear*> out;
  auto add = [&](model::Linear& l) {
    if (!l.name.empty()) out[l.name] = &l;
  };
  model::AttentionWeights& a = w.attn;
  for (model::Linear* l : {&a.wq_a, &a.wq_b, &a.wkv, &a.wo_a, &a.wo_b, &a.compressor.wkv, &a.compressor.wgate,
                           &a.indexer.wq_b, &a.indexer.weights_proj, &a.indexer.compressor.wkv,
                           &a.indexer.compressor.wgate, &w.ffn.gate, &w.ffn.shared.w1, &w.ffn.shared.w2, &w.ffn.shared.w3})
    add(*l);
  for (model::ExpertWeights& e : w.ffn.experts) {
    add(e.w1);
    add(e.w2);
    add(e.w3);
  }
  return out;
}

// A routed expert's module: "layers.3.ffn.experts.12.w1" -> expert 12, projection "w1".
struct ExpertId {
  int expert = -1;
  std::string proj;
};
ExpertId routed_expert(const std::string& module) {
  const size_t at = module.find(".ffn.experts.");
  if (at == std::string::npos) return {};
  const size_t e0 = at + 13, dot = module.find('.', e0);
  if (dot == std::string::npos) return {};
  return ExpertId{std::stoi(module.substr(e0, dot - e0)), module.substr(dot + 1)};
}

std::string expert_module(const std::string& prefix, int e, const char* proj) {
  return prefix + "ffn.experts." + std::to_string(e) + "." + proj;
}

// ---- resume state -------------------------------------------------------------------------

struct State {
  fs::path dir;

  json read_json(const std::string& name) const {
    std::ifstream in(dir / name);
    DSQ_CHECK(in, (dir / name).string(), ": missing (the saved quantization state is incomplete)");
    try {
      return json::parse(in);
    } catch (const json::exception& e) {
      throw error((dir / name).string(), ": unreadable (", e.what(), ")");
    }
  }
  void write_json(const std::string& name, const json& j) const {
    write_file_atomically((dir / name).string(), j.dump(1) + "\n");
  }
  void save_streams(int next_layer, const std::vector<float>& streams) const {
    AtomicFile f((dir / "streams.bin").string());
    const int64_t header[2] = {next_layer, int64_t(streams.size())};
    f.write(header, sizeof header);
    f.write(streams.data(), streams.size() * sizeof(float));
    f.commit();
  }
  void load_streams(int next_layer, std::vector<float>& streams) const {
    const fs::path p = dir / "streams.bin";
    std::ifstream in(p, std::ios::binary);
    DSQ_CHECK(in, p.string(), ": missing (the saved quantization state is incomplete)");
    int64_t header[2];
    in.read(reinterpret_cast<char*>(header), sizeof header);
    DSQ_CHECK(in && header[0] == next_layer && header[1] == int64_t(streams.size()), p.string(),
              ": holds the inputs of layer ", header[0], " (", header[1], " values), expected layer ", next_layer,
              " (", streams.size(), " values)");
    in.read(reinterpret_cast<char*>(streams.data()), std::streamsize(streams.size() * sizeof(float)));
    DSQ_CHECK(in, p.string(), ": truncated");
  }
};

void remove_stale_temporaries(const fs::path& dir) {
  if (!fs::exists(dir)) return;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().find(".tmp-") != std::string::npos) fs::remove(entry.path());
}

// ---- all-token Hessians for routed experts ------------------------------------------------

// The Hessian of expert e's w2 input when the expert runs on every token: x = MoE inputs.
HessianBlock all_token_down_hessian(const model::ExpertWeights& e, const std::vector<float>& x, int64_t H,
                                    float swiglu_limit) {
  const int64_t T = int64_t(x.size()) / H, F = e.w1.w.rows;
  Hessian h(F);
  constexpr int64_t kChunk = 4096;
  std::vector<float> gate, up;
  for (int64_t t0 = 0; t0 < T; t0 += kChunk) {
    const int64_t n = std::min(kChunk, T - t0);
    gate.resize(size_t(n * F));
    up.resize(size_t(n * F));
    cpu::linear(x.data() + t0 * H, n, e.w1.w, gate.data());
    cpu::linear(x.data() + t0 * H, n, e.w3.w, up.data());
    cpu::swiglu_clamped(gate.data(), up.data(), n * F, swiglu_limit, gate.data());
    h.add(gate.data(), n);
  }
  return HessianBlock{0, e.w2.w.rows, h.tokens(), h.matrix()};
}

std::vector<HessianBlock> blocks_of(const HessianCollector& c, const std::string& weight) {
  std::vector<HessianBlock> out;
  for (const auto& r : c.hessians(weight)) out.push_back({r.row_begin, r.row_end, r.hessian.tokens(), r.hessian.matrix()});
  std::sort(out.begin(), out.end(), [](const HessianBlock& a, const HessianBlock& b) { return a.row_begin < b.row_begin; });
  return out;
}

std::string format_error(double e) {
  if (e < 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", e);
  return buf;
}

void log_module(const ModuleReport& r) {
  std::string line = r.module + "  " + r.scheme;
  if (r.scheme == "int4-gptq")
    line += "  tokens " + std::to_string(r.tokens) + "  error " + format_error(r.gptq_error) + "  rtn " +
            format_error(r.rtn_error) + "  gptq-loss " + format_error(r.gptq_loss);
  if (!r.note.empty()) line += "  (" + r.note + ")";
  std::fprintf(stderr, "%s\n", line.c_str());
}

// ---- one unit ---------------------------------------------------------------------------

struct UnitOutput {
  std::vector<NamedTensor> tensors;
  std::vector<ModuleReport> reports;
};

void add_passthrough(const Checkpoint& ckpt, const UnitContents& contents, UnitOutput& out) {
  for (const std::string& name : contents.passthrough) out.tensors.push_back({name, ckpt.get(name)});
}

// Quantizes a unit without calibration data (globals, MTP blocks, RTN/FP8-only recipes).
UnitOutput quantize_data_free(const Checkpoint& ckpt, const Unit& unit, const Recipe& recipe, bool log) {
  UnitOutput out;
  const UnitContents contents = unit_contents(ckpt, unit);
  add_passthrough(ckpt, contents, out);
  for (const std::string& m : contents.modules) {
    QuantizedModule q = quantize_module(m, load_module(ckpt, m), recipe.match(m), {},
                                        "no calibration data reaches this module: RTN");
    if (log) log_module(q.report);
    out.tensors.insert(out.tensors.end(), q.tensors.begin(), q.tensors.end());
    out.reports.push_back(std::move(q.report));
  }
  return out;
}

}  // namespace

// ---- the driver ----------------------------------------------------------------------------

QuantizeResult quantize_model(const QuantizeOptions& opt) {
  const auto start = std::chrono::steady_clock::now();
  DSQ_CHECK(!opt.recipe.needs_calibration() || !opt.calib_path.empty(), "recipe ", opt.recipe.name,
            " uses GPTQ: give calibration data (--calib)");
  DSQ_CHECK(opt.calib_path.empty() || fs::exists(opt.calib_path), opt.calib_path, ": no such calibration file");
  const model::Model model = model::Model::load(opt.model_dir);
  const Checkpoint& ckpt = model.checkpoint();
  const ModelConfig& config = model.config();
  const std::vector<Unit> units = split_units(ckpt);
  for (const std::string& name : ckpt.unrecognized_names())
    std::fprintf(stderr, "dsq quantize: skipping %s (not a DeepSeek-V4 tensor)\n", name.c_str());

  // Output directory and the state that makes the run resumable.
  const fs::path out_dir(opt.output_dir);
  State state{out_dir / kStateDir};
  const json fingerprint = {{"input", fs::absolute(opt.model_dir).lexically_normal().string()},
                            {"recipe", opt.recipe.to_json()},
                            {"calib", opt.calib_path},
                            {"num_samples", opt.num_samples},
                            {"seq_len", opt.seq_len},
                            {"propagate_quantized", opt.propagate_quantized},
                            {"all_experts", opt.all_experts},
                            {"min_expert_tokens", opt.min_expert_tokens},
                            {"expert_fallback", opt.expert_fallback == ExpertFallback::Rtn ? "rtn" : "all-tokens"},
                            {"batch_tokens", opt.batch_tokens}};
  int units_done = 0;
  const bool has_state = fs::exists(state.dir / "run.json");
  if (opt.resume && has_state) {
    DSQ_CHECK(state.read_json("run.json") == fingerprint, state.dir.string(),
              ": the interrupted run used other inputs or options; resume it with the same ones or start afresh");
    units_done = state.read_json("progress.json").at("units_done").get<int>();
    remove_stale_temporaries(out_dir);
    remove_stale_temporaries(state.dir);
    std::fprintf(stderr, "dsq quantize: resuming after %d of %zu units\n", units_done, units.size());
  } else {
    DSQ_CHECK(!fs::exists(out_dir) || fs::is_empty(out_dir), out_dir.string(),
              has_state ? ": holds an interrupted run; add --resume to continue it"
                        : ": exists and is not empty");
    fs::create_directories(state.dir);
    state.write_json("run.json", fingerprint);
    state.write_json("progress.json", {{"units_done", 0}});
  }
  const OutputCheckpoint output(out_dir.string(), int(units.size()));

  // Calibration set and the streams entering the first unfinished layer.
  const bool calibrate = opt.recipe.needs_calibration() && config.num_layers > 0;
  std::unique_ptr<LayerRunner> runner;
  if (calibrate) {
    const tokenizer::Tokenizer tok = tokenizer::Tokenizer::load(opt.model_dir);
    runner = std::make_unique<LayerRunner>(model, load_calibration_samples(opt.calib_path, tok, opt.num_samples,
                                                                           opt.seq_len),
                                           opt.batch_tokens);
    const int next_layer = std::max(0, units_done - 1);
    if (units_done >= 2 && units_done <= int(config.num_layers)) {
      runner->streams().resize(size_t(runner->num_tokens() * runner->stream_width()));
      state.load_streams(next_layer, runner->streams());
    } else if (units_done <= int(config.num_layers)) {
      runner->embed();
    }
  }

  QuantizeResult result;
  ProgressBar bar("quantize", int64_t(units.size()), "unit");
  for (size_t u = 0; u < units.size(); ++u) {
    const Unit& unit = units[u];
    if (int(u) < units_done) {
      const json saved = state.read_json("report-" + std::to_string(u) + ".json");
      for (const auto& r : saved) result.modules.push_back(ModuleReport::from_json(r));
      bar.update(int64_t(u + 1), unit.label + " (done before)");
      continue;
    }
    UnitOutput out;
    if (unit.layer < 0 || !calibrate) {
      out = quantize_data_free(ckpt, unit, opt.recipe, opt.log_modules);
    } else {
      const int i = unit.layer;
      const std::string prefix = "layers." + std::to_string(i) + ".";
      model::LayerWeights weights = model.weights().layers[size_t(i)];
      const UnitContents contents = unit_contents(ckpt, unit);
      add_passthrough(ckpt, contents, out);

      // What to collect.
      HessianCollector collector;
      const std::string router = prefix + "ffn.gate.weight";
      bool need_router = false, keep_moe_inputs = false;
      for (const std::string& m : contents.modules) {
        const RecipeGroup* g = opt.recipe.match(m);
        if (!g || g->method != QuantMethod::Gptq) continue;
        const ExpertId ex = routed_expert(m);
        if (ex.expert < 0) {
          collector.want(m + ".weight");
          continue;
        }
        if (opt.expert_fallback == ExpertFallback::AllTokens || opt.all_experts) {
          need_router = true;
          keep_moe_inputs = keep_moe_inputs || ex.proj == "w2";
        }
        if (opt.all_experts) continue;
        const std::string w1 = expert_module(prefix, ex.expert, "w1");
        const RecipeGroup* g1 = opt.recipe.match(w1);
        if (ex.proj == "w3" && g1 && g1->method == QuantMethod::Gptq) continue;  // aliased below
        collector.want(m + ".weight");
      }
      for (const std::string& m : contents.modules) {
        const ExpertId ex = routed_expert(m);
        const RecipeGroup* g = opt.recipe.match(m);
        if (ex.proj == "w3" && g && g->method == QuantMethod::Gptq && !opt.all_experts) {
          const std::string w1 = expert_module(prefix, ex.expert, "w1") + ".weight";
          const RecipeGroup* g1 = opt.recipe.match(expert_module(prefix, ex.expert, "w1"));
          if (g1 && g1->method == QuantMethod::Gptq) collector.alias(m + ".weight", w1);
        }
      }
      if (need_router) collector.want(router);
      if (keep_moe_inputs) collector.keep_rows(router);

      // 1. Calibration pass with the original weights.
      std::vector<float> inputs;
      if (opt.propagate_quantized) inputs = runner->streams();
      runner->run_layer(i, weights, &collector);

      // 2. Quantize every module.
      const std::map<std::string, model::Linear*> linears = linears_by_name(weights);
      std::vector<HessianBlock> router_blocks;
      if (need_router) router_blocks = blocks_of(collector, router);
      for (const std::string& m : contents.modules) {
        const RecipeGroup* g = opt.recipe.match(m);
        const QuantizedMatrix source = load_module(ckpt, m);
        std::vector<HessianBlock> blocks;
        std::string reason = "no calibration data reaches this module: RTN";
        if (g && g->method == QuantMethod::Gptq) {
          const ExpertId ex = routed_expert(m);
          const bool all_tokens_wanted = opt.all_experts;
          bool use_all_tokens = all_tokens_wanted;
          if (ex.expert >= 0 && !all_tokens_wanted) {
            // One decision per expert, from the tokens routed to it (what its w1 or w2 saw).
            int64_t seen = 0;
            for (const char* proj : {"w1", "w2"})
              for (const auto& r : collector.hessians(expert_module(prefix, ex.expert, proj) + ".weight"))
                seen = std::max(seen, r.hessian.tokens());
            const int64_t min_tokens = opt.min_expert_tokens >= 0 ? opt.min_expert_tokens : config.hidden_size;
            blocks = blocks_of(collector, m + ".weight");
            if (seen < min_tokens) {
              reason = "expert saw " + std::to_string(seen) + " tokens (< " + std::to_string(min_tokens) + ")";
              blocks.clear();
              if (opt.expert_fallback == ExpertFallback::AllTokens) {
                use_all_tokens = true;
              } else {
                reason += ": RTN";
              }
            }
          } else if (ex.expert < 0) {
            blocks = blocks_of(collector, m + ".weight");
          }
          if (use_all_tokens) {
            if (ex.proj == "w2") {
              const model::ExpertWeights& e = model.weights().layers[size_t(i)].ffn.experts[size_t(ex.expert)];
              blocks = {all_token_down_hessian(e, collector.kept_rows(router), config.hidden_size,
                                               float(config.swiglu_limit))};
            } else {
              blocks = router_blocks;
              for (HessianBlock& b : blocks) b.row_end = source.rows;
            }
          }
          QuantizedModule q = quantize_module(m, source, g, blocks, reason);
          if (use_all_tokens && !all_tokens_wanted) q.report.note = reason + ": calibrated on all tokens";
          if (opt.log_modules) log_module(q.report);
          if (auto it = linears.find(m + ".weight"); it != linears.end()) it->second->w = q.matrix;
          out.tensors.insert(out.tensors.end(), q.tensors.begin(), q.tensors.end());
          out.reports.push_back(std::move(q.report));
          continue;
        }
        QuantizedModule q = quantize_module(m, source, g, {}, reason);
        if (opt.log_modules) log_module(q.report);
        if (auto it = linears.find(m + ".weight"); it != linears.end()) it->second->w = q.matrix;
        out.tensors.insert(out.tensors.end(), q.tensors.begin(), q.tensors.end());
        out.reports.push_back(std::move(q.report));
      }

      // 3. The next layer's inputs.
      if (opt.propagate_quantized) {
        runner->streams() = std::move(inputs);
        runner->run_layer(i, weights, nullptr);
      }
    }

    // Commit the unit: shard, report, then (for layers) the next inputs, then progress.
    output.write_shard(int(u), std::move(out.tensors));
    json reports = json::array();
    for (const ModuleReport& r : out.reports) reports.push_back(r.to_json());
    state.write_json("report-" + std::to_string(u) + ".json", reports);
    if (calibrate && unit.layer >= 0) state.save_streams(unit.layer + 1, runner->streams());
    state.write_json("progress.json", {{"units_done", int(u + 1)}});
    result.modules.insert(result.modules.end(), out.reports.begin(), out.reports.end());
    bar.update(int64_t(u + 1), unit.label);
    if (const char* stop = std::getenv("DSQ_QUANTIZE_EXIT_AFTER_UNIT"); stop && std::atoi(stop) == int(u))
      std::_Exit(137);  // test hook: die like kill -9 right after a committed unit
  }
  bar.finish();

  // config.json: every original key (plus the release spelling vLLM reads), our
  // quantization_config replacing any earlier one.
  json cfg = config.to_release_json();
  cfg["quantization_config"] = opt.recipe.output_config().to_json();
  output.finish(cfg, opt.model_dir);
  json all = json::array();
  for (const ModuleReport& r : result.modules) all.push_back(r.to_json());
  write_file_atomically((out_dir / kReportFile).string(), all.dump(1) + "\n");
  fs::remove_all(state.dir);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

std::string format_summary(const std::vector<ModuleReport>& modules) {
  struct Row {
    int64_t count = 0, gptq_count = 0, rtn_better = 0, fallbacks = 0;
    uint64_t before = 0, after = 0;
    double gptq_error = 0, rtn_error = 0;
  };
  std::map<std::string, Row> rows;
  Row total;
  for (const ModuleReport& m : modules) {
    for (Row* r : {&rows[m.scheme], &total}) {
      ++r->count;
      r->before += m.bytes_before;
      r->after += m.bytes_after;
      if (m.scheme == "int4-gptq") {
        ++r->gptq_count;
        r->gptq_error += m.gptq_error;
        r->rtn_error += m.rtn_error;
        r->rtn_better += m.note.find("kept RTN") != std::string::npos;
      }
      r->fallbacks += !m.note.empty() && m.note.find("kept RTN") == std::string::npos;
    }
  }
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof line, "%-16s %8s %14s %14s %12s %12s %10s\n", "scheme", "modules", "bytes before",
                "bytes after", "gptq error", "rtn error", "fallbacks");
  out << line;
  auto print = [&](const std::string& name, const Row& r) {
    const std::string ge = r.gptq_count ? format_error(r.gptq_error / double(r.gptq_count)) : "-";
    const std::string re = r.gptq_count ? format_error(r.rtn_error / double(r.gptq_count)) : "-";
    std::snprintf(line, sizeof line, "%-16s %8lld %14llu %14llu %12s %12s %10lld\n", name.c_str(), (long long)r.count,
                  (unsigned long long)r.before, (unsigned long long)r.after, ge.c_str(), re.c_str(),
                  (long long)(r.fallbacks + r.rtn_better));
    out << line;
  };
  for (const auto& [scheme, r] : rows) print(scheme, r);
  print("total", total);
  out << "errors: mean over GPTQ modules of ||(Q-W)X||^2 / tokens on the calibration data; "
         "fallbacks: modules not quantized by plain GPTQ (see the report).\n";
  return out.str();
}

}  // namespace dsq::quant
