// Checkpoint: the native index over the fixture files, fused transformers experts, shape
// checks, and the acceptance "bad files": each must fail with one message naming the file
// and the problem.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/read_file.h"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "support/paths.h"

namespace dsq {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)


// A writable copy of tiny-a (config.json + model.safetensors) in a fresh temp directory.
std::string copy_of_tiny_a(const std::string& tag) {
  const std::string dir = test::make_temp_dir(tag);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(test::shared_path(std::string("models/tiny-a/") + f), dir + "/" + f);
  fs::permissions(dir + "/model.safetensors", fs::perms::owner_write, fs::perm_options::add);
  fs::permissions(dir + "/config.json", fs::perms::owner_write, fs::perm_options::add);
  return dir;
}

// Rewrites the header of <dir>/model.safetensors through `edit`, keeping the data section.
void edit_header(const std::string& dir, const std::function<void(json&)>& edit) {
  const std::string path = dir + "/model.safetensors";
  const std::string bytes = read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  json header = json::parse(bytes.substr(8, n));
  edit(header);
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((uint64_t(text.size()) >> (8 * i)) & 0xff);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << out << text << bytes.substr(8 + n);
}

std::string open_error(const std::string& dir) {
  try {
    Checkpoint::open(dir);
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    return e.what();
  }
  return "";
}

TEST(Checkpoint, IndexesEveryFixtureTensorByItsNativeName) {
  const Checkpoint ck = Checkpoint::open(test::shared_path("models/tiny-a"));
  EXPECT_TRUE(ck.unrecognized_names().empty());
  EXPECT_EQ(ck.native_names().size(), ck.store().names().size());
  EXPECT_EQ(ck.config().num_layers, 4);
  EXPECT_EQ(ck.get("embed.weight").shape(), (Shape{512, 64}));
  EXPECT_EQ(ck.get("head.weight").dtype(), DType::BF16);
  EXPECT_EQ(ck.get("hc_head_fn").shape(), (Shape{4, 256}));
  EXPECT_EQ(ck.get("layers.1.attn.kv_norm.weight").shape(), (Shape{32}));  // fixture: attn.norm.weight
  EXPECT_TRUE(ck.has("layers.3.ffn.experts.7.w2.weight"));
  EXPECT_TRUE(ck.has("layers.0.ffn.gate.tid2eid"));
  EXPECT_FALSE(ck.has("layers.0.ffn.gate.bias"));  // hash layer
  EXPECT_EQ(ck.describe("layers.1.attn.kv_norm.weight"),
            test::shared_path("models/tiny-a") + "/model.safetensors: tensor model.layers.1.attn.norm.weight");
  // Values come through unchanged: the native view is the fixture tensor.
  const Tensor a = ck.get("layers.2.attn.wq_a.weight");
  const Tensor b = ck.store().get("model.layers.2.attn.wq_a.weight");
  EXPECT_EQ(a.bytes(), b.bytes());
}

TEST(Checkpoint, GetCheckedAcceptsTheRightShapeAndNamesTheFileOtherwise) {
  const std::string dir = test::shared_path("models/tiny-a");
  const Checkpoint ck = Checkpoint::open(dir);
  EXPECT_EQ(ck.get_checked("layers.0.attn.wq_a.weight", {32, 64}).numel(), 32 * 64);
  try {
    ck.get_checked("layers.0.attn.wq_a.weight", {32, 65});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), dir + "/model.safetensors: tensor model.layers.0.attn.wq_a.weight: "
                                           "expected shape [32, 65], found [32, 64]");
  }
  try {
    ck.get_checked("layers.0.ffn.gate.tid2eid", {512, 2});
    FAIL();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "expected a floating-point tensor, found i64");
  }
  try {
    ck.get("layers.9.attn.wq_a.weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), dir + ": missing tensor layers.9.attn.wq_a.weight");
  }
}

