// The quantizer end to end on tiny-brown: the written checkpoint against the format spec and
// read back bit-exactly, kill -9 + resume giving byte-identical output, release-format input
// quantizing like its BF16 dequantization, W4A8 conversion touching only config.json, and
// the calibration forward reproducing the model's own forward.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/read_file.h"
#include "formats/checkpoint.h"
#include "model/forward_pass.h"
#include "model/model.h"
#include "model/weight_format.h"
#include "quant/calibration_data.h"
#include "quant/checkpoint_convert.h"
#include "quant/checkpoint_units.h"
#include "quant/fp8_block.h"
#include "quant/int4_group.h"
#include "quant/layer_runner.h"
#include "quant/quantizer.h"
#include "support/paths.h"
#include "tokenizer/tokenizer.h"

namespace dsq::quant {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string model_dir() { return test::shared_path("models/tiny-brown"); }
std::string brown_train() { return test::shared_path("data/brown/train.txt"); }

std::string read_bytes(const fs::path& p) { return read_file(p.string()); }

json read_json(const fs::path& p) { return json::parse(read_bytes(p)); }

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.bytes(), b.bytes(), a.nbytes()) == 0;
}

QuantizeOptions small_gptq(const std::string& model, const std::string& out) {
  QuantizeOptions o;
  o.model_dir = model;
  o.output_dir = out;
  o.recipe = Recipe::preset("w4a16-fp8");
  o.calib_path = brown_train();
  o.num_samples = 6;
  o.seq_len = 96;
  o.batch_tokens = 200;  // several batches
  o.log_modules = false;
  return o;
}

// Every file of a directory (name -> bytes).
std::map<std::string, std::string> directory_files(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files[e.path().filename().string()] = read_bytes(e.path());
  return files;
}

