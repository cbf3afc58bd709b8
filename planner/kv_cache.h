// The KV cache of one sequence, exactly: bytes per stored row for each storage type, and the totals by kind
// (formulas: ../shared/spec/deepseek-v4.md §2). planner/memory and the runtime's cache allocator both use this.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#include "planner/core/model_config.h"

namespace ferry::planner {

enum class KvType : uint8_t {
  BF16,  // DeepSeek's reference buffers; for V4 also the indexer keys (no FP8/FP4 rounding anywhere)
  FP8,   // V4 production layout: 584-byte rows (E4M3 nope + BF16 rope + UE8M0 scales), 68-byte FP4 indexer keys
  Q8_0,  // llama.cpp's 8-bit blocks (32 values + fp16 scale = 34 bytes) applied to cache rows
  Q4_0,  // llama.cpp's 4-bit blocks (32 values + fp16 scale = 18 bytes)
};
// Highest fidelity first; `--kv-type auto` takes the first that fits.
constexpr std::array<KvType, 4> kKvTypesByFidelity{KvType::BF16, KvType::FP8, KvType::Q8_0, KvType::Q4_0};

std::string_view kv_type_name(KvType t);
std::optional<KvType> kv_type_from_name(std::string_view name);
// The model's native storage: fp8 for V4 (bit-faithful to DeepSeek's reference), bf16 for V3 and V3.2.
KvType default_kv_type(const core::ModelConfig& c);

enum class KvKind : uint8_t {
  SwaRing,          // V4: the last `sliding_window` raw rows, every layer
  CsaMain,          // V4: compressed rows of ratio-4 layers
  CsaIndexer,       // V4: indexer keys of ratio-4 layers
  Hca,              // V4: compressed rows of the other compressed layers
  CompressorState,  // V4: fp32 running state of every compressor, constant per sequence
  Mla,              // V3: latent + rope rows, every token
  MlaIndexer,       // V3.2: indexer keys, every token
  kCount
};
constexpr size_t kNumKvKinds = static_cast<size_t>(KvKind::kCount);
std::string_view kv_kind_name(KvKind k);
using KvBytes = std::array<int64_t, kNumKvKinds>;
int64_t kv_total(const KvBytes& b);

struct KvRowBytes {
  int64_t main = 0;     // one SWA / compressed / MLA row
  int64_t indexer = 0;  // one indexer key
};
KvRowBytes kv_row_bytes(const core::ModelConfig& c, KvType t);

// How one stored row is laid out, what every backend's KV-row encoding reads (runtime/kernels/cpu/kv_rows.h).
struct KvRowLayout {
  KvType type = KvType::FP8;
  int64_t dims = 0;       // values per row
  int64_t rope_dims = 0;  // the last rope_dims stay BF16 in fp8 main rows
  bool indexer = false;   // indexer key: FP4 instead of FP8 in the fp8 type
  int64_t bytes = 0;      // stored bytes per row: kv_row_bytes

  static KvRowLayout main_row(const core::ModelConfig& c, KvType t);
  static KvRowLayout indexer_row(const core::ModelConfig& c, KvType t);
};

// fp32 kv_state + score_state of a compressed layer's compressors (main, and the indexer's for ratio 4).
int64_t compressor_state_bytes(const core::ModelConfig& c, int64_t layer);

// One sequence of `ctx` tokens in one layer.
KvBytes layer_kv_bytes(const core::ModelConfig& c, int64_t layer, KvType t, int64_t ctx);
// All main layers (and the MTP layers when `with_mtp`), `parallel` sequences.
KvBytes kv_cache_bytes(const core::ModelConfig& c, KvType t, int64_t ctx, int64_t parallel, bool with_mtp);

// Host bytes of `keep` snapshots of one V4 sequence's volatile state (runtime/model/snapshots.h): what later
// tokens overwrite — every main layer's window ring and compressor states. Compressed rows and indexer keys are
// never rewritten below the count stored, so a snapshot needs no copy of them. V4-Flash at fp8: 14.7 MiB each
// (43 rings of 128 × 584 B = 3.07 MiB, compressor states 11.64 MiB).
int64_t kv_snapshot_bytes(const core::ModelConfig& c, KvType t, int64_t ctx, int64_t keep);
// One snapshot's share of one layer (kv_snapshot_bytes is their sum over the main layers, times `keep`).
int64_t layer_snapshot_bytes(const core::ModelConfig& c, int64_t layer, KvType t, int64_t ctx);

}  // namespace ferry::planner
