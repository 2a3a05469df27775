// `dsq synth <out dir>`: writes a checkpoint of random weights for any DeepSeek-V4 config —
// real V4-Flash dimensions with a few layers and experts for GPU benchmarks and load tests,
// or any config.json given with --config. Tensors carry release names, config.json is in
// the release spelling, and the shards are written one unit at a time (the global tensors,
// then one shard per layer) so memory never holds more than one layer.
//
// Formats: bf16 (every linear dense BF16) or w4a16-fp8 (what `dsq quantize --recipe
// w4a16-fp8` writes: the recipe decides per linear between INT4 group-128 experts,
// FP8 128x128 block-scaled attention and BF16, with its quantization_config).
//
// Values are random but shaped like a trained model so a forward pass stays finite:
// linears have standard deviation 1/sqrt(in), norms are near 1, the hash-routing table
// holds distinct experts per token. Every tensor's values depend only on --seed and its
// name, not on the thread count or the order of writing.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "formats/model_config.h"
#include "formats/quantized_matrix.h"
#include "quant/module_quantizer.h"
#include "quant/output_checkpoint.h"
#include "quant/recipe.h"

namespace dsq::cli {
namespace {

// DeepSeek-V4-Flash's config.json (release spelling; checkpoint-formats.md §1.2), without
// its FP8/FP4 quantization_config and the MTP block.
const char* kV4FlashConfig = R"({
  "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
  "vocab_size": 129280, "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false,
  "hidden_size": 4096, "num_hidden_layers": 43, "num_attention_heads": 64, "num_key_value_heads": 1,
  "head_dim": 512, "qk_rope_head_dim": 64, "q_lora_rank": 1024, "o_groups": 8, "o_lora_rank": 1024,
  "sliding_window": 128,
  "compress_ratios": [0, 0, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128,
                      4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4],
  "compress_rope_theta": 160000.0, "rope_theta": 10000.0,
  "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                   "beta_fast": 32, "beta_slow": 1},
  "max_position_embeddings": 1048576,
  "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512,
  "n_routed_experts": 256, "num_experts_per_tok": 6, "n_shared_experts": 1, "moe_intermediate_size": 2048,
  "num_hash_layers": 3, "scoring_func": "sqrtsoftplus", "topk_method": "noaux_tc", "norm_topk_prob": true,
  "routed_scaling_factor": 1.5, "swiglu_limit": 10.0,
  "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-06, "rms_norm_eps": 1e-06,
  "num_nextn_predict_layers": 0, "hidden_act": "silu", "attention_bias": false, "attention_dropout": 0.0,
  "torch_dtype": "bfloat16", "initializer_range": 0.02, "use_cache": true
})";

struct SynthOptions {
  std::string out_dir;
  std::string preset = "v4-flash";
  std::string config_path;  // overrides --preset
  int64_t layers = 0;       // 0: as in the config
  int64_t experts = 0;      // 0: as in the config
  std::string format = "bf16";
  uint64_t seed = 1;
};

// ---- deterministic random numbers: one stream per (seed, tensor name) ----

uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t name_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return splitmix(h ^ splitmix(seed));
}

// Uniform in [-1, 1), element i of the stream.
float uniform(uint64_t stream, int64_t i) {
  return float(splitmix(stream + uint64_t(i)) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

// Fills n elements in parallel; fn(i, stream) -> value.
template <typename T, typename Fn>
Tensor random_tensor(DType dtype, const Shape& shape, uint64_t stream, Fn fn) {
  Tensor t = Tensor::zeros(dtype, shape);
  T* p = t.mutable_data<T>();
  parallel_for(t.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) p[i] = fn(i, stream);
  });
  return t;
}

// Uniform with standard deviation `stdev` (sqrt(3) scales [-1,1) to unit variance).
Tensor random_bf16(const Shape& shape, uint64_t stream, float stdev, float mean = 0.0f) {
  const float a = stdev * std::sqrt(3.0f);
  return random_tensor<uint16_t>(DType::BF16, shape, stream,
                                 [=](int64_t i, uint64_t s) { return f32_to_bf16(mean + a * uniform(s, i)); });
}
Tensor random_f32(const Shape& shape, uint64_t stream, float stdev, float mean = 0.0f) {
  const float a = stdev * std::sqrt(3.0f);
  return random_tensor<float>(DType::F32, shape, stream, [=](int64_t i, uint64_t s) { return mean + a * uniform(s, i); });
}

