#include "backend/cpu/mhc.h"

#include <cmath>
#include <vector>

namespace dsq::cpu {

namespace {
float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
}  // namespace

void mhc_coefficients(const float* mix, const float* base, const float* scale, int64_t n_streams,
                      int64_t sinkhorn_iters, float eps, float* pre, float* post, float* comb) {
  const int64_t N = n_streams;
  for (int64_t j = 0; j < N; ++j) {
    pre[j] = sigmoid(mix[j] * scale[0] + base[j]) + eps;
    post[j] = 2.0f * sigmoid(mix[N + j] * scale[1] + base[N + j]);
  }
  float* A = comb;
  for (int64_t i = 0; i < N * N; ++i) A[i] = mix[2 * N + i] * scale[2] + base[2 * N + i];
  // Row softmax (the first row normalisation), then + eps on every entry.
  for (int64_t j = 0; j < N; ++j) {
    float* row = A + j * N;
    float m = row[0];
    for (int64_t k = 1; k < N; ++k) m = std::max(m, row[k]);
    float sum = 0;
    for (int64_t k = 0; k < N; ++k) {
      row[k] = std::exp(row[k] - m);
      sum += row[k];
    }
    for (int64_t k = 0; k < N; ++k) row[k] = row[k] / sum + eps;
  }
  auto normalise_columns = [&] {
    for (int64_t k = 0; k < N; ++k) {
      float sum = 0;
      for (int64_t j = 0; j < N; ++j) sum += A[j * N + k];
      for (int64_t j = 0; j < N; ++j) A[j * N + k] /= sum + eps;
    }
  };
  normalise_columns();
  for (int64_t it = 1; it < sinkhorn_iters; ++it) {
    for (int64_t j = 0; j < N; ++j) {
      float sum = 0;
      for (int64_t k = 0; k < N; ++k) sum += A[j * N + k];
      for (int64_t k = 0; k < N; ++k) A[j * N + k] /= sum + eps;
    }
    normalise_columns();
  }
}

void mhc_collapse(const float* streams, const float* pre, int64_t n_streams, int64_t hidden, float* out) {
  for (int64_t c = 0; c < hidden; ++c) out[c] = 0;
  for (int64_t j = 0; j < n_streams; ++j) {
    const float* x = streams + j * hidden;
    for (int64_t c = 0; c < hidden; ++c) out[c] += pre[j] * x[c];
  }
}

void mhc_update(float* streams, const float* post, const float* comb, const float* a, int64_t n_streams,
                int64_t hidden) {
  const int64_t N = n_streams;
  thread_local std::vector<float> old;
  old.assign(streams, streams + N * hidden);
  for (int64_t k = 0; k < N; ++k) {
    float* out = streams + k * hidden;
    for (int64_t c = 0; c < hidden; ++c) out[c] = post[k] * a[c];
    for (int64_t j = 0; j < N; ++j) {
      const float w = comb[j * N + k];
      const float* x = old.data() + j * hidden;
      for (int64_t c = 0; c < hidden; ++c) out[c] += w * x[c];
    }
  }
}

void hc_head_weights(const float* mix, const float* base, float scale, int64_t n_streams, float eps,
                     float* pre) {
  for (int64_t j = 0; j < n_streams; ++j) pre[j] = sigmoid(mix[j] * scale + base[j]) + eps;
}

}  // namespace dsq::cpu
