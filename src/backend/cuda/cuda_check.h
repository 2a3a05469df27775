// Error checks for CUDA runtime, cuBLAS and cuBLASLt calls: a failing call becomes one
// dsq::Error naming the call and the library's own description of the failure, so a
// GPU problem surfaces as a clear line instead of a crash or a silently wrong result.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define DSQ_CUDA_CHECK(expr)                                                              \
  do {                                                                                    \
    cudaError_t dsq_err_ = (expr);                                                        \
    if (dsq_err_ != cudaSuccess)                                                          \
      throw ::dsq::error("cuda: ", #expr, " failed: ", cudaGetErrorString(dsq_err_));    \
  } while (0)

#define DSQ_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                    \
    cublasStatus_t dsq_st_ = (expr);                                                      \
    if (dsq_st_ != CUBLAS_STATUS_SUCCESS)                                                 \
      throw ::dsq::error("cublas: ", #expr, " failed: ", cublasGetStatusString(dsq_st_)); \
  } while (0)

// After a kernel launch: reports a bad launch configuration at the launch site.
#define DSQ_CUDA_CHECK_LAUNCH() DSQ_CUDA_CHECK(cudaGetLastError())