TEST(QuantizedCheckpoint, RtnOutputFollowsTheSpecAndReadsBackBitExactly) {
  const std::string out = test::make_temp_dir("quant-rtn");
  QuantizeOptions o;
  o.model_dir = model_dir();
  o.output_dir = out;
  o.recipe = Recipe::preset("w4a16-rtn");
  o.log_modules = false;
  const QuantizeResult r = quantize_model(o);
  EXPECT_FALSE(fs::exists(fs::path(out) / ".dsq-quantize"));

  const Checkpoint src = Checkpoint::open(model_dir());
  const Checkpoint q = Checkpoint::open(out);
  int checked_int4 = 0, checked_fp8 = 0, checked_kept = 0;
  for (const Unit& unit : split_units(src)) {
    const UnitContents contents = unit_contents(src, unit);
    for (const std::string& name : contents.passthrough) EXPECT_TRUE(same_bytes(src.get(name), q.get(name))) << name;
    for (const std::string& m : contents.modules) {
      const QuantizedMatrix s = load_module(src, m);
      const RecipeGroup* g = o.recipe.match(m);
      const Tensor w = s.dequantize();
      if (!g) {
        EXPECT_FALSE(q.has(m + ".weight_scale")) << m;
        EXPECT_TRUE(same_bytes(src.get(m + ".weight"), q.get(m + ".weight"))) << m;
        ++checked_kept;
      } else if (g->method == QuantMethod::Fp8Block) {
        const Tensor qw = q.get(m + ".weight"), qs = q.get(m + ".weight_scale");
        EXPECT_EQ(qw.dtype(), DType::F8_E4M3);
        EXPECT_EQ(qs.dtype(), DType::F32);
        EXPECT_EQ(qs.shape(), (Shape{(s.rows + 127) / 128, (s.cols + 127) / 128}));
        const QuantizedMatrix expect = quantize_fp8_block(w.data<float>(), s.rows, s.cols);
        EXPECT_TRUE(same_bytes(qw, expect.values)) << m;
        EXPECT_TRUE(same_bytes(qs, expect.scales)) << m;
        ++checked_fp8;
      } else {
        EXPECT_FALSE(q.has(m + ".weight")) << m;
        const Tensor packed = q.get(m + ".weight_packed"), scale = q.get(m + ".weight_scale"),
                     shape = q.get(m + ".weight_shape");
        EXPECT_EQ(packed.dtype(), DType::I32);
        EXPECT_EQ(packed.shape(), (Shape{s.rows, s.cols / 8}));
        EXPECT_EQ(scale.dtype(), DType::BF16);
        EXPECT_EQ(scale.shape(), (Shape{s.rows, s.cols / 128}));
        EXPECT_EQ(shape.dtype(), DType::I64);
        EXPECT_EQ(shape.get_i64(0), s.rows);
        EXPECT_EQ(shape.get_i64(1), s.cols);
        const QuantizedMatrix expect = quantize_int4_rtn(w.data<float>(), s.rows, s.cols, 128);
        EXPECT_TRUE(same_bytes(packed, expect.values)) << m;
        EXPECT_TRUE(same_bytes(scale, expect.scales)) << m;
        // The model's loader sees the stored values exactly.
        const QuantizedMatrix loaded = model::load_linear_weight(q, m, s.rows, s.cols);
        EXPECT_EQ(loaded.format, WeightFormat::Int4Group);
        EXPECT_TRUE(same_bytes(loaded.dequantize(), expect.dequantize())) << m;
        ++checked_int4;
      }
    }
  }
  // tiny-brown: 5 layers x 16 experts x 3; wq_a, wq_b, wkv, wo_a, wo_b per layer + 2 indexers.
  EXPECT_EQ(checked_int4, 240);
  EXPECT_EQ(checked_fp8, 27);
  EXPECT_GT(checked_kept, 0);

  const json cfg = read_json(fs::path(out) / "config.json");
  EXPECT_EQ(cfg["quantization_config"], o.recipe.output_config().to_json());
  const json original = read_json(fs::path(model_dir()) / "config.json");
  for (const char* key : {"hidden_size", "moe_intermediate_size", "swiglu_limit", "hc_mult", "vocab_size"})
    EXPECT_EQ(cfg[key], original[key]) << key;
  EXPECT_EQ(cfg["compress_ratios"], json::array({0, 4, 32, 4, 32}));  // the release keys vLLM reads
  EXPECT_EQ(read_bytes(fs::path(out) / "tokenizer.json"), read_bytes(fs::path(model_dir()) / "tokenizer.json"));
  EXPECT_EQ(read_bytes(fs::path(out) / "generation_config.json"),
            read_bytes(fs::path(model_dir()) / "generation_config.json"));
  const json index = read_json(fs::path(out) / "model.safetensors.index.json");
  uint64_t total = 0;
  for (const auto& [name, file] : index["weight_map"].items()) {
    const auto f = SafetensorsFile::open((fs::path(out) / file.get<std::string>()).string());
    ASSERT_TRUE(f->contains(name)) << name;
    total += f->info(name).end - f->info(name).begin;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), q.native_names().size());
  EXPECT_EQ(r.modules.size(), size_t(checked_int4 + checked_fp8 + checked_kept));
}

TEST(QuantizedCheckpoint, KilledRunResumesToByteIdenticalOutput) {
  const std::string dir = test::make_temp_dir("quant-resume");
  const std::string full = dir + "/full", killed = dir + "/killed";
  const std::string args = " quantize '" + model_dir() + "' --recipe w4a16-fp8 --calib '" + brown_train() +
                           "' --num-samples 6 --seq-len 96 --batch-tokens 200 --quiet";
  auto run = [&](const std::string& env, const std::string& out, const std::string& extra) {
    const std::string cmd = env + " '" + test::dsq_binary() + "'" + args + " -o '" + out + "'" + extra + " >>'" + dir +
                            "/log' 2>&1";
    const int raw = std::system(cmd.c_str());
    return WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  };
  ASSERT_EQ(run("", full, ""), 0);
  // Dies right after unit 2 (layer 1) is committed, like kill -9 at that moment.
  ASSERT_EQ(run("DSQ_QUANTIZE_EXIT_AFTER_UNIT=2", killed, ""), 137);
  EXPECT_TRUE(fs::exists(fs::path(killed) / ".dsq-quantize" / "streams.bin"));
  EXPECT_FALSE(fs::exists(fs::path(killed) / "config.json"));
  EXPECT_NE(run("", killed, ""), 0) << "a second run without --resume must refuse the directory";
  ASSERT_EQ(run("", killed, " --resume"), 0);
  const auto a = directory_files(full), b = directory_files(killed);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(bytes == b.at(name)) << name << " differs after resume";
  }
}

