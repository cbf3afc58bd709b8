// The per-element math of the lightning indexer on the device (indexer.cu), as functions that g++ compiles too so
// that tests/unit/test_cuda_math_indexer.cpp runs the kernels' algorithm on the CPU and compares it with the host's
// op: the Hadamard butterflies (the CPU's cpu::hadamard, one rounded add or subtract per value and stage, then
// one product), the head weights' scale, the score of one key, and the order of the top-k (score descending,
// entry ascending on equal scores) as a rank, with the rule of which candidate may still enter a running top-k.
//
// The score is the one place the device sums in its own order: q·key as one FMA chain over the dims, then
// sum_h w[h]·max(0, d_h) from products and sums rounded one by one, head by head. The CPU's `omp simd` reduction
// sums the dims in its vector lanes (an order that depends on the clone the CPU runs), so the two scores agree
// within float rounding, not bit for bit; everything before (the queries, the weights, the decoded keys) and the
// choice made from the scores are the CPU's exactly.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/kernels/cuda/device_math.h"
#include "runtime/kernels/cuda/kv_math.h"

namespace ferry::runtime::cuda {

// a·b + c rounded once (the device's FMA; std::fma on the host, exact as well).
FERRY_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// Stage h (1, 2, 4, … < n) of the butterflies, pair m < n/2 of it: (v[i], v[i+h]) ← (v[i]+v[i+h], v[i]−v[i+h]).
// The pairs of a stage touch disjoint values, so a block runs them at once and syncs between stages.
FERRY_HD void hadamard_pair(float* v, int64_t h, int64_t m) {
  const int64_t i = m / h * 2 * h + m % h;
  const float a = v[i], b = v[i + h];
  v[i] = add_rn(a, b);
  v[i + h] = sub_rn(a, b);
}

// The transform's final scale 1/sqrt(n), rounded to float as the CPU rounds it.
FERRY_HD float hadamard_scale(int64_t n) { return static_cast<float>(1.0 / ::sqrt(static_cast<double>(n))); }

// The whole transform of n (a power of two) values in place, in one thread: what a block computes stage by stage.
FERRY_HD void hadamard(float* v, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t m = 0; m < n / 2; ++m) hadamard_pair(v, h, m);
  const float s = hadamard_scale(n);
  for (int64_t i = 0; i < n; ++i) v[i] = mul_rn(v[i], s);
}

// A query's rounding for the fp8 cache, one block of up to 32 values (the host's round_indexer_query): FP4 under
// a power-of-two scale, the values replaced by what the codes decode to.
struct DropCode {
  FERRY_HD void operator()(int64_t, uint8_t) const {}
};
FERRY_HD void round_query_block(float* x, int64_t n) { pow2_block<true>(x, n, DropCode{}); }

// The head weights' factor 1/sqrt(head_dim)/sqrt(heads), in double, rounded to float (the host's expression).
FERRY_HD float indexer_weight_scale(int64_t heads, int64_t head_dim) {
  return static_cast<float>(1.0 / ::sqrt(static_cast<double>(head_dim)) / ::sqrt(static_cast<double>(heads)));
}

// The score of one key (dim decoded values) for a token's queries q [heads, dim] and scaled head weights w.
FERRY_HD float indexer_key_score(const float* q, const float* w, int64_t heads, int64_t dim, const float* key) {
  float score = 0;
  for (int64_t h = 0; h < heads; ++h) {
    const float* qh = q + h * dim;
    float d = 0;
    for (int64_t k = 0; k < dim; ++k) d = fma_rn(qh[k], key[k], d);
    score = add_rn(score, mul_rn(w[h], d > 0 ? d : 0.0f));
  }
  return score;
}

// Whether candidate (sa, ia) goes before (sb, ib): higher score first, lower entry on equal scores (the host's
// keep_best order). A strict total order on distinct entries, so a candidate's rank among others is its place.
FERRY_HD bool indexer_before(float sa, int32_t ia, float sb, int32_t ib) { return sa != sb ? sa > sb : ia < ib; }

// The place of candidate i among the `count` candidates (scores, ids): kept in a top-k when below k.
FERRY_HD int64_t indexer_rank(const float* scores, const int32_t* ids, int64_t count, int64_t i) {
  int64_t rank = 0;
  for (int64_t x = 0; x < count; ++x) rank += indexer_before(scores[x], ids[x], scores[i], ids[i]) ? 1 : 0;
  return rank;
}

// Whether a candidate may enter a running top-k whose k-th best so far is (ts, ti); `full` when it has k: only
// one that goes before the k-th can belong to the final k (a later, worse one never displaces it).
FERRY_HD bool indexer_admits(bool full, float ts, int32_t ti, float s, int32_t i) {
  return !full || indexer_before(s, i, ts, ti);
}

// How many blocks share one token's keys: each keeps a top-k of its part in the op's key-tile scratch (a score
// and an entry a slot, `scratch_floats` floats in all), and a second pass merges a token's parts. Decode's one
// token then spreads over many blocks; a chunk of many tokens, whose blocks already fill the device, takes one
// part a token (no merge). A part covers at least kIndexerMinPartKeys keys: a key costs heads·dim FMAs to score, a
// merged candidate a comparison, so the merge stays small next to the scoring.
constexpr int64_t kIndexerMaxParts = 256, kIndexerMinPartKeys = 256;
FERRY_HD int64_t indexer_parts(int64_t n, int64_t topk, int64_t max_visible, int64_t scratch_floats) {
  int64_t parts = scratch_floats / (2 * topk * (n > 0 ? n : 1));
  const int64_t by_keys = (max_visible + kIndexerMinPartKeys - 1) / kIndexerMinPartKeys;
  parts = parts < by_keys ? parts : by_keys;
  parts = parts < kIndexerMaxParts ? parts : kIndexerMaxParts;
  return parts < 1 ? 1 : parts;
}

// The keys [begin, end) of part `part` of `parts` of a token that sees `visible` entries.
FERRY_HD void indexer_part_range(int64_t visible, int64_t part, int64_t parts, int64_t& begin, int64_t& end) {
  const int64_t per = (visible + parts - 1) / parts;
  begin = part * per < visible ? part * per : visible;
  end = begin + per < visible ? begin + per : visible;
}

}  // namespace ferry::runtime::cuda
