// The host's attention op (ops::Attention, docs/forward-semantics.md ATTN): per token, the window rows then the
// compressed rows are decoded one key tile at a time into the tile scratch and folded into each head's online
// softmax with the head's sink, so that the scratch is one tile per thread whatever the context.
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "planner/core/error.h"
#include "runtime/backend/host_ops.h"
#include "runtime/kernels/cpu/kv_rows.h"
#include "runtime/kernels/cpu/ops.h"
#include "runtime/kernels/cpu/vec.h"

namespace ferry::runtime::host_ops {

namespace {

// The rows one token attends to, in order: its window, then its compressed entries.
struct RowList {
  int64_t window_first, window_last;  // positions
  const int32_t* sel;                 // selected entries (CSA), or null: entries 0 … count−1 (HCA)
  int64_t count;
  int64_t size() const { return window_last - window_first + 1 + count; }
};

RowList rows_of(const ops::Attention& a, int64_t t) {
  const int64_t p = a.p0 + t;
  RowList l{std::max<int64_t>(0, p - a.window_size + 1), p, nullptr, 0};
  if (a.ratio == 4) {
    l.sel = a.sel + t * a.topk;
    l.count = a.sel_count[t];
  } else if (a.ratio > 0) {
    l.count = (p + 1) / a.ratio;
  }
  return l;
}

// Decoded row i of a token's list into `out`: this chunk's rows are the op's float rows, earlier window rows come
// from the ring, the rest from the compressed entries.
void fetch(const ops::Attention& a, const RowList& l, int64_t i, float* out) {
  const int64_t nw = l.window_last - l.window_first + 1, hd = a.head_dim, bytes = a.layout.bytes;
  if (i < nw) {
    const int64_t pos = l.window_first + i;
    if (pos >= a.p0)
      std::memcpy(out, a.kv + (pos - a.p0) * hd, static_cast<size_t>(hd) * sizeof(float));
    else
      decode_kv_row(a.layout, a.window + (pos % a.window_size) * bytes, out);
    return;
  }
  const int64_t j = l.sel ? l.sel[i - nw] : i - nw;
  decode_kv_row(a.layout, a.compressed + j * bytes, out);
}

// Folds key rows `rows` (m of them, one tile) into the online softmax of heads h0 … h0+g−1 of token t, each in
// the same order as alone: the tile's scores, the running max, the accumulator rescaled to it, then the tile's
// exps summed and added in. The scores and the sums of rows go a few rows at a time for all g heads, so that the
// rows are read from the cache nearest the core (their order per head is as one call: dots' row groups and
// axpys' per-element FMA chains do not depend on where a call starts). Head j's scores are at scores + j·tile.
void fold(const ops::Attention& a, int64_t t, int64_t h0, int64_t g, const float* rows, int64_t m, int64_t tile,
          float* scores, const TileSlice& state) {
  constexpr int64_t kRows = 32;  // a multiple of 8: the same row groups in dots as one call over the tile
  const int64_t hd = a.head_dim;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const float* q = a.q + (t * a.heads + h0) * hd;
  for (int64_t i0 = 0; i0 < m; i0 += kRows)
    for (int64_t j = 0; j < g; ++j)
      cpu::dots(q + j * hd, rows + i0 * hd, hd, std::min(kRows, m - i0), hd, scores + j * tile + i0);
  for (int64_t j = 0; j < g; ++j) {
    float* sc = scores + j * tile;
    float* acc = state.acc + j * hd;
    float mx = state.max[j];
    for (int64_t i = 0; i < m; ++i) {
      sc[i] *= scale;
      mx = std::max(mx, sc[i]);
    }
    const float rescale = std::exp(state.max[j] - mx);
    float sum = state.sum[j] * rescale;
    cpu::scale(rescale, acc, hd);
    for (int64_t i = 0; i < m; ++i) {
      sc[i] = std::exp(sc[i] - mx);
      sum += sc[i];
    }
    state.max[j] = mx;
    state.sum[j] = sum;
  }
  for (int64_t i0 = 0; i0 < m; i0 += kRows)
    for (int64_t j = 0; j < g; ++j)
      cpu::axpys(scores + j * tile + i0, rows + i0 * hd, hd, std::min(kRows, m - i0), state.acc + j * hd, hd);
}

// Heads h0 … h1−1 in groups that share a pass over a tile: as many as the scores' scratch holds a tile for.
template <typename F>
void for_head_groups(const ops::Attention& a, int64_t h0, int64_t h1, int64_t tile, F&& f) {
  const int64_t per = std::max<int64_t>(1, a.tiles.scores / tile);
  for (int64_t h = h0; h < h1; h += per) f(h, std::min(per, h1 - h));
}

// The softmax state of heads h … of `s` from head h0's on.
TileSlice heads_from(const TileSlice& s, int64_t h, int64_t hd) {
  return {s.rows, s.scores, s.acc + h * hd, s.max + h, s.sum + h};
}

// An empty online softmax for `heads` heads: no rows seen, nothing accumulated.
void start_softmax(const TileSlice& s, int64_t heads, int64_t hd) {
  std::fill_n(s.acc, heads * hd, 0.0f);
  std::fill_n(s.max, heads, -INFINITY);
  std::fill_n(s.sum, heads, 0.0f);
}

// Head h's output of token t from its softmax state: the sink joins the denominator, the rope dims rotate back.
void finish(const ops::Attention& a, int64_t t, int64_t h, const float* acc, float max, float sum) {
  const int64_t hd = a.head_dim;
  const float denom = sum + std::exp(a.sink[h] - max);
  float* o = a.o + (t * a.heads + h) * hd;
  for (int64_t k = 0; k < hd; ++k) o[k] = acc[k] / denom;
  cpu::rope_rotate(o + hd - 2 * a.freqs.count, a.freqs.freqs, a.freqs.count, a.p0 + t, /*inverse=*/true);
}

// Heads h0 … h1−1 of token t, decoding the token's rows into the thread's own slice (prefill: a task per token).
void attend(const ops::Attention& a, int64_t t, int64_t h0, int64_t h1) {
  const int64_t hd = a.head_dim, nh = a.heads, hn = h1 - h0;
  const int64_t tile = a.tiles.key_rows / hd;
  const TileSlice s = tile_slice(a.tiles, nh, hd);
  start_softmax(s, hn, hd);
  const RowList l = rows_of(a, t);
  const int64_t total = l.size();
  for (int64_t i0 = 0; i0 < total; i0 += tile) {
    const int64_t m = std::min(tile, total - i0);
    for (int64_t i = 0; i < m; ++i) fetch(a, l, i0 + i, s.rows + i * hd);
    for_head_groups(a, h0, h1, tile, [&](int64_t h, int64_t g) {
      fold(a, t, h, g, s.rows, m, tile, s.scores, heads_from(s, h - h0, hd));
    });
  }
  for (int64_t h = h0; h < h1; ++h) finish(a, t, h, s.acc + (h - h0) * hd, s.max[h - h0], s.sum[h - h0]);
}

// Every head of token t with each row decoded once (decode: one token over all the cores). The rows go a block
// of `threads` tiles at a time into the key-row parts of all the slices (tile k of the block in slice k), decoded
// in parallel; then the heads, in parallel, fold the block's tiles in order. The heads' softmax states live in
// slice 0's accumulators, which hold every head; a task's scores are its thread's own.
void attend_shared(const ops::Attention& a, int64_t t) {
  const int64_t hd = a.head_dim, nh = a.heads, tile = a.tiles.key_rows / hd;
  const int64_t per = a.tiles.per_thread, block = tile * a.tiles.threads;
  // Tasks of whole head groups where the heads are enough to give every thread work.
  const int64_t grain = std::clamp<int64_t>(nh / a.tiles.threads, 1, std::max<int64_t>(1, a.tiles.scores / tile));
  const TileSlice state = tile_slice_at(a.tiles, 0, nh, hd);
  start_softmax(state, nh, hd);
  const RowList l = rows_of(a, t);
  const int64_t total = l.size();
  for (int64_t b0 = 0; b0 < total; b0 += block) {
    const int64_t mb = std::min(block, total - b0);
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, mb, 16), [&](const tbb::blocked_range<int64_t>& r) {
      for (int64_t i = r.begin(); i < r.end(); ++i)
        fetch(a, l, b0 + i, a.tiles.data + (i / tile) * per + (i % tile) * hd);
    });
    const bool last = b0 + mb == total;
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, nh, grain), [&](const tbb::blocked_range<int64_t>& r) {
      float* scores = tile_slice(a.tiles, nh, hd).scores;
      for (int64_t i0 = 0; i0 < mb; i0 += tile) {
        const float* rows = a.tiles.data + (i0 / tile) * per;
        for_head_groups(a, r.begin(), r.end(), tile, [&](int64_t h, int64_t g) {
          fold(a, t, h, g, rows, std::min(tile, mb - i0), tile, scores, heads_from(state, h, hd));
        });
      }
      if (last)
        for (int64_t h = r.begin(); h < r.end(); ++h) finish(a, t, h, state.acc + h * hd, state.max[h], state.sum[h]);
    });
  }
}

}  // namespace