// ---- one unit of tensors ----

class Synthesizer {
 public:
  Synthesizer(const ModelConfig& c, const SynthOptions& o, const quant::Recipe* recipe)
      : c_(c), o_(o), recipe_(recipe) {}

  std::vector<NamedTensor> globals() {
    const int64_t H = c_.hidden_size, V = c_.vocab_size, N = c_.hc_mult;
    std::vector<NamedTensor> out;
    add(out, "embed.weight", random_bf16({V, H}, seed("embed.weight"), 1.0f));
    add_linear(out, "head", V, H);
    add(out, "norm.weight", norm({H}, "norm.weight"));
    add(out, "hc_head_fn", random_f32({N, N * H}, seed("hc_head_fn"), 1.0f / std::sqrt(float(N * H))));
    add(out, "hc_head_base", random_f32({N}, seed("hc_head_base"), 0.1f));
    add(out, "hc_head_scale", random_f32({1}, seed("hc_head_scale"), 0.1f, 1.0f));
    return out;
  }

  std::vector<NamedTensor> layer(int i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    const int64_t H = c_.hidden_size, D = c_.head_dim, N = c_.hc_mult, mix = (2 + N) * N;
    const int64_t E = c_.n_routed_experts, F = c_.moe_intermediate_size;
    std::vector<NamedTensor> out;
    add(out, p + "attn_norm.weight", norm({H}, p + "attn_norm.weight"));
    add(out, p + "ffn_norm.weight", norm({H}, p + "ffn_norm.weight"));
    for (const char* hc : {"hc_attn", "hc_ffn"}) {
      const std::string n = p + hc;
      add(out, n + "_fn", random_f32({mix, N * H}, seed(n + "_fn"), 1.0f / std::sqrt(float(N * H))));
      add(out, n + "_base", random_f32({mix}, seed(n + "_base"), 0.1f));
      add(out, n + "_scale", random_f32({3}, seed(n + "_scale"), 0.1f, 1.0f));
    }
    add_linear(out, p + "attn.wq_a", c_.q_lora_rank, H);
    add(out, p + "attn.q_norm.weight", norm({c_.q_lora_rank}, p + "attn.q_norm.weight"));
    add_linear(out, p + "attn.wq_b", c_.num_heads * D, c_.q_lora_rank);
    add_linear(out, p + "attn.wkv", D, H);
    add(out, p + "attn.kv_norm.weight", norm({D}, p + "attn.kv_norm.weight"));
    add_linear(out, p + "attn.wo_a", c_.o_groups * c_.o_lora_rank, c_.num_heads * D / c_.o_groups);
    add_linear(out, p + "attn.wo_b", H, c_.o_groups * c_.o_lora_rank);
    add(out, p + "attn.attn_sink", random_f32({c_.num_heads}, seed(p + "attn.attn_sink"), 0.5f));
    const AttentionKind kind = c_.attention[size_t(i)];
    if (kind != AttentionKind::Sliding) {
      const bool csa = kind == AttentionKind::CSA;
      add_compressor(out, p + "attn.compressor", D, csa ? 2 * D : D, c_.compress_rate(i));
      if (csa) {
        const int64_t DI = c_.index_head_dim;
        add_linear(out, p + "attn.indexer.wq_b", c_.index_n_heads * DI, c_.q_lora_rank);
        add_linear(out, p + "attn.indexer.weights_proj", c_.index_n_heads, H);
        add_compressor(out, p + "attn.indexer.compressor", DI, 2 * DI, c_.compress_rate(i));
      }
    }
    add_linear(out, p + "ffn.gate", E, H);
    if (c_.moe[size_t(i)] == MoeKind::Hash)
      add(out, p + "ffn.gate.tid2eid", hash_table(p + "ffn.gate.tid2eid"));
    else
      add(out, p + "ffn.gate.bias", random_f32({E}, seed(p + "ffn.gate.bias"), 0.1f));
    for (int64_t e = 0; e < E; ++e) add_expert(out, p + "ffn.experts." + std::to_string(e), F, H);
    add_expert(out, p + "ffn.shared_experts", F, H);
    return out;
  }

