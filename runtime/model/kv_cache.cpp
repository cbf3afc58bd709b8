#include "runtime/model/kv_cache.h"

#include <algorithm>
#include <limits>

#include "planner/core/error.h"

namespace ferry::runtime {

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

int64_t state_floats(int64_t ratio, int64_t dim) {
  const int64_t coff = ratio == 4 ? 2 : 1;
  return coff * ratio * coff * dim;
}

CompressorState make_state(int64_t ratio, int64_t dim, Backend* device, MemoryClass c) {
  const int64_t coff = ratio == 4 ? 2 : 1;
  CompressorState s;
  s.rows = coff * ratio;
  s.width = coff * dim;
  s.kv = device_vector<float>(device, c, sz(s.rows * s.width), 0.0f);
  s.score = device_vector<float>(device, c, sz(s.rows * s.width), -std::numeric_limits<float>::infinity());
  return s;
}

}  // namespace

KvCache::KvCache(const core::ModelConfig& c, planner::KvType type, int64_t ctx, bool with_mtp, Backend* device,
                 const std::function<bool(int64_t)>& holds)
    : type_(type),
      ctx_(ctx),
      main_(planner::KvRowLayout::main_row(c, type)),
      index_(planner::KvRowLayout::indexer_row(c, type)) {
  FERRY_CHECK(c.arch == core::Arch::DeepseekV4, "the CPU KV cache holds V4 layouts only");
  FERRY_CHECK(ctx >= 1, "context must be at least 1 token");
  const int64_t n = with_mtp ? c.n_layers_total() : c.num_hidden_layers;
  layers_.resize(sz(n));
  shapes_.resize(sz(n));
  for (int64_t i = 0; i < n; ++i) {
    LayerKv& L = layers_[sz(i)];
    L.ratio = c.compress_ratio(i);
    LayerShape& S = shapes_[sz(i)];
    S.ratio = L.ratio;
    S.window_rows = std::min(ctx, c.sliding_window);
    if (L.ratio > 0) S.state_floats = state_floats(L.ratio, c.head_dim);
    if (L.ratio == 4) S.index_state_floats = state_floats(L.ratio, c.index_head_dim);
    if (holds && !holds(i)) continue;
    L.window_rows = std::min(ctx, c.sliding_window);
    L.window = device_vector<uint8_t>(device, MemoryClass::Kv, sz(L.window_rows * main_.bytes));
    if (L.ratio == 0) continue;
    L.compressed_rows = ctx / L.ratio;
    L.compressed = device_vector<uint8_t>(device, MemoryClass::Kv, sz(L.compressed_rows * main_.bytes));
    L.main_state = make_state(L.ratio, c.head_dim, device, MemoryClass::Kv);
    if (L.ratio == 4) {
      L.index_keys = device_vector<uint8_t>(device, MemoryClass::Indexer, sz(L.compressed_rows * index_.bytes));
      L.index_state = make_state(L.ratio, c.index_head_dim, device, MemoryClass::Kv);
    }
  }
}

planner::KvBytes KvCache::bytes() const {
  using planner::KvKind;
  planner::KvBytes b{};
  auto at = [&](KvKind k) -> int64_t& { return b[static_cast<size_t>(k)]; };
  for (const LayerKv& L : layers_) {
    at(KvKind::SwaRing) += static_cast<int64_t>(L.window.size());
    at(L.ratio == 4 ? KvKind::CsaMain : KvKind::Hca) += static_cast<int64_t>(L.compressed.size());
    at(KvKind::CsaIndexer) += static_cast<int64_t>(L.index_keys.size());
    for (const CompressorState* s : {&L.main_state, &L.index_state})
      at(KvKind::CompressorState) += static_cast<int64_t>((s->kv.size() + s->score.size()) * sizeof(float));
  }
  return b;
}

void KvCache::clear() {
  for (LayerKv& L : layers_) {
    L.n_compressed = 0;
    for (CompressorState* s : {&L.main_state, &L.index_state}) {
      std::fill(s->kv.begin(), s->kv.end(), 0.0f);
      std::fill(s->score.begin(), s->score.end(), -std::numeric_limits<float>::infinity());
    }
  }
}

}  // namespace ferry::runtime
