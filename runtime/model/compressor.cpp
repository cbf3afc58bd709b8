// The CSA/HCA compressors and the lightning indexer (docs/forward-semantics.md, COMPRESS and INDEXER).
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "planner/core/error.h"
#include "runtime/kernels/cpu/linear.h"
#include "runtime/kernels/cpu/vec.h"
#include "runtime/model/forward_parts.h"

namespace ferry::runtime::detail {

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

// Pooled entry of a finished block: per channel, a softmax over the candidates' scores weights their values.
void pool(const CompressorState& st, int64_t ratio, int64_t dim, bool has_prev, float* e) {
  const bool overlap = ratio == 4;
  for (int64_t k = 0; k < dim; ++k) {
    // (row, column) of every candidate of channel k: previous block's first half, current block's second half.
    float mx = -INFINITY;
    auto visit = [&](auto&& f) {
      if (overlap) {
        if (has_prev)
          for (int64_t r = 0; r < ratio; ++r) f(st.kv[sz(r * st.width + k)], st.score[sz(r * st.width + k)]);
        for (int64_t r = ratio; r < 2 * ratio; ++r)
          f(st.kv[sz(r * st.width + dim + k)], st.score[sz(r * st.width + dim + k)]);
      } else {
        for (int64_t r = 0; r < ratio; ++r) f(st.kv[sz(r * st.width + k)], st.score[sz(r * st.width + k)]);
      }
    };
    visit([&](float, float s) { mx = std::max(mx, s); });
    double num = 0, den = 0;
    visit([&](float a, float s) {
      const double w = std::exp(static_cast<double>(s) - mx);
      num += w * a;
      den += w;
    });
    e[k] = static_cast<float>(num / den);
  }
}

}  // namespace

void compress(const Chunk& ch, const CompressorWeights& w, int64_t ratio, const cpu::Rope& rope, CompressorState& st,
              bool indexer, DeviceVector<uint8_t>& rows, Workspace& ws, const float* xn) {
  const auto& c = ch.c;
  const int64_t d = c.hidden_size, width = st.width, dim = indexer ? c.index_head_dim : c.head_dim;
  const int64_t coff = ratio == 4 ? 2 : 1;
  FERRY_CHECK(width == coff * dim, "compressor state width mismatch");
  cpu::linear(w.wkv, xn, ch.n, d, ws.comp_a.data(), width);
  cpu::linear(w.wgate, xn, ch.n, d, ws.comp_s.data(), width);
  const KvRowLayout& layout = indexer ? ch.index : ch.main;
  const int64_t rd = c.qk_rope_head_dim;
  std::vector<float> e(sz(dim));
  for (int64_t t = 0; t < ch.n; ++t) {
    const int64_t p = ch.p0 + t, slot = p % ratio;
    const float* a = ws.comp_a.data() + t * width;
    const float* s = ws.comp_s.data() + t * width;
    const float* ape = w.ape.data() + slot * width;
    const int64_t row = ratio == 4 ? ratio + slot : slot;
    for (int64_t k = 0; k < width; ++k) {
      st.kv[sz(row * width + k)] = a[k];
      st.score[sz(row * width + k)] = s[k] + ape[k];
    }
    if ((p + 1) % ratio != 0) continue;
    const int64_t j = (p + 1) / ratio - 1;
    pool(st, ratio, dim, j > 0, e.data());
    if (ratio == 4)  // the current block becomes the previous one
      std::memcpy(st.kv.data(), st.kv.data() + ratio * width, sz(ratio * width) * sizeof(float)),
          std::memcpy(st.score.data(), st.score.data() + ratio * width, sz(ratio * width) * sizeof(float));
    cpu::rms_norm(e.data(), w.norm.data(), dim, c.rms_norm_eps, e.data());
    rope.apply(e.data() + dim - rd, ratio * j);
    if (indexer) cpu::hadamard(e.data(), dim);
    FERRY_CHECK(static_cast<int64_t>(rows.size()) >= (j + 1) * layout.bytes, "KV cache full: compressed entries");
    encode_kv_row(layout, e.data(), rows.data() + j * layout.bytes);
  }
}

namespace {

// Keeps the k best (score descending, entry ascending on equal scores) of `cand`.
void keep_best(std::vector<std::pair<float, int32_t>>& cand, int64_t k) {
  auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  if (static_cast<int64_t>(cand.size()) > k) {
    std::nth_element(cand.begin(), cand.begin() + k, cand.end(), better);
    cand.resize(sz(k));
  }
}

}  // namespace

