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
// choice made from the scores are the CPU's exactly. The fp8 cache's int8 path (below) sums in its own order too.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/kernels/cuda/device_math.h"
#include "runtime/kernels/cuda/kv_math.h"
#include "runtime/kernels/cuda/matvec_math.h"  // FERRY_UNROLL

namespace ferry::runtime::cuda {

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

// Head h's term of a score, added to the sum of the heads before it: w[h]·max(0, d_h), product and sum rounded.
FERRY_HD float indexer_add_head(float score, float w, float d) { return add_rn(score, mul_rn(w, d > 0 ? d : 0.0f)); }

// The score of one key (dim decoded values) for a token's queries q [heads, dim] and scaled head weights w.
FERRY_HD float indexer_key_score(const float* q, const float* w, int64_t heads, int64_t dim, const float* key) {
  float score = 0;
  for (int64_t h = 0; h < heads; ++h) {
    const float* qh = q + h * dim;
    float d = 0;
    for (int64_t k = 0; k < dim; ++k) d = fma_rn(qh[k], key[k], d);
    score = indexer_add_head(score, w[h], d);
  }
  return score;
}

// ---- the int8 tensor-core scores of the fp8 cache (indexer.cu's int8 path) ----
//
// With --kv-type fp8 both sides of q·key sit on FP4 grids: a stored key block of 32 is E2M1 codes under its E8M0
// scale 2^ek, a rounded query block E2M1 values under a power of two. Twice an E2M1 value is an integer in
// [−12, 12], so a block's dot product is an exact integer (|dot| <= 32·144) times 2^(xq + ek − 2): one mma.sync
// m16n8k32 s8·s8→s32 a block (K = 32 is one block). Its float value is exact too (two products by powers of two),
// and a head's dot product d is the float sum of its blocks' values in block order, ((v0 + v1) + v2) + v3; ReLU,
// head weight and the sum over heads follow as in indexer_key_score. So the device's d rounds only in those
// three additions where the host's float sum of the 128 products rounds in up to 127: the scores agree more
// tightly than the fp32 path's. Exact while the products are normal floats (|q_i·k_i| >= 2^-126 or 0), as they
// are for any activations the model makes; the host's own products round below that.

// A launch scores with int8 MMAs when its keys are the fp8 cache's FP4 rows and its queries are rounded to their
// grid, in whole blocks of 32 dims, with no more heads than one block's shared memory holds (the tiles pad them
// to a multiple of 16).
constexpr int64_t kIndexerInt8MaxHeads = 64, kIndexerInt8MaxBlocks = 4;
FERRY_HD bool indexer_int8_path(bool round_fp4, KvFormat format, int64_t heads, int64_t dim) {
  return round_fp4 && format == KvFormat::Fp4Indexer && dim % kKvFp4Block == 0 &&
         dim <= kIndexerInt8MaxBlocks * kKvFp4Block && heads <= kIndexerInt8MaxHeads;
}

// Twice the value of an E2M1 code (bit 3 the sign): {0, 1, 2, 3, 4, 6, 8, 12}, negative with the sign.
FERRY_HD int8_t e2m1_to_int8(uint8_t code) {
  const int e = (code >> 1) & 3, m = code & 1;
  const int v = e == 0 ? m : (2 + m) << (e - 1);
  return static_cast<int8_t>((code & 8) ? -v : v);
}

// The exponent x of a rounded query block's grid: its values are i·2^(x−1), integers |i| <= 12. The smallest x
// with amax <= 6·2^x: the block was rounded to E2M1 values under 2^c with amax <= 6·2^c, so x <= c and each value
// (an E2M1 value, a multiple of 1/2, times 2^c) is a whole multiple of 2^(x−1). 0 for a block of zeros.
FERRY_HD int fp4_grid_exponent(float amax) {
  if (amax == 0) return 0;
  const uint32_t u = bits_of_float(amax), e = (u >> 23) & 0xFF;
  const uint32_t mant = e != 0 ? (u & 0x7FFFFFu) | 0x800000u : u & 0x7FFFFFu;  // amax = mant·2^(base)
  const int top = highest_bit(mant), floor_log2 = (e != 0 ? static_cast<int>(e) - 150 : -149) + top;
  return uint64_t{mant} * 2 <= uint64_t{3} << top ? floor_log2 - 2 : floor_log2 - 1;  // amax <= 1.5·2^floor_log2?
}

// Four int8 operands as one register of an MMA fragment, the first in the low byte.
FERRY_HD uint32_t pack_int8x4(int a, int b, int c, int d) {
  return static_cast<uint32_t>(a & 0xFF) | static_cast<uint32_t>(b & 0xFF) << 8 |
         static_cast<uint32_t>(c & 0xFF) << 16 | static_cast<uint32_t>(d & 0xFF) << 24;
}

// A rounded query block of 32 as int8 operands (v = i·2^(x−1)), packed 4 a word; returns 2^(x−1), the factor of
// its products.
FERRY_HD float fp4_query_block(const float* v, uint32_t* words) {
  const int x = fp4_grid_exponent(max_abs(v, kKvFp4Block)), s = 1 - x;
  FERRY_UNROLL
  for (int64_t i = 0; i < kKvFp4Block / 4; ++i) {
    const float* p = v + 4 * i;
    words[i] = pack_int8x4(static_cast<int>(scale_pow2(p[0], s)), static_cast<int>(scale_pow2(p[1], s)),
                           static_cast<int>(scale_pow2(p[2], s)), static_cast<int>(scale_pow2(p[3], s)));
  }
  return scale_pow2(1.0f, x - 1);
}

// Block b of a stored FP4 key row as int8 operands (value = i·2^(ek−1), 2^ek its E8M0 scale), packed 4 a word
// (two bytes of pairs, the even value in the low nibble); returns 2^(ek−1).
FERRY_HD float fp4_key_block(const KvRow& l, const uint8_t* row, int64_t b, uint32_t* words) {
  const uint8_t* pairs = row + b * kKvFp4Block / 2;
  FERRY_UNROLL
  for (int64_t i = 0; i < kKvFp4Block / 4; ++i) {
    const uint8_t lo = pairs[2 * i], hi = pairs[2 * i + 1];
    words[i] = pack_int8x4(e2m1_to_int8(lo & 0xF), e2m1_to_int8(static_cast<uint8_t>(lo >> 4)), e2m1_to_int8(hi & 0xF),
                           e2m1_to_int8(static_cast<uint8_t>(hi >> 4)));
  }
  return mul_rn(e8m0_to_float(row[l.dims / 2 + b]), 0.5f);
}

// The bits of 1.5·2^23, a float whose ulp is 1: an integer |i| < 2^22 added to them makes the float 1.5·2^23 + i
// exactly. The MMA starts its accumulators there, so that its result read as a float, less 1.5·2^23, is the
// integer dot product as a float: no conversion instruction (those run at a quarter of the float rate on sm_86).
constexpr uint32_t kIndexerIntBias = 0x4B400000u;
FERRY_HD float unbias_int(uint32_t biased) { return sub_rn(float_from_bits(biased), 12582912.0f); }

// A block's value from its biased integer dot product and the query's and key's factors (powers of two): exact.
FERRY_HD float fp4_block_value(uint32_t biased_dot, float fq, float fk) {
  return mul_rn(mul_rn(unbias_int(biased_dot), fq), fk);
}

// A head's dot product from its blocks' values (blocks <= kIndexerInt8MaxBlocks), summed in block order. The
// loop's fixed count keeps the kernel's values in registers.
FERRY_HD float fp4_head_dot(const float* values, int64_t blocks) {
  float d = values[0];
  FERRY_UNROLL
  for (int64_t b = 1; b < kIndexerInt8MaxBlocks; ++b)
    if (b < blocks) d = add_rn(d, values[b]);
  return d;
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
