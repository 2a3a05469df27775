// The calibration observer: accumulates, for one decoder layer, the Hessian of every linear
// that GPTQ will quantize, from the inputs that linear actually multiplies (routed experts:
// only their routed tokens), and optionally keeps the raw rows one weight sees (the MoE
// input, for calibrating experts on every token).
//
// A weight whose rows are fed by different inputs (attn.wo_a, one call per output group)
// gets one Hessian per row range. Weights with identical inputs (an expert's w1 and w3) can
// share one Hessian: declare the second as an alias of the first.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "model/linear_observer.h"
#include "quant/hessian.h"

namespace dsq::quant {

class HessianCollector : public model::LinearObserver {
 public:
  // Collect the Hessian of `weight` (native weight name, e.g. "layers.3.attn.wq_a.weight").
  void want(const std::string& weight);
  // `weight` sees exactly the inputs of `source` (which must be wanted): it is not recorded.
  void alias(const std::string& weight, const std::string& source);
  // Keep every input row `weight` sees, in call order.
  void keep_rows(const std::string& weight);

  void on_linear(const model::LinearInput& input) override;

  struct RowRange {
    int64_t row_begin = 0, row_end = 0;
    Hessian hessian;
  };
  // The Hessians of `weight` by row range (empty if it was never called); follows aliases.
  const std::vector<RowRange>& hessians(const std::string& weight) const;
  // Rows kept for `weight`: [n, cols] contiguous; n = size / cols.
  const std::vector<float>& kept_rows(const std::string& weight) const;

 private:
  std::map<std::string, std::vector<RowRange>> hessians_;
  std::map<std::string, std::string> aliases_;
  std::map<std::string, std::vector<float>> kept_;
};

}  // namespace dsq::quant
