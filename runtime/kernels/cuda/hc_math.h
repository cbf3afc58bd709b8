// The per-token math of mHC (../shared/spec/deepseek-v4.md §2.2) on the device, as runtime/kernels/cpu/ops.cpp
// computes it (tests/unit/test_cuda_math.cpp compares them bit for bit on the CPU): the mix logits from double
// dot products scaled by the streams' inverse rms (in double), rounded to float; the pre, post and head weights
// through float sigmoids; the residual mix through a row softmax and Sinkhorn iterations in float, every sum in
// the CPU's order; the streams mixed with products and sums rounded one by one (no FMA, as on the CPU).
// On the device expf is CUDA's (within 2 ulp), where the CPU calls glibc's: the only difference in the weights.
#pragma once

#include <cstdint>

#include "runtime/kernels/cuda/device_math.h"

namespace ferry::runtime::cuda {

// The largest stream count the kernels take (V4: 4): the post-mix holds a token's streams in registers.
constexpr int64_t kMaxHc = 8;

FERRY_HD float sigmoid_f(float x) { return div_rn(1.0f, add_rn(1.0f, exp_f(-x))); }

// 1 / sqrt(mean(H²) + eps) in double, from the sum of squares of the token's n = hc·d stream values.
FERRY_HD double hc_inverse_rms(double sum_squares, int64_t n, double eps) {
  return 1.0 / ::sqrt(sum_squares / static_cast<double>(n) + eps);
}

// One mix logit: a row of fn dotted with the streams (in double), scaled by the inverse rms.
FERRY_HD float hc_logit(double dot, double inverse_rms) { return static_cast<float>(dmul_rn(dot, inverse_rms)); }

// sigmoid(logit·scale + base) + eps: a pre weight and a head weight.
FERRY_HD float hc_gate(float logit, float scale, float base, float eps) {
  return add_rn(sigmoid_f(add_rn(mul_rn(logit, scale), base)), eps);
}

// The pre, post and residual-mix weights of one token from its (2 + hc)·hc logits: comb[i·hc + j] = C[i][j],
// a row softmax plus eps, then `iters` − 1 rounds of row and column normalisation after a first column one.
FERRY_HD void hc_pre_weights(const float* logit, int64_t hc, const float* scale, const float* base, int64_t iters,
                             float eps, float* pre, float* post, float* comb) {
  for (int64_t s = 0; s < hc; ++s) {
    pre[s] = hc_gate(logit[s], scale[0], base[s], eps);
    post[s] = mul_rn(2.0f, sigmoid_f(add_rn(mul_rn(logit[hc + s], scale[1]), base[hc + s])));
  }
  float* C = comb;
  for (int64_t i = 0; i < hc * hc; ++i) C[i] = add_rn(mul_rn(logit[2 * hc + i], scale[2]), base[2 * hc + i]);
  for (int64_t i = 0; i < hc; ++i) {  // row softmax + eps
    float mx = C[i * hc];
    for (int64_t j = 1; j < hc; ++j) mx = mx < C[i * hc + j] ? C[i * hc + j] : mx;  // std::max's choice
    float s = 0;
    for (int64_t j = 0; j < hc; ++j) s = add_rn(s, C[i * hc + j] = exp_f(sub_rn(C[i * hc + j], mx)));
    for (int64_t j = 0; j < hc; ++j) C[i * hc + j] = add_rn(div_rn(C[i * hc + j], s), eps);
  }
  for (int64_t it = 0; it < (iters > 1 ? iters : 1); ++it) {
    if (it > 0)
      for (int64_t i = 0; i < hc; ++i) {
        float s = 0;
        for (int64_t j = 0; j < hc; ++j) s = add_rn(s, C[i * hc + j]);
        for (int64_t j = 0; j < hc; ++j) C[i * hc + j] = div_rn(C[i * hc + j], add_rn(s, eps));
      }
    for (int64_t j = 0; j < hc; ++j) {
      float s = 0;
      for (int64_t i = 0; i < hc; ++i) s = add_rn(s, C[i * hc + j]);
      for (int64_t i = 0; i < hc; ++i) C[i * hc + j] = div_rn(C[i * hc + j], add_rn(s, eps));
    }
  }
}

// sum_s w[s]·H[s·d + k] from 0, in stream order: the pre-mixed input and the head's output at column k.
FERRY_HD float hc_weighted_sum(const float* w, const float* H, int64_t hc, int64_t d, int64_t k) {
  float acc = 0;
  for (int64_t s = 0; s < hc; ++s) acc = add_rn(acc, mul_rn(w[s], H[s * d + k]));
  return acc;
}

// Stream j of the post-mix at one column: post[j]·y + sum_i comb[i·hc + j]·old[i], old the streams before it.
FERRY_HD float hc_post_value(const float* post, const float* comb, int64_t hc, int64_t j, float y, const float* old) {
  float acc = mul_rn(post[j], y);
  for (int64_t i = 0; i < hc; ++i) acc = add_rn(acc, mul_rn(comb[i * hc + j], old[i]));
  return acc;
}

}  // namespace ferry::runtime::cuda