 private:
  uint64_t seed(const std::string& name) const { return name_seed(o_.seed, name); }

  static void add(std::vector<NamedTensor>& out, std::string name, Tensor t) {
    out.push_back({std::move(name), std::move(t)});
  }

  Tensor norm(const Shape& shape, const std::string& name) const { return random_bf16(shape, seed(name), 0.05f, 1.0f); }

  void add_compressor(std::vector<NamedTensor>& out, const std::string& prefix, int64_t width, int64_t raw,
                      int64_t rate) {
    add_linear(out, prefix + ".wkv", raw, c_.hidden_size);
    add_linear(out, prefix + ".wgate", raw, c_.hidden_size);
    add(out, prefix + ".ape", random_f32({rate, raw}, seed(prefix + ".ape"), 0.1f));
    add(out, prefix + ".norm.weight", norm({width}, prefix + ".norm.weight"));
  }

  void add_expert(std::vector<NamedTensor>& out, const std::string& prefix, int64_t F, int64_t H) {
    add_linear(out, prefix + ".w1", F, H);
    add_linear(out, prefix + ".w2", H, F);
    add_linear(out, prefix + ".w3", F, H);
  }

  // Each token's k experts, distinct, as the hash router needs.
  Tensor hash_table(const std::string& name) const {
    const int64_t V = c_.vocab_size, k = c_.num_experts_per_tok, E = c_.n_routed_experts;
    Tensor t = Tensor::zeros(DType::I64, {V, k});
    int64_t* p = t.mutable_data<int64_t>();
    const uint64_t s = seed(name);
    parallel_for(V, 4096, [&](int64_t b, int64_t e) {
      for (int64_t v = b; v < e; ++v) {
        const int64_t first = int64_t(splitmix(s + uint64_t(v)) % uint64_t(E));
        for (int64_t j = 0; j < k; ++j) p[v * k + j] = (first + j) % E;
      }
    });
    return t;
  }

  // A linear module in the format the recipe gives it (dense BF16 without a recipe).
  void add_linear(std::vector<NamedTensor>& out, const std::string& module, int64_t rows, int64_t cols) {
    const uint64_t s = seed(module);
    const float stdev = 1.0f / std::sqrt(float(cols));
    const quant::RecipeGroup* group = recipe_ ? recipe_->match(module) : nullptr;
    QuantizedMatrix m;
    m.rows = rows;
    m.cols = cols;
    if (!group) {
      m = QuantizedMatrix::dense(random_bf16({rows, cols}, s, stdev));
    } else if (group->method == quant::QuantMethod::Fp8Block) {
      m.format = WeightFormat::Fp8Block;
      m.group_size = 128;
      // Codes with standard deviation ~64 and one power-of-two scale per block bringing
      // them to `stdev`, as the quantizer's PowerOfTwo rule would.
      m.values = random_tensor<uint8_t>(DType::F8_E4M3, {rows, cols}, s, [](int64_t i, uint64_t st) {
        return f32_to_f8e4m3(110.0f * uniform(st, i));
      });
      const float scale = std::exp2(std::round(std::log2(stdev / 64.0f)));
      m.scales = random_tensor<float>(DType::F32, {(rows + 127) / 128, (cols + 127) / 128}, s,
                                      [=](int64_t, uint64_t) { return scale; });
    } else {
      const int64_t g = group->group_size;
      DSQ_CHECK(cols % g == 0 && cols % 8 == 0, module, ": INT4 group ", g, " needs in-features divisible by ",
                g, " (and 8), this config has ", cols, " (use --format bf16 for such configs)");
      m.format = WeightFormat::Int4Group;
      m.group_size = g;
      // Codes uniform in [-8, 7] (standard deviation ~4.6); bf16 scales bring them to `stdev`.
      m.values = random_tensor<int32_t>(DType::I32, {rows, cols / 8}, s, [](int64_t i, uint64_t st) {
        return int32_t(uint32_t(splitmix(st + uint64_t(i))));
      });
      m.scales = random_bf16({rows, cols / g}, s ^ 0x5ca1e, stdev / 4.6f * 0.2f, stdev / 4.6f);
    }
    for (NamedTensor& t : quant::module_tensors(module, m)) out.push_back(std::move(t));
  }

