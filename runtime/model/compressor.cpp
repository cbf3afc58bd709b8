// The CSA/HCA compressors and the lightning indexer over a chunk (docs/forward-semantics.md, COMPRESS and
// INDEXER), as ops: the projections, then the compressor's state update and pooled entries, or the indexer's
// scores and top-k.
#include "planner/core/error.h"
#include "runtime/model/forward_parts.h"

namespace ferry::runtime::detail {

void compress(const Chunk& ch, const CompressorWeights& w, int64_t ratio, const cpu::Rope& rope, CompressorState& st,
              bool indexer, DeviceVector<uint8_t>& rows, Workspace& ws, const float* xn) {
  const auto& c = ch.c;
  const int64_t width = st.width, dim = indexer ? c.index_head_dim : c.head_dim;
  const planner::KvRowLayout& layout = indexer ? ch.index : ch.main;
  OpStream& s = ch.ops;
  s.run(ops::Linear{.w = w.wkv, .x = xn, .n = ch.n, .y = ws.comp_a.data(), .y_stride = width, .bits = ch.bits});
  s.run(ops::Linear{.w = w.wgate, .x = xn, .n = ch.n, .y = ws.comp_s.data(), .y_stride = width, .bits = ch.bits});
  s.run(ops::Compress{.a = ws.comp_a.data(),
                      .s = ws.comp_s.data(),
                      .ape = w.ape.data(),
                      .norm = w.norm.data(),
                      .n = ch.n,
                      .p0 = ch.p0,
                      .ratio = ratio,
                      .dim = dim,
                      .width = width,
                      .eps = c.rms_norm_eps,
                      .freqs = freqs_of(rope),
                      .indexer = indexer,
                      .state_kv = st.kv.data(),
                      .state_score = st.score.data(),
                      .layout = layout,
                      .rows = rows.data(),
                      .capacity = static_cast<int64_t>(rows.size()) / layout.bytes});
}

void indexer_select(const Chunk& ch, const LayerWeights& w, const cpu::Rope& rope, const LayerKv& kv, Workspace& ws,
                    const float* xn, const float* qr) {
  const auto& c = ch.c;
  const int64_t ih = c.index_n_heads, ihd = c.index_head_dim;
  OpStream& s = ch.ops;
  s.run(ops::Linear{.w = w.indexer_wq_b, .x = qr, .n = ch.n, .y = ws.iq.data(), .bits = ch.bits});
  s.run(ops::Linear{.w = w.indexer_weights_proj, .x = xn, .n = ch.n, .y = ws.iw.data(), .bits = ch.bits});
  s.run(ops::IndexerSelect{.q = ws.iq.data(),
                           .w = ws.iw.data(),
                           .keys = kv.index_keys.data(),
                           .layout = ch.index,
                           .kv_type = ch.kv_type,
                           .n = ch.n,
                           .p0 = ch.p0,
                           .heads = ih,
                           .head_dim = ihd,
                           .topk = c.index_topk,
                           .freqs = freqs_of(rope),
                           .key_tile = ws.key_tile.data(),
                           .key_tile_rows = static_cast<int64_t>(ws.key_tile.size()) / ihd,
                           .tiles = ws.tile_scratch(),
                           .sel = ws.sel.data(),
                           .sel_count = ws.sel_count.data()});
}

}  // namespace ferry::runtime::detail
