// The per-token math of the MoE router and combine on the device, as runtime/backend/host_ops.cpp computes it
// (tests/unit/test_cuda_math_moe.cpp compares them bit for bit on the CPU): scores sqrt(softplus(logit)) in
// float; the top-k of score + bias by rank (an expert's rank is the number of experts that go before it in the
// CPU's order: higher biased score first, lower id on equal ones), which is the CPU's partial sort's result; the
// weights normalised by the chosen scores' sum in choice order; a token's expert outputs summed in ascending
// sorted position with products and sums rounded one by one. On the device only expf and log1pf are CUDA's.
#pragma once

#include <cstdint>

#include "runtime/kernels/cuda/device_math.h"

namespace ferry::runtime::cuda {

// The most choices a token takes (V4: 6), as the CPU's combine allows.
constexpr int64_t kMaxRouteK = 64;

FERRY_HD float route_score(float logit) { return sqrt_f(logit > 20.0f ? logit : log1p_f(exp_f(logit))); }

// Whether expert x goes before expert y by their biased scores.
FERRY_HD bool route_before(float bx, int64_t x, float by, int64_t y) { return bx != by ? bx > by : x < y; }

// The place of expert e among the E experts by biased score: e is chosen when it is below k.
FERRY_HD int64_t route_rank(const float* biased, int64_t E, int64_t e) {
  int64_t rank = 0;
  for (int64_t x = 0; x < E; ++x) rank += route_before(biased[x], x, biased[e], e) ? 1 : 0;
  return rank;
}

// w[i] = score[ids[i]] / (sum of the chosen scores) · scaling.
FERRY_HD void route_weights(const float* score, const int32_t* ids, int64_t k, float scaling, float* w) {
  float sum = 0;
  for (int64_t i = 0; i < k; ++i) sum = add_rn(sum, score[ids[i]]);
  for (int64_t i = 0; i < k; ++i) w[i] = mul_rn(div_rn(score[ids[i]], sum), scaling);
}

// Sorts a token's k sorted positions ascending (k <= kMaxRouteK: insertion).
FERRY_HD void sort_positions(int32_t* p, int64_t k) {
  for (int64_t i = 1; i < k; ++i)
    for (int64_t j = i; j > 0 && p[j - 1] > p[j]; --j) {
      const int32_t t = p[j];
      p[j] = p[j - 1];
      p[j - 1] = t;
    }
}

// Column j of a token's combine: sum_i wt[i]·expert_out[pos[i]·d + j] from 0, pos ascending; added to y or not.
FERRY_HD float combine_value(const float* wt, const int32_t* pos, int64_t k, const float* expert_out, int64_t d,
                             int64_t j, float y, bool add) {
  float acc = 0;
  for (int64_t i = 0; i < k; ++i) acc = add_rn(acc, mul_rn(wt[i], expert_out[pos[i] * d + j]));
  return add ? add_rn(y, acc) : acc;
}

}  // namespace ferry::runtime::cuda
