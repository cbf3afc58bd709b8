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

// a·b + c rounded once, as the host's accumulation (cpu::axpys) rounds it.
FERRY_HD float fma_f(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// The softmax scale 1/sqrt(head_dim), rounded to float from double as on the host.
FERRY_HD float attention_scale(int64_t head_dim) {
  return static_cast<float>(1.0 / ::sqrt(static_cast<double>(head_dim)));
}

// A lane's part of a score: its values' products with the query, one FMA each (the warp then sums the lanes).
FERRY_HD float lane_dot(float partial, float q, float key) { return fma_f(q, key, partial); }

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
FERRY_HD float accumulate_row(float acc, float weight, float value) { return fma_f(weight, value, acc); }

// The denominator: the weights' sum and the head's sink e^(sink − max).
FERRY_HD float attention_denominator(const SoftmaxState& s, float sink) {
  return add_rn(s.sum, exp_f(sub_rn(sink, s.max)));
}

FERRY_HD float attention_output(float acc, float denominator) { return div_rn(acc, denominator); }

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
