// The host's compressor and lightning-indexer ops (docs/forward-semantics.md, COMPRESS and INDEXER).
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "planner/core/error.h"
#include "runtime/backend/host_ops.h"
#include "runtime/kernels/cpu/kv_rows.h"
#include "runtime/kernels/cpu/ops.h"
#include "runtime/kernels/cpu/vec.h"

namespace ferry::runtime::host_ops {

namespace {

// Pooled entry of a finished block: per channel, a softmax over the candidates' scores weights their values.
void pool(const ops::Compress& a, bool has_prev, float* e) {
  const bool overlap = a.ratio == 4;
  const int64_t ratio = a.ratio, width = a.width, dim = a.dim;
  const float* kv = a.state_kv;
  const float* score = a.state_score;
  for (int64_t k = 0; k < dim; ++k) {
    // (row, column) of every candidate of channel k: previous block's first half, current block's second half.
    float mx = -INFINITY;
    auto visit = [&](auto&& f) {
      if (overlap) {
        if (has_prev)
          for (int64_t r = 0; r < ratio; ++r) f(kv[r * width + k], score[r * width + k]);
        for (int64_t r = ratio; r < 2 * ratio; ++r) f(kv[r * width + dim + k], score[r * width + dim + k]);
      } else {
        for (int64_t r = 0; r < ratio; ++r) f(kv[r * width + k], score[r * width + k]);
      }
    };
    visit([&](float, float s) { mx = std::max(mx, s); });
    double num = 0, den = 0;
    visit([&](float v, float s) {
      const double w = std::exp(static_cast<double>(s) - mx);
      num += w * v;
      den += w;
    });
    e[k] = static_cast<float>(num / den);
  }
}

}  // namespace

void compress(const ops::Compress& a) {
  const int64_t ratio = a.ratio, width = a.width, dim = a.dim;
  FERRY_CHECK(width == (ratio == 4 ? 2 : 1) * dim, "compressor state width mismatch");
  FERRY_CHECK((a.p0 + a.n) / ratio <= a.capacity, "KV cache full: compressed entries");
  std::vector<float> e(static_cast<size_t>(dim));
  for (int64_t t = 0; t < a.n; ++t) {
    const int64_t p = a.p0 + t, slot = p % ratio;
    const float* v = a.a + t * width;
    const float* s = a.s + t * width;
    const float* ape = a.ape + slot * width;
    const int64_t row = ratio == 4 ? ratio + slot : slot;
    for (int64_t k = 0; k < width; ++k) {
      a.state_kv[row * width + k] = v[k];
      a.state_score[row * width + k] = s[k] + ape[k];
    }
    if ((p + 1) % ratio != 0) continue;
    const int64_t j = (p + 1) / ratio - 1;
    pool(a, j > 0, e.data());
    if (ratio == 4) {  // the current block becomes the previous one
      const size_t half = static_cast<size_t>(ratio * width) * sizeof(float);
      std::memcpy(a.state_kv, a.state_kv + ratio * width, half);
      std::memcpy(a.state_score, a.state_score + ratio * width, half);
    }
    cpu::rms_norm(e.data(), a.norm, dim, a.eps, e.data());
    cpu::rope_rotate(e.data() + dim - 2 * a.freqs.count, a.freqs.freqs, a.freqs.count, ratio * j, false);
    if (a.indexer) cpu::hadamard(e.data(), dim);
    encode_kv_row(a.layout, e.data(), a.rows + j * a.layout.bytes);
  }
}

namespace {

using Candidates = std::vector<std::pair<float, int32_t>>;

// Keeps the k best (score descending, entry ascending on equal scores) of `cand`.
void keep_best(Candidates& cand, int64_t k) {
  auto better = [](const std::pair<float, int32_t>& x, const std::pair<float, int32_t>& y) {
    return x.first != y.first ? x.first > y.first : x.second < y.second;
  };
  if (static_cast<int64_t>(cand.size()) > k) {
    std::nth_element(cand.begin(), cand.begin() + k, cand.end(), better);
    cand.resize(static_cast<size_t>(k));
  }
}

// Queries rotated at their position, Hadamard-transformed and rounded as the KV type stores keys; head weights
// scaled so that a score is the mean over heads of the scaled dot products.
void prepare_queries(const ops::IndexerSelect& a) {
  const int64_t ih = a.heads, ihd = a.head_dim;
  const float wscale =
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(ihd)) / std::sqrt(static_cast<double>(ih)));
  tbb::parallel_for(int64_t{0}, a.n, [&](int64_t t) {
    for (int64_t h = 0; h < ih; ++h) {
      float* q = a.q + (t * ih + h) * ihd;
      cpu::rope_rotate(q + ihd - 2 * a.freqs.count, a.freqs.freqs, a.freqs.count, a.p0 + t, false);
      cpu::hadamard(q, ihd);
      round_indexer_query(a.kv_type, q, ihd);
    }
    for (int64_t h = 0; h < ih; ++h) a.w[t * ih + h] *= wscale;
  });
}

