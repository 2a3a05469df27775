#include "model/weight_format.h"

#include "core/error.h"

namespace dsq::model {

namespace {

// The first of the given names the checkpoint has, or "" if none.
std::string first_present(const Checkpoint& ckpt, std::initializer_list<std::string> names) {
  for (const std::string& n : names)
    if (ckpt.has(n)) return n;
  return "";
}

}  // namespace

QuantizedMatrix load_linear_weight(const Checkpoint& ckpt, const std::string& module, int64_t rows,
                                   int64_t cols) {
  const std::string weight = module + ".weight";
  QuantizedMatrix m;
  m.rows = rows;
  m.cols = cols;
  if (ckpt.has(module + ".weight_packed")) {
    const std::string scale = first_present(ckpt, {module + ".weight_scale"});
    DSQ_CHECK(!scale.empty(), ckpt.directory(), ": ", module, ".weight_packed has no weight_scale");
    m.format = WeightFormat::Int4Group;
    m.values = ckpt.get(module + ".weight_packed");
    m.scales = ckpt.get(scale);
    DSQ_CHECK(m.scales.rank() == 2 && m.scales.dim(1) > 0 && cols % m.scales.dim(1) == 0, ckpt.directory(),
              ": ", scale, ": scale shape ", shape_string(m.scales.shape()), " does not divide ", cols,
              " inputs");
    m.group_size = cols / m.scales.dim(1);
  } else {
    DSQ_CHECK(ckpt.has(weight), ckpt.directory(), ": missing tensor ", weight);
    const Tensor values = ckpt.get(weight);
    const std::string scale = first_present(ckpt, {module + ".scale", module + ".weight_scale_inv",
                                                   module + ".weight_scale"});
    if (values.dtype() == DType::F8_E4M3) {
      DSQ_CHECK(!scale.empty(), ckpt.directory(), ": ", weight, " is f8_e4m3 but has no scale tensor");
      m.format = WeightFormat::Fp8Block;
      m.values = values;
      m.scales = ckpt.get(scale);
      m.group_size = 128;
    } else if (values.dtype() == DType::I8 || values.dtype() == DType::U8) {
      DSQ_CHECK(!scale.empty(), ckpt.directory(), ": ", weight, " is packed e2m1 but has no scale tensor");
      m.format = WeightFormat::Mxfp4;
      m.values = values;
      m.scales = ckpt.get(scale);
      m.group_size = 32;
    } else {
      m = QuantizedMatrix::dense(ckpt.get_checked(weight, {rows, cols}));
    }
  }
  m.validate(ckpt.directory() + ": " + module);
  return m;
}

}  // namespace dsq::model
