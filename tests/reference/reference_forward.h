// An independent float64 reference of the DeepSeek V4 forward pass (docs/forward-semantics.md): plain loops
// on weights dequantized to double, the whole sequence position by position, the KV storage roundings of the
// chosen KV type computed in double. From the rest of ferry it uses only the checkpoint reader
// (runtime/checkpoint/checkpoint.h), the scalar weight decoders (planner/core/dtype_codec.h), the config
// (planner/core/model_config.h, model_spec.h) and planner::KvType, so that a bug in the optimized forward cannot hide
// in both.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "planner/kv_cache.h"

namespace ferry::reference {

// A decision of the forward pass that float32 and float64 may take differently because the value is almost
// exactly on its boundary: a rounding next to a grid midpoint, a power-of-two scale next to its step, or a
// top-k selection with a near-tie at its cut.
enum class FragileKind : uint8_t {
  Fp8Round,
  Fp8Scale,
  Fp4Round,
  Fp4Scale,
  Bf16Round,
  QRound,
  QScale,
  IndexerTopk,
  RouterTopk
};
const char* fragile_kind_name(FragileKind k);

struct FragileEvent {
  uint64_t id;  // the decision's number in the run (every decision counts, fragile or not): see `flip`
  int64_t pos;
  int64_t layer;  // num_hidden_layers for the MTP layer
  FragileKind kind;
  double margin;  // relative distance to the boundary
};

struct ReferenceOptions {
  planner::KvType kv_type = planner::KvType::FP8;
  double fragile_margin = 1e-5;  // record decisions closer than this (relative) to their boundary; 0: none
  bool mtp = true;
  // Decisions (FragileEvent::id) to take the other way: the other grid neighbour or power of two, or the
  // runner-up in place of the last selected at a top-k cut. Decision ids do not depend on the values, so the
  // same id names the same decision in every run over the same tokens.
  std::vector<uint64_t> flip;
  int64_t positions = -1;  // compute only the first `positions` tokens' logits (-1: all)
};

struct ReferenceOutput {
  int64_t vocab = 0;
  std::vector<double> logits;      // [tokens, vocab]
  std::vector<double> mtp_logits;  // [tokens − 1, vocab]: MTP at position p with next token tokens[p+1];
                                   // empty when !mtp or the model has no MTP layer
  std::vector<FragileEvent> fragile;
  uint64_t decisions = 0;  // every decision of the run, fragile or not
};

// Throws ferry::Error on a missing or misshapen tensor, a token id outside [0, vocab), a non-V4 model.
ReferenceOutput reference_forward(const std::filesystem::path& model_dir, const std::vector<int32_t>& tokens,
                                  const ReferenceOptions& options);

}  // namespace ferry::reference
