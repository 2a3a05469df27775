// Conversions without calibration: to the release format, to BF16, and W4A16 -> W4A8
// (see checkpoint_convert.h).
#include "quant/checkpoint_convert.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "formats/compressed_tensors.h"
#include "quant/checkpoint_units.h"
#include "quant/fp8_block.h"
#include "quant/output_checkpoint.h"

namespace dsq::quant {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool ends_with(const std::string& s, std::string_view tail) {
  return s.size() >= tail.size() && std::string_view(s).substr(s.size() - tail.size()) == tail;
}

// Modules the release stores as FP8 128x128 blocks.
bool release_fp8(const std::string& m) {
  for (const char* leaf : {".attn.wq_a", ".attn.wq_b", ".attn.wkv", ".attn.wo_a", ".attn.wo_b", ".attn.indexer.wq_b",
                           ".shared_experts.w1", ".shared_experts.w2", ".shared_experts.w3", ".e_proj", ".h_proj"})
    if (ends_with(m, leaf)) return true;
  return false;
}

bool routed_expert(const std::string& m) { return m.find(".ffn.experts.") != std::string::npos; }

uint8_t e8m0_of_power_of_two(float s) {
  int e;
  const float mant = std::frexp(s, &e);  // s = 0.5 * 2^e
  DSQ_CHECK(mant == 0.5f && e - 1 + 127 > 0 && e - 1 + 127 < 255, "scale ", s, " is not a representable power of two");
  return uint8_t(e - 1 + 127);
}

std::vector<NamedTensor> to_release_fp8(const std::string& m, const QuantizedMatrix& source) {
  const Tensor w = source.dequantize();
  const QuantizedMatrix q = quantize_fp8_block(w.data<float>(), source.rows, source.cols, Fp8ScaleRule::PowerOfTwo);
  Tensor scales = Tensor::zeros(DType::F8_E8M0, q.scales.shape());
  for (int64_t i = 0; i < q.scales.numel(); ++i)
    scales.mutable_data<uint8_t>()[i] = e8m0_of_power_of_two(q.scales.data<float>()[i]);
  return {{m + ".weight", q.values}, {m + ".scale", scales}};
}

std::vector<NamedTensor> to_mxfp4(const std::string& m, const QuantizedMatrix& source) {
  DSQ_CHECK(source.cols % 32 == 0, m, ": MXFP4 needs inputs divisible by 32, got ", source.cols);
  const Tensor wt = source.dequantize();
  const float* w = wt.data<float>();
  const int64_t rows = source.rows, cols = source.cols;
  Tensor values = Tensor::zeros(DType::I8, {rows, cols / 2});
  Tensor scales = Tensor::zeros(DType::F8_E8M0, {rows, cols / 32});
  uint8_t* v = values.mutable_data<uint8_t>();
  uint8_t* e = scales.mutable_data<uint8_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < cols / 32; ++b) {
      const float* x = w + r * cols + b * 32;
      float amax = 0.0f;
      for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[k]));
      // Smallest power of two s with amax / s <= 6 (the largest e2m1 value): nothing clips.
      int exp = -127;
      if (amax > 0.0f) {
        int ex;
        const float mant = std::frexp(amax / 6.0f, &ex);
        exp = mant == 0.5f ? ex - 1 : ex;
        exp = std::clamp(exp, -127, 127);
      }
      e[r * (cols / 32) + b] = uint8_t(exp + 127);
      const float s = std::ldexp(1.0f, exp);
      for (int k = 0; k < 32; k += 2) {
        const uint8_t lo = f32_to_fp4_e2m1(x[k] / s), hi = f32_to_fp4_e2m1(x[k + 1] / s);
        v[r * (cols / 2) + (b * 32 + k) / 2] = uint8_t(lo | (hi << 4));
      }
    }
  return {{m + ".weight", values}, {m + ".scale", scales}};
}

std::vector<NamedTensor> to_bf16(const std::string& m, const QuantizedMatrix& source) {
  if (source.format == WeightFormat::Dense && source.values.dtype() == DType::BF16) return {{m + ".weight", source.values}};
  return {{m + ".weight", source.dequantize().cast(DType::BF16)}};
}

void require_new_directory(const fs::path& dir) {
  DSQ_CHECK(!fs::exists(dir) || fs::is_empty(dir), dir.string(), ": exists and is not empty");
  fs::create_directories(dir);
}

}  // namespace

