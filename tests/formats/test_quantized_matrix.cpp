// QuantizedMatrix: the exact dequantization of each layout and the compressed-tensors INT4
// nibble order, checked against values worked out by hand from checkpoint-formats.md.
#include <gtest/gtest.h>

#include <cstring>

#include "core/error.h"
#include "formats/quantized_matrix.h"

namespace dsq {
namespace {

TEST(Int4Pack, NibbleOrderAndOffsetMatchTheSpec) {
  // Element i -> word i/8, bits 4*(i%8).. stored as q + 8 (checkpoint-formats.md §2.2).
  const int8_t codes[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};
  int32_t words[2];
  int4_pack_row(codes, 16, words);
  EXPECT_EQ(uint32_t(words[0]), 0x76543210u);
  EXPECT_EQ(uint32_t(words[1]), 0xFEDCBA98u);
  EXPECT_EQ(words[1], -19088744);  // the same bits as a signed int32 on disk
  int8_t back[16];
  int4_unpack_row(words, 16, back);
  EXPECT_EQ(std::memcmp(codes, back, 16), 0);
}

TEST(Int4Pack, RejectsCodesOutsideTheRange) {
  const int8_t codes[8] = {0, 0, 8, 0, 0, 0, 0, 0};
  int32_t word;
  EXPECT_THROW(int4_pack_row(codes, 8, &word), Error);
}

TEST(QuantizedMatrix, Int4DequantizeRoundsTheProductToTheScaleDtype) {
  // One row, 8 inputs, group 8. Scale bf16(0.40039062) = 0x3ECD. q = 7: 7 * 0.400390625 =
  // 2.802734375, which bf16 rounds to 2.796875 (compressed-tensors computes q*s in bf16).
  QuantizedMatrix m;
  m.format = WeightFormat::Int4Group;
  m.rows = 1;
  m.cols = 8;
  m.group_size = 8;
  m.values = Tensor::zeros(DType::I32, {1, 1});
  const int8_t codes[8] = {7, -7, 0, 1, -8, 2, 3, -1};
  int4_pack_row(codes, 8, m.values.mutable_data<int32_t>());
  m.scales = Tensor::zeros(DType::BF16, {1, 1});
  m.scales.mutable_data<uint16_t>()[0] = 0x3ECD;
  m.validate("test");
  const Tensor w = m.dequantize();
  EXPECT_EQ(w.get_f32(0), 2.796875f);
  EXPECT_EQ(w.get_f32(1), -2.796875f);
  EXPECT_EQ(w.get_f32(2), 0.0f);
  EXPECT_EQ(w.get_f32(3), 0.400390625f);
  EXPECT_EQ(w.get_f32(4), -3.203125f);  // 8 * s is exact in bf16
}

TEST(QuantizedMatrix, Fp8BlockWithE8M0AndF32ScalesAgree) {
  // 2 x 130 weight: two column blocks of the 128-wide grid. e8m0 126 = 2^-1, 129 = 2^2.
  QuantizedMatrix m;
  m.format = WeightFormat::Fp8Block;
  m.rows = 2;
  m.cols = 130;
  m.values = Tensor::zeros(DType::F8_E4M3, {2, 130});
  uint8_t* v = m.values.mutable_data<uint8_t>();
  v[0] = 0x38;    // 1.0
  v[129] = 0xBC;  // -1.5 (sign, exp 7, mant 4)
  v[130 + 5] = 0x7E;  // 448
  m.scales = Tensor::zeros(DType::F8_E8M0, {1, 2});
  m.scales.mutable_data<uint8_t>()[0] = 126;
  m.scales.mutable_data<uint8_t>()[1] = 129;
  m.validate("test");
  const Tensor w = m.dequantize();
  EXPECT_EQ(w.get_f32(0), 0.5f);
  EXPECT_EQ(w.get_f32(129), -6.0f);
  EXPECT_EQ(w.get_f32(130 + 5), 224.0f);
  QuantizedMatrix f = m;
  f.scales = Tensor::from_f32({0.5f, 4.0f}, {1, 2});
  const Tensor w2 = f.dequantize();
  EXPECT_EQ(std::memcmp(w.bytes(), w2.bytes(), w.nbytes()), 0);
}

TEST(QuantizedMatrix, Mxfp4LowNibbleIsTheEvenInput) {
  QuantizedMatrix m;
  m.format = WeightFormat::Mxfp4;
  m.rows = 1;
  m.cols = 32;
  m.values = Tensor::zeros(DType::U8, {1, 16});
  m.values.mutable_data<uint8_t>()[0] = 0xF2;  // input 0: code 2 = 1.0; input 1: code 0xF = -6
  m.values.mutable_data<uint8_t>()[1] = 0x05;  // input 2: 3.0; input 3: 0
  m.scales = Tensor::zeros(DType::F8_E8M0, {1, 1});
  m.scales.mutable_data<uint8_t>()[0] = 128;  // 2^1
  m.validate("test");
  const Tensor w = m.dequantize();
  EXPECT_EQ(w.get_f32(0), 2.0f);
  EXPECT_EQ(w.get_f32(1), -12.0f);
  EXPECT_EQ(w.get_f32(2), 6.0f);
  EXPECT_EQ(w.get_f32(3), 0.0f);
}

TEST(QuantizedMatrix, ValidateNamesTheWeightAndTheProblem) {
  QuantizedMatrix m;
  m.format = WeightFormat::Int4Group;
  m.rows = 4;
  m.cols = 128;
  m.values = Tensor::zeros(DType::I32, {4, 15});
  m.scales = Tensor::zeros(DType::BF16, {4, 1});
  try {
    m.validate("layers.0.ffn.experts.3.w1");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.ffn.experts.3.w1"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("[4, 16]"), std::string::npos);
  }
}

TEST(QuantizedMatrix, DenseBf16RowsAreExact) {
  Tensor t = Tensor::from_f32({1.0f, -2.5f, 3.25f, 0.0078125f}, {2, 2}).cast(DType::BF16);
  const QuantizedMatrix m = QuantizedMatrix::dense(t);
  float out[2];
  m.dequantize_rows(1, 2, out);
  EXPECT_EQ(out[0], 3.25f);
  EXPECT_EQ(out[1], 0.0078125f);
}

}  // namespace
}  // namespace dsq