  const ModelConfig& c_;
  const SynthOptions& o_;
  const quant::Recipe* recipe_;
};

ModelConfig synth_config(const SynthOptions& o) {
  ModelConfig c;
  if (!o.config_path.empty()) {
    c = ModelConfig::load(o.config_path);
  } else {
    DSQ_CHECK(o.preset == "v4-flash", "dsq synth: unknown preset '", o.preset, "' (known: v4-flash)");
    c = ModelConfig::from_json(nlohmann::json::parse(kV4FlashConfig), "preset v4-flash");
  }
  if (o.layers > 0) {
    DSQ_CHECK(o.layers <= c.num_layers, "dsq synth: --layers ", o.layers, " exceeds the config's ", c.num_layers);
    c.num_layers = o.layers;
    c.attention.resize(size_t(o.layers));
    c.moe.resize(size_t(o.layers));
  }
  if (o.experts > 0) c.n_routed_experts = o.experts;
  DSQ_CHECK(c.num_experts_per_tok <= c.n_routed_experts, "dsq synth: ", c.n_routed_experts,
            " experts cannot serve ", c.num_experts_per_tok, " experts per token");
  c.num_mtp_layers = 0;  // no MTP block is written
  return c;
}

void run_synth(const SynthOptions& o) {
  DSQ_CHECK(o.format == "bf16" || o.format == "w4a16-fp8", "dsq synth: unknown --format '", o.format,
            "' (bf16 or w4a16-fp8)");
  DSQ_CHECK(o.layers >= 0 && o.experts >= 0, "dsq synth: --layers and --experts must be positive");
  const ModelConfig c = synth_config(o);
  std::unique_ptr<quant::Recipe> recipe;
  if (o.format == "w4a16-fp8") recipe = std::make_unique<quant::Recipe>(quant::Recipe::preset("w4a16-fp8"));

  nlohmann::json config = c.to_release_json();
  config["num_hidden_layers"] = c.num_layers;
  config["torch_dtype"] = "bfloat16";
  for (const char* k : {"quantization_config", "expert_dtype", "dtype"}) config.erase(k);
  if (recipe) config["quantization_config"] = recipe->output_config().to_json();

  Synthesizer synth(c, o, recipe.get());
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  DSQ_CHECK(!ec, o.out_dir, ": cannot create the output directory: ", ec.message());
  quant::OutputCheckpoint out(o.out_dir, int(c.num_layers) + 1);
  std::printf("dsq synth: %s, %lld layers, %lld experts, format %s -> %s\n",
              o.config_path.empty() ? o.preset.c_str() : o.config_path.c_str(), (long long)c.num_layers,
              (long long)c.n_routed_experts, o.format.c_str(), o.out_dir.c_str());
  out.write_shard(0, synth.globals());
  for (int i = 0; i < int(c.num_layers); ++i) {
    out.write_shard(i + 1, synth.layer(i));
    std::printf("  layer %d/%lld written\n", i + 1, (long long)c.num_layers);
    std::fflush(stdout);
  }
  out.finish(config, "");
}

}  // namespace

void register_synth(CLI::App& app, CommonOptions& common) {
  auto* cmd = app.add_subcommand("synth", "Write a checkpoint of random weights (any DeepSeek-V4 config)");
  auto o = std::make_shared<SynthOptions>();
  cmd->add_option("out", o->out_dir, "Output directory")->required();
  cmd->add_option("--preset", o->preset, "Built-in config: v4-flash (DeepSeek-V4-Flash dimensions)");
  cmd->add_option("--config", o->config_path, "A config.json (or model directory) to use instead of --preset");
  cmd->add_option("--layers", o->layers, "Keep only the first N layers (default: all)");
  cmd->add_option("--experts", o->experts, "Routed experts per layer (default: as configured)");
  cmd->add_option("--format", o->format, "bf16 (dense) or w4a16-fp8 (INT4 experts, FP8 attention)");
  cmd->add_option("--seed", o->seed, "Random seed (default 1)");
  add_threads_option(cmd, &common);
  cmd->callback([o, &common] {
    apply_common(common);
    run_synth(*o);
  });
}

}  // namespace dsq::cli
