// The per-step math of the attention kernel (ops::Attention, docs/forward-semantics.md ATTN), as the host's
// runtime/backend/host_attention.cpp computes it: a token's rows (its window, then its compressed entries) and
// where each one lives, the score of a row, the online softmax folded one key tile at a time (the tile's largest
// score, the state rescaled to it, then each row's weight added to the sum and, by an FMA per value, to the
// accumulator), the sink in the denominator and the inverse RoPE of the output's rope dims.
// tests/unit/test_cuda_math_attention.cpp runs the kernel's algorithm through these functions on the CPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/kernels/cuda/device_math.h"
#include "runtime/kernels/cuda/kv_math.h"
#include "runtime/kernels/cuda/norm_rope_math.h"

namespace ferry::runtime::cuda {

// A warp's lanes each hold the values lane, lane + 32, … of a row (a head's query, accumulator, output).
constexpr int kAttentionLanes = 32;
constexpr int kAttentionMaxValuesPerLane = 16;
constexpr int64_t kAttentionMaxHeadDim = kAttentionLanes * kAttentionMaxValuesPerLane;  // V4's 512
// The key tile in shared memory: as many decoded rows as fit 32 KiB, at most 64 (16 at head_dim 512).
constexpr int64_t kAttentionTileFloats = 8192, kAttentionMaxTileRows = 64;

FERRY_HD int64_t attention_tile_rows(int64_t head_dim) {
  const int64_t rows = kAttentionTileFloats / head_dim;
  return rows < kAttentionMaxTileRows ? rows : kAttentionMaxTileRows;
}

// Where the op's rows come from (device pointers).
struct AttentionRows {
  const float* kv = nullptr;            // [n, head_dim], this chunk's rows, rounded as stored
  const uint8_t* window = nullptr;      // the ring, [window_size, layout.bytes]
  const uint8_t* compressed = nullptr;  // [entries, layout.bytes]
  KvRow layout;
  const int32_t* sel = nullptr;  // ratio 4: [n, topk]
  const int32_t* sel_count = nullptr;
  int64_t topk = 0, p0 = 0, window_size = 0, ratio = 0;
};

// The rows of token t, in order: window positions first … p, then `count` compressed entries (sel[i], or i
// when sel is null).
struct TokenRows {
  int64_t p = 0, first = 0, count = 0;
  const int32_t* sel = nullptr;
  FERRY_HD int64_t window_rows() const { return p - first + 1; }
  FERRY_HD int64_t size() const { return window_rows() + count; }
};

FERRY_HD TokenRows token_rows(const AttentionRows& r, int64_t t) {
  TokenRows l;
  l.p = r.p0 + t;
  l.first = l.p - r.window_size + 1 > 0 ? l.p - r.window_size + 1 : 0;
  if (r.ratio == 4) {
    l.sel = r.sel + t * r.topk;
    l.count = r.sel_count[t];
  } else if (r.ratio > 0) {
    l.count = (l.p + 1) / r.ratio;
  }
  return l;
}

// Row i of a token's list: a float row of this chunk, or a stored row (ring slot or compressed entry).
struct RowRef {
  const float* f = nullptr;
  const uint8_t* bytes = nullptr;
};

FERRY_HD RowRef token_row(const AttentionRows& r, const TokenRows& l, int64_t i) {
  const int64_t nw = l.window_rows();
  if (i < nw) {
    const int64_t pos = l.first + i;
    if (pos >= r.p0) return {r.kv + (pos - r.p0) * r.layout.dims, nullptr};
    return {nullptr, r.window + (pos % r.window_size) * r.layout.bytes};
  }
  const int64_t j = l.sel ? l.sel[i - nw] : i - nw;
  return {nullptr, r.compressed + j * r.layout.bytes};
}

// Value k of a row, decoded where it is used (no dequantized copy of the cache).
FERRY_HD float row_value(const KvRow& layout, const RowRef& row, int64_t k) {
  return row.f ? row.f[k] : decode_kv_value(layout, row.bytes, k);
}

// The softmax scale 1/sqrt(head_dim), rounded to float from double as on the host.
FERRY_HD float attention_scale(int64_t head_dim) {
  return static_cast<float>(1.0 / ::sqrt(static_cast<double>(head_dim)));
}

// A lane's part of a score: its values' products with the query, one FMA each (the warp then sums the lanes).
FERRY_HD float lane_dot(float partial, float q, float key) { return fma_rn(q, key, partial); }

// A row's score from the warp's sum of the lanes' parts.
FERRY_HD float attention_score(float dot, float scale) { return mul_rn(dot, scale); }

// One head's online softmax: the largest score so far and the sum of e^(score − max).
struct SoftmaxState {
  float max = -INFINITY;
  float sum = 0;
};

// The largest of the scores folded so far (std::max's choice: a NaN score never replaces it).
FERRY_HD float fold_max(float max, float score) { return max < score ? score : max; }

// The state moved to a tile whose largest score is `tile_max`; returns the factor the accumulator is scaled by.
FERRY_HD float softmax_enter_tile(SoftmaxState& s, float tile_max) {
  const float mx = fold_max(s.max, tile_max);
  const float rescale = exp_f(sub_rn(s.max, mx));
  s.sum = mul_rn(s.sum, rescale);
  s.max = mx;
  return rescale;
}

// A row's weight e^(score − max), added to the sum.
FERRY_HD float softmax_take(SoftmaxState& s, float score) {
  const float w = exp_f(sub_rn(score, s.max));
  s.sum = add_rn(s.sum, w);
  return w;
}

// One accumulator value: scaled to the tile's max (before the tile's rows), then each row's weight·value added.
FERRY_HD float accumulate_rescaled(float acc, float rescale) { return mul_rn(acc, rescale); }
FERRY_HD float accumulate_row(float acc, float weight, float value) { return fma_rn(weight, value, acc); }

// The denominator: the weights' sum and the head's sink e^(sink − max).
FERRY_HD float attention_denominator(const SoftmaxState& s, float sink) {
  return add_rn(s.sum, exp_f(sub_rn(sink, s.max)));
}

FERRY_HD float attention_output(float acc, float denominator) { return div_rn(acc, denominator); }

// ---- the split over a token's rows (flash-decoding) ----
// When a launch has too few (token, head group) blocks for the device, each token's row list is cut into parts
// of part_rows rows (a whole number of key tiles, so a part's tiles are the unsplit kernel's), a function of the
// token's row count and max_parts only: a token's result does not depend on the other tokens of the launch. A
// part's block leaves each head's state (max, sum, accumulator) in scratch; a second kernel merges the parts in
// order, then applies the sink and the inverse RoPE as the unsplit kernel does.
constexpr int64_t kAttentionMaxParts = 32;
constexpr int64_t kAttentionMinPartTiles = 4;   // a part's rows outweigh its query loads and partial stores
constexpr int64_t kAttentionPartialHeader = 2;  // a head's partial: max, sum, then head_dim accumulator values

FERRY_HD int64_t attention_part_rows(int64_t total, int64_t tile_rows, int64_t max_parts, int64_t min_tiles) {
  const int64_t tiles = (total + tile_rows - 1) / tile_rows, per = (tiles + max_parts - 1) / max_parts;
  return tile_rows * (per > min_tiles ? per : min_tiles);
}

FERRY_HD int64_t attention_parts(int64_t total, int64_t part_rows) { return (total + part_rows - 1) / part_rows; }

// Part b's state folded into a's (a holds the parts before b): both moved to the larger max. Returns the factors
// a's and b's accumulators are scaled by.
struct MergeScales {
  float a = 1, b = 1;
};

FERRY_HD MergeScales softmax_merge(SoftmaxState& a, const SoftmaxState& b) {
  const float mx = fold_max(a.max, b.max);
  const MergeScales s{exp_f(sub_rn(a.max, mx)), exp_f(sub_rn(b.max, mx))};
  a.sum = fma_rn(b.sum, s.b, mul_rn(a.sum, s.a));
  a.max = mx;
  return s;
}

FERRY_HD float merge_accumulator(float acc, float part, const MergeScales& s) {
  return fma_rn(part, s.b, mul_rn(acc, s.a));
}

// The most rows a token of the launch (positions p0 … p0 + n − 1) can have: its window and its compressed
// entries, at most top-k of them at ratio 4 (the count itself is in device memory).
inline int64_t attention_rows_bound(const AttentionRows& r, int64_t n) {
  const int64_t p = r.p0 + n - 1, window = p + 1 < r.window_size ? p + 1 : r.window_size;
  return window + (r.ratio == 4 ? r.topk : r.ratio > 0 ? (p + 1) / r.ratio : 0);
}

// The parts' slots of a token in scratch: no token of at most `bound` rows has more parts.
inline int64_t attention_part_slots(int64_t bound, int64_t tile_rows, int64_t max_parts, int64_t min_tiles) {
  const int64_t most = (bound + tile_rows * min_tiles - 1) / (tile_rows * min_tiles);
  return most < max_parts ? most : max_parts;
}

// max_parts for a launch of `blocks` unsplit blocks (tokens × head groups) on `sms` multiprocessors: none (0)
// when the blocks already fill twice the SMs; else the fewest parts (a power of two up to kAttentionMaxParts) that
// do, halved until the n tokens' partials fit the scratch's `scratch_floats`; none when no token has two parts.
inline int64_t attention_split_parts(const AttentionRows& r, int64_t n, int64_t heads, int64_t head_dim, int64_t blocks,
                                     int64_t sms, int64_t scratch_floats) {
  if (blocks >= 2 * sms) return 0;
  int64_t parts = 2;
  while (parts < kAttentionMaxParts && blocks * parts < 2 * sms) parts *= 2;
  const int64_t bound = attention_rows_bound(r, n), tile_rows = attention_tile_rows(head_dim);
  for (; parts >= 2; parts /= 2) {
    const int64_t slots = attention_part_slots(bound, tile_rows, parts, kAttentionMinPartTiles);
    if (slots < 2) return 0;
    if (n * slots * heads * (head_dim + kAttentionPartialHeader) <= scratch_floats) return parts;
  }
  return 0;
}

// The output's rope dims are its last 2·count: value k (k >= head_dim − 2·count) is in pair (k − offset) / 2.
// `mine` is value k, `other` the pair's other value; returns value k rotated back by the pair's angle at `pos`.
FERRY_HD float unrope_value(float mine, float other, int64_t k, int64_t head_dim, int64_t count, const double* freqs,
                            int64_t pos) {
  const int64_t offset = head_dim - 2 * count;
  if (k < offset) return mine;
  const int64_t rel = k - offset;
  float c = 0, s = 0;
  rope_cos_sin(freqs[rel / 2], pos, /*inverse=*/true, c, s);
  float a = rel % 2 ? other : mine, b = rel % 2 ? mine : other;
  rope_pair(a, b, c, s);
  return rel % 2 ? b : a;
}

}  // namespace ferry::runtime::cuda
