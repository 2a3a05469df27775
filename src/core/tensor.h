// Tensor: a typed, shaped, contiguous block of memory that either owns its bytes or
// views bytes kept alive by someone else (an mmap'ed safetensors file, a device buffer).
//
// Tensors are cheap to copy (shared storage). Weights stay in their stored dtype; ops
// convert per row as they need (see backend/). Shapes are row-major, last axis fastest.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsq {

using Shape = std::vector<int64_t>;

enum class Device : uint8_t { CPU, CUDA };

std::string shape_string(const Shape& shape);  // "[4, 1024]"
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;

  // A new zero-filled CPU tensor that owns its memory.
  static Tensor zeros(DType dtype, Shape shape);
  // A view of `data` (not copied); `owner` keeps the bytes alive as long as the view lives.
  static Tensor view(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner,
                     Device device = Device::CPU);
  // The same over writable memory (a device allocation, a buffer the owner lends out).
  static Tensor writable_view(DType dtype, Shape shape, void* data, std::shared_ptr<const void> owner,
                              Device device = Device::CPU);
  // A copy of a vector's contents as a 1-D or reshaped tensor.
  static Tensor from_f32(const std::vector<float>& values, Shape shape);

  bool defined() const { return dtype_set_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return int(shape_.size()); }
  // Dimension i; negative i counts from the end.
  int64_t dim(int i) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return dtype_bytes(dtype_, numel()); }

  const std::byte* bytes() const { return data_; }
  std::byte* mutable_bytes();
  template <typename T>
  const T* data() const { return reinterpret_cast<const T*>(data_); }
  template <typename T>
  T* mutable_data() { return reinterpret_cast<T*>(mutable_bytes()); }

  // The same bytes seen with another shape of equal element count.
  Tensor reshaped(Shape shape) const;
  // Rows [begin, end) of the leading axis, as a view.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  // An owned f32 copy (exact for every float dtype; integers are converted by value).
  Tensor to_f32() const;
  // An owned copy in `dtype` (from f32/bf16/f16 inputs; rounds half to even).
  Tensor cast(DType dtype) const;
  // Element i (flat index) as f32; convenient in tests and cold paths only.
  float get_f32(int64_t i) const;
  int64_t get_i64(int64_t i) const;

 private:
  DType dtype_ = DType::F32;
  bool dtype_set_ = false;
  Device device_ = Device::CPU;
  Shape shape_;
  std::shared_ptr<const void> owner_;
  std::byte* data_ = nullptr;
  bool writable_ = false;
};

}  // namespace dsq