TileSlice tile_slice_at(const ops::TileScratch& t, int slot, int64_t heads, int64_t head_dim) {
  FERRY_CHECK(slot < t.threads, "a tile loop ran on worker {} of scratch for {} threads", slot, t.threads);
  FERRY_CHECK(t.key_rows + t.scores + heads * head_dim + 2 * heads <= t.per_thread,
              "tile scratch: a slice is too small for the op");
  float* p = t.data + slot * t.per_thread;
  TileSlice s;
  s.rows = p;
  s.scores = p + t.key_rows;
  s.acc = s.scores + t.scores;
  s.max = s.acc + heads * head_dim;
  s.sum = s.max + heads;
  return s;
}

TileSlice tile_slice(const ops::TileScratch& t, int64_t heads, int64_t head_dim) {
  // The arena's thread slots are 0 … max_concurrency−1; a thread outside any arena yet is the master, slot 0.
  return tile_slice_at(t, std::max(0, tbb::this_task_arena::current_thread_index()), heads, head_dim);
}

// Few tokens (decode) run one at a time, each over all the cores with its rows decoded once; more (prefill) are
// a task per token.
void attention(const ops::Attention& a) {
  FERRY_CHECK(a.tiles.key_rows >= a.head_dim, "attention: the tile scratch holds no key row");
  if (a.n < 4) {
    for (int64_t t = 0; t < a.n; ++t) attend_shared(a, t);
    return;
  }
  tbb::parallel_for(int64_t{0}, a.n, [&](int64_t t) { attend(a, t, 0, a.heads); });
}

}  // namespace ferry::runtime::host_ops