TEST(QuantizedCheckpoint, GptqBeatsRtnOnEveryModuleAndNeverZeroesAnExpert) {
  const std::string out = test::make_temp_dir("quant-gptq");
  const QuantizeResult r = quantize_model(small_gptq(model_dir(), out));
  int gptq = 0;
  for (const ModuleReport& m : r.modules) {
    if (m.scheme != "int4-gptq") continue;
    ++gptq;
    EXPECT_LE(m.gptq_error, m.rtn_error) << m.module;
    EXPECT_GT(m.tokens, 0) << m.module;
  }
  EXPECT_EQ(gptq, 240);
  // Every expert weight has nonzero codes (an uncalibrated expert is never zeroed).
  const Checkpoint q = Checkpoint::open(out);
  for (int e = 0; e < 16; ++e) {
    const Tensor scale = q.get("layers.4.ffn.experts." + std::to_string(e) + ".w2.weight_scale");
    const QuantizedMatrix m = model::load_linear_weight(q, "layers.4.ffn.experts." + std::to_string(e) + ".w2", 256, 128);
    const Tensor w = m.dequantize();
    double sum = 0;
    for (int64_t i = 0; i < w.numel(); ++i) sum += std::fabs(w.get_f32(i));
    EXPECT_GT(sum, 0.0) << e;
  }
}

TEST(QuantizedCheckpoint, ReleaseFormatInputQuantizesLikeItsBf16Dequantization) {
  const std::string dir = test::make_temp_dir("quant-native");
  convert_checkpoint(model_dir(), dir + "/native", ConvertTarget::Native);
  convert_checkpoint(dir + "/native", dir + "/bf16", ConvertTarget::Bf16);
  const Checkpoint native = Checkpoint::open(dir + "/native");
  // The release layout: FP8 + E8M0 attention and shared experts, MXFP4 routed experts.
  EXPECT_EQ(native.get("layers.1.attn.wq_b.weight").dtype(), DType::F8_E4M3);
  EXPECT_EQ(native.get("layers.1.attn.wq_b.scale").dtype(), DType::F8_E8M0);
  EXPECT_EQ(native.get("layers.1.ffn.shared_experts.w2.weight").dtype(), DType::F8_E4M3);
  EXPECT_EQ(native.get("layers.1.ffn.experts.3.w1.weight").dtype(), DType::I8);
  EXPECT_EQ(native.get("layers.1.ffn.experts.3.w1.scale").shape(), (Shape{128, 256 / 32}));
  EXPECT_EQ(native.get("layers.1.attn.compressor.wkv.weight").dtype(), DType::BF16);

  quantize_model(small_gptq(dir + "/native", dir + "/q-native"));
  quantize_model(small_gptq(dir + "/bf16", dir + "/q-bf16"));
  const Checkpoint a = Checkpoint::open(dir + "/q-native"), b = Checkpoint::open(dir + "/q-bf16");
  ASSERT_EQ(a.native_names(), b.native_names());
  int int4 = 0, fp8 = 0;
  for (const std::string& name : a.native_names()) {
    const Tensor ta = a.get(name), tb = b.get(name);
    if (ta.dtype() == DType::F8_E4M3) {
      // The release FP8 bytes pass through; the BF16 path requantizes the same values. A
      // block whose maximum sits at 224 * 2^k may get half the scale and doubled codes,
      // so compare the values, which are identical either way.
      const std::string m = name.substr(0, name.size() - 7);
      const QuantizedMatrix qa = model::load_linear_weight(a, m, ta.dim(0), ta.dim(1));
      const QuantizedMatrix qb = model::load_linear_weight(b, m, ta.dim(0), ta.dim(1));
      EXPECT_TRUE(same_bytes(qa.dequantize(), qb.dequantize())) << name;
      ++fp8;
    } else if (name.find("weight_scale") != std::string::npos && ta.dtype() == DType::F32) {
      continue;  // FP8 scales: covered by the values above
    } else {
      EXPECT_TRUE(same_bytes(ta, tb)) << name;
      int4 += name.find("weight_packed") != std::string::npos;
    }
  }
  EXPECT_EQ(int4, 240);
  EXPECT_EQ(fp8, 27);
}

