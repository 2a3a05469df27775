// `dsq synth`: the checkpoints it writes load through formats/ and model/ (every tensor
// present with the shape and dtype the model expects), carry the recipe's formats and
// quantization_config, and are reproducible from the seed whatever the thread count.
// (The command exists for the GPU benchmarks, hence its test lives with theirs.)
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/read_file.h"
#include "formats/checkpoint.h"
#include "model/model_weights.h"
#include "support/paths.h"

namespace dsq {
namespace {

namespace fs = std::filesystem;

// A small config in the release spelling whose dimensions are multiples of 128 (INT4
// groups) and that has every layer kind: sliding, CSA and HCA attention, hash and
// score routing.
const char* kSmallConfig = R"({
  "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
  "vocab_size": 300, "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false,
  "hidden_size": 256, "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1,
  "head_dim": 128, "qk_rope_head_dim": 32, "q_lora_rank": 128, "o_groups": 2, "o_lora_rank": 128,
  "sliding_window": 8, "compress_ratios": [0, 4, 128],
  "compress_rope_theta": 160000.0, "rope_theta": 10000.0,
  "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                   "beta_fast": 32, "beta_slow": 1},
  "max_position_embeddings": 4096, "index_n_heads": 2, "index_head_dim": 128, "index_topk": 4,
  "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1, "moe_intermediate_size": 128,
  "num_hash_layers": 1, "scoring_func": "sqrtsoftplus", "routed_scaling_factor": 1.5, "swiglu_limit": 10.0,
  "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-06, "rms_norm_eps": 1e-06,
  "num_nextn_predict_layers": 0
})";

struct Result {
  int status;
  std::string output;
};

Result run(const std::string& args) {
  const std::string cmd = test::dsq_binary() + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr);
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  return {pclose(p), out};
}

class Synth : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::make_temp_dir("synth");
    config_ = dir_ + "/config.json";
    std::ofstream(config_) << kSmallConfig;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_, config_;
};

TEST_F(Synth, Bf16CheckpointLoadsIntoTheModel) {
  const std::string out = dir_ + "/bf16";
  const Result r = run("synth " + out + " --config " + config_ + " --format bf16");
  ASSERT_EQ(r.status, 0) << r.output;
  const Checkpoint ck = Checkpoint::open(out);
  EXPECT_EQ(ck.config().num_layers, 3);
  EXPECT_EQ(ck.config().attention[1], AttentionKind::CSA);
  EXPECT_EQ(ck.config().moe[0], MoeKind::Hash);
  EXPECT_NO_THROW(model::ModelWeights::load(ck));
  EXPECT_EQ(ck.get("layers.2.ffn.experts.3.w2.weight").dtype(), DType::BF16);
  EXPECT_FALSE(ck.config().raw.contains("quantization_config"));
  // One shard per layer plus the globals, and the index lists them.
  EXPECT_TRUE(fs::exists(out + "/model-00004-of-00004.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
}

TEST_F(Synth, W4a16Fp8CheckpointFollowsTheRecipe) {
  const std::string out = dir_ + "/q";
  const Result r = run("synth " + out + " --config " + config_ + " --format w4a16-fp8 --layers 2 --experts 3");
  ASSERT_EQ(r.status, 0) << r.output;
  const Checkpoint ck = Checkpoint::open(out);
  EXPECT_EQ(ck.config().num_layers, 2);
  EXPECT_EQ(ck.config().n_routed_experts, 3);
  EXPECT_NO_THROW(model::ModelWeights::load(ck));
  EXPECT_EQ(ck.get("layers.1.ffn.experts.2.w1.weight_packed").dtype(), DType::I32);
  EXPECT_EQ(ck.get("layers.1.ffn.experts.2.w1.weight_scale").dtype(), DType::BF16);
  EXPECT_EQ(ck.get("layers.0.attn.wq_a.weight").dtype(), DType::F8_E4M3);
  EXPECT_EQ(ck.get("layers.0.attn.wq_a.weight_scale").dtype(), DType::F32);
  EXPECT_EQ(ck.get("layers.1.attn.compressor.wkv.weight").dtype(), DType::BF16);  // ignored by the recipe
  EXPECT_EQ(ck.config().raw.at("quantization_config").at("quant_method"), "compressed-tensors");
}

TEST_F(Synth, SameSeedSameBytesWhateverTheThreads) {
  ASSERT_EQ(run("synth " + dir_ + "/a --config " + config_ + " --layers 1 --threads 1").status, 0);
  ASSERT_EQ(run("synth " + dir_ + "/b --config " + config_ + " --layers 1 --threads 2").status, 0);
  ASSERT_EQ(run("synth " + dir_ + "/c --config " + config_ + " --layers 1 --seed 2").status, 0);
  const auto bytes = [](const std::string& f) { return read_file(f); };
  const std::string shard = "/model-00002-of-00002.safetensors";
  EXPECT_EQ(bytes(dir_ + "/a" + shard), bytes(dir_ + "/b" + shard));
  EXPECT_NE(bytes(dir_ + "/a" + shard), bytes(dir_ + "/c" + shard));
}

TEST_F(Synth, BadArgumentsEndInOneClearLine) {
  Result r = run("synth " + dir_ + "/x --config " + config_ + " --format fp4");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("unknown --format 'fp4'"), std::string::npos) << r.output;
  r = run("synth " + dir_ + "/x --config " + config_ + " --experts 1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("cannot serve 2 experts per token"), std::string::npos) << r.output;
  r = run("synth " + dir_ + "/x --preset v5");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("unknown preset 'v5'"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_ + "/x/config.json"));
}

}  // namespace
}  // namespace dsq
