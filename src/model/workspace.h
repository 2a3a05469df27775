// Workspace: the forward pass's temporary buffers in the ops' memory, one per named use
// site, kept across calls and grown when a call needs more. Reusing them matters on a GPU,
// where an allocation costs far more than a small kernel. A buffer's contents are
// undefined until written; a pointer stays valid until the same name is asked for a
// larger size. Names are string literals, looked up by address: the forward asks for
// dozens of buffers per layer, so no string is built per call (each use site names its
// own buffer; a literal spelled the same at two sites may or may not share one).
#pragma once

#include <algorithm>
#include <cstdint>
#include <unordered_map>

#include "backend/ops.h"

namespace dsq::model {

class Workspace {
 public:
  explicit Workspace(backend::Ops& ops) : ops_(ops) {}
  float* f32(const char* name, int64_t n) { return get(name, DType::F32, n).mutable_data<float>(); }
  int64_t* i64(const char* name, int64_t n) { return get(name, DType::I64, n).mutable_data<int64_t>(); }

 private:
  Tensor& get(const char* name, DType dtype, int64_t n) {
    Tensor& t = buffers_[name];
    if (!t.defined() || t.dtype() != dtype || t.numel() < n) t = ops_.alloc(dtype, {std::max<int64_t>(n, 1)});
    return t;
  }
  backend::Ops& ops_;
  std::unordered_map<const char*, Tensor> buffers_;
};

}  // namespace dsq::model