void convert_checkpoint(const std::string& input_dir, const std::string& output_dir, ConvertTarget target) {
  const Checkpoint ckpt = Checkpoint::open(input_dir);
  require_new_directory(output_dir);
  const std::vector<Unit> units = split_units(ckpt);
  const OutputCheckpoint out(output_dir, int(units.size()));
  for (size_t u = 0; u < units.size(); ++u) {
    const UnitContents contents = unit_contents(ckpt, units[u]);
    std::vector<NamedTensor> tensors;
    for (const std::string& name : contents.passthrough) tensors.push_back({name, ckpt.get(name)});
    for (const std::string& m : contents.modules) {
      const QuantizedMatrix source = load_module(ckpt, m);
      std::vector<NamedTensor> t;
      if (target == ConvertTarget::Bf16) t = to_bf16(m, source);
      else if (release_fp8(m)) t = to_release_fp8(m, source);
      else if (routed_expert(m)) t = to_mxfp4(m, source);
      else t = to_bf16(m, source);
      tensors.insert(tensors.end(), t.begin(), t.end());
    }
    out.write_shard(int(u), std::move(tensors));
  }
  json cfg = ckpt.config().to_release_json();
  cfg.erase("quantization_config");
  cfg.erase("expert_dtype");
  if (target == ConvertTarget::Native) {
    cfg["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"},        {"quant_method", "fp8"},
                                  {"scale_fmt", "ue8m0"},           {"weight_block_size", {128, 128}}};
    cfg["expert_dtype"] = "fp4";
  }
  out.finish(cfg, input_dir);
}

void convert_w4a8(const std::string& input_dir, const std::string& output_dir) {
  const fs::path in(input_dir), out(output_dir);
  const fs::path config_path = in / "config.json";
  std::ifstream f(config_path);
  DSQ_CHECK(f, config_path.string(), ": cannot open");
  json cfg;
  try {
    cfg = json::parse(f);
  } catch (const json::exception& e) {
    throw error(config_path.string(), ": invalid JSON (", e.what(), ")");
  }
  DSQ_CHECK(cfg.contains("quantization_config"), config_path.string(), ": no quantization_config (not a quantized checkpoint)");
  // Parsed only to validate; the edit is made on the JSON itself so every other key keeps
  // its exact value.
  const QuantizationConfig qc = QuantizationConfig::from_json(cfg["quantization_config"], config_path.string());
  DSQ_CHECK(!qc.extra.contains("_w4a8_conversion"), config_path.string(), ": already converted to W4A8");
  json& groups = cfg["quantization_config"]["config_groups"];
  json changed = json::array();
  for (const auto& [name, scheme] : qc.groups) {
    if (!scheme.weights || scheme.weights->num_bits != 4 || scheme.weights->type != "int") continue;
    const QuantArgs& w = *scheme.weights;
    // vLLM's W4A8-FP8 MoE path: symmetric, group 128, static weights (checkpoint-formats.md §4).
    DSQ_CHECK(w.strategy == "group" && w.group_size == 128 && w.symmetric && !w.dynamic, config_path.string(),
              ": group ", name, ": W4A8 needs symmetric static INT4 weights in groups of 128");
    DSQ_CHECK(!scheme.input_activations, config_path.string(), ": group ", name, " already quantizes activations");
    groups[name]["input_activations"] = QuantArgs::fp8_token_dynamic().to_json();
    groups[name]["format"] = "pack-quantized";
    changed.push_back(name);
  }
  DSQ_CHECK(!changed.empty(), config_path.string(), ": no INT4 weight group to convert");
  cfg["quantization_config"]["_w4a8_conversion"] = {
      {"tool", "dsq convert w4a8"},
      {"from", "w4a16"},
      {"groups", changed},
      {"input_activations", "fp8 e4m3, dynamic, per token, symmetric"},
      {"weights", "unchanged (files hard-linked from the W4A16 checkpoint)"}};

  require_new_directory(out);
  for (const auto& entry : fs::directory_iterator(in)) {
    const std::string name = entry.path().filename().string();
    if (name == "config.json" || !entry.is_regular_file()) continue;
    std::error_code ec;
    fs::create_hard_link(entry.path(), out / name, ec);
    if (ec) copy_file_atomically(entry.path().string(), (out / name).string());  // another file system
  }
  write_file_atomically((out / "config.json").string(), cfg.dump(2) + "\n");
}

}  // namespace dsq::quant
