// Weight-format detection at load (model/weight_format.h): a copy of tiny-a in which some
// linear weights are stored FP8-block (transformers' weight_scale_inv), MXFP4 (the
// release's i8 + e8m0 .scale) and int4-group (compressed-tensors weight_packed +
// weight_scale) loads with each weight in its format, dequantizes to the stored values,
// and runs a forward pass.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "formats/safetensors.h"
#include "model/model.h"
#include "support/paths.h"

namespace dsq::model {
namespace {

TEST(WeightFormat, DetectsQuantizedSiblingsAndKeepsDenseOtherwise) {
  const std::string src = dsq::test::shared_path("models/tiny-a");
  const std::string dir = dsq::test::make_temp_dir("weight-format");
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
  const auto file = SafetensorsFile::open(src + "/model.safetensors");
  std::vector<NamedTensor> tensors;
  const std::string fp8 = "model.layers.1.attn.wq_a", mx = "model.layers.1.ffn.experts.3.w1",
                    int4 = "model.layers.2.attn.wkv";
  for (const TensorInfo& t : file->tensors())
    if (t.name != fp8 + ".weight" && t.name != mx + ".weight" && t.name != int4 + ".weight")
      tensors.push_back({t.name, file->get(t.name)});

  // FP8 block [32, 64] (one 128×128 block): e4m3 codes and one f32 scale.
  Tensor fp8_values = Tensor::zeros(DType::F8_E4M3, {32, 64});
  for (int64_t i = 0; i < 32 * 64; ++i) fp8_values.mutable_data<uint8_t>()[i] = f32_to_f8e4m3(float(i % 17) - 8.0f);
  tensors.push_back({fp8 + ".weight", fp8_values});
  tensors.push_back({fp8 + ".weight_scale_inv", Tensor::from_f32({0.01f}, {1, 1})});
  // MXFP4 [32, 64]: two e2m1 per byte, one e8m0 scale per 32 inputs.
  Tensor mx_values = Tensor::zeros(DType::I8, {32, 32});
  for (int64_t i = 0; i < 32 * 32; ++i) mx_values.mutable_data<int8_t>()[i] = int8_t(i * 37);
  Tensor mx_scales = Tensor::zeros(DType::F8_E8M0, {32, 2});
  for (int64_t i = 0; i < 64; ++i) mx_scales.mutable_data<uint8_t>()[i] = uint8_t(120 + i % 5);
  tensors.push_back({mx + ".weight", mx_values});
  tensors.push_back({mx + ".scale", mx_scales});
  // Int4 group 32 [32, 64]: 8 nibbles per int32, bf16 scales.
  Tensor packed = Tensor::zeros(DType::I32, {32, 8});
  for (int64_t i = 0; i < 32 * 8; ++i) packed.mutable_data<int32_t>()[i] = int32_t(0x9E3779B9u * uint32_t(i + 3));
  tensors.push_back({int4 + ".weight_packed", packed});
  tensors.push_back({int4 + ".weight_scale", Tensor::from_f32(std::vector<float>(64, 0.02f), {32, 2}).cast(DType::BF16)});
  write_safetensors(dir + "/model.safetensors", tensors);

  const Model m = Model::load(dir);
  const ModelWeights& w = m.weights();
  EXPECT_EQ(w.layers[1].attn.wq_a.w.format, WeightFormat::Fp8Block);
  EXPECT_EQ(w.layers[1].ffn.experts[3].w1.w.format, WeightFormat::Mxfp4);
  EXPECT_EQ(w.layers[2].attn.wkv.w.format, WeightFormat::Int4Group);
  EXPECT_EQ(w.layers[2].attn.wkv.w.group_size, 32);
  EXPECT_EQ(w.layers[1].attn.wq_b.w.format, WeightFormat::Dense);
  EXPECT_EQ(w.layers[1].attn.wq_b.w.values.dtype(), DType::BF16);  // kept in its stored dtype
  // FP8: W = code · scale.
  const Tensor dq = w.layers[1].attn.wq_a.w.dequantize();
  EXPECT_FLOAT_EQ(dq.data<float>()[5], (float(5 % 17) - 8.0f) * 0.01f);

  SequenceState s = m.new_sequence();
  const std::vector<int64_t> ids = {0, 11, 42, 7, 300, 5, 9, 1, 77, 123, 4, 8, 15, 16, 23, 42, 99};
  const Tensor logits = m.forward({{&s, ids}});
  for (int64_t i = 0; i < logits.numel(); ++i) ASSERT_TRUE(std::isfinite(logits.data<float>()[i]));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dsq::model