void indexer_select(const Chunk& ch, const LayerWeights& w, const cpu::Rope& rope, const LayerKv& kv, Workspace& ws,
                    const float* xn, const float* qr) {
  const auto& c = ch.c;
  const int64_t ih = c.index_n_heads, ihd = c.index_head_dim, topk = c.index_topk, d = c.hidden_size;
  const int64_t rd = c.qk_rope_head_dim;
  cpu::linear(w.indexer_wq_b, qr, ch.n, c.q_lora_rank, ws.iq.data(), ih * ihd);
  cpu::linear(w.indexer_weights_proj, xn, ch.n, d, ws.iw.data(), ih);
  const float wscale =
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(ihd)) / std::sqrt(static_cast<double>(ih)));
  tbb::parallel_for(int64_t{0}, ch.n, [&](int64_t t) {
    for (int64_t h = 0; h < ih; ++h) {
      float* q = ws.iq.data() + (t * ih + h) * ihd;
      rope.apply(q + ihd - rd, ch.p0 + t);
      cpu::hadamard(q, ihd);
      round_indexer_query(ch.kv_type, q, ihd);
    }
    for (int64_t h = 0; h < ih; ++h) ws.iw[sz(t * ih + h)] *= wscale;
  });

  // Entries visible to each token; tokens with no more than top-k entries take them all without scoring.
  std::vector<std::vector<std::pair<float, int32_t>>> best(sz(ch.n));
  int64_t max_visible = 0;
  for (int64_t t = 0; t < ch.n; ++t) max_visible = std::max(max_visible, (ch.p0 + t + 1) / 4);
  const int64_t tile = static_cast<int64_t>(ws.key_tile.size()) / ihd;
  for (int64_t j0 = 0; j0 < max_visible; j0 += tile) {
    const int64_t j1 = std::min(max_visible, j0 + tile);
    // Tokens that need scoring in this tile.
    bool any = false;
    for (int64_t t = 0; t < ch.n && !any; ++t) any = (ch.p0 + t + 1) / 4 > topk;
    if (!any) break;
    tbb::parallel_for(tbb::blocked_range<int64_t>(j0, j1, 256), [&](const tbb::blocked_range<int64_t>& r) {
      for (int64_t j = r.begin(); j != r.end(); ++j)
        decode_kv_row(ch.index, kv.index_keys.data() + j * ch.index.bytes, ws.key_tile.data() + (j - j0) * ihd);
    });
    auto score = [&](int64_t t, int64_t from, int64_t to, float* out) {
      cpu::indexer_scores(ws.iq.data() + t * ih * ihd, ws.iw.data() + t * ih, ih, ihd,
                          ws.key_tile.data() + (from - j0) * ihd, to - from, out + (from - j0));
    };
    // Only scores that beat the current k-th best can enter (a later entry loses an exact tie).
    auto merge = [&](int64_t t, const float* scores, int64_t end) {
      auto& b = best[sz(t)];
      float threshold = -INFINITY;
      if (static_cast<int64_t>(b.size()) >= topk)
        for (const auto& e : b) threshold = std::min(threshold == -INFINITY ? e.first : threshold, e.first);
      for (int64_t j = j0; j < end; ++j)
        if (static_cast<int64_t>(b.size()) < topk || scores[j - j0] > threshold)
          b.emplace_back(scores[j - j0], static_cast<int32_t>(j));
      keep_best(b, topk);
    };
    if (ch.n >= 2) {
      tbb::parallel_for(int64_t{0}, ch.n, [&](int64_t t) {
        const int64_t visible = (ch.p0 + t + 1) / 4;
        if (visible <= topk || visible <= j0) return;
        const TileScratch sc = ws.tile_scratch();
        const int64_t end = std::min(j1, visible);
        score(t, j0, end, sc.scores.data());
        merge(t, sc.scores.data(), end);
      });
    } else {
      const int64_t end = std::min(j1, (ch.p0 + 1) / 4);
      const std::span<float> scores = ws.tile_scratch().scores;
      tbb::parallel_for(tbb::blocked_range<int64_t>(j0, end, 64),
                        [&](const tbb::blocked_range<int64_t>& r) { score(0, r.begin(), r.end(), scores.data()); });
      merge(0, scores.data(), end);
    }
  }
  for (int64_t t = 0; t < ch.n; ++t) {
    const int64_t visible = (ch.p0 + t + 1) / 4;
    int32_t* sel = ws.sel.data() + t * topk;
    if (visible <= topk) {
      for (int64_t j = 0; j < visible; ++j) sel[j] = static_cast<int32_t>(j);
      ws.sel_count[sz(t)] = static_cast<int32_t>(visible);
    } else {
      const auto& b = best[sz(t)];
      for (size_t i = 0; i < b.size(); ++i) sel[i] = b[i].second;
      ws.sel_count[sz(t)] = static_cast<int32_t>(b.size());
    }
  }
}

}  // namespace ferry::runtime::detail
