// V4 attention over a chunk (docs/forward-semantics.md, ATTN): low-rank queries, the shared K=V row, the
// sliding window plus compressed rows (selected by the indexer in CSA layers, all of them in HCA layers), a
// softmax with a per-head sink computed online over fixed-size key tiles, and the grouped output projection.
#include <tbb/blocked_range.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "planner/core/error.h"
#include "planner/memory.h"
#include "runtime/kernels/cpu/linear.h"
#include "runtime/kernels/cpu/vec.h"
#include "runtime/model/forward_parts.h"

namespace ferry::runtime::detail {

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

// The rows one token attends to, in order: its window, then its compressed entries.
struct RowList {
  int64_t window_first, window_last;  // positions
  const int32_t* sel;                 // selected entries (CSA), or null: entries 0 … count−1 (HCA)
  int64_t count;
  int64_t size() const { return window_last - window_first + 1 + count; }
};

}  // namespace

void attention(const Chunk& ch, const LayerWeights& w, const cpu::Rope& rope, LayerKv& kv, Workspace& ws,
               const float* xn, float* y) {
  const auto& c = ch.c;
  const int64_t n = ch.n, d = c.hidden_size, nh = c.num_attention_heads, hd = c.head_dim, rd = c.qk_rope_head_dim;
  const int64_t ql = c.q_lora_rank, W = c.sliding_window, ratio = kv.ratio;
  // Queries: low-rank, normalised per head (no weight), RoPE on the last rd dims.
  cpu::linear(w.wq_a, xn, n, d, ws.qa.data(), ql);
  for (int64_t t = 0; t < n; ++t)
    cpu::rms_norm(&ws.qa[sz(t * ql)], w.q_norm.data(), ql, c.rms_norm_eps, &ws.qa[sz(t * ql)]);
  cpu::linear(w.wq_b, ws.qa.data(), n, ql, ws.q.data(), nh * hd);
  // The shared K=V row of each token, stored (rounded) as its window row.
  cpu::linear(w.wkv, xn, n, d, ws.kv.data(), hd);
  tbb::parallel_for(int64_t{0}, n, [&](int64_t t) {
    const int64_t p = ch.p0 + t;
    for (int64_t h = 0; h < nh; ++h) {
      float* q = &ws.q[sz((t * nh + h) * hd)];
      cpu::rms_norm(q, nullptr, hd, c.rms_norm_eps, q);
      rope.apply(q + hd - rd, p);
    }
    float* r = &ws.kv[sz(t * hd)];
    cpu::rms_norm(r, w.kv_norm.data(), hd, c.rms_norm_eps, r);
    rope.apply(r + hd - rd, p);
    encode_kv_row(ch.main, r, &ws.kv_rows[sz(t * ch.main.bytes)]);
  });
  if (ratio > 0) compress(ch, *w.compressor, ratio, rope, kv.main_state, false, kv.compressed, ws, xn);
  if (ratio == 4) {
    compress(ch, *w.indexer_compressor, ratio, rope, kv.index_state, true, kv.index_keys, ws, xn);
    indexer_select(ch, w, rope, kv, ws, xn, ws.qa.data());
  }
  if (ratio > 0) kv.n_compressed = (ch.p0 + n) / ratio;

  auto rows_of = [&](int64_t t) {
    const int64_t p = ch.p0 + t;
    RowList l{std::max<int64_t>(0, p - W + 1), p, nullptr, 0};
    if (ratio == 4) {
      l.sel = &ws.sel[sz(t * c.index_topk)];
      l.count = ws.sel_count[sz(t)];
    } else if (ratio > 0) {
      l.count = (p + 1) / ratio;
    }
    return l;
  };
  // Decoded row i of a token's list into `out`.
  auto fetch = [&](const RowList& l, int64_t i, float* out) {
    const int64_t nw = l.window_last - l.window_first + 1;
    if (i < nw) {
      const int64_t pos = l.window_first + i;
      if (pos >= ch.p0)
        std::memcpy(out, &ws.kv[sz((pos - ch.p0) * hd)], sz(hd) * sizeof(float));
      else
        decode_kv_row(ch.main, &kv.window[sz((pos % W) * ch.main.bytes)], out);
      return;
    }
    const int64_t j = l.sel ? l.sel[i - nw] : i - nw;
    decode_kv_row(ch.main, &kv.compressed[sz(j * ch.main.bytes)], out);
  };

  // Online softmax over key tiles: the scratch is one tile, whatever the context. Tasks are (token, head block)
  // pairs so that one-token decode still spreads over the cores.
  const int64_t head_blocks = n >= 4 ? 1 : std::min<int64_t>(nh, 8);
  const int64_t heads_per_block = (nh + head_blocks - 1) / head_blocks;
  const int64_t tile = planner::kAttnKeyTile;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  tbb::parallel_for(int64_t{0}, n * head_blocks, [&](int64_t task) {
    const int64_t t = task / head_blocks, h0 = (task % head_blocks) * heads_per_block;
    const int64_t h1 = std::min(nh, h0 + heads_per_block), hn = h1 - h0;
    if (hn <= 0) return;
    const TileScratch s = ws.tile_scratch();
    std::fill_n(s.acc.begin(), hn * hd, 0.0f);
    std::fill_n(s.max.begin(), hn, -INFINITY);
    std::fill_n(s.sum.begin(), hn, 0.0f);
    const RowList l = rows_of(t);
    const int64_t total = l.size();
    for (int64_t i0 = 0; i0 < total; i0 += tile) {
      const int64_t m = std::min(tile, total - i0);
      for (int64_t i = 0; i < m; ++i) fetch(l, i0 + i, &s.rows[sz(i * hd)]);
      for (int64_t h = h0; h < h1; ++h) {
        const float* q = &ws.q[sz((t * nh + h) * hd)];
        float mx = s.max[sz(h - h0)];
        for (int64_t i = 0; i < m; ++i) {
          const float* r = &s.rows[sz(i * hd)];
          s.scores[sz(i)] = cpu::dot(q, r, hd) * scale;
          mx = std::max(mx, s.scores[sz(i)]);
        }
        float* acc = &s.acc[sz((h - h0) * hd)];
        const float rescale = std::exp(s.max[sz(h - h0)] - mx);
        float sum = s.sum[sz(h - h0)] * rescale;
        cpu::scale(rescale, acc, hd);
        for (int64_t i = 0; i < m; ++i) {
          const float e = std::exp(s.scores[sz(i)] - mx);
          sum += e;
          cpu::axpy(e, &s.rows[sz(i * hd)], acc, hd);
        }
        s.max[sz(h - h0)] = mx;
        s.sum[sz(h - h0)] = sum;
      }
    }
    for (int64_t h = h0; h < h1; ++h) {
      const float mx = s.max[sz(h - h0)];
      const float denom = s.sum[sz(h - h0)] + std::exp(w.attn_sink[sz(h)] - mx);
      float* o = &ws.o[sz((t * nh + h) * hd)];
      const float* acc = &s.acc[sz((h - h0) * hd)];
      for (int64_t k = 0; k < hd; ++k) o[k] = acc[k] / denom;
      rope.apply(o + hd - rd, ch.p0 + t, /*inverse=*/true);
    }
  });

  // The chunk's last W rows enter the ring only now: earlier tokens of the chunk still needed the rows they replace.
  for (int64_t t = std::max<int64_t>(0, n - W); t < n; ++t) {
    const int64_t p = ch.p0 + t;
    std::memcpy(&kv.window[sz((p % W) * ch.main.bytes)], &ws.kv_rows[sz(t * ch.main.bytes)], sz(ch.main.bytes));
  }

  // Grouped low-rank output projection: group g's heads through rows g·o_lora … of wo_a, then wo_b.
  const int64_t G = c.o_groups, ol = c.o_lora_rank, gin = nh * hd / G;
  for (int64_t g = 0; g < G; ++g)
    cpu::linear(w.wo_a.slice_rows(g * ol, ol), ws.o.data() + g * gin, n, nh * hd, ws.z.data() + g * ol, G * ol);
  cpu::linear(w.wo_b, ws.z.data(), n, G * ol, y, d);
}

}  // namespace ferry::runtime::detail
