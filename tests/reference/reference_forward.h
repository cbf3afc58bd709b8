// An independent float64 reference of the DeepSeek V4 forward pass (docs/forward-semantics.md): plain loops
// on weights dequantized to double, the whole sequence position by position, the KV storage roundings of the
// chosen KV type computed in double. It shares only the checkpoint reader, the scalar weight decoders and the
// config struct with the runtime, so that a bug in the optimized path cannot hide in both.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "planner/kv_cache.h"

namespace ferry::reference {

// A decision of the forward pass that float32 and float64 may take differently because the value is almost
// exactly on its boundary: a rounding next to a grid midpoint, a power-of-two scale next to its step, or a
// top-k selection with a near-tie at its cut.
enum class FragileKind : uint8_t { Fp8Round, Fp8Scale, Fp4Round, Fp4Scale, Bf16Round, QRound, QScale, IndexerTopk, RouterTopk };
const char* fragile_kind_name(FragileKind k);

struct FragileEvent {
  int64_t pos;
  int64_t layer;  // num_hidden_layers for the MTP layer
  FragileKind kind;
  double margin;  // relative distance to the boundary
};

struct ReferenceOptions {
  planner::KvType kv_type = planner::KvType::FP8;
  double fragile_margin = 1e-5;  // record decisions closer than this to their boundary
  bool mtp = true;
};

struct ReferenceOutput {
  int64_t vocab = 0;
  std::vector<double> logits;      // [tokens, vocab]
  std::vector<double> mtp_logits;  // [tokens − 1, vocab]: MTP at position p with next token tokens[p+1]
  std::vector<FragileEvent> fragile;
};

ReferenceOutput reference_forward(const std::filesystem::path& model_dir, const std::vector<int32_t>& tokens,
                                  const ReferenceOptions& options);

}  // namespace ferry::reference