// One key tile [j0, j1): decoded once, scored for every token that sees more than top-k entries, merged into
// each token's best.
void score_tile(const ops::IndexerSelect& a, int64_t j0, int64_t j1, std::vector<Candidates>& best) {
  const int64_t ih = a.heads, ihd = a.head_dim, topk = a.topk;
  tbb::parallel_for(tbb::blocked_range<int64_t>(j0, j1, 256), [&](const tbb::blocked_range<int64_t>& r) {
    for (int64_t j = r.begin(); j != r.end(); ++j)
      decode_kv_row(a.layout, a.keys + j * a.layout.bytes, a.key_tile + (j - j0) * ihd);
  });
  auto score = [&](int64_t t, int64_t from, int64_t to, float* out) {
    cpu::indexer_scores(a.q + t * ih * ihd, a.w + t * ih, ih, ihd, a.key_tile + (from - j0) * ihd, to - from,
                        out + (from - j0));
  };
  // Only scores that beat the current k-th best can enter (a later entry loses an exact tie).
  auto merge = [&](int64_t t, const float* scores, int64_t end) {
    Candidates& b = best[static_cast<size_t>(t)];
    float threshold = -INFINITY;
    if (static_cast<int64_t>(b.size()) >= topk)
      for (const auto& e : b) threshold = std::min(threshold == -INFINITY ? e.first : threshold, e.first);
    for (int64_t j = j0; j < end; ++j)
      if (static_cast<int64_t>(b.size()) < topk || scores[j - j0] > threshold)
        b.emplace_back(scores[j - j0], static_cast<int32_t>(j));
    keep_best(b, topk);
  };
  if (a.n >= 2) {
    tbb::parallel_for(int64_t{0}, a.n, [&](int64_t t) {
      const int64_t visible = (a.p0 + t + 1) / 4;
      if (visible <= topk || visible <= j0) return;
      float* scores = tile_slice(a.tiles, 0, 0).scores;
      const int64_t end = std::min(j1, visible);
      score(t, j0, end, scores);
      merge(t, scores, end);
    });
  } else {
    const int64_t end = std::min(j1, (a.p0 + 1) / 4);
    float* scores = tile_slice(a.tiles, 0, 0).scores;
    tbb::parallel_for(tbb::blocked_range<int64_t>(j0, end, 64),
                      [&](const tbb::blocked_range<int64_t>& r) { score(0, r.begin(), r.end(), scores); });
    merge(0, scores, end);
  }
}

}  // namespace

void indexer_select(const ops::IndexerSelect& a) {
  const int64_t topk = a.topk;
  prepare_queries(a);
  // Entries visible to each token; tokens with no more than top-k entries take them all without scoring.
  std::vector<Candidates> best(static_cast<size_t>(a.n));
  int64_t max_visible = 0;
  for (int64_t t = 0; t < a.n; ++t) max_visible = std::max(max_visible, (a.p0 + t + 1) / 4);
  bool any = false;
  for (int64_t t = 0; t < a.n && !any; ++t) any = (a.p0 + t + 1) / 4 > topk;
  for (int64_t j0 = 0; any && j0 < max_visible; j0 += a.key_tile_rows)
    score_tile(a, j0, std::min(max_visible, j0 + a.key_tile_rows), best);
  for (int64_t t = 0; t < a.n; ++t) {
    const int64_t visible = (a.p0 + t + 1) / 4;
    int32_t* sel = a.sel + t * topk;
    if (visible <= topk) {
      for (int64_t j = 0; j < visible; ++j) sel[j] = static_cast<int32_t>(j);
      a.sel_count[t] = static_cast<int32_t>(visible);
    } else {
      const Candidates& b = best[static_cast<size_t>(t)];
      for (size_t i = 0; i < b.size(); ++i) sel[i] = b[i].second;
      a.sel_count[t] = static_cast<int32_t>(b.size());
    }
  }
}

}  // namespace ferry::runtime::host_ops
