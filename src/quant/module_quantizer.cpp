// quantize_module: recipe group -> quantized matrix + checkpoint tensors + report.
#include "quant/module_quantizer.h"

#include <cstring>

#include "core/error.h"
#include "quant/fp8_block.h"
#include "quant/gptq.h"
#include "quant/int4_group.h"

namespace dsq::quant {

using nlohmann::json;

json ModuleReport::to_json() const {
  return json{{"module", module},         {"scheme", scheme},         {"tokens", tokens},
              {"gptq_error", gptq_error}, {"rtn_error", rtn_error},   {"gptq_loss", gptq_loss},
              {"bytes_before", bytes_before}, {"bytes_after", bytes_after}, {"note", note}};
}

ModuleReport ModuleReport::from_json(const json& j) {
  ModuleReport r;
  r.module = j.at("module");
  r.scheme = j.at("scheme");
  r.tokens = j.at("tokens");
  r.gptq_error = j.at("gptq_error");
  r.rtn_error = j.at("rtn_error");
  r.gptq_loss = j.at("gptq_loss");
  r.bytes_before = j.at("bytes_before");
  r.bytes_after = j.at("bytes_after");
  r.note = j.at("note");
  return r;
}

std::vector<NamedTensor> module_tensors(const std::string& module, const QuantizedMatrix& m) {
  switch (m.format) {
    case WeightFormat::Int4Group: {
      Tensor shape = Tensor::zeros(DType::I64, {2});
      shape.mutable_data<int64_t>()[0] = m.rows;
      shape.mutable_data<int64_t>()[1] = m.cols;
      return {{module + ".weight_packed", m.values}, {module + ".weight_scale", m.scales},
              {module + ".weight_shape", shape}};
    }
    case WeightFormat::Fp8Block:
      return {{module + ".weight", m.values}, {module + ".weight_scale", m.scales}};
    case WeightFormat::Dense:
      return {{module + ".weight", m.values}};
    case WeightFormat::Mxfp4: break;
  }
  throw error(module, ": mxfp4 is an input format only; it is not written");
}

namespace {

// Stacks row blocks of INT4 matrices (in row order) into one.
QuantizedMatrix stack_int4(const std::vector<QuantizedMatrix>& parts, int64_t rows, int64_t cols, int64_t group) {
  QuantizedMatrix m = zero_int4_matrix(rows, cols, group);
  size_t v = 0, s = 0;
  for (const QuantizedMatrix& p : parts) {
    std::memcpy(m.values.mutable_bytes() + v, p.values.bytes(), p.values.nbytes());
    std::memcpy(m.scales.mutable_bytes() + s, p.scales.bytes(), p.scales.nbytes());
    v += p.values.nbytes();
    s += p.scales.nbytes();
  }
  DSQ_CHECK(v == m.values.nbytes() && s == m.scales.nbytes(), "gptq: row blocks do not cover the matrix");
  return m;
}

QuantizedModule gptq_module(const std::string& module, const std::vector<float>& w, const QuantizedMatrix& source,
                            const RecipeGroup& g, const std::vector<HessianBlock>& hessians) {
  QuantizedModule out;
  ModuleReport& r = out.report;
  const int64_t cols = source.cols;
  std::vector<QuantizedMatrix> parts;
  r.gptq_error = r.rtn_error = r.gptq_loss = 0.0;
  int64_t rtn_kept = 0, failed = 0, next_row = 0;
  for (const HessianBlock& b : hessians) {
    DSQ_CHECK(b.row_begin == next_row, module, ": calibration covers rows from ", b.row_begin, ", expected ", next_row);
    next_row = b.row_end;
    const float* wb = w.data() + b.row_begin * cols;
    const int64_t rows = b.row_end - b.row_begin;
    GptqOptions options;
    options.dampening = g.dampening;
    options.group = g.group_size;
    options.actorder = g.actorder;
    GptqResult gptq = gptq_int4(wb, rows, cols, b.h.data(), options);
    QuantizedMatrix rtn = quantize_int4_rtn(wb, rows, cols, g.group_size);
    const double eg = output_error(wb, gptq.matrix, b.h.data(), b.tokens);
    const double er = output_error(wb, rtn, b.h.data(), b.tokens);
    r.gptq_error += eg;
    r.rtn_error += er;
    r.gptq_loss += gptq.loss;
    r.tokens = std::max(r.tokens, b.tokens);
    failed += gptq.cholesky_failed;
    if (eg <= er) {
      parts.push_back(std::move(gptq.matrix));
    } else {
      parts.push_back(std::move(rtn));
      ++rtn_kept;
    }
  }
  DSQ_CHECK(next_row == source.rows, module, ": calibration covers ", next_row, " of ", source.rows, " rows");
  out.matrix = parts.size() == 1 ? parts[0] : stack_int4(parts, source.rows, cols, g.group_size);
  r.scheme = "int4-gptq";
  if (failed) r.note = "Hessian not positive definite: RTN scales and codes";
  if (rtn_kept) r.note = "RTN had the smaller calibration error: kept RTN";
  return out;
}

}  // namespace

QuantizedModule quantize_module(const std::string& module, const QuantizedMatrix& source, const RecipeGroup* group,
                                const std::vector<HessianBlock>& hessians, const std::string& no_calibration_reason) {
  QuantizedModule out;
  ModuleReport& r = out.report;
  r.module = module;
  r.bytes_before = source.stored_bytes();
  if (!group) {
    if (source.format == WeightFormat::Dense) {
      out.matrix = source;
    } else {
      out.matrix = QuantizedMatrix::dense(source.dequantize().cast(DType::BF16));
    }
    r.scheme = "bf16";
  } else if (group->method == QuantMethod::Fp8Block) {
    if (source.format == WeightFormat::Fp8Block && source.group_size == 128) {
      out.matrix = fp8_block_with_f32_scales(source);
      r.scheme = "fp8-passthrough";
    } else {
      const Tensor w = source.dequantize();
      out.matrix = quantize_fp8_block(w.data<float>(), source.rows, source.cols);
      r.scheme = "fp8-block";
    }
  } else {
    DSQ_CHECK(source.cols % group->group_size == 0, module, ": ", source.cols, " inputs are not a multiple of group_size ",
              group->group_size);
    const Tensor wt = source.dequantize();
    const std::vector<float> w(wt.data<float>(), wt.data<float>() + wt.numel());
    if (group->method == QuantMethod::Gptq && !hessians.empty()) {
      QuantizedModule g = gptq_module(module, w, source, *group, hessians);
      out.matrix = std::move(g.matrix);
      g.report.module = r.module;
      g.report.bytes_before = r.bytes_before;
      r = g.report;
    } else {
      out.matrix = quantize_int4_rtn(w.data(), source.rows, source.cols, group->group_size);
      r.scheme = "int4-rtn";
      if (group->method == QuantMethod::Gptq) r.note = no_calibration_reason;
    }
  }
  out.tensors = module_tensors(module, out.matrix);
  for (const NamedTensor& t : out.tensors) r.bytes_after += t.tensor.nbytes();
  return out;
}

}  // namespace dsq::quant
