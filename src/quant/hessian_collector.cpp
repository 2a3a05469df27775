// HessianCollector: routes each observed linear input into its weight's Hessian.
#include "quant/hessian_collector.h"

#include "core/error.h"

namespace dsq::quant {

void HessianCollector::want(const std::string& weight) { hessians_.try_emplace(weight); }

void HessianCollector::alias(const std::string& weight, const std::string& source) {
  DSQ_CHECK(hessians_.count(source), "calibration: alias of ", weight, " to ", source, ", which is not collected");
  aliases_[weight] = source;
}

void HessianCollector::keep_rows(const std::string& weight) { kept_.try_emplace(weight); }

void HessianCollector::on_linear(const model::LinearInput& in) {
  const std::string name(in.weight);
  if (auto k = kept_.find(name); k != kept_.end())
    k->second.insert(k->second.end(), in.rows, in.rows + in.n_rows * in.cols);
  auto it = hessians_.find(name);
  if (it == hessians_.end() || in.n_rows == 0) return;
  std::vector<RowRange>& ranges = it->second;
  RowRange* range = nullptr;
  for (RowRange& r : ranges)
    if (r.row_begin == in.row_begin) range = &r;
  if (!range) {
    ranges.push_back(RowRange{in.row_begin, in.row_end, Hessian(in.cols)});
    range = &ranges.back();
  }
  DSQ_CHECK(range->row_end == in.row_end && range->hessian.dim() == in.cols, "calibration: ", name,
            ": inconsistent input shapes between calls");
  range->hessian.add(in.rows, in.n_rows);
}

const std::vector<HessianCollector::RowRange>& HessianCollector::hessians(const std::string& weight) const {
  static const std::vector<RowRange> kNone;
  auto a = aliases_.find(weight);
  const std::string& key = a == aliases_.end() ? weight : a->second;
  auto it = hessians_.find(key);
  return it == hessians_.end() ? kNone : it->second;
}

const std::vector<float>& HessianCollector::kept_rows(const std::string& weight) const {
  static const std::vector<float> kNone;
  auto it = kept_.find(weight);
  return it == kept_.end() ? kNone : it->second;
}

}  // namespace dsq::quant
