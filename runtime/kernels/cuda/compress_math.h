// The per-element math of the compressors on the device (compress.cu), as functions that g++ compiles too so that
// tests/unit/test_cuda_math_indexer.cpp runs the kernels' algorithm on the CPU against the host's op
// (runtime/backend/host_compress.cpp). The host walks the chunk token by token through a small state (ratio 4:
// rows 0…3 the previous block, rows 4…7 the current one; ratio 128: the current block's rows); the device pools
// every entry that completes in the chunk at once, each reading its positions where the host would have found
// them (this chunk's projections, or the state as the previous chunk left it), then writes the state the host
// leaves. The pooling is the host's: per channel the maximum score, then in double the exp-weighted sums of
// values and weights in candidate order, rounded once; only exp() differs on the device (CUDA's double exp,
// within 1 ulp of a double, where the host has glibc's), far below the float rounding that follows.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/kernels/cuda/device_math.h"

namespace ferry::runtime::cuda {

FERRY_HD double exp_d(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// What the pooling reads: the chunk's projections a and s ([n, width]), the ape ([ratio, width]) and the state
// ([2·ratio or ratio rows, width]) as it was before the chunk.
struct CompressView {
  const float* a = nullptr;
  const float* s = nullptr;
  const float* ape = nullptr;
  const float* state_kv = nullptr;
  const float* state_score = nullptr;
  int64_t n = 0, p0 = 0, ratio = 0, dim = 0, width = 0;
};

// The state row that holds position p < p0 when the chunk starts: ratio 4's current block (the one p0 is in) in
// rows 4…7, the block before it in rows 0…3 (copied there when it completed); other ratios' current block.
FERRY_HD int64_t compress_state_row(int64_t ratio, int64_t p0, int64_t p) {
  const int64_t slot = p % ratio;
  if (ratio != 4) return slot;
  return p >= p0 / 4 * 4 ? 4 + slot : slot;
}

// Column c of position p: its value, and its score with the ape of its slot added (one float sum, as the host
// stores it).
FERRY_HD void compress_source(const CompressView& v, int64_t p, int64_t c, float& value, float& score) {
  if (p >= v.p0) {
    const int64_t t = p - v.p0;
    value = v.a[t * v.width + c];
    score = add_rn(v.s[t * v.width + c], v.ape[p % v.ratio * v.width + c]);
  } else {
    const int64_t row = compress_state_row(v.ratio, v.p0, p);
    value = v.state_kv[row * v.width + c];
    score = v.state_score[row * v.width + c];
  }
}

// The candidates of channel k of entry j, in the host's order, each as (position, column): ratio 4's previous
// block (first half of the columns, when j > 0) then its own block (second half); other ratios' own block.
template <class F>
FERRY_HD void compress_candidates(const CompressView& v, int64_t j, int64_t k, F&& f) {
  const int64_t r = v.ratio;
  if (r == 4) {
    if (j > 0)
      for (int64_t i = 0; i < r; ++i) f(r * (j - 1) + i, k);
    for (int64_t i = 0; i < r; ++i) f(r * j + i, v.dim + k);
  } else {
    for (int64_t i = 0; i < r; ++i) f(r * j + i, k);
  }
}

// Channel k of entry j, pooled: the softmax of its candidates' scores weights their values.
FERRY_HD float compress_pool(const CompressView& v, int64_t j, int64_t k) {
  float mx = -INFINITY;
  compress_candidates(v, j, k, [&](int64_t p, int64_t c) {
    float value, score;
    compress_source(v, p, c, value, score);
    mx = mx < score ? score : mx;  // std::max(mx, score)
  });
  double num = 0, den = 0;
  compress_candidates(v, j, k, [&](int64_t p, int64_t c) {
    float value, score;
    compress_source(v, p, c, value, score);
    const double w = exp_d(static_cast<double>(score) - mx);
    num = dadd_rn(num, dmul_rn(w, static_cast<double>(value)));
    den = dadd_rn(den, w);
  });
  return static_cast<float>(num / den);
}

// The entries that complete in the chunk: j in [begin, end).
FERRY_HD void compress_entries(int64_t p0, int64_t n, int64_t ratio, int64_t& begin, int64_t& end) {
  begin = p0 / ratio;
  end = (p0 + n) / ratio;
}

// The last position of the chunk in slot `slot`, or −1.
FERRY_HD int64_t compress_last_in_slot(const CompressView& v, int64_t slot) {
  if (v.n == 0) return -1;
  const int64_t last = v.p0 + v.n - 1, p = last - ((last - slot) % v.ratio + v.ratio) % v.ratio;
  return p >= v.p0 ? p : -1;
}

// Row `row`, column c of the state after the chunk, from the state before it: a current-block row holds the last
// position of its slot (if the chunk has one); ratio 4's previous-block rows hold the last block that completed
// in the chunk (if one did), wherever its positions were. Returns false where the row keeps its value.
FERRY_HD bool compress_new_state(const CompressView& v, int64_t row, int64_t c, float& value, float& score) {
  if (v.ratio == 4 && row < 4) {
    int64_t begin, end;
    compress_entries(v.p0, v.n, v.ratio, begin, end);
    if (end == begin) return false;
    compress_source(v, 4 * (end - 1) + row, c, value, score);
    return true;
  }
  const int64_t p = compress_last_in_slot(v, v.ratio == 4 ? row - 4 : row);
  if (p < 0) return false;
  compress_source(v, p, c, value, score);
  return true;
}

}  // namespace ferry::runtime::cuda