TEST(QuantizedCheckpoint, W4a8ConversionChangesOnlyTheConfig) {
  const std::string dir = test::make_temp_dir("quant-w4a8");
  QuantizeOptions o;
  o.model_dir = model_dir();
  o.output_dir = dir + "/w4a16";
  o.recipe = Recipe::preset("w4a16-rtn");
  o.log_modules = false;
  quantize_model(o);
  convert_w4a8(dir + "/w4a16", dir + "/w4a8");
  const auto a = directory_files(dir + "/w4a16"), b = directory_files(dir + "/w4a8");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : a) {
    if (name == "config.json") continue;
    EXPECT_TRUE(fs::equivalent(fs::path(dir) / "w4a16" / name, fs::path(dir) / "w4a8" / name)) << name << " not linked";
    EXPECT_TRUE(bytes == b.at(name)) << name;
  }
  json before = json::parse(a.at("config.json")), after = json::parse(b.at("config.json"));
  json& group = after["quantization_config"]["config_groups"]["experts_int4"];
  EXPECT_EQ(group["input_activations"], json::parse(R"({"num_bits": 8, "type": "float", "symmetric": true,
      "group_size": null, "strategy": "token", "block_structure": null, "dynamic": true, "actorder": null,
      "observer": null, "observer_kwargs": {}})"));
  EXPECT_EQ(group["format"], "pack-quantized");
  EXPECT_EQ(after["quantization_config"]["_w4a8_conversion"]["groups"], json::array({"experts_int4"}));
  // Undo exactly those edits: the rest is unchanged.
  group["input_activations"] = nullptr;
  after["quantization_config"].erase("_w4a8_conversion");
  EXPECT_EQ(after, before);
  EXPECT_THROW(convert_w4a8(dir + "/w4a8", dir + "/again"), Error);  // already W4A8
}

TEST(Calibration, TextWindowsAreConsecutiveParagraphStreams) {
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::load(model_dir());
  const auto samples = load_calibration_samples(brown_train(), tok, 3, 50);
  ASSERT_EQ(samples.size(), 3u);
  for (const auto& s : samples) EXPECT_EQ(s.size(), 50u);
  EXPECT_EQ(samples[0][0], tok.bos_id());  // the stream starts with a paragraph's BOS
  EXPECT_THROW(load_calibration_samples(brown_train(), tok, 1000000, 512), Error);
  const std::string dir = test::make_temp_dir("calib");
  std::ofstream(dir + "/chat.jsonl") << R"({"messages": [{"role": "user", "content": "The jury said"}, {"role": "assistant", "content": "no evidence"}]})"
                                     << "\n\n"
                                     << R"({"messages": [{"role": "user", "content": "x"}]})" << "\n";
  const auto chat = load_calibration_samples(dir + "/chat.jsonl", tok, 2, 8);
  EXPECT_EQ(chat[0].size(), 8u);  // truncated to seq_len
  EXPECT_EQ(chat[0][0], tok.bos_id());
  std::ofstream(dir + "/bad.jsonl") << "{\"messages\": 3}\n";
  EXPECT_THROW(load_calibration_samples(dir + "/bad.jsonl", tok, 1, 8), Error);
}

TEST(LayerRunner, ReproducesTheModelForwardBitExactly) {
  const model::Model m = model::Model::load(model_dir());
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::load(model_dir());
  const auto samples = load_calibration_samples(brown_train(), tok, 3, 70);
  LayerRunner runner(m, samples, 100);  // batches of one or two sequences
  runner.embed();
  for (int i = 0; i < int(m.config().num_layers); ++i) runner.run_layer(i, m.weights().layers[size_t(i)], nullptr);
  std::vector<model::SequenceState> states;
  for (size_t s = 0; s < samples.size(); ++s) states.push_back(m.new_sequence());
  std::vector<model::SequenceInput> batch;
  for (size_t s = 0; s < samples.size(); ++s) batch.push_back({&states[s], samples[s]});
  model::ForwardPass pass(m, batch);
  for (int i = 0; i < int(m.config().num_layers); ++i) pass.run_layer(i);
  ASSERT_EQ(runner.streams().size(), size_t(pass.num_tokens() * runner.stream_width()));
  EXPECT_EQ(std::memcmp(runner.streams().data(), pass.streams(), runner.streams().size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace dsq::quant