TEST(Checkpoint, FusedTransformersExpertsAreSlicedIntoPerExpertViews) {
  const std::string dir = test::make_temp_dir("ck-fused");
  fs::copy_file(test::shared_path("models/tiny-a/config.json"), dir + "/config.json");
  // E = 2, F = 2, H = 3: gate_up_proj [2, 4, 3], down_proj [2, 3, 2]; values = flat index.
  std::vector<float> gate_up(24), down(12);
  for (size_t i = 0; i < gate_up.size(); ++i) gate_up[i] = float(i);
  for (size_t i = 0; i < down.size(); ++i) down[i] = float(100 + i);
  write_safetensors(dir + "/model.safetensors",
                    {{"model.layers.1.mlp.experts.gate_up_proj", Tensor::from_f32(gate_up, {2, 4, 3})},
                     {"model.layers.1.mlp.experts.down_proj", Tensor::from_f32(down, {2, 3, 2})},
                     {"model.rotary_emb.inv_freq", Tensor::from_f32({1}, {1})}});
  const Checkpoint ck = Checkpoint::open(dir);
  EXPECT_EQ(ck.unrecognized_names(), (std::vector<std::string>{"model.rotary_emb.inv_freq"}));
  EXPECT_EQ(ck.native_names().size(), 6u);  // w1, w2, w3 of experts 0 and 1
  const Tensor w1 = ck.get_checked("layers.1.ffn.experts.1.w1.weight", {2, 3});  // expert 1, rows 0-1
  const Tensor w3 = ck.get_checked("layers.1.ffn.experts.1.w3.weight", {2, 3});  // expert 1, rows 2-3
  const Tensor w2 = ck.get_checked("layers.1.ffn.experts.0.w2.weight", {3, 2});
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(w1.get_f32(i), float(12 + i));
    EXPECT_EQ(w3.get_f32(i), float(18 + i));
    EXPECT_EQ(w2.get_f32(i), float(100 + i));
  }
  EXPECT_EQ(ck.get("layers.1.ffn.experts.1.w2.weight").get_f32(0), 106.0f);
  EXPECT_EQ(ck.describe("layers.1.ffn.experts.1.w3.weight"),
            dir + "/model.safetensors: tensor model.layers.1.mlp.experts.gate_up_proj[1] (up rows)");
  try {
    ck.get_checked("layers.1.ffn.experts.0.w1.weight", {4, 3});
    FAIL();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "gate_up_proj[0] (gate rows): expected shape [4, 3], found [2, 3]");
  }
}

TEST(Checkpoint, RejectsFusedExpertsOfTheWrongRank) {
  const std::string dir = test::make_temp_dir("ck-fused-bad");
  fs::copy_file(test::shared_path("models/tiny-a/config.json"), dir + "/config.json");
  write_safetensors(dir + "/model.safetensors",
                    {{"model.layers.1.mlp.experts.gate_up_proj", Tensor::from_f32({1, 2, 3}, {1, 3, 1})}});
  EXPECT_HAS(open_error(dir), "gate_up_proj: fused experts must be [E, 2F, H], found [1, 3, 1]");
}

TEST(Checkpoint, TwoSpellingsOfOneTensorAreAnError) {
  const std::string dir = test::make_temp_dir("ck-dup");
  fs::copy_file(test::shared_path("models/tiny-a/config.json"), dir + "/config.json");
  write_safetensors(dir + "/model.safetensors", {{"layers.0.attn.wq_a.weight", Tensor::from_f32({1}, {1})},
                                                 {"model.layers.0.self_attn.q_a_proj.weight", Tensor::from_f32({1}, {1})}});
  EXPECT_HAS(open_error(dir), "both map to layers.0.attn.wq_a.weight");
}

// ---- acceptance: bad files ----

TEST(CheckpointBadFiles, TruncatedSafetensors) {
  const std::string dir = copy_of_tiny_a("bad-trunc");
  fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 100);
  const std::string message = open_error(dir);
  EXPECT_HAS(message, dir + "/model.safetensors: ");
  EXPECT_HAS(message, "run past the end of the file");
}

TEST(CheckpointBadFiles, TruncatedInsideTheHeader) {
  const std::string dir = copy_of_tiny_a("bad-trunc-header");
  fs::resize_file(dir + "/model.safetensors", 1000);
  EXPECT_HAS(open_error(dir), "/model.safetensors: header length 21280 runs past the end of the file (1000 bytes)");
}

TEST(CheckpointBadFiles, HeaderOffsetsPastTheEnd) {
  const std::string dir = copy_of_tiny_a("bad-offsets");
  edit_header(dir, [](json& h) { h["head.weight"]["data_offsets"] = {2000000, 2065536}; });
  const std::string message = open_error(dir);
  EXPECT_HAS(message, "/model.safetensors: data_offsets [2000000, 2065536] run past the end of the file");
  EXPECT_HAS(message, "(tensor head.weight)");
}

TEST(CheckpointBadFiles, OverlappingTensors) {
  const std::string dir = copy_of_tiny_a("bad-overlap");
  edit_header(dir, [](json& h) { h["model.hc_head.hc_base"]["data_offsets"] = {8208, 8224}; });  // onto hc_fn
  const std::string message = open_error(dir);
  EXPECT_HAS(message, "/model.safetensors: data [8208, 12304) overlaps tensor model.hc_head.hc_base [8208, 8224) "
                      "(tensor model.hc_head.hc_fn)");
}

TEST(CheckpointBadFiles, InconsistentSize) {
  const std::string dir = copy_of_tiny_a("bad-size");
  edit_header(dir, [](json& h) { h["head.weight"]["shape"] = {512, 65}; });
  EXPECT_HAS(open_error(dir), "byte size 65536 does not match shape [512, 65] of BF16 (33280 elements x 2 bytes) "
                              "(tensor head.weight)");
}

