// GPTQ for symmetric INT4 group weights, exactly as llm-compressor runs it
// (shared/docs/quantization-gptq.md §1.2-1.6), on the CPU:
//
//  1. static group scales bf16(absmax/7.5) from the original weights (int4_group.h);
//  2. actorder "static": columns processed in descending diag(H) order (stable sort), each
//     column keeping its original group's scale, so the stored layout is the plain one;
//  3. dead columns (diag(H) == 0) get H[d,d] = 1. Unlike llm-compressor they are NOT zeroed:
//     their error does not reach the calibration outputs, so GPTQ leaves them at RTN, which
//     keeps the weights of inputs calibration never exercised;
//  4. damping lambda = dampening * mean(diag H) (after the dead-column fix), H += lambda I;
//  5. U upper triangular with U^T U = H^-1, computed in f64 (if H is not positive definite
//     U = I, i.e. RTN with the same scales, and the result says so);
//  6. sweep in blocks of 128 with the intra-block rank-1 and lazy inter-block updates,
//     quantizing w to clamp(rint(w/s), -8, 7) and feeding back (w - bf16(q*s)) / U_ii.
//
// Rows are independent given U, so the sweep runs in parallel over row chunks and the
// result does not depend on the thread count.
#pragma once

#include <cstdint>

#include "formats/quantized_matrix.h"

namespace dsq::quant {

struct GptqOptions {
  double dampening = 0.1;  // fraction of mean(diag H)
  int64_t block = 128;     // columns per lazy-update block
  int64_t group = 128;     // inputs per scale
  bool actorder = true;    // "static" activation ordering
};

struct GptqResult {
  QuantizedMatrix matrix;
  double loss = 0.0;            // llm-compressor's logged "error": 1/2 sum (w-q)^2 / U_ii^2
  int64_t dead_columns = 0;
  bool cholesky_failed = false; // fell back to RTN
};

// w: f32 [rows, cols]; hessian: the full symmetric [cols, cols] sum of x x^T.
GptqResult gptq_int4(const float* w, int64_t rows, int64_t cols, const float* hessian,
                     const GptqOptions& options);

// ||(Q - W) X||_F^2 / tokens computed from H = X^T X: the mean squared output error per token
// the quantized weight causes on the calibration inputs. 0 tokens gives 0.
double output_error(const float* w, const QuantizedMatrix& q, const float* hessian, int64_t tokens);

}  // namespace dsq::quant
