// `ferry make-tiny`: a small random checkpoint in exactly the official V4 layout — DeepSeek's config.json keys,
// the same tensor names, dtypes and packing (FP8 E4M3 with 128x128 E8M0 scales, FP4 experts with per-32 E8M0
// scales, BF16, F32, I64 tid2eid), two or more shards with an index, and a tokenizer.json — so that every
// test exercises the loader that reads the real checkpoints. Deterministic: the same options give
// byte-identical files.
#pragma once

#include <cstdint>
#include <filesystem>

#include <nlohmann/json.hpp>

namespace ferry::runtime {

struct TinyOptions {
  uint64_t seed = 0;
  bool pro_like = false;     // V4-Pro's layer pattern (compressed from layer 0, route scale 2.5)
  bool real_ratios = false;  // window 128 and ratios 4/128 instead of window 16 and ratios 4/16
  int shards = 2;
  // config.json keys to set on top of the tiny values (e.g. V4-Flash's hidden_size and expert shapes for
  // `ferry bench offload`); null: none.
  nlohmann::json overrides = nullptr;
};

// The tiny model's config.json: the keys of DeepSeek's V4-Flash config.json with small values. Every kind of
// layer is present: SWA-only, CSA (index_topk smaller than the compressed entries after ~100 tokens), HCA,
// hash-routed and score-routed MoE, the MTP layer, o_groups > 1, hc_mult 4.
nlohmann::json tiny_config_json(const TinyOptions& options);

// Writes config.json, the shards, model.safetensors.index.json and tokenizer.json into `dir` (created if
// needed). Throws ferry::Error on a bad option or a write failure.
void make_tiny_model(const std::filesystem::path& dir, const TinyOptions& options);

}  // namespace ferry::runtime
