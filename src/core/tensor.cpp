#include "core/tensor.h"

#include <cstring>
#include <sstream>

#include "core/error.h"

namespace dsq {

std::string shape_string(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  for (int64_t d : shape) DSQ_CHECK(d >= 0, "negative dimension in shape ", shape_string(shape));
  Tensor t;
  t.dtype_ = dtype;
  t.dtype_set_ = true;
  t.shape_ = std::move(shape);
  const size_t n = dtype_bytes(dtype, t.numel());
  std::shared_ptr<std::byte[]> buf(new std::byte[n ? n : 1]());
  t.data_ = buf.get();
  t.owner_ = std::shared_ptr<const void>(buf, buf.get());
  t.writable_ = true;
  return t;
}

Tensor Tensor::view(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner,
                    Device device) {
  Tensor t;
  t.dtype_ = dtype;
  t.dtype_set_ = true;
  t.device_ = device;
  t.shape_ = std::move(shape);
  t.data_ = static_cast<std::byte*>(const_cast<void*>(data));
  t.owner_ = std::move(owner);
  t.writable_ = false;
  return t;
}

Tensor Tensor::writable_view(DType dtype, Shape shape, void* data, std::shared_ptr<const void> owner,
                             Device device) {
  Tensor t = view(dtype, std::move(shape), data, std::move(owner), device);
  t.writable_ = true;
  return t;
}

Tensor Tensor::from_f32(const std::vector<float>& values, Shape shape) {
  DSQ_CHECK(shape_numel(shape) == int64_t(values.size()), "from_f32: ", values.size(),
            " values do not fill shape ", shape_string(shape));
  Tensor t = zeros(DType::F32, std::move(shape));
  std::memcpy(t.data_, values.data(), values.size() * sizeof(float));
  return t;
}

int64_t Tensor::dim(int i) const {
  const int r = rank();
  const int k = i < 0 ? i + r : i;
  DSQ_CHECK(k >= 0 && k < r, "dimension ", i, " out of range for shape ", shape_string(shape_));
  return shape_[k];
}

std::byte* Tensor::mutable_bytes() {
  DSQ_CHECK(writable_ || data_ == nullptr, "tensor is a read-only view");
  return data_;
}

Tensor Tensor::reshaped(Shape shape) const {
  DSQ_CHECK(shape_numel(shape) == numel(), "cannot reshape ", shape_string(shape_), " to ",
            shape_string(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  DSQ_CHECK(rank() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "row slice [", begin, ", ",
            end, ") out of range for shape ", shape_string(shape_));
  Tensor t = *this;
  const int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  t.shape_[0] = end - begin;
  t.data_ = data_ + dtype_bytes(dtype_, begin * row);
  return t;
}

float Tensor::get_f32(int64_t i) const {
  switch (dtype_) {
    case DType::F32: return data<float>()[i];
    case DType::BF16: return bf16_to_f32(data<uint16_t>()[i]);
    case DType::F16: return f16_to_f32(data<uint16_t>()[i]);
    case DType::F8_E4M3: return f8e4m3_to_f32(data<uint8_t>()[i]);
    case DType::F8_E8M0: return e8m0_to_f32(data<uint8_t>()[i]);
    case DType::I8: return float(data<int8_t>()[i]);
    case DType::U8: return float(data<uint8_t>()[i]);
    case DType::I32: return float(data<int32_t>()[i]);
    case DType::I64: return float(data<int64_t>()[i]);
    case DType::I4: {
      const uint8_t b = data<uint8_t>()[i / 2];
      const int nib = (i & 1) ? (b >> 4) : (b & 0xf);
      return float(nib >= 8 ? nib - 16 : nib);
    }
    case DType::FP4: {
      const uint8_t b = data<uint8_t>()[i / 2];
      return fp4_e2m1_to_f32((i & 1) ? (b >> 4) : (b & 0xf));
    }
  }
  throw error("unknown dtype");
}

int64_t Tensor::get_i64(int64_t i) const {
  switch (dtype_) {
    case DType::I64: return data<int64_t>()[i];
    case DType::I32: return data<int32_t>()[i];
    case DType::I8: return data<int8_t>()[i];
    case DType::U8: return data<uint8_t>()[i];
    default: throw error("get_i64 on a ", dtype_name(dtype_), " tensor");
  }
}

Tensor Tensor::to_f32() const {
  DSQ_CHECK(device_ == Device::CPU, "to_f32 needs a CPU tensor");
  Tensor out = zeros(DType::F32, shape_);
  float* dst = out.mutable_data<float>();
  const int64_t n = numel();
  if (dtype_ == DType::F32) {
    std::memcpy(dst, data_, n * sizeof(float));
  } else if (dtype_ == DType::BF16) {
    const uint16_t* src = data<uint16_t>();
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = get_f32(i);
  }
  return out;
}

Tensor Tensor::cast(DType dtype) const {
  if (dtype == DType::F32) return to_f32();
  const Tensor src = dtype_ == DType::F32 ? *this : to_f32();
  const float* s = src.data<float>();
  Tensor out = zeros(dtype, shape_);
  const int64_t n = numel();
  switch (dtype) {
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) out.mutable_data<uint16_t>()[i] = f32_to_bf16(s[i]);
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) out.mutable_data<uint16_t>()[i] = f32_to_f16(s[i]);
      break;
    case DType::F8_E4M3:
      for (int64_t i = 0; i < n; ++i) out.mutable_data<uint8_t>()[i] = f32_to_f8e4m3(s[i]);
      break;
    default: throw error("cast to ", dtype_name(dtype), " is not supported");
  }
  return out;
}

}  // namespace dsq
