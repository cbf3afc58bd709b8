#include "planner/kv_cache.h"

#include <algorithm>
#include <string>

#include "planner/core/error.h"

namespace ferry::planner {

std::string_view kv_type_name(KvType t) {
  switch (t) {
    case KvType::BF16: return "bf16";
    case KvType::FP8: return "fp8";
    case KvType::Q8_0: return "q8_0";
    case KvType::Q4_0: return "q4_0";
  }
  return "?";
}

std::optional<KvType> kv_type_from_name(std::string_view name) {
  for (KvType t : kKvTypesByFidelity)
    if (kv_type_name(t) == name) return t;
  return std::nullopt;
}

KvType default_kv_type(const core::ModelConfig& c) {
  return c.arch == core::Arch::DeepseekV4 ? KvType::FP8 : KvType::BF16;
}

std::string_view kv_kind_name(KvKind k) {
  switch (k) {
    case KvKind::SwaRing: return "swa_ring";
    case KvKind::CsaMain: return "csa_main";
    case KvKind::CsaIndexer: return "csa_indexer";
    case KvKind::Hca: return "hca";
    case KvKind::CompressorState: return "compressor_state";
    case KvKind::Mla: return "mla";
    case KvKind::MlaIndexer: return "mla_indexer";
    case KvKind::kCount: break;
  }
  return "?";
}

int64_t kv_total(const KvBytes& b) {
  int64_t s = 0;
  for (int64_t x : b) s += x;
  return s;
}

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// llama.cpp block formats: 32 values per block with an fp16 scale.
int64_t q8_0_bytes(int64_t n) { return ceil_div(n, 32) * 34; }
int64_t q4_0_bytes(int64_t n) { return ceil_div(n, 32) * 18; }

}  // namespace

KvRowBytes kv_row_bytes(const core::ModelConfig& c, KvType t) {
  KvRowBytes r;
  if (c.arch == core::Arch::DeepseekV4) {
    const int64_t rope = c.qk_rope_head_dim, nope = c.head_dim - rope, d = c.head_dim, di = c.index_head_dim;
    switch (t) {
      case KvType::BF16: r = {2 * d, 2 * di}; break;
      case KvType::FP8:
        // E4M3 nope dims + BF16 rope dims + one UE8M0 scale per 64 nope dims, the scale bytes padded to 8
        // (FlashMLA MODEL1_FP8Sparse: 448 + 128 + 7 + 1 = 584). Indexer: FP4 E2M1 + UE8M0 per 32 (64 + 4 = 68).
        r = {nope + 2 * rope + 8 * ceil_div(ceil_div(nope, 64), 8), di / 2 + ceil_div(di, 32)};
        break;
      case KvType::Q8_0: r = {q8_0_bytes(d), q8_0_bytes(di)}; break;
      case KvType::Q4_0: r = {q4_0_bytes(d), q4_0_bytes(di)}; break;
    }
    return r;
  }
  const int64_t latent = c.kv_lora_rank, rope = c.qk_rope_head_dim, row = latent + rope;
  switch (t) {
    case KvType::BF16: r.main = 2 * row; break;
    // FlashMLA's V3.2 layout: E4M3 latent + one f32 scale per 128 + BF16 rope (512 + 16 + 128 = 656).
    case KvType::FP8: r.main = latent + 4 * ceil_div(latent, 128) + 2 * rope; break;
    case KvType::Q8_0: r.main = q8_0_bytes(row); break;
    case KvType::Q4_0: r.main = q4_0_bytes(row); break;
  }
  // V3.2's reference stores indexer keys as FP8 with an f32 scale per 128, whatever the latent's type.
  if (c.arch == core::Arch::DeepseekV32) r.indexer = c.index_head_dim + 4 * ceil_div(c.index_head_dim, 128);
  return r;
}

int64_t compressor_state_bytes(const core::ModelConfig& c, int64_t layer) {
  const int64_t ratio = c.compress_ratio(layer);
  if (ratio == 0) return 0;
  const int64_t coff = ratio == 4 ? 2 : 1;
  // kv_state and score_state, each [coff * ratio, coff * d] fp32 (reference Compressor buffers).
  auto state = [&](int64_t d) { return 2 * (coff * ratio) * (coff * d) * 4; };
  int64_t bytes = state(c.head_dim);
  if (ratio == 4) bytes += state(c.index_head_dim);
  return bytes;
}

KvBytes layer_kv_bytes(const core::ModelConfig& c, int64_t layer, KvType t, int64_t ctx) {
  FERRY_CHECK(ctx >= 0, "negative context");
  KvBytes b{};
  const KvRowBytes row = kv_row_bytes(c, t);
  auto at = [&](KvKind k) -> int64_t& { return b[static_cast<size_t>(k)]; };
  if (c.arch != core::Arch::DeepseekV4) {
    at(KvKind::Mla) = ctx * row.main;
    at(KvKind::MlaIndexer) = ctx * row.indexer;
    return b;
  }
  at(KvKind::SwaRing) = std::min(ctx, c.sliding_window) * row.main;
  const int64_t ratio = c.compress_ratio(layer);
  if (ratio == 0) return b;
  const int64_t entries = ctx / ratio;  // entry j exists once its whole block has been seen
  if (ratio == 4) {
    at(KvKind::CsaMain) = entries * row.main;
    at(KvKind::CsaIndexer) = entries * row.indexer;
  } else {
    at(KvKind::Hca) = entries * row.main;
  }
  at(KvKind::CompressorState) = compressor_state_bytes(c, layer);
  return b;
}

KvBytes kv_cache_bytes(const core::ModelConfig& c, KvType t, int64_t ctx, int64_t parallel, bool with_mtp) {
  KvBytes total{};
  const int64_t n = with_mtp ? c.n_layers_total() : c.num_hidden_layers;
  for (int64_t l = 0; l < n; ++l) {
    const KvBytes b = layer_kv_bytes(c, l, t, ctx);
    for (size_t k = 0; k < kNumKvKinds; ++k) total[k] += b[k] * parallel;
  }
  return total;
}

int64_t kv_snapshot_bytes(const core::ModelConfig& c, KvType t, int64_t ctx, int64_t keep) {
  FERRY_CHECK(c.arch == core::Arch::DeepseekV4, "KV snapshots hold V4 state only");
  FERRY_CHECK(keep >= 0, "negative snapshot count");
  int64_t one = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) one += layer_snapshot_bytes(c, l, t, ctx);
  return keep * one;
}

int64_t layer_snapshot_bytes(const core::ModelConfig& c, int64_t layer, KvType t, int64_t ctx) {
  if (layer >= c.num_hidden_layers) return 0;  // MTP layers: sessions with MTP keep no snapshots
  const KvBytes b = layer_kv_bytes(c, layer, t, ctx);
  return b[static_cast<size_t>(KvKind::SwaRing)] + b[static_cast<size_t>(KvKind::CompressorState)];
}

KvRowLayout KvRowLayout::main_row(const core::ModelConfig& c, KvType t) {
  KvRowLayout l;
  l.type = t;
  l.dims = c.head_dim;
  l.rope_dims = c.qk_rope_head_dim;
  l.bytes = kv_row_bytes(c, t).main;
  return l;
}

KvRowLayout KvRowLayout::indexer_row(const core::ModelConfig& c, KvType t) {
  KvRowLayout l;
  l.type = t;
  l.dims = c.index_head_dim;
  l.indexer = true;
  l.bytes = kv_row_bytes(c, t).indexer;
  return l;
}

}  // namespace ferry::planner
