// The host's attention op (ops::Attention, docs/forward-semantics.md ATTN): per token and block of heads, the
// window rows then the compressed rows are decoded one key tile at a time into the thread's scratch and folded
// into an online softmax with the head's sink, so that the scratch is one tile whatever the context.
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

// Heads h0 … h1−1 of token t.
void attend(const ops::Attention& a, int64_t t, int64_t h0, int64_t h1) {
  const int64_t hd = a.head_dim, nh = a.heads, hn = h1 - h0;
  const int64_t tile = a.tiles.key_rows / hd;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const TileSlice s = tile_slice(a.tiles, nh, hd);
  std::fill_n(s.acc, hn * hd, 0.0f);
  std::fill_n(s.max, hn, -INFINITY);
  std::fill_n(s.sum, hn, 0.0f);
  const RowList l = rows_of(a, t);
  const int64_t total = l.size();
  for (int64_t i0 = 0; i0 < total; i0 += tile) {
    const int64_t m = std::min(tile, total - i0);
    for (int64_t i = 0; i < m; ++i) fetch(a, l, i0 + i, s.rows + i * hd);
    for (int64_t h = h0; h < h1; ++h) {
      const float* q = a.q + (t * nh + h) * hd;
      float mx = s.max[h - h0];
      cpu::dots(q, s.rows, hd, m, hd, s.scores);
      for (int64_t i = 0; i < m; ++i) {
        s.scores[i] *= scale;
        mx = std::max(mx, s.scores[i]);
      }
      float* acc = s.acc + (h - h0) * hd;
      const float rescale = std::exp(s.max[h - h0] - mx);
      float sum = s.sum[h - h0] * rescale;
      cpu::scale(rescale, acc, hd);
      for (int64_t i = 0; i < m; ++i) {
        s.scores[i] = std::exp(s.scores[i] - mx);
        sum += s.scores[i];
      }
      cpu::axpys(s.scores, s.rows, hd, m, acc, hd);
      s.max[h - h0] = mx;
      s.sum[h - h0] = sum;
    }
  }
  for (int64_t h = h0; h < h1; ++h) {
    const float mx = s.max[h - h0];
    const float denom = s.sum[h - h0] + std::exp(a.sink[h] - mx);
    float* o = a.o + (t * nh + h) * hd;
    const float* acc = s.acc + (h - h0) * hd;
    for (int64_t k = 0; k < hd; ++k) o[k] = acc[k] / denom;
    cpu::rope_rotate(o + hd - 2 * a.freqs.count, a.freqs.freqs, a.freqs.count, a.p0 + t, /*inverse=*/true);
  }
}

}  // namespace

TileSlice tile_slice(const ops::TileScratch& t, int64_t heads, int64_t head_dim) {
  // The arena's thread slots are 0 … max_concurrency−1; a thread outside any arena yet is the master, slot 0.
  const int slot = std::max(0, tbb::this_task_arena::current_thread_index());
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

// Tasks are (token, head block) pairs so that one-token decode still spreads over the cores.
void attention(const ops::Attention& a) {
  FERRY_CHECK(a.tiles.key_rows >= a.head_dim, "attention: the tile scratch holds no key row");
  const int64_t nh = a.heads;
  const int64_t head_blocks = a.n >= 4 ? 1 : std::min<int64_t>(nh, 8);
  const int64_t heads_per_block = (nh + head_blocks - 1) / head_blocks;
  tbb::parallel_for(int64_t{0}, a.n * head_blocks, [&](int64_t task) {
    const int64_t t = task / head_blocks, h0 = (task % head_blocks) * heads_per_block;
    const int64_t h1 = std::min(nh, h0 + heads_per_block);
    if (h1 > h0) attend(a, t, h0, h1);
  });
}

}  // namespace ferry::runtime::host_ops