TEST(CheckpointBadFiles, UnalignedOffsets) {
  // Shift two neighbouring BF16 tensors by one byte: sizes stay consistent, offsets turn odd.
  const std::string dir = copy_of_tiny_a("bad-align");
  edit_header(dir, [](json& h) {
    h["model.layers.0.attn.attn_sink"]["dtype"] = "U8";  // 16 bytes at 12308
    h["model.layers.0.attn.attn_sink"]["shape"] = {17};
    h["model.layers.0.attn.attn_sink"]["data_offsets"] = {12308, 12325};
    h["model.layers.0.hc_attn_base"]["data_offsets"] = {12325, 12420};
    h["model.layers.0.hc_attn_base"]["dtype"] = "U8";
    h["model.layers.0.hc_attn_base"]["shape"] = {95};
    h["model.layers.0.hc_attn_fn"]["data_offsets"] = {12420, 36996};
  });
  EXPECT_EQ(open_error(dir), "");  // one-byte dtypes may sit anywhere
  edit_header(dir, [](json& h) {
    h["model.layers.0.attn.attn_sink"]["dtype"] = "BF16";
    h["model.layers.0.attn.attn_sink"]["shape"] = {8};
    h["model.layers.0.attn.attn_sink"]["data_offsets"] = {12308, 12324};
    h["model.layers.0.hc_attn_base"]["dtype"] = "U8";
    h["model.layers.0.hc_attn_base"]["shape"] = {1};
    h["model.layers.0.hc_attn_base"]["data_offsets"] = {12324, 12325};
    h["model.layers.0.hc_attn_fn"]["dtype"] = "BF16";
    h["model.layers.0.hc_attn_fn"]["shape"] = {47};
    h["model.layers.0.hc_attn_fn"]["data_offsets"] = {12325, 12419};
  });
  EXPECT_HAS(open_error(dir), "data offset 12325 is not a multiple of the 2-byte element size "
                              "(tensor model.layers.0.hc_attn_fn)");
}

TEST(CheckpointBadFiles, UnknownDtype) {
  const std::string dir = copy_of_tiny_a("bad-dtype");
  edit_header(dir, [](json& h) { h["head.weight"]["dtype"] = "Q4_K"; });
  EXPECT_HAS(open_error(dir), "/model.safetensors: unknown dtype \"Q4_K\" (tensor head.weight)");
}

TEST(CheckpointBadFiles, MissingTensor) {
  // tiny-a rewritten without one weight: the checkpoint opens, the model's request fails.
  const std::string dir = test::make_temp_dir("bad-missing");
  fs::copy_file(test::shared_path("models/tiny-a/config.json"), dir + "/config.json");
  const TensorStore full = TensorStore::open(test::shared_path("models/tiny-a"));
  std::vector<NamedTensor> kept;
  for (const std::string& name : full.names()) {
    if (name != "model.layers.2.attn.wkv.weight") kept.push_back({name, full.get(name)});
  }
  write_safetensors(dir + "/model.safetensors", kept);
  const Checkpoint ck = Checkpoint::open(dir);
  try {
    ck.get_checked("layers.2.attn.wkv.weight", {32, 64});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), dir + ": missing tensor layers.2.attn.wkv.weight");
  }
}

TEST(CheckpointBadFiles, WrongShapeForAKnownWeight) {
  const std::string dir = copy_of_tiny_a("bad-shape");
  edit_header(dir, [](json& h) { h["model.layers.2.attn.wkv.weight"]["shape"] = {64, 32}; });
  const Checkpoint ck = Checkpoint::open(dir);  // the file itself is consistent
  try {
    ck.get_checked("layers.2.attn.wkv.weight", {32, 64});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), dir + "/model.safetensors: tensor model.layers.2.attn.wkv.weight: "
                                           "expected shape [32, 64], found [64, 32]");
  }
}

TEST(CheckpointBadFiles, BrokenConfig) {
  const std::string dir = copy_of_tiny_a("bad-config");
  std::ofstream(dir + "/config.json", std::ios::trunc) << "{\"vocab_size\": 512,";
  EXPECT_HAS(open_error(dir), dir + "/config.json: malformed JSON: parse error");
  json j = json::parse(read_file(test::shared_path("models/tiny-a/config.json")));
  j["layer_types"][2] = "dense_attention";
  std::ofstream(dir + "/config.json", std::ios::trunc) << j.dump();
  EXPECT_HAS(open_error(dir), dir + "/config.json: layer_types[2]: unknown layer type \"dense_attention\"");
  fs::remove(dir + "/config.json");
  EXPECT_HAS(open_error(dir), dir + "/config.json: cannot open");
}

}  // namespace
}  // namespace dsq
