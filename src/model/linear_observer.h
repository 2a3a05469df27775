// A hook that sees the input of every linear layer of a forward pass: what the quantizer's
// calibration needs to accumulate per-weight statistics (e.g. GPTQ Hessians).
//
// The forward calls on_linear() just before each linear with the f32 input rows that the
// weight multiplies, in the order the model runs them. Rules:
//  - `weight` is the native name of the weight ("layers.3.attn.wq_a.weight",
//    "layers.3.ffn.experts.5.w2.weight", "head.weight", ...).
//  - Routed experts see only the tokens routed to that expert (possibly none: then the
//    call is skipped); every other weight sees all tokens of the pass.
//  - Grouped projections (attn.wo_a) are called once per group: rows [row_begin, row_end)
//    of the weight multiply that group's inputs. For every other weight the range is
//    the whole matrix.
//  - mHC projections (hc_*_fn, f32, never quantized) are not reported.
// The input pointer is valid only during the call. Calls come from the thread that runs
// the forward, one at a time.
#pragma once

#include <cstdint>
#include <string_view>

namespace dsq::model {

struct LinearInput {
  std::string_view weight;  // native weight name
  const float* rows;        // [n_rows, cols], contiguous
  int64_t n_rows;
  int64_t cols;
  int64_t row_begin, row_end;  // the weight rows these inputs feed
};

class LinearObserver {
 public:
  virtual ~LinearObserver() = default;
  virtual void on_linear(const LinearInput& input) = 0;
};

}  // namespace dsq::model
