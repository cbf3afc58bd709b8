// V4 attention over a chunk (docs/forward-semantics.md, ATTN), as ops: low-rank queries normalised per head, the
// shared K=V row stored (rounded) as the token's window row, the compressors and the indexer of compressed
// layers, attention over the window plus compressed rows with a per-head sink, the grouped output projection.
#include "planner/core/error.h"
#include "runtime/model/forward_parts.h"

namespace ferry::runtime::detail {

void attention(const Chunk& ch, const LayerWeights& w, const cpu::Rope& rope, LayerKv& kv, Workspace& ws,
               const float* xn, float* y) {
  const auto& c = ch.c;
  const int64_t n = ch.n, nh = c.num_attention_heads, hd = c.head_dim;
  const int64_t ql = c.q_lora_rank, ratio = kv.ratio, rope_offset = hd - c.qk_rope_head_dim;
  const double eps = c.rms_norm_eps;
  const ops::RopeFreqs freqs = freqs_of(rope);
  OpStream& s = ch.ops;
  const PhaseScope phase(s.phase(), OpPhase::Attention);
  // Queries: low-rank, normalised per head (no weight), RoPE on the last rope dims.
  s.run(ops::Linear{.w = w.wq_a, .x = xn, .n = n, .y = ws.qa.data(), .bits = ch.bits});
  s.run(ops::RmsNorm{
      .x = ws.qa.data(), .rows = n, .dim = ql, .weight = w.q_norm.data(), .eps = eps, .out = ws.qa.data()});
  s.run(ops::Linear{.w = w.wq_b, .x = ws.qa.data(), .n = n, .y = ws.q.data(), .bits = ch.bits});
  s.run(ops::RmsNorm{.x = ws.q.data(), .rows = n * nh, .dim = hd, .eps = eps, .out = ws.q.data()});
  s.run(ops::Rope{
      .x = ws.q.data(), .n = n, .heads = nh, .head_dim = hd, .offset = rope_offset, .p0 = ch.p0, .freqs = freqs});
  // The shared K=V row of each token, stored (rounded) as its window row.
  s.run(ops::Linear{.w = w.wkv, .x = xn, .n = n, .y = ws.kv.data(), .bits = ch.bits});
  s.run(ops::RmsNorm{
      .x = ws.kv.data(), .rows = n, .dim = hd, .weight = w.kv_norm.data(), .eps = eps, .out = ws.kv.data()});
  s.run(ops::Rope{
      .x = ws.kv.data(), .n = n, .heads = 1, .head_dim = hd, .offset = rope_offset, .p0 = ch.p0, .freqs = freqs});
  s.run(ops::KvEncode{.layout = ch.main, .x = ws.kv.data(), .rows = n, .out = ws.kv_rows.data()});
  if (ratio > 0) compress(ch, *w.compressor, ratio, rope, kv.main_state, false, kv.compressed, ws, xn);
  if (ratio == 4) {
    const PhaseScope indexer(s.phase(), OpPhase::Indexer);
    compress(ch, *w.indexer_compressor, ratio, rope, kv.index_state, true, kv.index_keys, ws, xn);
    indexer_select(ch, w, rope, kv, ws, xn, ws.qa.data());
  }
  if (ratio > 0) kv.n_compressed = (ch.p0 + n) / ratio;

  s.run(ops::Attention{.q = ws.q.data(),
                       .kv = ws.kv.data(),
                       .window = kv.window.data(),
                       .compressed = kv.compressed.data(),
                       .layout = ch.main,
                       .sel = ws.sel.data(),
                       .sel_count = ws.sel_count.data(),
                       .topk = c.index_topk,
                       .n = n,
                       .p0 = ch.p0,
                       .heads = nh,
                       .head_dim = hd,
                       .window_size = c.sliding_window,
                       .ratio = ratio,
                       .sink = w.attn_sink.data(),
                       .freqs = freqs,
                       .tiles = ws.tile_scratch(),
                       .o = ws.o.data()});
  s.run(ops::KvWindowStore{.rows = ws.kv_rows.data(),
                           .n = n,
                           .p0 = ch.p0,
                           .window = c.sliding_window,
                           .row_bytes = ch.main.bytes,
                           .ring = kv.window.data()});

  // Grouped low-rank output projection: group g's heads through rows g·o_lora … of wo_a, then wo_b.
  const int64_t G = c.o_groups, ol = c.o_lora_rank, gin = nh * hd / G;
  for (int64_t g = 0; g < G; ++g)
    s.run(ops::Linear{.w = w.wo_a.slice_rows(g * ol, ol),
                      .x = ws.o.data() + g * gin,
                      .n = n,
                      .x_stride = nh * hd,
                      .y = ws.z.data() + g * ol,
                      .y_stride = G * ol,
                      .bits = ch.bits});
  s.run(ops::Linear{.w = w.wo_b, .x = ws.z.data(), .n = n, .y = y, .bits = ch.bits});
}

}  // namespace ferry::runtime::detail
