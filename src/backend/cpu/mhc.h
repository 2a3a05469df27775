// The manifold-constrained hyper-connection (spec §2.4) and the final hc_head (§2.12),
// per token, in fp32.
//
// The projection mix = fn · RMSNorm(flatten(X)) is a plain linear over the N·H stream
// values and is done by the caller with linear(); these functions turn `mix` into the
// coefficients and apply them.
#pragma once

#include <cstdint>

namespace dsq::cpu {

// From mix [(2+N)·N], base [(2+N)·N] and scale [3]:
//   pre[j]  = σ(mix[j]·scale[0] + base[j]) + eps            (N)
//   post[j] = 2·σ(mix[N+j]·scale[1] + base[N+j])            (N)
//   comb    = Sinkhorn(mix[2N..]·scale[2] + base[2N..])      (N×N row-major, comb[j][k])
// Sinkhorn: row softmax, + eps, column normalisation, then (iters − 1) × (row, column).
void mhc_coefficients(const float* mix, const float* base, const float* scale, int64_t n_streams,
                      int64_t sinkhorn_iters, float eps, float* pre, float* post, float* comb);

// c = Σ_j pre[j]·X[j] for streams X [N, H].
void mhc_collapse(const float* streams, const float* pre, int64_t n_streams, int64_t hidden, float* out);

// X[k] ← post[k]·a + Σ_j comb[j][k]·X[j] (reads the old X for every k).
void mhc_update(float* streams, const float* post, const float* comb, const float* a, int64_t n_streams,
                int64_t hidden);

// hc_head weights: pre[j] = σ(mix[j]·scale + base[j]) + eps, j < N.
void hc_head_weights(const float* mix, const float* base, float scale, int64_t n_streams, float eps,
                     float* pre);

}  // namespace dsq::cpu
