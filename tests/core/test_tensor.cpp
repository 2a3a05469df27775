#include <gtest/gtest.h>

#include "core/error.h"
#include "core/tensor.h"

namespace dsq {
namespace {

TEST(Tensor, ZerosShapeAndSlices) {
  Tensor t = Tensor::zeros(DType::F32, {3, 4});
  EXPECT_EQ(t.numel(), 12);
  EXPECT_EQ(t.nbytes(), 48u);
  for (int i = 0; i < 12; ++i) t.mutable_data<float>()[i] = float(i);
  Tensor rows = t.slice_rows(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 4}));
  EXPECT_EQ(rows.get_f32(0), 4.0f);
  EXPECT_EQ(t.reshaped({12}).dim(-1), 12);
  EXPECT_THROW(t.reshaped({5}), Error);
  EXPECT_THROW(t.slice_rows(2, 4), Error);
}

TEST(Tensor, CastBf16RoundTrip) {
  Tensor t = Tensor::from_f32({1.0f, -2.5f, 3.140625f}, {3});
  Tensor b = t.cast(DType::BF16);
  EXPECT_EQ(b.dtype(), DType::BF16);
  Tensor back = b.to_f32();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(back.get_f32(i), t.get_f32(i));
}

TEST(Tensor, ViewsAreReadOnly) {
  static const float data[2] = {1, 2};
  Tensor v = Tensor::view(DType::F32, {2}, data, nullptr);
  EXPECT_EQ(v.get_f32(1), 2.0f);
  EXPECT_THROW(v.mutable_data<float>(), Error);
}

}  // namespace
}  // namespace dsq
