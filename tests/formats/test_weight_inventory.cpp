// WeightInventory: counts on tiny-a checked against its config (not against the code's own
// sums), logical parameters of quantized tensors, and module kinds of native names.
#include <filesystem>

#include <gtest/gtest.h>

#include "formats/weight_inventory.h"
#include "support/paths.h"

namespace dsq {
namespace {

namespace fs = std::filesystem;

TEST(WeightInventory, TinyACountsFollowFromItsConfig) {
  const std::string dir = test::shared_path("models/tiny-a");
  const Checkpoint ck = Checkpoint::open(dir);
  const ModelConfig& c = ck.config();
  const WeightInventory inv = take_inventory(ck);
  const int64_t V = c.vocab_size, H = c.hidden_size, L = c.num_layers, E = c.n_routed_experts,
                F = c.moe_intermediate_size;
  EXPECT_EQ(inv.by_kind.at(ModuleKind::Embedding).parameters, V * H);
  EXPECT_EQ(inv.by_kind.at(ModuleKind::Head).parameters, V * H);
  EXPECT_EQ(inv.by_kind.at(ModuleKind::RoutedExperts).parameters, L * E * 3 * F * H);
  EXPECT_EQ(inv.by_kind.at(ModuleKind::RoutedExperts).tensors, L * E * 3);
  EXPECT_EQ(inv.by_kind.at(ModuleKind::SharedExperts).parameters, L * 3 * F * H);
  // mHC: per layer two (fn [24, N*H], base [24], scale [3]), plus the head's [N, N*H], [N], [1].
  const int64_t N = c.hc_mult, mix = (2 + N) * N;
  EXPECT_EQ(inv.by_kind.at(ModuleKind::MHC).parameters, L * 2 * (mix * N * H + mix + 3) + N * N * H + N + 1);
  EXPECT_EQ(inv.by_kind.count(ModuleKind::Other), 0u);
  // Every stored byte is counted once: header + data = the file.
  EXPECT_EQ(inv.total.bytes + 8 + 21280, fs::file_size(dir + "/model.safetensors"));
  EXPECT_EQ(inv.total.tensors, 210);
  EXPECT_EQ(inv.by_dtype.at("I64").tensors, 1);  // the one hash layer's tid2eid
  int64_t sum = 0;
  for (const auto& [kind, n] : inv.by_kind) sum += n.parameters;
  EXPECT_EQ(sum, inv.total.parameters);
}

TEST(WeightInventory, QuantizedTensorsCountLogicalWeightsAndStoredBytes) {
  const std::string dir = test::make_temp_dir("inventory-quant");
  fs::copy_file(test::shared_path("models/tiny-a/config.json"), dir + "/config.json");
  Tensor shape = Tensor::zeros(DType::I64, {2});
  shape.mutable_data<int64_t>()[0] = 4;
  shape.mutable_data<int64_t>()[1] = 64;
  write_safetensors(dir + "/model.safetensors",
                    {// release MXFP4: [out, in/2] bytes + E8M0 [out, in/32] -> 4 x 64 weights
                     {"layers.0.ffn.experts.0.w1.weight", Tensor::zeros(DType::I8, {4, 32})},
                     {"layers.0.ffn.experts.0.w1.scale", Tensor::zeros(DType::F8_E8M0, {4, 2})},
                     // compressed-tensors int4: [out, in/8] int32 + weight_shape [out, in]
                     {"layers.0.ffn.experts.1.w1.weight_packed", Tensor::zeros(DType::I32, {4, 8})},
                     {"layers.0.ffn.experts.1.w1.weight_scale", Tensor::zeros(DType::BF16, {4, 1})},
                     {"layers.0.ffn.experts.1.w1.weight_shape", shape},
                     // FP8 block: values count as they are, the scale only as bytes
                     {"layers.0.attn.wq_a.weight", Tensor::zeros(DType::F8_E4M3, {32, 64})},
                     {"layers.0.attn.wq_a.weight_scale_inv", Tensor::zeros(DType::F32, {1, 1})},
                     {"mtp.0.e_proj.weight", Tensor::zeros(DType::BF16, {2, 2})}});
  const Checkpoint ck = Checkpoint::open(dir);
  // The quantizer finds a module's quantized tensors by native module + suffix.
  EXPECT_TRUE(ck.has("layers.0.ffn.experts.1.w1.weight_packed"));
  EXPECT_TRUE(ck.has("layers.0.ffn.experts.0.w1.scale"));
  EXPECT_EQ(ck.get("layers.0.ffn.experts.1.w1.weight_shape").get_i64(1), 64);
  const WeightInventory inv = take_inventory(ck);
  const InventoryCount experts = inv.by_kind.at(ModuleKind::RoutedExperts);
  EXPECT_EQ(experts.tensors, 5);
  EXPECT_EQ(experts.parameters, 4 * 64 + 4 * 64);
  EXPECT_EQ(experts.bytes, 128u + 8 + 128 + 8 + 16);
  EXPECT_EQ(inv.by_kind.at(ModuleKind::Attention).parameters, 32 * 64);
  EXPECT_EQ(inv.by_kind.at(ModuleKind::Attention).bytes, 32u * 64 + 4);
  EXPECT_EQ(inv.by_kind.at(ModuleKind::Mtp).parameters, 4);
  EXPECT_EQ(inv.by_dtype.at("F8_E8M0").parameters, 0);
}

TEST(WeightInventory, ModuleKindsOfNativeNames) {
  EXPECT_EQ(module_kind_of("embed.weight"), ModuleKind::Embedding);
  EXPECT_EQ(module_kind_of("head.weight"), ModuleKind::Head);
  EXPECT_EQ(module_kind_of("hc_head_fn"), ModuleKind::MHC);
  EXPECT_EQ(module_kind_of("layers.2.hc_ffn_base"), ModuleKind::MHC);
  EXPECT_EQ(module_kind_of("norm.weight"), ModuleKind::Norms);
  EXPECT_EQ(module_kind_of("layers.2.attn.kv_norm.weight"), ModuleKind::Norms);
  EXPECT_EQ(module_kind_of("layers.2.attn.compressor.norm.weight"), ModuleKind::Norms);
  EXPECT_EQ(module_kind_of("layers.2.attn.wo_a.scale"), ModuleKind::Attention);
  EXPECT_EQ(module_kind_of("layers.2.attn.attn_sink"), ModuleKind::Attention);
  EXPECT_EQ(module_kind_of("layers.2.attn.compressor.ape"), ModuleKind::Compressor);
  EXPECT_EQ(module_kind_of("layers.2.attn.indexer.compressor.wkv.weight"), ModuleKind::Indexer);
  EXPECT_EQ(module_kind_of("layers.2.attn.indexer.weights_proj.weight"), ModuleKind::Indexer);
  EXPECT_EQ(module_kind_of("layers.2.ffn.experts.9.w2.weight_packed"), ModuleKind::RoutedExperts);
  EXPECT_EQ(module_kind_of("layers.2.ffn.shared_experts.w2.weight"), ModuleKind::SharedExperts);
  EXPECT_EQ(module_kind_of("layers.0.ffn.gate.tid2eid"), ModuleKind::Router);
  EXPECT_EQ(module_kind_of("mtp.0.attn.wq_a.weight"), ModuleKind::Mtp);
}

}  // namespace
}  // namespace dsq
