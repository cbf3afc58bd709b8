// The file of `ferry perplexity --kl-divergence-base`: a reference run's top-K log-probabilities at every scored
// position, which `--kl-divergence` compares another run to. Little-endian binary:
//   "FERRYKLD" u32 version; i64 ctx, chunks; i32 top_k, vocab; u64 tokens hash (FNV-1a of the evaluated chunks'
//   ids, BOS included); the model's fingerprint (u64 config, headers, weights; i64 shards, tensors); u32 length +
//   the base run's settings as text; then for P = chunks * scored-per-chunk positions: f64 nll[P], f32
//   log_tail[P], i32 ids[P][K], f32 logp[P][K]; then u64 FNV-1a of every byte before it.
// About 8K + 12 bytes a position (270 for K = 32), where llama-perplexity's full-vocabulary file takes 2 bytes per
// vocabulary entry (~260 KB a position at DeepSeek's 129K vocabulary).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "runtime/checkpoint/fingerprint.h"

namespace ferry::launch {

struct KlBaseHeader {
  int64_t ctx = 0;
  int64_t chunks = 0;
  int32_t top_k = 0;
  int32_t vocab = 0;
  uint64_t tokens_hash = 0;
  runtime::CheckpointFingerprint model;
  std::string settings;  // the base run's flags in words, for the report
};

// Positions scored in a chunk of `ctx` tokens: those of its second half that have a next token (llama-perplexity's
// convention: the logits of positions ctx/2 .. ctx-2 predict tokens ctx/2+1 .. ctx-1).
inline int64_t scored_per_chunk(int64_t ctx) { return ctx - 1 - ctx / 2; }

// FNV-1a of the token ids, as the header keeps them.
uint64_t hash_tokens(std::span<const int32_t> tokens);

struct KlBase {
  KlBaseHeader header;
  std::vector<double> nll;      // -log p(next token) of the base run
  std::vector<float> log_tail;  // log of the mass outside the top K
  std::vector<int32_t> ids;     // [positions][top_k], most likely first
  std::vector<float> logp;      // [positions][top_k]

  int64_t positions() const { return static_cast<int64_t>(nll.size()); }
  std::span<const int32_t> ids_at(int64_t p) const { return {ids.data() + p * header.top_k, size_t(header.top_k)}; }
  std::span<const float> logp_at(int64_t p) const { return {logp.data() + p * header.top_k, size_t(header.top_k)}; }
};

// Written through a temporary file renamed into place; throws ferry::Error naming the file when it cannot be.
void write_kl_base(const std::filesystem::path& file, const KlBase& base);

// Reads and checks the file: throws ferry::Error with one line when it is not such a file, is of another
// version, truncated or corrupted (the checksum), or does not match `run` (model, ctx, chunks, text; the model's
// fingerprint covers its vocabulary). `run.top_k`, `run.vocab` and `run.settings` are not compared.
KlBase read_kl_base(const std::filesystem::path& file, const KlBaseHeader& run);

}  // namespace ferry::launch
